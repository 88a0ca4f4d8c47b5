"""The targets the benchmark judges, and how a measured ratio becomes a verdict.

A target is a ratio of two median times (or its inverse, a speed-up) against a
threshold. Its result is one of:

- **PASS**: the median ratio meets the threshold, and so does the whole 95%
  bootstrap interval of the ratio;
- **FAIL**: the median ratio misses the threshold, and so does the whole interval;
- **inconclusive**: the interval straddles the threshold (either way of the median);
- **n/a (identical programs)**: both grad modes compile to the same optimized HLO
  (`jax_side.canonical_hlo`), so the ratio is timing noise and judges nothing;
- **n/a**: not measured, or not comparable (torch absent or on another backend).

The interval comes from the repeats already taken: the variants of a row run
round-robin, so repeat i of each is one pair, and the pairs are resampled together
(a paired bootstrap of the ratio of medians), which keeps drift from other load out
of the interval. Without samples the verdict rests on the median alone.
"""

from __future__ import annotations

import numpy as np

from benchmarks.cases import HEADLINE_MAXPOOL
from benchmarks.peers import FUNCNN_FOR, LABELS, PEERS
from benchmarks.remote import backends_match

LEVEL = 0.95  # coverage of the bootstrap interval
BOOTSTRAP = 2000  # resamples
IDENTICAL = "n/a (identical programs)"


def median_ratio(a: dict | None, b: dict | None) -> float | None:
    """median(a) / median(b) of two `timing.summarize` dicts; None if one is missing."""
    if not a or not b:
        return None
    return a["median_ms"] / b["median_ms"]


