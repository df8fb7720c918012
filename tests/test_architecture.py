"""The house's shape: imports run downward (import-linter contracts in pyproject.toml), no cycle
inside a package, and no import hidden inside a function except of heavy optional dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("fedlab_app", "clients", "strategies", "fedlab_base")
# imported where they are used: heavy, optional, or only needed by one command
LAZY_OK = ("hydra", "omegaconf", "matplotlib", "PIL", "datasets", "flwr_datasets", "cryptography", "scipy", "jinja2",
           "mlflow", "tensorboard", "torch.utils.tensorboard", "flwr.simulation", "ray",
           "fedlab_app.cli",  # fedlab_app/launch.py: imported once a simulated run's Ray is starting
           "flwr.supernode", "flwr.supercore.inflatable",  # fedlab_app/flower_waits.py: a SuperNode's, 1.5 s
           "flwr.server.superlink.fleet.vce", "flwr.superlink.grid")  # fedlab_app/sim_waits.py: the engine's (Ray)
# the command dispatcher imports each command's module when that command runs (`fedlab deploy` need not import
# torch, nor `fedlab run` Flower's SuperNode and matplotlib)
LAZY_OK_IN = {"fedlab_app/cli.py": ("fedlab_app",),
              # the flwr-clientapp launcher imports this module without site-packages, per message: it loads only
              # what launching needs; the server and its children import the rest where they use it
              "fedlab_app/prefork.py": ("tomllib", "hashlib", "flwr.common.config")}


def test_import_linter_contracts_hold():
    """`lint-imports` (import-linter, configured in pyproject.toml) exits 0: layers kept, no cycles."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def function_level_imports() -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        mods = [node.module or ""]
                    else:
                        continue
                    ok_here = LAZY_OK + LAZY_OK_IN.get(str(path.relative_to(ROOT)), ())
                    for mod in mods:
                        if not any(mod == ok or mod.startswith(ok + ".") for ok in ok_here):
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}")
    return found


def test_no_imports_inside_functions_but_heavy_optional_ones():
    assert function_level_imports() == []


def test_the_pure_layers_import_no_app_module():
    """The same rule as the layers contract, read straight from the sources (a contract that was deleted
    from pyproject.toml would not notice)."""
    for pkg in ("clients", "strategies", "fedlab_base"):
        for path in (ROOT / pkg).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith("fedlab_app"), f"{path.relative_to(ROOT)} imports {node.module}"
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("fedlab_app") for a in node.names), path
