"""Tests of funcnn.distributed: data parallelism on forced host devices and processes.

JAX fixes its devices when it starts, so the multi-device and multi-process runs
happen in subprocesses that run this file as a script
(`python tests/test_distributed.py <mode> ...`), each under a hard timeout and
killed with its whole process group afterwards. The oracle is always the plain
single-device `jax.jit` train step on the whole batch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

import funcnn
import funcnn.distributed as parallel
import funcnn.distributed.cli as cluster
from funcnn.training.optim import make_optimizer
from funcnn.training.step import create_train_state, make_train_step

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
TIMEOUT_S = 120
MARK = "RESULT "
BATCH = 64
ATOL = 1e-5
DEVICE_STEPS = 5
PROCESS_STEPS = 3
PROCESS_MODEL = "bn_net"
REF_FILE = "reference.npz"


# name -> (model factory, input shape (C, H, W), classes)
def _bn_net():
    """A small VGG-like net: BatchNorm on images and on features, Dropout."""
    return funcnn.serial(
        funcnn.Conv2D(8, 3, padding="SAME", use_bias=False),
        funcnn.BatchNorm(),
        funcnn.Relu(),
        funcnn.MaxPool2D(2),
        funcnn.Conv2D(16, 3, padding="SAME", use_bias=False),
        funcnn.BatchNorm(),
        funcnn.Relu(),
        funcnn.MaxPool2D(2),
        funcnn.Flatten(),
        funcnn.Dense(32, use_bias=False),
        funcnn.BatchNorm(),
        funcnn.Relu(),
        funcnn.Dropout(0.25),
        funcnn.Dense(10),
    )


MODELS = {
    # conv + BatchNorm + max pool, BatchNorm on (N, C), Dropout (uses the key)
    "bn_net": (_bn_net, (3, 16, 16), 10),
    # conv + max pool, no BatchNorm
    "lenet": (lambda: funcnn.lenet(10, input_hw=(8, 8)), (1, 8, 8), 10),
}


# ------------------------------------------------------------ shared by all runs


def _data(name: str, n: int = BATCH):
    _, chw, classes = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *chw)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    return x, y


def _setup(name: str, grad: str):
    factory, chw, _ = MODELS[name]
    model = factory()
    optimizer = make_optimizer("momentum", 0.01)
    state = create_train_state(model, (-1, *chw), optimizer, seed=0)
    step = make_train_step(model, optimizer, grad=grad, jit=False)
    return state, step


def _flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _reference(name: str, grad: str, steps: int, snapshot: str | None = None):
    """Params, model state and losses of the single-device step.

    With `snapshot`, also saves them after PROCESS_STEPS steps to that .npz path.
    """
    state, step = _setup(name, grad)
    step = jax.jit(step)
    batch = _data(name)
    losses = []
    for i in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if snapshot and i + 1 == PROCESS_STEPS:
            np.savez(
                snapshot,
                losses=np.array(losses),
                **{"params" + k: v for k, v in _flat(state.params).items()},
                **{"stats" + k: v for k, v in _flat(state.model_state).items()},
            )
    return _flat(state.params), _flat(state.model_state), losses


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ------------------------------------------------------------- subprocess modes


def _mode_devices(steps: int, outdir: str) -> dict:
    """4 forced host devices: data-parallel step against the single-device one.

    Also saves the single-device reference of the multi-process test.
    """
    assert jax.device_count() == 4, jax.devices()
    mesh = parallel.make_mesh()
    out: dict = {"configs": {}}
    first_losses = {}
    for name in MODELS:
        for grad in ("custom", "autodiff"):
            snapshot = (name, grad) == (PROCESS_MODEL, "custom")
            ref_params, ref_stats, ref_losses = _reference(
                name, grad, steps, os.path.join(outdir, REF_FILE) if snapshot else None
            )
            state, step = _setup(name, grad)
            dp_step = parallel.data_parallel(step, mesh)
            state = parallel.replicate(state, mesh)
            batch = parallel.shard_batch(_data(name), mesh)
            losses = []
            for _ in range(steps):
                state, metrics = dp_step(state, batch)
                losses.append(float(metrics["loss"]))
            first_losses[f"{name}-{grad}"] = ref_losses[0]
            leaf = jax.tree.leaves(state.params)[0]
            out["configs"][f"{name}-{grad}"] = {
                "params": _max_diff(_flat(state.params), ref_params),
                "model_state": _max_diff(_flat(state.model_state), ref_stats)
                if ref_stats
                else 0.0,
                "has_batchnorm": bool(ref_stats),
                "loss": max(abs(a - b) for a, b in zip(losses, ref_losses)),
                "batch_shards": len(batch[0].sharding.device_set),
                "batch_shard_shape": list(batch[0].addressable_shards[0].data.shape),
                "params_replicated": leaf.sharding.is_fully_replicated
                and len(leaf.sharding.device_set) == 4,
            }
    # Power of the BatchNorm check: statistics of one shard (16 examples) would
    # move the running statistics far more than the tolerance.
    factory, chw, _ = MODELS[PROCESS_MODEL]
    model = factory()
    _, params, stats = model.init(jax.random.PRNGKey(0), (-1, *chw))
    x, _ = _data(PROCESS_MODEL)
    kw = {"train": True, "key": jax.random.PRNGKey(1)}
    whole = _flat(model.apply(params, stats, x, **kw)[1])
    shard = _flat(model.apply(params, stats, x[: BATCH // 4], **kw)[1])
    out["per_shard_stats_gap"] = _max_diff(whole, shard)
    # Bad batch sizes are caught before tracing, by the step and by shard_batch.
    state, step = _setup("lenet", "custom")
    dp_step = parallel.data_parallel(step, mesh, donate=False)
    # Arrays committed to one device (state and batch) are placed for the step.
    one = jax.devices()[1]
    batch = jax.device_put(_data("lenet"), one)
    new, metrics = dp_step(jax.device_put(state, one), batch)
    out["committed_inputs"] = {
        "loss": abs(float(metrics["loss"]) - first_losses["lenet-custom"]),
        "replicated": jax.tree.leaves(new.params)[0].sharding.is_fully_replicated,
    }
    x, y = _data("lenet", 30)
    errors = {}
    for key, call in {
        "step": lambda: dp_step(parallel.replicate(state, mesh), (x, y)),
        "shard_batch": lambda: parallel.shard_batch((x, y), mesh),
    }.items():
        try:
            call()
            errors[key] = None
        except ValueError as err:
            errors[key] = str(err)
    out["errors"] = errors
    parser = cluster.add_cli_arguments(argparse.ArgumentParser())
    meshes = {}
    for flag in ("1", "2", "all"):
        mesh_or_none = cluster.setup_from_args(parser.parse_args(["--devices", flag]))
        meshes[flag] = None if mesh_or_none is None else mesh_or_none.size
    out["setup_from_args"] = meshes
    return out


def _mode_worker(port: int, pid: int, nproc: int, steps: int, outdir: str) -> dict:
    """One of several processes, each with 1 CPU device and 1/nproc of the batch."""
    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid, timeout_s=60)
    assert jax.process_count() == nproc and jax.local_device_count() == 1
    mesh = parallel.make_mesh()
    state, step = _setup(PROCESS_MODEL, "custom")
    dp_step = parallel.data_parallel(step, mesh)
    state = parallel.replicate(state, mesh)
    x, y = _data(PROCESS_MODEL)
    part = BATCH // nproc
    local = (x[pid * part : (pid + 1) * part], y[pid * part : (pid + 1) * part])
    helper = parallel.process_local_batch((x, y), mesh)
    batch = parallel.shard_batch(local, mesh)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(batch[0], tiled=True)
    losses = []
    for i in range(steps):
        # The last step feeds the whole host batch and lets the step split it.
        state, metrics = dp_step(state, batch if i < steps - 1 else (x, y))
        losses.append(float(metrics["loss"]))
    stop = [parallel.any_process(pid == 1), parallel.any_process(False)]
    np.savez(os.path.join(outdir, f"params{pid}.npz"), **_flat(state.params))
    np.savez(os.path.join(outdir, f"stats{pid}.npz"), **_flat(state.model_state))
    return {
        "any_process": stop,
        "losses": losses,
        "global_shape": list(batch[0].shape),
        "global_batch_in_order": bool(np.array_equal(np.asarray(gathered), x)),
        "process_local_batch_is_contiguous": bool(
            np.array_equal(helper[0], local[0]) and np.array_equal(helper[1], local[1])
        ),
    }


def _mode_bad_setup(closed_port: int, busy_port: int) -> dict:
    """Setups that must fail fast with a clear, catchable error."""
    out = {}
    cases = {
        "unreachable": lambda: parallel.initialize_distributed(
            f"127.0.0.1:{closed_port}", 2, 1, timeout_s=2
        ),
        "busy_port": lambda: parallel.initialize_distributed(
            f"127.0.0.1:{busy_port}", 2, 0, timeout_s=2
        ),
        "partial": lambda: parallel.initialize_distributed("127.0.0.1:1234", 2),
    }
    with socket.socket() as busy:
        busy.bind(("", busy_port))
        busy.listen()
        for key, call in cases.items():
            start = time.monotonic()
            try:
                call()
                out[key] = {"error": None}
            except Exception as err:  # the type is what is tested
                out[key] = {"error": type(err).__name__, "message": str(err)}
            out[key]["seconds"] = time.monotonic() - start
    out["jax_initialized"] = jax.distributed.is_initialized()
    return out


def _mode_lonely(port: int, timeout_s: float) -> dict:
    """Process 0 of 2 whose peer never starts: the watchdog must end it."""
    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 0, timeout_s=timeout_s)
    return {"returned": True}  # not reached


def _main(argv: list[str]) -> None:
    mode, args = argv[0], [int(a) if a.isdigit() else a for a in argv[1:]]
    result = {
        "devices": _mode_devices,
        "worker": _mode_worker,
        "bad_setup": _mode_bad_setup,
        "lonely": _mode_lonely,
    }[mode](*args)
    print(MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------- the test runner


def _env(devices: int = 1) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FUNCNN_") and k != parallel.launch.ENV_JAX_COORDINATOR
    }
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    # Compiling dominates these runs; the SPMD partitioning under test happens
    # before the backend, and every run compared is compiled the same way.
    flags.append("--xla_backend_optimization_level=0")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(args: list, devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, HERE, *map(str, args)],
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as one
    )


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S):
    """Waits for `proc`; returns (returncode, result dict or None, stderr)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"subprocess timed out after {timeout} s:\n{stderr[-3000:]}")
    finally:
        _kill(proc)
    results = [line for line in stdout.splitlines() if line.startswith(MARK)]
    result = json.loads(results[-1][len(MARK) :]) if results else None
    return proc.returncode, result, stderr


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run(args: list, devices: int = 1) -> dict:
    code, result, stderr = _finish(_start(args, devices))
    assert code == 0 and result is not None, stderr[-3000:]
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    outdir = tmp_path_factory.mktemp("four_devices")
    result = _run(["devices", DEVICE_STEPS, outdir], devices=4)
    result["reference"] = dict(np.load(outdir / REF_FILE))
    return result


