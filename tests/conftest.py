"""Suite-wide test setup.

float64 is enabled at import time, before any test module builds an array, so the
whole suite runs with x64 on and every test picks its dtypes explicitly. The
`run_torch` fixture runs a PyTorch snippet in a fresh interpreter: torch and jax in
one process corrupt the heap over many iterations, so torch never loads here.
Without torch the parity tests skip, except under CI=true, where they fail: a green
CI must not have skipped every parity suite. `release_compiled` drops compiled
executables after each test of a module that asks for it
(`pytestmark = pytest.mark.usefixtures("release_compiled")`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

_TORCH_PRELUDE = """\
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
data = np.load(sys.argv[1], allow_pickle=False)
configs = json.loads(str(data["configs"]))
out = {}


def t(name, grad=False):
    return torch.tensor(data[name], requires_grad=grad)


def save(name, value):
    out[name] = value.detach().numpy() if torch.is_tensor(value) else value

"""

_TORCH_EPILOGUE = """
np.savez(sys.argv[2], **out)
"""


def pytest_collection_modifyitems(items):
    # When a hypothesis test fails, its pytest plugin touches the deprecated
    # mypy_extensions.TypedDict while reporting; with filterwarnings = error that
    # becomes an INTERNALERROR which hides the falsifying example.
    ignore = "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    for item in items:
        item.add_marker(pytest.mark.filterwarnings(ignore))


def _torch_missing(what: str) -> None:
    """Skips the calling test without torch, or fails it under CI=true."""
    if importlib.util.find_spec("torch") is not None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"torch is not installed, and CI=true requires it for {what}")
    pytest.skip("torch is not installed")


@pytest.fixture
def require_torch():
    """For a test that needs torch importable in a subprocess of its own."""
    _torch_missing("this parity test")


@pytest.fixture
def release_compiled():
    """Drop each test's compiled executables: the slow sweeps compile thousands,
    and XLA:CPU has segfaulted in a later compile after holding ~4 GB of them."""
    yield
    jax.clear_caches()


@pytest.fixture
def run_torch(tmp_path):
    """Run `body` under torch in a subprocess and return the arrays it saved.

    `body` sees `data` (the arrays passed in), `configs` (the JSON-able list passed
    in), the helpers `t(name, grad=False)` (array -> tensor) and
    `save(name, tensor)`, and `torch`, `F`, `np`. Skips when torch is absent
    (fails under CI=true).
    """
    _torch_missing("the PyTorch parity tests")

    def run(body: str, arrays: dict, configs: list) -> dict:
        inputs, outputs = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
        script = tmp_path / "torch_side.py"
        script.write_text(_TORCH_PRELUDE + textwrap.dedent(body) + _TORCH_EPILOGUE)
        np.savez(inputs, configs=np.array(json.dumps(configs)), **arrays)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, str(script), str(inputs), str(outputs)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, f"torch subprocess failed:\n{proc.stderr}"
        with np.load(outputs, allow_pickle=False) as saved:
            return dict(saved)

    return run
