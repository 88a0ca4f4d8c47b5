"""Starting several processes on JAX's own runtime (`jax.distributed`).

`initialize_distributed` wraps `jax.distributed.initialize` so that a missing
coordinator or missing peers give a clear error instead of a hang. The command-line
flags that lead here live in `funcnn.distributed.cli`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import cast

import jax

# Environment variables read by `initialize_distributed` when an argument is None.
# JAX itself also reads JAX_COORDINATOR_ADDRESS (used when FUNCNN_... is unset) and
# JAX_LOCAL_DEVICE_IDS, and detects TPU pods, Slurm, Open MPI and Kubernetes.
ENV_COORDINATOR = "FUNCNN_COORDINATOR_ADDRESS"
ENV_JAX_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FUNCNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FUNCNN_PROCESS_ID"
_ENV_VARS = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)

DEFAULT_TIMEOUT_S = 300.0  # jax.distributed.initialize's own default


# -------------------------------------------------------------- several processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"initialize_distributed: expected an int in ${name}, got {value!r}."
        ) from None


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"initialize_distributed: expected a coordinator address 'host:port' "
            f"(e.g. 10.0.0.1:1234), got {address!r}."
        )
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls the coordinator's TCP port until it accepts or `timeout_s` passes.

    JAX aborts the whole process (uncatchably, from C++) when its own connection
    attempt times out, so this check runs first and raises a catchable error.
    """
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"initialize_distributed: could not reach the coordinator at "
                    f"{address} within {timeout_s:g} s ({err}). Start process 0 "
                    "with the same --coordinator-address (it hosts the coordinator), "
                    "check the host, port and firewall, or raise the timeout."
                ) from None
            time.sleep(0.25)


def _check_port_free(address: str) -> None:
    # JAX binds the coordinator to [::]:port; fall back to IPv4 without IPv6.
    _, port = _split_address(address)
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        bind = "::"
    except OSError:
        sock, bind = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ""
    try:
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
    except OSError as err:
        raise RuntimeError(
            f"initialize_distributed: process 0 cannot host the coordinator at "
            f"{address}: port {port} is not free ({err}). Pick another port."
        ) from None


def _ensure_cpu_collectives() -> None:
    # Cross-process collectives on CPU need an implementation; JAX 0.10 defaults
    # to gloo, older versions to none. Leave an explicit choice (e.g. mpi) alone.
    name = "jax_cpu_collectives_implementation"
    if getattr(jax.config, name, "unknown") is None:
        jax.config.update(name, "gloo")


def _watchdog(who: str, address: str, timeout_s: float) -> threading.Timer:
    """A timer that ends the process with a clear message if JAX's connect hangs."""

    def fire():
        sys.stderr.write(
            f"initialize_distributed: {who} did not finish connecting to the "
            f"coordinator at {address} within {timeout_s:g} s: the other processes "
            "did not all join. Check that every process was started with the same "
            "coordinator address and number of processes and a distinct process "
            "id, or raise the timeout. Exiting.\n"
        )
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    return timer


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    Call it first, before any other JAX call. Arguments left None are read from
    $FUNCNN_COORDINATOR_ADDRESS (else $JAX_COORDINATOR_ADDRESS),
    $FUNCNN_NUM_PROCESSES and $FUNCNN_PROCESS_ID. If all three are still unset,
    JAX detects them itself on Cloud TPU, Slurm, Open MPI and Kubernetes. On CPU
    the gloo collectives are selected when none are.

    A run that cannot start fails instead of hanging: a process other than 0
    raises TimeoutError if the coordinator's port does not accept within
    `timeout_s`; if the processes do not all join within `timeout_s`, a watchdog
    prints the reason and exits the process with status 1 (JAX would otherwise
    abort it from C++ with DEADLINE_EXCEEDED, which Python cannot catch).

    Args:
        coordinator_address: "host:port" of process 0, which hosts the coordinator.
        num_processes: the number of processes P.
        process_id: this process's index in [0, P).
        local_device_ids: restrict this process to these local devices (GPUs).
        timeout_s: seconds to wait for the coordinator and the other processes.

    Returns:
        True if the distributed runtime was started; False for a single process
        (P == 1) or if it was already initialised.

    Raises:
        ValueError: for missing or inconsistent arguments.
        TimeoutError: if the coordinator cannot be reached within `timeout_s`.
        RuntimeError: if process 0 cannot bind the coordinator's port, or JAX was
            already used in this process.
    """
    func = "initialize_distributed"
    if jax.distributed.is_initialized():
        return False
    address = (
        coordinator_address
        or os.environ.get(ENV_COORDINATOR)
        or os.environ.get(ENV_JAX_COORDINATOR)
    )
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if not timeout_s > 0:
        raise ValueError(f"{func}: expected timeout_s > 0, got {timeout_s!r}.")
    _ensure_cpu_collectives()

    given = {
        "coordinator_address": address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in given.values()):
        watchdog = _watchdog("this process", "(auto-detected)", timeout_s)
        watchdog.start()
        try:
            jax.distributed.initialize(
                local_device_ids=local_device_ids,
                initialization_timeout=int(timeout_s) + 15,
            )
        except ValueError as err:
            raise ValueError(
                f"{func}: expected a coordinator address, number of processes and "
                f"process id, got none, and JAX detected no cluster (TPU, Slurm, "
                f"Open MPI, Kubernetes) to read them from ({err}). Pass "
                "--coordinator-address, --num-processes and --process-id, or set "
                f"${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID}."
            ) from None
        finally:
            watchdog.cancel()
        return True
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{func}: expected coordinator_address, num_processes and process_id "
            f"together, got {given}. Also set {', '.join(missing)} (flags "
            f"--coordinator-address/--num-processes/--process-id or ${ENV_COORDINATOR}"
            f"/${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID})."
        )
    # All three are given (checked above); the casts only tell the type checker.
    address = cast(str, address)
    num_processes, process_id = cast(int, num_processes), cast(int, process_id)
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"{func}: expected num_processes >= 1 and 0 <= process_id < "
            f"num_processes, got num_processes={num_processes}, "
            f"process_id={process_id}."
        )
    _split_address(address)
    if num_processes == 1:
        return False
    if process_id == 0:
        _check_port_free(address)
    else:
        _wait_for_coordinator(address, timeout_s)
    watchdog = _watchdog(f"process {process_id} of {num_processes}", address, timeout_s)
    watchdog.start()
    try:
        # JAX gets a little longer than the watchdog, so that the watchdog's clear
        # message comes first.
        jax.distributed.initialize(
            address,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=int(timeout_s) + 15,
        )
    finally:
        watchdog.cancel()
    return True