@pytest.mark.parametrize("grad", ["custom", "autodiff"])
@pytest.mark.parametrize("name", list(MODELS))
def test_four_devices_match_one(four_devices, name, grad):
    got = four_devices["configs"][f"{name}-{grad}"]
    # The step really ran split: 16 examples on each of 4 devices, params replicated.
    assert got["batch_shards"] == 4
    assert got["batch_shard_shape"][0] == BATCH // 4
    assert got["params_replicated"]
    assert got["params"] <= ATOL, got
    assert got["loss"] <= ATOL, got
    # BatchNorm running statistics are those of the global batch.
    assert got["has_batchnorm"] == (name == "bn_net")
    assert got["model_state"] <= ATOL, got
    assert four_devices["per_shard_stats_gap"] > 100 * ATOL


def test_four_devices_reject_indivisible_batch(four_devices):
    for where, message in four_devices["errors"].items():
        assert message is not None, where
        assert "batch size 30" in message and "4 devices" in message, message
        assert "multiple of 4 (e.g. 32 or 28)" in message, message


def test_four_devices_place_committed_inputs(four_devices):
    got = four_devices["committed_inputs"]
    assert got["replicated"] and got["loss"] <= ATOL, got


def test_four_devices_setup_from_args(four_devices):
    assert four_devices["setup_from_args"] == {"1": None, "2": 2, "all": 4}


