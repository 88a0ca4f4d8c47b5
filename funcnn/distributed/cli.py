"""Command-line flags for scale-out: `--devices` and the multi-process flags.

`add_cli_arguments(parser)` adds the flags; `setup_from_args(args)` starts the
multi-process runtime when asked (`funcnn.distributed.launch`) and returns the mesh for
`funcnn.distributed.data_parallel`, or None for one device in one process.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import jax
from jax.sharding import Mesh

from funcnn.distributed.launch import (
    _ENV_VARS,
    DEFAULT_TIMEOUT_S,
    ENV_COORDINATOR,
    ENV_JAX_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    initialize_distributed,
)
from funcnn.distributed.mesh import make_mesh


def select_devices(spec: str | int | None = None) -> list[Any]:
    """The devices meant by a `--devices` value.

    Args:
        spec: "all" for every (global) device; an int N for N devices, N / P from
            each of the P processes; None for "all" with several processes and 1
            otherwise.

    Returns:
        A list of devices, ordered as `make_mesh` orders them.

    Raises:
        ValueError: if N is not positive, exceeds the devices available, or is not
            divisible by the number of processes.
    """
    nproc = jax.process_count()
    if spec is None:
        spec = "all" if nproc > 1 else 1
    if spec == "all":
        return list(jax.devices())
    n = parse_devices(spec)
    available = jax.device_count()
    if n > available:
        raise ValueError(
            f"select_devices: expected at most the {available} visible devices, got "
            f"--devices {n}. Use --devices all, or make more devices visible "
            "(CUDA_VISIBLE_DEVICES; on CPU XLA_FLAGS="
            f"--xla_force_host_platform_device_count={n})."
        )
    if n % nproc:
        raise ValueError(
            f"select_devices: expected --devices (={n}) to be divisible by the "
            f"number of processes (={nproc}), so that each takes the same share. "
            "Use --devices all or a multiple of the number of processes."
        )
    per_process = n // nproc
    chosen = []
    for p in range(nproc):
        own = sorted(
            (d for d in jax.devices() if d.process_index == p), key=lambda d: d.id
        )
        if len(own) < per_process:
            raise ValueError(
                f"select_devices: expected {per_process} devices in process {p} for "
                f"--devices {n}, but it has {len(own)}. Use --devices all."
            )
        chosen.extend(own[:per_process])
    return chosen


def parse_devices(spec: str | int) -> int:
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise ValueError(
            f"--devices: expected 'all' or a positive int, got {spec!r}."
        ) from None
    if n < 1:
        raise ValueError(f"--devices: expected 'all' or a positive int, got {spec!r}.")
    return n


def _devices_arg(value: str) -> str | int:
    if value == "all":
        return value
    try:
        return parse_devices(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# The argparse dest names of the flags `add_cli_arguments` adds.
ARGUMENT_NAMES = (
    "devices",
    "coordinator_address",
    "num_processes",
    "process_id",
    "distributed",
    "coordinator_timeout",
)


def _seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds > 0, got {value!r}"
        )
    return seconds


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the data-parallel flags to `parser` (returned for chaining).

    --devices {all,N}, --coordinator-address, --num-processes, --process-id,
    --distributed (auto-detect a TPU pod / Slurm / Open MPI cluster) and
    --coordinator-timeout. Read them back with `setup_from_args`.
    """
    group = parser.add_argument_group("data parallelism (funcnn.distributed)")
    group.add_argument(
        "--devices",
        type=_devices_arg,
        default=None,
        metavar="{all,N}",
        help="devices to split each batch over: 'all' visible devices (of every "
        "process) or N (N / P from each of P processes). Default: 1 in a single "
        "process, all with several.",
    )
    group.add_argument(
        "--coordinator-address",
        default=None,
        metavar="HOST:PORT",
        help=f"address of process 0 for a multi-process run (or ${ENV_COORDINATOR} "
        f"/ ${ENV_JAX_COORDINATOR}).",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=f"number of processes (or ${ENV_NUM_PROCESSES}).",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=None,
        help=f"this process's index in [0, num_processes) (or ${ENV_PROCESS_ID}).",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed even without the flags above, letting JAX "
        "detect a Cloud TPU pod, Slurm, Open MPI or Kubernetes cluster.",
    )
    group.add_argument(
        "--coordinator-timeout",
        type=_seconds_arg,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="seconds to wait for the coordinator and the other processes "
        f"(default {DEFAULT_TIMEOUT_S:g}).",
    )
    return parser


def setup_from_args(args: argparse.Namespace) -> Mesh | None:
    """Starts the multi-process runtime if asked, and builds the mesh.

    Call it at the top of `main()`, before any other JAX call.

    Args:
        args: parsed arguments from a parser given to `add_cli_arguments`.

    Returns:
        The data-parallel mesh, or None when the run is one device in one process
        (keep the plain `jax.jit` step then).
    """
    distributed = (
        args.distributed
        or any(
            v is not None
            for v in (args.coordinator_address, args.num_processes, args.process_id)
        )
        or any(os.environ.get(k) for k in _ENV_VARS)
    )
    if distributed:
        initialize_distributed(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            timeout_s=args.coordinator_timeout,
        )
    devices = select_devices(args.devices)
    if len(devices) == 1 and jax.process_count() == 1:
        return None
    return make_mesh(devices)
