"""results.json and results.md of a sweep, from the run records of `lab.sweep`.

Test error is `100 * (1 - accuracy)` on the test set after the last epoch; the
spread is the sample standard deviation over seeds (ddof=1). Seconds per epoch
count training steps only (no compilation, evaluation or checkpoints). Angles
are in degrees, measured on one batch after the last epoch, mean over seeds:
"grad" between the rule's and the exact parameter gradient, "delta" between
the deltas at the layer's input, and, where the rule logs them, "weight"
between W and its feedback weights B and "norm_ratio" = |B| / |W|.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import jax
import numpy as np

from funcnn.data import num_batches
from lab.runs import jsonable, whole_step
from lab.tasks import BIOTORCH, TARGETS

KINDS = {  # metric prefix -> the row label in results.md
    "align_grad/": "gradient angle",
    "align_delta/": "delta angle",
    "align_weight/": "W-B angle",
    "norm_ratio/": "‖B‖ / ‖W‖",
}


def machine() -> dict:
    """Where the sweep ran: CPU or accelerator, cores, versions, date."""
    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": f"{device.platform}: {getattr(device, 'device_kind', '?')}",
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def _mean(values) -> float | None:
    """The mean of the values that are numbers, None when none is."""
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "per_seed": arr.tolist()}


def _error(record: dict) -> float:
    accuracy = record["eval_accuracy"]
    return 100.0 * (1.0 - (accuracy if accuracy is not None else 0.0))


def _cost(records: list[dict]) -> dict:
    """What the runs took, compiling included, as the call that finished each
    one measured it (a resumed run counts its last call only)."""
    return {
        "runs": len(records),
        "wall_seconds": sum(r.get("wall_seconds") or 0.0 for r in records),
        "cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in records),
    }


def _summary(rule: str, entry: dict, train_images: int) -> dict:
    final = entry["final"]
    epochs, batch = final[0]["epochs"], final[0]["batch_size"]
    candidates: dict[tuple, list[dict]] = {}
    for r in entry["selection"]:
        candidates.setdefault((r["optimizer"], r["lr"]), []).append(r)
    validation = [
        {
            "optimizer": opt,
            "lr": lr,
            "accuracy": float(np.mean([100 * (r["eval_accuracy"] or 0) for r in rs])),
            "diverged": any(r["status"] != "completed" for r in rs),
        }
        for (opt, lr), rs in candidates.items()
    ]
    keys = sorted({k for r in final for k in r["final_angles"]})
    angles = {k: _mean(r["final_angles"].get(k) for r in final) for k in keys}
    curve_keys = sorted({k for r in final for p in r["curve"] for k in p} - {"epoch"})
    curves = {k: [[p.get(k) for p in r["curve"]] for r in final] for k in curve_keys}
    # The angles per epoch were measured before its first update; the final ones
    # after the last epoch close each curve: point e is after e epochs.
    for k, per_seed in curves.items():
        if k.startswith(tuple(KINDS)):
            for values, r in zip(per_seed, final):
                values.append(r["final_angles"].get(k))
    return {
        "chosen": {"optimizer": entry["chosen"][0], "lr": entry["chosen"][1]},
        # The rule whose selection runs chose it ("forward_gradient" for
        # "forward_gradient_5x"); they ran `epochs / factor` epochs.
        "selected_as": entry.get("selected_as"),
        "epochs": epochs,
        "steps": epochs * num_batches(train_images, batch),
        "whole_step": whole_step(rule),  # no backward pass: no angles
        "validation": validation,
        "test_error": _stats([_error(r) for r in final]),
        "seeds": [r["seed"] for r in final],
        "diverged_seeds": [r["seed"] for r in final if r["status"] != "completed"],
        "seconds_per_epoch": _mean(r["seconds_per_epoch"] for r in final),
        "step_time": entry.get("step_time"),
        "cost": _cost(final + entry["selection"]),
        "final_angles": angles,
        "curves": curves,
    }


def summarise(results: dict, tasks: dict, sizes: dict) -> dict:
    """The content of results.json.

    Args:
        results: `run_sweep`'s results.
        tasks: dataset -> its `Task`.
        sizes: dataset -> (training images, test images).
    """
    out = {"machine": machine(), "command": " ".join(sys.argv), "datasets": {}}
    every = [r for by_rule in results.values() for e in by_rule.values()
             for r in e["final"] + e["selection"]]  # fmt: skip
    out["cost"] = _cost(every)
    for dataset, by_rule in results.items():
        if not by_rule:
            continue
        task = tasks[dataset]
        out["datasets"][dataset] = {
            "task": {**vars(task), "lrs": list(task.lrs)},
            "train_images": sizes[dataset][0],
            "test_images": sizes[dataset][1],
            "biotorch": BIOTORCH.get(dataset),
            "targets": TARGETS.get(dataset),
            "rules": {
                rule: _summary(rule, entry, sizes[dataset][0])
                for rule, entry in by_rule.items()
            },
        }
    return out


def write_json(summary: dict, path) -> None:
    """Writes `summary` as strict JSON: a NaN (an angle of a diverged layer, a
    time never measured) becomes null."""
    path.write_text(json.dumps(jsonable(summary), indent=1, allow_nan=False) + "\n")


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _main_table(name: str, data: dict) -> list[str]:
    bio = data["biotorch"]
    rules = data["rules"]
    seeds = max(len(r["seeds"]) for r in rules.values())
    head = [
        "rule", "optimizer, peak rate (chosen on validation)", "steps",
        f"test error %, mean ± std ({seeds} seeds)", "per seed", "s / epoch",
        "step ms, median [min, max]", "× backprop",
    ]  # fmt: skip
    if bio:
        head.append(bio["source"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    timed = [r["step_time"] for r in rules.values() if r.get("step_time")]
    if timed:
        head[6] += f" of {timed[0]['rounds']} rounds of {timed[0]['per_round']} steps"
        lines[0] = "| " + " | ".join(head) + " |"
    for rule, r in rules.items():
        err = r["test_error"]
        per_seed = ", ".join(_fmt(e) for e in err["per_seed"])
        if r["diverged_seeds"]:
            per_seed += f" (diverged: seeds {r['diverged_seeds']})"
        step = r.get("step_time") or {}
        timed = "–"
        if step:
            timed = (f"{step['median_ms']:.2f} [{step['min_ms']:.2f}, "
                     f"{step['max_ms']:.2f}]")  # fmt: skip
        chosen = f"{r['chosen']['optimizer']} {r['chosen']['lr']:g}"
        if r.get("selected_as") not in (None, rule):
            chosen += f" (`{r['selected_as']}`'s)"
        row = [
            f"`{rule}`",
            chosen,
            f"{r['steps']:,}",
            f"{_fmt(err['mean'])} ± {_fmt(err['std'])}",
            per_seed,
            _fmt(r["seconds_per_epoch"]),
            timed,
            _fmt(step.get("ratio")),
        ]
        if bio:
            row.append(_fmt(bio["errors"].get(rule)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _selection_table(data: dict) -> list[str]:
    rules = data["rules"]
    cands = []
    for r in rules.values():
        for v in r["validation"]:
            if (v["optimizer"], v["lr"]) not in cands:
                cands.append((v["optimizer"], v["lr"]))
    if not cands:
        return []
    head = ["rule"] + [f"{o} {lr:g}" for o, lr in cands]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for rule, r in rules.items():
        if r.get("selected_as") not in (None, rule):
            continue  # its rule's row holds the same runs
        got = {(v["optimizer"], v["lr"]): v for v in r["validation"]}
        chosen = (r["chosen"]["optimizer"], r["chosen"]["lr"])
        cells = []
        for c in cands:
            v = got.get(c)
            text = "–" if v is None else _fmt(v["accuracy"])
            if v is not None and v["diverged"]:
                text += " (diverged)"
            cells.append(f"**{text}**" if c == chosen else text)
        lines.append("| " + " | ".join([f"`{rule}`", *cells]) + " |")
    return lines


def _angle_table(data: dict) -> list[str]:
    rules = data["rules"]
    layers: list[str] = []
    for r in rules.values():
        for k in r["final_angles"]:
            layer = k.split("/", 1)[1]
            if layer not in layers:
                layers.append(layer)
    if not layers and not any(r.get("whole_step") for r in rules.values()):
        return []
    lines = [
        "| rule | measure |" + "".join(f" {layer} |" for layer in layers),
        "|" + " --- |" * (len(layers) + 2),
    ]
    for rule, r in rules.items():
        if rule != "backprop" and not r["final_angles"]:
            why = "n/a: no backward pass to compare" if r.get("whole_step") else "–"
            lines.append(f"| `{rule}` | {why} |" + " |" * len(layers))
            continue
        first = True
        for prefix, label in KINDS.items():
            values = [r["final_angles"].get(prefix + layer) for layer in layers]
            if all(v is None for v in values):
                continue
            digits = 2 if prefix == "norm_ratio/" else 1
            cells = [_fmt(v, digits) for v in values]
            lines.append(
                f"| {f'`{rule}`' if first else ''} | {label} | " + " | ".join(cells)
                + " |"
            )  # fmt: skip
            first = False
    return lines


def _met(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[ok]


def _target_lines(data: dict) -> list[str]:
    """One line per target of `TARGETS` whose rule ran."""
    targets, rules = data.get("targets"), data["rules"]
    if not targets or "backprop" not in rules:
        return []
    base = rules["backprop"]["test_error"]["mean"]
    want = targets["backprop_accuracy"]
    lines = [f"- backprop: test accuracy {100 - base:.2f}% ≥ {want:g}%: "
             f"{_met(100 - base >= want)}"]  # fmt: skip
    for rule, gap in targets["gap"].items():
        if rule in rules:
            lost = rules[rule]["test_error"]["mean"] - base
            lines.append(f"- `{rule}`: {lost:+.2f} points of test error against "
                         f"backprop, at most {gap:g}: {_met(lost <= gap)}")  # fmt: skip
    for rule, limit in targets["weight_angle"].items():
        if rule in rules:
            found = [v for k, v in rules[rule]["final_angles"].items()
                     if k.startswith("align_weight/") and v is not None]  # fmt: skip
            worst = max(found) if found else None
            shown = "not logged" if worst is None else f"{worst:.1f}°"
            ok = None if worst is None else worst < limit
            lines.append(f"- `{rule}`: largest W-B angle {shown}, under {limit:g}° "
                         f"in every layer: {_met(ok)}")  # fmt: skip
    return lines


def markdown(summary: dict) -> str:
    """results.md: per data set, the error table, the selection and the angles."""
    m = summary["machine"]
    out = [
        "# The learning-rules lab",
        "",
        f"Written {m['date']} on {m['device']} ({m['processor']}, {m['cpu_count']} "
        f"cores), jax {m['jax']}; command: `{summary['command']}`.",
        "",
        "Test error: 100 − test accuracy (%) after the last epoch, mean ± sample std "
        "over seeds. Each rule's optimizer and peak learning rate (cosine schedule) "
        "were chosen on a validation split of the training set, never on the test "
        "set. s / epoch: the training steps of an epoch, data pipeline included "
        "(no compilation, evaluation, checkpoints or angle measurements), mean "
        "over seeds. Step ms: one train step on one batch, the rules timed in "
        "turn, round after round (`lab.timing`), so that they share the "
        "machine's load; × backprop: the ratio of the medians.",
        "",
        f"The sweep: {summary['cost']['runs']} runs, "
        f"{summary['cost']['wall_seconds'] / 60:.1f} min of wall time and "
        f"{summary['cost']['cpu_seconds'] / 60:.1f} min of CPU time, compiling "
        "included.",
    ]
    for name, data in summary["datasets"].items():
        t = data["task"]
        out += [
            "",
            f"## {name}: {t['model']}, {data['train_images']:,} training and "
            f"{data['test_images']:,} test images, {t['epochs']} "
            f"epoch{'s' if t['epochs'] != 1 else ''} of batch {t['batch_size']}",
            "",
            *_main_table(name, data),
        ]
        if data["biotorch"]:
            out += [
                "",
                f"The last column: {data['biotorch']['source']}, published in "
                "BioTorch's Benchmarks.md; a dash where BioTorch has no such rule. "
                "Those runs train on the whole training set for far longer, so "
                "they are a reference, not a like-for-like comparison.",
            ]
        longer = [
            f"`{rule}`: `{r['selected_as']}` trained for {r['epochs']} epochs "
            f"({r['steps']:,} steps), with the optimizer and rate chosen for "
            f"`{r['selected_as']}` on validation runs of {t['epochs']} epochs."
            for rule, r in data["rules"].items()
            if r.get("selected_as") not in (None, rule)
        ]
        if longer:
            out += ["", *longer]
        targets = _target_lines(data)
        if targets:
            out += ["", "Targets (issue 18):", "", *targets]
        selection = _selection_table(data)
        if selection:
            out += [
                "",
                "Validation accuracy (%) of each candidate, mean over the selection "
                "seeds; the chosen one in bold:",
                "",
                *selection,
            ]
        angles = _angle_table(data)
        if angles:
            out += [
                "",
                "After training, per layer (degrees; mean over seeds):",
                "",
                *angles,
            ]
    return "\n".join(out) + "\n"