def test_two_processes_match_one(four_devices):
    port = _free_port()
    with tempfile.TemporaryDirectory() as outdir:
        procs = [
            _start(["worker", port, pid, 2, PROCESS_STEPS, outdir]) for pid in (0, 1)
        ]
        try:
            runs = [_finish(p) for p in procs]
        finally:
            for p in procs:
                _kill(p)
        for code, result, stderr in runs:
            assert code == 0 and result is not None, stderr[-3000:]
        params = [dict(np.load(f"{outdir}/params{pid}.npz")) for pid in (0, 1)]
        stats = [dict(np.load(f"{outdir}/stats{pid}.npz")) for pid in (0, 1)]
    ref = four_devices["reference"]  # the single-device run, PROCESS_STEPS steps
    ref_losses = ref.pop("losses")
    ref_params = {k[6:]: v for k, v in ref.items() if k.startswith("params")}
    ref_stats = {k[5:]: v for k, v in ref.items() if k.startswith("stats")}
    for (_, result, _), p, s in zip(runs, params, stats):
        assert result["global_shape"] == [BATCH, *MODELS[PROCESS_MODEL][1]]
        assert result["global_batch_in_order"]
        assert result["process_local_batch_is_contiguous"]
        assert result["any_process"] == [True, False]
        np.testing.assert_allclose(result["losses"], ref_losses, rtol=0, atol=ATOL)
        assert _max_diff(p, ref_params) <= ATOL
        assert _max_diff(s, ref_stats) <= ATOL
    assert _max_diff(params[0], params[1]) == 0.0


