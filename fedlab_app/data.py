"""Image data sets as uint8 arrays: local files first, a dataset hub when reachable, cached.

``load_dataset(name)`` returns an ``ImageData`` with x (N, C, H, W) uint8 and y (N,) int64.
Local sources: the four original IDX files for ``fashion_mnist``/``mnist`` (``.gz`` or raw);
``cifar10_jpeg.npz`` (the offline JPEG copy, see shared/data/README.md) or the original
``cifar-10-batches-py`` directory for ``cifar10``. ``cifar100`` comes from the hub only.
Decoded arrays are cached in ``$FEDLAB_CACHE_DIR`` (default ``~/.cache/fedlab``) as one directory of
``.npy`` files per data set and source fingerprint, memory-mapped read-only (one copy in the page cache
for every process of a run), and per process.
Partitioning lives in ``fedlab_app.partition``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedlab_app.readers import (  # noqa: F401
    CIFAR_BATCHES,
    hf_to_arrays,
    read_cifar_batches,
    read_cifar_npz,
    read_idx,
    read_idx_dir,
)
from fedlab_base.schema import DATASETS, SOURCES

_REPO_ROOT = Path(__file__).resolve().parent.parent
# Places searched after data_dir and $FEDLAB_DATA_DIR (tests may patch this).
DEFAULT_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"],
                "mnist": ["/usr/share/datasets/mnist"],
                "cifar10": [str(_REPO_ROOT / "shared" / "data"),
                            str(_REPO_ROOT.parent / "shared" / "data")],
                "cifar100": []}
_SUBDIR = {"fashion_mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "", "cifar100": ""}
# name -> (hub id, image column, label column)
HUB = {"fashion_mnist": ("zalando-datasets/fashion_mnist", "image", "label"),
       "mnist": ("ylecun/mnist", "image", "label"),
       "cifar10": ("uoft-cs/cifar10", "img", "label"),
       "cifar100": ("uoft-cs/cifar100", "img", "fine_label")}
_HOWTO = {
    "fashion_mnist": "`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
                     "IDX files in a directory given as data_dir or in $FEDLAB_DATA_DIR/fashion-mnist",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in a directory given "
             "as data_dir or in $FEDLAB_DATA_DIR/mnist",
    "cifar10": "put cifar10_jpeg.npz or the extracted cifar-10-batches-py/ directory (from "
               "cifar-10-python.tar.gz) in data_dir, $FEDLAB_DATA_DIR or shared/data/",
    "cifar100": "",  # hub only
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CACHE_VERSION = 2  # 2: a directory of .npy files, memory-mapped
_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "mean", "std", "num_classes")
_MAPPED = ("x_train", "y_train", "x_test", "y_test")


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of the data set was found and the hub was not tried or failed."""


@dataclass(frozen=True, eq=False)  # eq by identity: arrays do not compare or hash
class ImageData:
    """A labelled image data set held in memory (arrays are read-only; copy to modify)."""

    x_train: np.ndarray = field(repr=False)  # uint8 (N, C, H, W)
    y_train: np.ndarray = field(repr=False)  # int64 (N,)
    x_test: np.ndarray = field(repr=False)   # uint8 (M, C, H, W)
    y_test: np.ndarray = field(repr=False)   # int64 (M,)
    num_classes: int
    mean: tuple[float, ...]  # per channel, of x_train / 255
    std: tuple[float, ...]
    name: str


def _read_hub(name: str):
    from flwr_datasets import (
        FederatedDataset,  # partitioning happens later, on the arrays
    )

    hub_id, image_key, label_key = HUB[name]
    fds = FederatedDataset(dataset=hub_id, partitioners={"train": 1}, shuffle=False)
    return (*hf_to_arrays(fds.load_split("train"), image_key, label_key),
            *hf_to_arrays(fds.load_split("test"), image_key, label_key))


def _search_dirs(name: str, data_dir: str = "") -> list[Path]:
    """Directories to search, in order: data_dir, $FEDLAB_DATA_DIR (+ subdir), DEFAULT_DIRS."""
    sub, dirs = _SUBDIR[name], []
    for root in (data_dir, os.environ.get("FEDLAB_DATA_DIR", "")):
        if root:
            dirs += [Path(root) / sub, Path(root)] if sub else [Path(root)]
    dirs += [Path(d) for d in DEFAULT_DIRS[name]]
    return list(dict.fromkeys(Path(os.path.abspath(os.path.expanduser(d))) for d in dirs))