def ratio_interval(a: dict | None, b: dict | None, seed: int = 0):
    """(low, high): the central `LEVEL` bootstrap interval of median(a) / median(b),
    resampling the repeats in pairs; None without at least 3 samples on each side.
    """
    if not a or not b:
        return None
    xa = np.asarray(a.get("samples_ms") or [], float)
    xb = np.asarray(b.get("samples_ms") or [], float)
    if min(xa.size, xb.size) < 3:
        return None
    rng = np.random.default_rng(seed)
    if xa.size == xb.size:  # round-robin: repeat i of both is one pair
        idx = rng.integers(0, xa.size, (BOOTSTRAP, xa.size))
        ratios = np.median(xa[idx], axis=1) / np.median(xb[idx], axis=1)
    else:
        ia = rng.integers(0, xa.size, (BOOTSTRAP, xa.size))
        ib = rng.integers(0, xb.size, (BOOTSTRAP, xb.size))
        ratios = np.median(xa[ia], axis=1) / np.median(xb[ib], axis=1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def verdict(value: float | None, interval, threshold: float, sense: str) -> str:
    """PASS, FAIL or inconclusive (module doc); "n/a" without a value.

    `sense` is "<=" (the value must be at most `threshold`) or ">=".
    """
    if sense not in ("<=", ">="):
        raise ValueError(f"verdict: expected sense '<=' or '>=', got {sense!r}.")
    if value is None:
        return "n/a"

    def meets(v: float) -> bool:
        return v <= threshold if sense == "<=" else v >= threshold

    ends = [] if interval is None else [meets(v) for v in interval]
    if meets(value) and all(ends):
        return "PASS"
    if not meets(value) and not any(ends):
        return "FAIL"
    return "inconclusive"


def _row(name, a, b, threshold, sense, *, invert=False, same_program=False, why=""):
    """A target on median(a) / median(b), or its inverse with `invert`."""
    value = median_ratio(b, a) if invert else median_ratio(a, b)
    interval = ratio_interval(b, a) if invert else ratio_interval(a, b)
    reasons = [why] if why else []
    if same_program:
        result = IDENTICAL
        reasons.insert(
            0,
            "custom and autodiff compile to the same optimized HLO (names, ids and "
            "metadata canonicalized): the ratio is timing noise",
        )
    elif value is None:
        result = "n/a"
        reasons.insert(0, "not measured")
    else:
        result = verdict(value, interval, threshold, sense)
        if result == "inconclusive":
            reasons.insert(0, f"the {LEVEL:.0%} interval straddles {threshold:g}")
    return {
        "target": name,
        "value": value,
        "threshold": f"{sense} {threshold:g}",
        "interval": interval,
        "result": result,
        "reason": "; ".join(reasons),
    }


def _times(entry: dict, side: str) -> dict:
    return (entry.get(side) or {}).get("times", {})


def torch_comparable(meta: dict) -> tuple[bool, str]:
    """(whether custom/torch ratios judge anything, why not)."""
    if "torch" not in meta:
        return False, f"torch not run: {meta.get('torch_error', '--no-torch')}"
    device = meta.get("torch_device", "cpu")
    if not backends_match(meta["backend"], device):
        return False, f"backends differ: JAX on {meta['backend']}, torch on {device}"
    return True, ""


def targets(results: dict) -> list[dict]:
    """The issue's targets, each computed from this run's times (never constants)."""
    out = []
    meta = results["meta"]
    ops, train = results.get("ops", {}), results.get("train", {})
    pools = [n for n, e in ops.items() if e["case"]["op"] == "max_pool2d"]
    headline = HEADLINE_MAXPOOL if HEADLINE_MAXPOOL in ops else (pools or [None])[0]
    if headline is not None:
        # Judged on forward + backward: the custom rule finds the argmax in the
        # forward pass, so the backward alone would flatter it.
        jt = _times(ops[headline], "jax")
        bwd = median_ratio(jt.get("bwd/autodiff"), jt.get("bwd/custom"))
        detail = "" if bwd is None else f"backward alone {bwd:.2f}x (not judged)"
        out.append(
            _row(
                f"max pool fwd+bwd speed-up autodiff/custom [{headline}]",
                jt.get("fwdbwd/custom"),
                jt.get("fwdbwd/autodiff"),
                4.0,
                ">=",
                invert=True,
                why=detail,
            )
        )
    for name, entry in ops.items():
        if entry["case"]["op"] not in ("avg_pool2d", "conv2d"):
            continue
        jt = _times(entry, "jax")
        out.append(
            _row(
                f"fwd+bwd custom/autodiff [{name}]",
                jt.get("fwdbwd/custom"),
                jt.get("fwdbwd/autodiff"),
                1.0,
                "<=",
                same_program=bool(entry["jax"].get("same_program")),
            )
        )
    comparable, why_not = torch_comparable(meta)
    torch_goals = (
        ("vgg", "VGG (BN)", 1.0),
        ("vgg_nobn", "VGG issue model (no BN)", 1.0),
        ("lenet", "LeNet-5", 0.8),
    )
    for model, label, torch_bound in torch_goals:
        if model not in train:
            continue
        jt, tt = _times(train[model], "jax"), _times(train[model], "torch")
        if model != "lenet":
            out.append(
                _row(
                    f"{label} step custom/autodiff",
                    jt.get("custom"),
                    jt.get("autodiff"),
                    0.8,
                    "<=",
                    same_program=bool(train[model]["jax"].get("same_program")),
                )
            )
        name = f"{label} step custom/torch"
        row = _row(name, jt.get("custom"), tt.get("torch"), torch_bound, "<=")
        if not comparable:
            row.update(result="n/a", reason=why_not)
        elif row["value"] is None and "torch_error" in meta:
            row.update(reason=f"torch worker failed: {meta['torch_error']}")
        out.append(row)
    return out + peer_targets(results.get("peers"))


def peer_targets(peers: dict | None) -> list[dict]:
    """funcnn custom / each JAX peer, per model, with funcnn in the peer's own
    layout (so that the ratio compares the libraries, not the layouts)."""
    if not peers:
        return []
    if not peers["available"]:
        row = _row("train step funcnn custom / JAX peers", None, None, 1.0, "<=")
        return [{**row, "reason": peers["reason"]}]
    out = []
    for model, entry in peers["cases"].items():
        times = entry["times"]
        for peer in PEERS:
            ours = FUNCNN_FOR[peer]
            out.append(
                _row(
                    f"{model} step {ours} / {LABELS[peer]}",
                    times.get(ours),
                    times.get(peer),
                    1.0,
                    "<=",
                )
            )
    return out
