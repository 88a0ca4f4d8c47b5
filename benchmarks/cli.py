"""Command line of the benchmark: `python experiments/bench.py [--quick] [--only ...]`.

Sections: "ops" (per-op forward/backward times), "train" (whole train steps),
"memory" (peak RSS per configuration, residual bytes per layer), "layout" (the
VGG-style step and the overlapping max pool in NCHW and NHWC, with and without
XLA:CPU's YNN convolution flag: `benchmarks.layout`) and "layer_stats" (the cost
of `make_train_step(layer_stats=True)`: `benchmarks.layer_stats`) and "peers"
(funcnn's train step against Flax and Equinox: `benchmarks.peers`). Results go to
`--out-dir` as results.json, results.md and bench.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

SECTIONS = ("ops", "train", "memory", "layout", "layer_stats", "peers")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny grid, few repeats")
    p.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable); default: all",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs (20; quick 3)")
    p.add_argument(
        "--train-repeats",
        type=int,
        default=None,
        help="timed train steps (default --repeats)",
    )
    p.add_argument("--out-dir", default="bench_out")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch.set_num_threads; JAX/XLA uses every core it may run on",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument(
        "--torch-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="torch's device; auto: cuda when JAX's backend is a GPU, else cpu. "
        "Torch targets are n/a when torch and JAX run on different hardware",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak for the fraction-of-peak column (known GPUs: built in)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="per subprocess, s")
    p.add_argument("--worker", choices=("torch", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def _worker(args) -> None:
    if args.worker == "torch":
        from benchmarks import torch_side

        torch_side.serve()
        return
    from benchmarks import memory

    print(json.dumps(memory.worker(json.loads(args.spec))))


def _with_torch_fallback(bench, case, repeats, worker, results, log) -> dict:
    """`bench(case, repeats, worker)`; on a torch failure, again without torch."""
    if worker is not None and "torch_error" not in results["meta"]:
        try:
            return bench(case, repeats, worker)
        except RuntimeError as err:
            log(f"torch side failed, continuing without it: {err}")
            results["meta"]["torch_error"] = str(err)
    return bench(case, repeats)


def main(argv=None, script: str | None = None) -> dict:
    args = _parser().parse_args(argv)
    script = script or sys.argv[0]
    if args.worker:
        _worker(args)
        return {}
    import jax

    from benchmarks import cases, jax_side, memory, remote, report, targets

    sections = args.only or list(SECTIONS)
    repeats = args.repeats or (3 if args.quick else 20)
    train_repeats = args.train_repeats or repeats
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            "command": " ".join(
                ["python", "experiments/bench.py", *(argv or sys.argv[1:])]
            ),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "platform": platform.platform(),
            "cpus": len(os.sched_getaffinity(0)),
            "threads": args.threads,
            "repeats": repeats,
            "train_repeats": train_repeats,
            "quick": args.quick,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "loadavg_start": round(os.getloadavg()[0], 2),
            "device": jax.devices()[0].device_kind,
        }
    }
    peak, source = jax_side.peak_tflops(results["meta"]["device"], args.peak_tflops)
    results["meta"].update(peak_tflops=peak, peak_source=source)
    op_cases = cases.op_cases(args.quick) if "ops" in sections else []
    train_cases = cases.train_cases(args.quick) if "train" in sections else []

    def log(msg):
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    torch_device = args.torch_device
    if torch_device == "auto":
        torch_device = remote.torch_device_for(results["meta"]["backend"])
    worker = None
    if (op_cases or train_cases) and not args.no_torch:
        try:
            worker = remote.TorchWorker(script, args.threads, torch_device)
            results["meta"]["torch"] = worker.version
            results["meta"]["torch_device"] = worker.device
            if worker.device_note:
                results["meta"]["torch_device_note"] = worker.device_note
        except RuntimeError as err:
            log(f"no torch side: {err}")
            results["meta"]["torch_error"] = str(err)
    try:
        timed = (
            ("ops", op_cases, jax_side.bench_op, repeats, "name"),
            ("train", train_cases, jax_side.bench_train, train_repeats, "model"),
        )
        for section, section_cases, bench, reps, key in timed:
            if not section_cases:
                continue
            results[section] = {}
            for case in section_cases:
                log(f"{section}: {case[key]}")
                entry = _with_torch_fallback(bench, case, reps, worker, results, log)
                results[section][case[key]] = {"case": case, **entry}
    finally:
        if worker is not None:
            worker.close()
    if "memory" in sections:
        log("memory: residual bytes")
        residuals = {
            c["name"]: jax_side.residual_bytes(c) for c in cases.op_cases(args.quick)
        }
        mem_cases = cases.memory_cases(args.quick)
        if args.no_torch or importlib.util.find_spec("torch") is None:
            mem_cases = [c for c in mem_cases if c["framework"] != "torch"]
        log(f"memory: peak RSS, {len(mem_cases)} subprocesses")
        peak = memory.measure(
            script, mem_cases, args.threads, args.timeout, torch_device
        )
        results["memory"] = {"residuals": residuals, "peak": peak}
    extra = []
    if "layout" in sections:
        from benchmarks import layout

        log("layout: NCHW vs NHWC, YNN flag off/on, in worker processes")
        quick = ["--quick"] if args.quick else []
        reps = [] if args.repeats is None else ["--repeats", str(repeats)]
        results["layout"] = layout.main(quick + reps)
        extra += ["", "## Layout", "", results["layout"]["markdown"]]
    if "layer_stats" in sections:
        from benchmarks import layer_stats

        log("layer_stats: the VGG-style step with and without per-layer statistics")
        quick = ["--quick"] if args.quick else []
        stats = layer_stats.main(quick + ["--repeats", str(train_repeats)])
        results["layer_stats"] = stats
        extra += [
            "",
            "## Per-layer statistics",
            "",
            f"VGG-style step (no BN), plain {stats['plain']['median_ms']:.2f} ms, with "
            f"layer_stats {stats['layer_stats']['median_ms']:.2f} ms: ratio "
            f"{stats['ratio']:.3f} (target <= {layer_stats.TARGET_RATIO}).",
        ]
    if "peers" in sections:
        from benchmarks import peers

        results["peers"] = peers.main(args.quick, train_repeats, log)
        extra += ["", "## Peers", "", results["peers"]["markdown"]]
    results["meta"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    results["targets"] = targets.targets(results)
    text = report.markdown(results) + "\n".join(extra) + ("\n" if extra else "")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(text)
    report.chart(results, str(out_dir / "bench.png"))
    print(text)
    log(f"wrote {out_dir}/results.json, results.md, bench.png")
    return results
