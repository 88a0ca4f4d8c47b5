"""Markdown tables, PASS/FAIL targets computed from the measurements, and a chart."""

from __future__ import annotations

from benchmarks.cases import HEADLINE_MAXPOOL


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
        "| custom/autodiff | custom/torch | compile custom/autodiff s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in ops.items():
        jt, tt = _times(entry, "jax"), _times(entry, "torch")
        compile_s = entry.get("jax", {}).get("compile_s", {})
        for part in entry["case"]["parts"]:
            c, a = jt.get(f"{part}/custom"), jt.get(f"{part}/autodiff")
            t = tt.get(f"{part}/torch")
            cc, ca = compile_s.get(f"{part}/custom"), compile_s.get(f"{part}/autodiff")
            comp = f"{_fmt(cc)} / {_fmt(ca)}" if cc is not None else "-"
            lines.append(
                f"| {name} | {part} | {_ms(c)} | {_ms(a)} | {_ms(t)} "
                f"| {_fmt(_ratio(c, a))} | {_fmt(_ratio(c, t))} | {comp} |"
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
            "| model | framework | grad | baseline RSS MB | peak RSS MB | delta MB |",
            "|---|---|---|---|---|---|",
        ]
        for row in memory["peak"]:
            if "error" in row:
                lines.append(
                    f"| {row['model']} | {row['framework']} | {row['grad']} "
                    f"| error: {row['error'][:80]!r} | | |"
                )
                continue
            lines.append(
                f"| {row['model']} | {row['framework']} | {row['grad']} "
                f"| {row['baseline_mb']:.0f} | {row['peak_mb']:.0f} "
                f"| {row['delta_mb']:.0f} |"
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


# ---------------------------------------------------------------------- targets


TIE = 0.05  # relative slack for a tie, used only when the IQRs overlap


def _target(name, value, threshold, ok, detail=""):
    return {
        "target": name,
        "value": value,
        "threshold": threshold,
        "result": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
        "detail": detail,
    }


def _overlap(a: dict, b: dict) -> bool:
    return a["q1_ms"] <= b["q3_ms"] and b["q1_ms"] <= a["q3_ms"]


def targets(results: dict) -> list[dict]:
    """The issue's targets, each computed from this run's medians (never constants).

    "No slower" passes at a ratio <= 1, and also as a tie when the two
    inter-quartile ranges overlap and the ratio is within `TIE` of 1. A conv case
    whose two modes compile to the same convolutions (compared on the compiled
    programs) is not slower by construction: its ratio is timing noise, and it is
    reported as such.
    """
    out = []
    ops, train = results.get("ops", {}), results.get("train", {})
    pools = [n for n, e in ops.items() if e["case"]["op"] == "max_pool2d"]
    headline = HEADLINE_MAXPOOL if HEADLINE_MAXPOOL in ops else (pools or [None])[0]
    if headline is not None:
        jt = _times(ops[headline], "jax")
        c, a = jt.get("bwd/custom"), jt.get("bwd/autodiff")
        r = _ratio(a, c)
        out.append(
            _target(
                f"max pool backward speed-up autodiff/custom [{headline}]",
                r,
                ">= 4",
                None if r is None else r >= 4,
            )
        )
    for name, entry in ops.items():
        if entry["case"]["op"] not in ("avg_pool2d", "conv2d"):
            continue
        jt = _times(entry, "jax")
        c, a = jt.get("fwdbwd/custom"), jt.get("fwdbwd/autodiff")
        r = _ratio(c, a)
        ok, detail = None if r is None else r <= 1.0, ""
        if ok is False and entry["jax"].get("same_convolutions"):
            ok, detail = True, "same compiled convolutions in both modes: noise"
        elif ok is False and _overlap(c, a):
            ok = r <= 1.0 + TIE
            detail = f"tie: IQRs overlap{'' if ok else f', but over {1 + TIE}'}"
        out.append(
            _target(f"fwd+bwd custom/autodiff [{name}]", r, "<= 1.0", ok, detail)
        )
    for model, label in (("vgg", "VGG (BN)"), ("vgg_nobn", "VGG issue model (no BN)")):
        if model not in train:
            continue
        jt, tt = _times(train[model], "jax"), _times(train[model], "torch")
        r = _ratio(jt.get("custom"), jt.get("autodiff"))
        out.append(_target(f"{label} step custom/autodiff", r, "<= 0.8", _le(r, 0.8)))
        r = _ratio(jt.get("custom"), tt.get("torch"))
        out.append(_target(f"{label} step custom/torch", r, "<= 1.0", _le(r, 1.0)))
    if "lenet" in train:
        jt, tt = _times(train["lenet"], "jax"), _times(train["lenet"], "torch")
        r = _ratio(jt.get("custom"), tt.get("torch"))
        out.append(_target("LeNet-5 step custom/torch", r, "<= 0.8", _le(r, 0.8)))
    return out


def _le(r, bound):
    return None if r is None else r <= bound


def targets_table(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | threshold | result |", "|---|---|---|---|"]
    for row in rows:
        detail = f" ({row['detail']})" if row["detail"] else ""
        lines.append(
            f"| {row['target']} | {_fmt(row['value'])} | {row['threshold']} "
            f"| {row['result']}{detail} |"
        )
    return lines


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
        "Times are medians in ms with the inter-quartile range in brackets. All "
        "variants of a row run round-robin; torch runs in a worker subprocess, one "
        "request per iteration, timed inside the worker.",
        "",
    ]
    if results.get("ops"):
        lines += ["## Ops", ""] + ops_table(results["ops"]) + [""]
    if results.get("train"):
        lines += ["## Train step", ""] + train_table(results["train"]) + [""]
        lines += ["## Compute", ""] + compute_table(results["train"], meta) + [""]
    if results.get("memory"):
        lines += ["## Memory", ""] + memory_tables(results["memory"]) + [""]
    lines += ["## Targets", ""] + targets_table(results["targets"]) + [""]
    return "\n".join(lines)


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
