"""Data parallelism on JAX's own SPMD runtime: one train step over a device mesh.

The mesh is one axis, `"data"`, over every device taking part, in all processes.
`data_parallel(step, mesh)` jits a pure `step(state, batch) -> (state, metrics)`
with the batch split along its leading axis N over that axis and everything else
(params, model state, optimizer state, step, key) replicated. Nothing here
communicates by hand: the step still computes a mean loss over the *logical*
global batch, and XLA's SPMD partitioner inserts the all-reduces that make

- the gradient the mean over the global batch (the same as one device would get),
- BatchNorm's batch mean and variance the statistics of the global batch,

so the custom backward rules in `funcnn.ops` run unchanged on every shard.

Several processes (one per host, or per GPU): call
`funcnn.distributed.initialize_distributed` first,
before any other JAX call; every process then runs the same program. Process p of
P owns the *contiguous* examples `[p * N // P, (p + 1) * N // P)` of each global
batch (`process_local_batch`). Feed either the whole global batch, the same in
every process, to the step (each keeps its part), or only this process's part
through `shard_batch`, which assembles the global array from the parts.

Starting several processes, and the command-line flags for all this, live in
`funcnn.distributed.launch` and `funcnn.distributed.cli`.

"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


# ----------------------------------------------------------------------------- mesh


def make_mesh(devices: Sequence[Any] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over `devices` (all global devices by default).

    Devices are ordered by (process index, device id), so the devices of process p
    are one contiguous block of the mesh and hold one contiguous block of the batch.

    Args:
        devices: the devices to use, from every process; default `jax.devices()`.
        axis_name: the name of the batch axis.

    Returns:
        A `jax.sharding.Mesh` of shape `{axis_name: len(devices)}`.

    Raises:
        ValueError: for no devices, or a device listed twice.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: expected at least one device, got none.")
    if len(set(devices)) != len(devices):
        raise ValueError(f"make_mesh: expected distinct devices, got {devices}.")
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (axis_name,))


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"data_parallel: expected a one-axis mesh, got axes {mesh.axis_names}. "
            "Build it with funcnn.distributed.make_mesh."
        )
    return mesh.axis_names[0]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading axis N split over the mesh axis."""
    return NamedSharding(mesh, P(_axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of state and metrics: a full copy on every device."""
    return NamedSharding(mesh, P())


# ------------------------------------------------------------------ placing arrays


def _leading_size(func: str, batch) -> int:
    shapes = [np.shape(leaf) for leaf in jax.tree.leaves(batch)]
    sizes = {shape[0] for shape in shapes if shape}
    if not shapes or len(sizes) != 1 or not all(shapes):
        raise ValueError(
            f"{func}: expected batch arrays sharing a leading axis N, got shapes "
            f"{shapes}."
        )
    return int(sizes.pop())


def check_batch(batch, mesh: Mesh, *, func: str = "data_parallel") -> int:
    """Checks a global batch against the mesh, eagerly (before any tracing).

    Args:
        batch: a pytree of arrays `(N, ...)`, e.g. `(x, y)`, or the int N itself
            (to check a `--batch-size` before training starts).
        mesh: the data-parallel mesh.
        func: the name to put in error messages.

    Returns:
        The global batch size N.

    Raises:
        ValueError: if the leading axes disagree, or N is not divisible by the
            number of devices on the mesh axis.
    """
    if isinstance(batch, int) and not isinstance(batch, bool):
        n = batch
    else:
        n = _leading_size(func, batch)
    devices = mesh.shape[_axis(mesh)]
    if n % devices:
        lower, upper = n // devices * devices, -(-n // devices) * devices
        raise ValueError(
            f"{func}: expected a global batch size divisible by the {devices} "
            f"devices on mesh axis {_axis(mesh)!r}, got batch size {n}. Use a batch "
            f"size that is a multiple of {devices} (e.g. {upper}"
            f"{f' or {lower}' if lower else ''}), drop the last partial batch, or "
            "run on fewer devices (--devices)."
        )
    return n


def shard_batch(batch, mesh: Mesh):
    """Places a batch on the mesh, split along its leading axis.

    Args:
        batch: a pytree of host arrays `(n, ...)`. With one process this is the
            global batch (n = N); with several, this process's contiguous part of
            it (n = N * local devices / mesh devices, see `process_local_batch`).
        mesh: the data-parallel mesh.

    Returns:
        The same pytree of global `jax.Array`s of shape `(N, ...)`, sharded with
        `batch_sharding(mesh)`.

    Raises:
        ValueError: if N is not divisible by the number of devices, or this
            process has no device on the mesh.
    """
    func = "shard_batch"
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        check_batch(batch, mesh, func=func)
        return jax.device_put(batch, sharding)
    n_local = _leading_size(func, batch)
    local = _local_devices(func, mesh)
    if n_local % local:
        raise ValueError(
            f"{func}: expected this process's part of the batch to be divisible by "
            f"its {local} devices on the mesh, got {n_local} examples. Use a global "
            f"batch size that is a multiple of the {mesh.size} devices."
        )
    n_global = n_local // local * mesh.size

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(
            sharding, a, (n_global,) + a.shape[1:]
        )

    return jax.tree.map(put, batch)


def _local_devices(func: str, mesh: Mesh) -> int:
    me = jax.process_index()
    flags = [d.process_index == me for d in mesh.devices.flat]
    local = sum(flags)
    if not local:
        raise ValueError(
            f"{func}: expected process {me} to own devices on the mesh, got none. "
            "Build the mesh with make_mesh() over jax.devices() in every process."
        )
    first = flags.index(True)
    if not all(flags[first : first + local]):
        raise ValueError(
            f"{func}: expected the devices of process {me} to be contiguous on the "
            "mesh. Build the mesh with funcnn.distributed.make_mesh."
        )
    return local


def process_local_batch(batch, mesh: Mesh):
    """This process's contiguous part of a global batch every process holds.

    With P processes each owning the same number of mesh devices, process p gets
    examples `[p * N // P, (p + 1) * N // P)`. Feed the result to `shard_batch`.
    With one process this returns the batch unchanged.

    Args:
        batch: a pytree of host arrays `(N, ...)`, the same in every process (for
            example from `funcnn.data.batches` with the same seed).
        mesh: the data-parallel mesh from `make_mesh`.

    Returns:
        The pytree sliced to `(n, ...)`, n = N * local devices / mesh devices.

    Raises:
        ValueError: if N is not divisible by the number of mesh devices.
    """
    func = "process_local_batch"
    n = check_batch(batch, mesh, func=func)
    if jax.process_count() == 1:
        return batch
    local = _local_devices(func, mesh)
    me = jax.process_index()
    first = [d.process_index for d in mesh.devices.flat].index(me)
    per_device = n // mesh.size
    lo, hi = first * per_device, (first + local) * per_device
    return jax.tree.map(lambda a: a[lo:hi], batch)


def replicate(tree, mesh: Mesh):
    """Places a full copy of every array of `tree` on every mesh device.

    With several processes every process must pass the same values (for example
    state from `create_train_state` with the same seed); PRNG key arrays are kept.

    Args:
        tree: a pytree of arrays, such as a TrainState.
        mesh: the data-parallel mesh.

    Returns:
        The pytree of global `jax.Array`s with `replicated_sharding(mesh)`.
    """
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        if isinstance(leaf, jax.Array) and jnp.issubdtype(
            leaf.dtype, jax.dtypes.prng_key
        ):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        a = np.asarray(leaf)
        return jax.make_array_from_process_local_data(sharding, a, a.shape)

    return jax.tree.map(put, tree)


def _placed(tree, sharding: NamedSharding) -> bool:
    return all(
        isinstance(leaf, jax.Array) and leaf.sharding == sharding
        for leaf in jax.tree.leaves(tree)
    )


def any_process(flag: bool) -> bool:
    """True in every process if `flag` is True in any process.

    Every process must call it at the same point (it is a collective with several
    processes). Use it to stop a multi-process run together, e.g. after a signal
    reached only some processes; otherwise the others wait forever in the next
    step's all-reduce.
    """
    if jax.process_count() == 1:
        return bool(flag)
    # Lazy: the multi-process runtime loads only in a multi-process run.
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array(bool(flag)))
    return bool(np.any(flags))


# ------------------------------------------------------------------- the train step


def data_parallel(
    step_fn: Callable[[Any, Any], Any], mesh: Mesh, *, donate: bool = True
) -> Callable[[Any, Any], Any]:
    """Jits a pure `step_fn(state, batch)` as one SPMD program over the mesh.

    Inputs: `state` replicated, every leaf of `batch` split along its leading axis
    N over the mesh axis. Outputs: all replicated, so `(state, metrics)` from a
    train step, or `metrics` from an evaluation step, come back whole on every
    device. The step must reduce over the batch with means over the logical
    array (as `funcnn.make_train_step`'s steps do); XLA turns those into cross-device
    all-reduces, so gradients and BatchNorm statistics are over the global batch.

    The returned function checks the batch eagerly (`check_batch`) and then calls
    the jitted step; the jitted function itself is its `.jitted` attribute.

    Args:
        step_fn: pure `(state, batch) -> outputs`, e.g. from
            `funcnn.make_train_step(..., jit=False)`.
        mesh: a one-axis mesh from `make_mesh`.
        donate: donate the input state's buffers to the output state (the caller
            must not use the old state afterwards). Use False for evaluation.

    Returns:
        `step(state, batch) -> outputs`. State not yet replicated is replicated
        (`replicate`). The batch is either global `jax.Array`s from
        `shard_batch`, or any other arrays holding the whole global batch, which
        are then split for you: with several processes every process must pass
        the same global batch and keeps only its part (`process_local_batch`).

    Raises:
        ValueError: (from the returned step) if the global batch size is not
            divisible by the number of devices.
    """
    replicated = replicated_sharding(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(replicated, batch_sharding(mesh)),
        out_shardings=replicated,
        donate_argnums=(0,) if donate else (),
    )

    sharded = batch_sharding(mesh)

    @functools.wraps(step_fn)
    def step(state, batch):
        check_batch(batch, mesh)
        # jit refuses arrays committed elsewhere, so place them first; after the
        # first step the state comes back replicated and this is a no-op.
        if not _placed(state, replicated):
            state = replicate(state, mesh)
        if not _placed(batch, sharded):
            # Host arrays are the global batch, the same in every process.
            batch = shard_batch(process_local_batch(batch, mesh), mesh)
        return jitted(state, batch)

    step.jitted = jitted  # type: ignore[attr-defined]
    return step
