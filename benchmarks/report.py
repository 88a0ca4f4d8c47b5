"""Markdown tables of the measurements and the targets (`benchmarks.targets`
judges them), and a chart."""

from __future__ import annotations

from benchmarks.targets import LEVEL, torch_comparable


def _ms(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median_ms']:.2f} ({stats['iqr_ms']:.2f})"


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b:
        return None
    return a["median_ms"] / b["median_ms"]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _times(entry: dict, side: str) -> dict:
    return (entry.get(side) or {}).get("times", {})


def ops_table(ops: dict) -> list[str]:
    lines = [
        "| case | part | custom ms (IQR) | autodiff ms (IQR) | torch ms (IQR) "
        "| custom/autodiff | custom/torch | compile custom/autodiff s "
        "| same program |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in ops.items():
        jt, tt = _times(entry, "jax"), _times(entry, "torch")
        compile_s = entry.get("jax", {}).get("compile_s", {})
        same = entry.get("jax", {}).get("same_program")
        for part in entry["case"]["parts"]:
            c, a = jt.get(f"{part}/custom"), jt.get(f"{part}/autodiff")
            t = tt.get(f"{part}/torch")
            cc, ca = compile_s.get(f"{part}/custom"), compile_s.get(f"{part}/autodiff")
            comp = f"{_fmt(cc)} / {_fmt(ca)}" if cc is not None else "-"
            flag = "-" if part != "fwdbwd" or same is None else "yes" if same else "no"
            lines.append(
                f"| {name} | {part} | {_ms(c)} | {_ms(a)} | {_ms(t)} "
                f"| {_fmt(_ratio(c, a))} | {_fmt(_ratio(c, t))} | {comp} | {flag} |"
            )
    return lines


def train_table(train: dict) -> list[str]:
    lines = [
        "| model | input | custom ms (IQR) | autodiff ms (IQR) | torch ms (IQR) "
        "| custom img/s | autodiff img/s | torch img/s | custom/autodiff "
        "| custom/torch | compile custom/autodiff s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in train.items():
        jt, tt = _times(entry, "jax"), _times(entry, "torch")
        c, a, t = jt.get("custom"), jt.get("autodiff"), tt.get("torch")
        compile_s = entry.get("jax", {}).get("compile_s", {})
        ips = [_fmt(s and s.get("images_per_s"), ".0f") for s in (c, a, t)]
        comp = f"{_fmt(compile_s.get('custom'))} / {_fmt(compile_s.get('autodiff'))}"
        shape = "x".join(str(d) for d in entry["case"]["input"])
        lines.append(
            f"| {name} | {shape} | {_ms(c)} | {_ms(a)} | {_ms(t)} | {ips[0]} "
            f"| {ips[1]} | {ips[2]} | {_fmt(_ratio(c, a))} | {_fmt(_ratio(c, t))} "
            f"| {comp} |"
        )
    return lines


def compute_table(train: dict, meta: dict) -> list[str]:
    """Achieved FLOP/s of each train step (XLA-counted FLOPs / median time)."""
    peak = meta.get("peak_tflops")
    lines = [
        f"FLOPs per step as XLA's cost analysis counts them on the compiled step. "
        f"Peak: {_fmt(peak, '.1f')} TFLOP/s ({meta.get('peak_source', '?')}).",
        "",
        "| model | grad | GFLOP per step | achieved TFLOP/s | fraction of peak |",
        "|---|---|---|---|---|",
    ]
    for name, entry in train.items():
        flops = entry.get("jax", {}).get("flops", {})
        for grad, stats in _times(entry, "jax").items():
            rate = stats.get("tflops_per_s")
            gflop = flops.get(grad) and flops[grad] / 1e9
            frac = rate / peak if rate and peak else None
            lines.append(
                f"| {name} | {grad} | {_fmt(gflop, '.2f')} | {_fmt(rate, '.4f')} "
                f"| {_fmt(frac and 100 * frac, '.2f')}{'%' if frac else ''} |"
            )
    return lines


def memory_tables(memory: dict) -> list[str]:
    lines = []
    if memory.get("peak"):
        lines += [
            "RSS in MB (module doc of `benchmarks.memory`): before = after setup; "
            "compile = peak during compilation over before; baseline = after one "
            "warm-up step; step = peak of the timed steps over baseline.",
            "",
            "| model | framework | grad | device | before | compile | baseline "
            "| step peak | step | device peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in memory["peak"]:
            head = f"| {row['model']} | {row['framework']} | {row['grad']} "
            if "error" in row:
                lines.append(head + f"| error: {row['error'][:80]!r} | | | | | | |")
                continue
            cells = [
                _fmt(row.get(k), ".0f")
                for k in ("before_mb", "compile_mb", "baseline_mb", "peak_mb")
            ]
            cells += [_fmt(row.get("step_mb"), ".0f")]
            cells += [_fmt(row.get("device_peak_mb"), ".0f")]
            lines.append(
                head + f"| {row.get('device', '?')} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    if memory.get("residuals"):
        lines += [
            "| case | custom residual bytes (not inputs) | autodiff residual bytes "
            "(not inputs) | custom leaves | autodiff leaves |",
            "|---|---|---|---|---|",
        ]
        for name, res in memory["residuals"].items():
            c, a = res["custom"], res["autodiff"]
            lines.append(
                f"| {name} | {c['total_bytes']:,} ({c['new_bytes']:,}) "
                f"| {a['total_bytes']:,} ({a['new_bytes']:,}) "
                f"| {' '.join(c['leaves'])} | {' '.join(a['leaves'])} |"
            )
    return lines


def targets_table(rows: list[dict]) -> list[str]:
    lines = [
        f"| target | measured | threshold | {LEVEL:.0%} interval | result | reason |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        interval = row.get("interval")
        span = "-" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(
            f"| {row['target']} | {_fmt(row['value'], '.3f')} | {row['threshold']} "
            f"| {span} | {row['result']} | {row['reason'] or '-'} |"
        )
    return lines


def _torch_line(meta: dict) -> list[str]:
    """What the torch side ran on, or why it did not run."""
    lines = []
    if "torch" in meta:
        device = meta.get("torch_device", "cpu")
        note = meta.get("torch_device_note")
        lines.append(
            f"PyTorch {meta['torch']} on {device}"
            + (f" ({note})" if note else "")
            + "."
        )
    if "torch_error" in meta:
        lines.append(f"**torch_error**: `{meta['torch_error'][-500:]}`")
    comparable, why_not = torch_comparable(meta)
    if "torch" in meta and not comparable:
        lines.append(f"Torch targets are n/a: {why_not}.")
    return [" ".join(lines), ""] if lines else []


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# funcnn benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"jax {meta['jax']} ({meta['backend']}: {meta.get('device', '?')}), torch "
        f"{meta.get('torch', 'absent')}, "
        f"{meta['cpus']} CPUs, torch threads {meta['threads']}, repeats "
        f"{meta['repeats']}, load average {meta['loadavg_start']} -> "
        f"{meta.get('loadavg_end', '?')}, XLA_FLAGS={meta['xla_flags']!r}"
        + (" (quick grid: ratios not meaningful)" if meta["quick"] else ""),
        "",
        *_torch_line(meta),
        "Times are medians in ms with the inter-quartile range in brackets. All "
        "variants of a row run round-robin; torch runs in a worker subprocess, one "
        "request per iteration, timed inside the worker (device synchronized "
        "around it). Same program: custom and autodiff fwd+bwd compile to the same "
        "optimized HLO, names, ids and metadata aside.",
        "",
    ]
    if results.get("ops"):
        lines += ["## Ops", ""] + ops_table(results["ops"]) + [""]
    if results.get("train"):
        lines += ["## Train step", ""] + train_table(results["train"]) + [""]
        lines += ["## Compute", ""] + compute_table(results["train"], meta) + [""]
    if results.get("memory"):
        lines += ["## Memory", ""] + memory_tables(results["memory"]) + [""]
    lines += ["## Targets", "", TARGETS_NOTE, ""]
    lines += targets_table(results["targets"]) + [""]
    return "\n".join(lines)


TARGETS_NOTE = (
    f"PASS: the median ratio and its whole {LEVEL:.0%} bootstrap interval (pairs of "
    "round-robin repeats resampled) meet the threshold. FAIL: both miss it. "
    "inconclusive: the interval straddles it. n/a (identical programs): both modes "
    "compile to the same optimized HLO, so the ratio is noise. n/a: not measured, "
    "or torch absent or on another backend than JAX."
)


_SERIES = (("custom", "tab:blue"), ("autodiff", "tab:orange"), ("torch", "tab:green"))


def _grouped_bars(ax, entries: dict, part: str, stat: str, horizontal: bool) -> list:
    """One bar per series for each entry; `part` prefixes the timing key ("fwdbwd/"
    for ops). Returns the entry names (the tick labels)."""
    import numpy as np

    names = list(entries)
    slots = np.arange(len(names))
    for i, (label, color) in enumerate(_SERIES):
        side = "torch" if label == "torch" else "jax"
        key = f"{part}{label}"
        vals = [(_times(entries[n], side).get(key) or {}).get(stat, 0) for n in names]
        bars = ax.barh if horizontal else ax.bar
        bars(slots + (i - 1) * 0.27, vals, 0.27, label=label, color=color)
    if names:  # a section that did not run has no bars (nor a log scale)
        ax.legend()
    return names


def chart(results: dict, path: str) -> None:
    """Bar chart: op fwd+bwd times (left) and train-step throughput (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    names = _grouped_bars(left, results.get("ops", {}), "fwdbwd/", "median_ms", True)
    left.set_yticks(np.arange(len(names)), names, fontsize=7)
    left.invert_yaxis()
    if names:
        left.set_xscale("log")  # the cases span two orders of magnitude
    left.set_xlabel("forward + backward, median ms, log scale (lower is better)")
    left.set_title("Ops" if names else "Ops (not run)")
    models = _grouped_bars(right, results.get("train", {}), "", "images_per_s", False)
    right.set_xticks(np.arange(len(models)), models)
    right.set_ylabel("train step, images/s (higher is better)")
    right.set_title("Train step" if models else "Train step (not run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