def test_bad_distributed_setup_fails_fast():
    result = _run(["bad_setup", _free_port(), _free_port()])
    unreachable = result["unreachable"]
    assert unreachable["error"] == "TimeoutError", unreachable
    assert "could not reach the coordinator at 127.0.0.1:" in unreachable["message"]
    assert unreachable["seconds"] < 10
    busy = result["busy_port"]
    assert busy["error"] == "RuntimeError", busy
    assert "is not free" in busy["message"]
    partial = result["partial"]
    assert partial["error"] == "ValueError", partial
    assert "process_id" in partial["message"]
    assert not result["jax_initialized"]


def test_lonely_coordinator_exits_with_message():
    start = time.monotonic()
    code, result, stderr = _finish(_start(["lonely", _free_port(), 3]), timeout=60)
    assert result is None and code == 1, stderr[-3000:]
    assert "the other processes did not all join" in stderr
    assert time.monotonic() - start < 30


# --------------------------------------------------------- in-process checks


def test_check_batch_message():
    mesh = jax.sharding.AbstractMesh((4,), ("data",))
    x = np.zeros((30, 1, 8, 8), np.float32)
    y = np.zeros((30,), np.int32)
    with pytest.raises(ValueError, match=r"got batch size 30\. Use a batch size"):
        parallel.check_batch((x, y), mesh)
    with pytest.raises(ValueError, match=r"sharing a leading axis N"):
        parallel.check_batch((x, y[:8]), mesh)
    assert parallel.check_batch((x[:28], y[:28]), mesh) == 28
    with pytest.raises(ValueError, match=r"--batch-size: .* got batch size 30\."):
        parallel.check_batch(30, mesh, func="--batch-size")


def test_one_device_placement():
    state = {"w": np.ones((3, 2), np.float32), "key": np.array([0, 7], np.uint32)}
    mesh = parallel.make_mesh(jax.devices()[:1])
    x, y = _data("lenet")
    bx, by = parallel.shard_batch((x, y), mesh)
    assert bx.sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(bx), x)
    np.testing.assert_array_equal(np.asarray(by), y)
    placed = parallel.replicate(state, mesh)
    for leaf, ref in zip(jax.tree.leaves(placed), jax.tree.leaves(state)):
        assert leaf.sharding == parallel.replicated_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
    batch = (x, y)
    assert parallel.process_local_batch(batch, mesh) is batch


