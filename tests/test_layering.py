"""The package's one-way layering: import-linter's contracts hold, and every module
of funcnn imports on its own.

The contracts live in pyproject.toml ([tool.importlinter]): ops < rules < nn <
training < inspect, data and distributed beside them, the layers inside
funcnn.ops, and no import cycle among sibling modules anywhere in funcnn.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "funcnn").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_every_module_is_listed():
    modules = _modules()
    assert "funcnn" in modules and "funcnn.ops.kernels.conv" in modules
    assert len(modules) == len(set(modules))


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


# Each module is imported in a child forked from a process that has loaded only
# third-party packages (jax, numpy, optax, ...): no funcnn module is in memory, so
# each import runs the package's own import order from scratch, as a fresh
# interpreter would, without paying jax's import time 90 times.
_FORKED_IMPORTS = textwrap.dedent(
    """
    import os, sys, traceback
    import jax, jax.numpy, numpy, optax, safetensors, tqdm, matplotlib
    import sklearn.datasets
    assert not [m for m in sys.modules if m.split(".")[0] == "funcnn"]
    failed = []
    for name in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name)
    print("FAILED", failed)
    sys.exit(1 if failed else 0)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_each_module_imports_alone():
    modules = _modules()
    run = subprocess.run(
        [sys.executable, "-c", _FORKED_IMPORTS, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "FAILED []" in run.stdout


def test_a_broken_contract_fails(tmp_path):
    """The check is live: a copy of the package with one upward import (ops
    importing nn) breaks the layers contract."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    shutil.copytree(ROOT / "funcnn", tmp_path / "funcnn")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "funcnn" / "ops" / "kernels" / "dense.py"
    target.write_text(target.read_text() + "\nfrom funcnn.nn import core  # noqa\n")
    run = subprocess.run(
        [lint, "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert run.returncode != 0
    assert "BROKEN" in run.stdout
    assert "funcnn.ops.kernels.dense -> funcnn.nn.core" in run.stdout