def _find_local(name: str, data_dir: str):
    """Return (reader, files, searched) for the first local copy found."""
    searched = []
    for d in _search_dirs(name, data_dir):
        if name in ("fashion_mnist", "mnist"):
            searched.append(f"{d}/{{{','.join(_IDX_FILES)}}}[.gz]")
            files = [next((d / (s + e) for e in (".gz", "") if (d / (s + e)).is_file()), None)
                     for s in _IDX_FILES]
            if all(files):
                return read_idx_dir, files, searched
        elif name == "cifar10":
            searched += [str(d / "cifar10_jpeg.npz"), str(d / "cifar-10-batches-py") + "/"]
            if (d / "cifar10_jpeg.npz").is_file():
                return (lambda fs: read_cifar_npz(fs[0])), [d / "cifar10_jpeg.npz"], searched
            batches = [d / "cifar-10-batches-py" / b for b in CIFAR_BATCHES]
            if all(f.is_file() for f in batches):
                return (lambda fs: read_cifar_batches(fs[0].parent)), batches, searched
    return None, [], searched


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDLAB_CACHE_DIR") or Path.home() / ".cache" / "fedlab")


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of x/255 from 256-bin histograms (no float copy of x)."""
    v = np.arange(256) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = np.bincount(x[:, c].ravel(), minlength=256) / x[:, c].size
        m = float(h @ v)
        means.append(m)
        stds.append(float(np.sqrt(max(h @ v**2 - m * m, 0.0))))
    return tuple(means), tuple(stds)


def _read_cache(path: Path) -> dict | None:
    """The arrays of a cache directory, the large ones memory-mapped read-only; None if any is missing,
    cut short or unreadable (the manifest holds each file's size: a truncated file is never trusted)."""
    try:
        sizes = json.loads((path / "manifest.json").read_text())
        arrays = {}
        for k in _CACHE_KEYS:
            f = path / f"{k}.npy"
            if f.stat().st_size != sizes[k]:
                return None
            arrays[k] = np.load(f, mmap_mode="r" if k in _MAPPED else None, allow_pickle=False)
        return arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, arrays: dict) -> None:
    """Write ``arrays`` as ``path/<key>.npy`` + ``manifest.json``, atomically: into a temporary directory
    that is then renamed, so that a concurrent reader sees no directory or a complete one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.mkdir(parents=True)
        for k, a in arrays.items():
            np.save(tmp / f"{k}.npy", a, allow_pickle=False)
        sizes = {k: (tmp / f"{k}.npy").stat().st_size for k in arrays}
        (tmp / "manifest.json").write_text(json.dumps(sizes))
        if path.exists():  # a broken entry (a complete one was read before we got here)
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process has just written it: keep theirs
            if _read_cache(path) is None:
                raise
    except OSError as err:  # read-only home, disk full: keep going without a disk cache
        warnings.warn(f"fedlab: could not write the data cache {path}: {err}", stacklevel=4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(name: str, key: str, read) -> dict:
    """Load arrays from the disk cache, or ``read()`` them, add stats and store atomically.

    The cache is a directory of ``.npy`` files whose image arrays are memory-mapped: every process of a
    run (server, Ray workers) shares one copy in the page cache instead of holding its own, and a
    process only touches the pages of the samples it uses.
    """
    path = _cache_dir() / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    arrays = _read_cache(path)
    if arrays is not None:
        return arrays
    xtr, ytr, xte, yte = read()
    mean, std = _channel_stats(xtr)
    arrays = dict(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, mean=np.array(mean),
                  std=np.array(std), num_classes=np.array(int(max(ytr.max(), yte.max())) + 1))
    _write_cache(path, arrays)
    return _read_cache(path) or arrays


def _fingerprint(files: list[Path]) -> str:
    return "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


@functools.lru_cache(maxsize=8)
def _load(name: str, data_dir: str, source: str, _env: tuple) -> ImageData:
    read, files, searched = _find_local(name, data_dir) if source != "hub" else (None, [], [])
    hub_note = f"not tried (source={source!r})"
    if read is not None:
        arrays = _cached(name, f"v{_CACHE_VERSION}|{name}|{_fingerprint(files)}",
                         lambda: read(files))
    elif source == "local":
        arrays = None
    else:
        try:
            arrays = _cached(name, f"v{_CACHE_VERSION}|{name}|hub:{HUB[name][0]}",
                             lambda: _read_hub(name))
        except Exception as err:  # no network, no hub, missing package: report below
            arrays, hub_note = None, f"{HUB[name][0]!r} failed: {type(err).__name__}: {err}"
    if arrays is None:
        places = "".join(f"\n  - {p}" for p in searched) or " nowhere (no offline copy exists)"
        howto = _HOWTO[name] + "; or " if _HOWTO[name] else ""
        raise DatasetNotFoundError(
            f"data set {name!r} not found. Looked locally in:{places}\nHub: {hub_note}.\n"
            f"To get it: {howto}run where the Hugging Face hub is reachable (source='auto' or "
            f"'hub'; HF_HUB_OFFLINE=1 makes the hub attempt fail fast).")
    for a in arrays.values():
        a.flags.writeable = False
    return ImageData(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                     int(arrays["num_classes"]), tuple(map(float, arrays["mean"])),
                     tuple(map(float, arrays["std"])), name)


def load_dataset(name: str, data_dir: str = "", source: str = "auto") -> ImageData:
    """Load a data set as uint8 arrays (cached on disk and per process; arrays read-only).

    Parameters
    ----------
    name : str
        One of ``DATASETS``: fashion_mnist, mnist, cifar10, cifar100.
    data_dir : str, optional
        Searched first (it and its subdirectory such as ``fashion-mnist``), then
        ``$FEDLAB_DATA_DIR`` (and subdirectory), then ``DEFAULT_DIRS[name]``.
    source : str, optional
        ``auto`` (local copy first, else the hub), ``local`` or ``hub``.

    Returns
    -------
    ImageData
        Train/test arrays, number of classes and the train set's per-channel mean/std.

    Raises
    ------
    ValueError
        For an unknown name or source.
    DatasetNotFoundError
        When no copy was found; the message lists every place searched and how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    env = (os.environ.get("FEDLAB_DATA_DIR", ""), str(_cache_dir()))
    return _load(name, str(data_dir or ""), source, env)