def test_cli_arguments():
    parser = cluster.add_cli_arguments(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert tuple(vars(args)) == cluster.ARGUMENT_NAMES
    assert args.devices is None and args.coordinator_address is None
    assert cluster.setup_from_args(args) is None  # one device, one process
    args = parser.parse_args(
        ["--devices", "all", "--coordinator-address", "10.0.0.1:1234"]
        + ["--num-processes", "2", "--process-id", "1"]
    )
    assert (args.devices, args.num_processes, args.process_id) == ("all", 2, 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--devices", "0"])
    too_many = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"--devices {too_many}"):
        parallel.select_devices(too_many)


def _train_cli(out_dir, *flags, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0"  # as in _env: compiling dominates
    )
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py")]
    cmd += ["--out-dir", str(out_dir), "--no-plots", "--no-progress", *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_train_cli_on_two_devices_matches_one(tmp_path):
    # The main job with --devices 2 logs the same losses as on one device.
    flags = ("--max-steps", "6", "--log-every", "2", "--eval-batch-size", "100")
    one = _train_cli(tmp_path / "one", *flags)
    two = _train_cli(tmp_path / "two", *flags, "--devices", "2", devices=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert len(losses("one")) == 3
    np.testing.assert_allclose(losses("two"), losses("one"), rtol=0, atol=1e-5)


def test_train_cli_rejects_a_batch_that_does_not_divide(tmp_path):
    run = _train_cli(
        tmp_path / "bad", "--devices", "2", "--batch-size", "31", devices=2
    )
    assert run.returncode != 0
    assert "divisible by the 2 devices" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


if __name__ == "__main__":
    _main(sys.argv[1:])


@pytest.mark.parametrize(
    "signalled, signum, codes, service",
    [
        (1, signal.SIGTERM, (143, 143), "true"),  # to a worker: preemption service
        (0, signal.SIGINT, (130, 143), "true"),  # Ctrl-C on the coordinator
        (1, signal.SIGTERM, (143, 143), "false"),  # no service: an all-gather
    ],
)
def test_train_cli_signal_to_one_process_stops_all(
    tmp_path, signalled, signum, codes, service
):
    """A signal to one process of a two-process run stops both at the same step,
    each with a checkpoint; before, the other process trained on (SIGTERM was
    swallowed by jax.distributed's handler) or waited in the all-reduce forever."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["JAX_ENABLE_PREEMPTION_SERVICE"] = service
    env["XLA_FLAGS"] = _env()["XLA_FLAGS"]
    run_dir, port = tmp_path / "run", _free_port()
    procs = []
    for pid in (0, 1):
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py")]
        cmd += ["--out-dir", str(run_dir), "--no-plots", "--no-progress"]
        cmd += ["--epochs", "1000", "--log-every", "1"]
        cmd += ["--coordinator-address", f"127.0.0.1:{port}"]
        cmd += ["--num-processes", "2", "--process-id", str(pid)]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + TIMEOUT_S
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, "the run did not start training"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1]
            time.sleep(0.2)
        procs[signalled].send_signal(signum)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            _kill(p)
    assert tuple(p.returncode for p in procs) == codes, [o[1][-2000:] for o in outs]
    # Which path stopped the run: JAX's notifier logs the SIGTERM it catches.
    caught = "SIGTERM caught" in outs[signalled][1]
    assert caught == (service == "true"), outs[signalled][1][-2000:]
    steps = []
    for pid, (_, err) in enumerate(outs):
        assert "stopped by SIG" in err and f"--out-dir {run_dir} --resume" in err
        ckpt_dir = run_dir / ("process1" if pid else "") / "checkpoints"
        steps.append(max(int(f.stem.split("_")[1]) for f in ckpt_dir.iterdir()))
    assert steps[0] == steps[1] > 0
