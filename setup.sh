#!/usr/bin/env bash
# Set up fedlab in ./.venv: Fashion-MNIST (Debian package), torch (CPU build), the app and its tests.
#   FEDLAB_TORCH   torch requirement to install first (default torch==2.13.0; on a machine without a
#                  local CPU wheel, e.g. "torch --index-url https://download.pytorch.org/whl/cpu")
#   FEDLAB_PYTHON  interpreter for the venv (default python3, >= 3.11)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "setup.sh: could not install dataset-fashion-mnist; set FEDLAB_DATA_DIR to a folder with the IDX files" >&2
fi
[ -x .venv/bin/python ] || "${FEDLAB_PYTHON:-python3}" -m venv .venv
# torch first: a bare `torch` requirement with nothing installed would pull a multi-GB CUDA build.
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${FEDLAB_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, flwr; print(f'fedlab ready: torch {torch.__version__}, flwr {flwr.__version__}')"
