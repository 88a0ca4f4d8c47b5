"""Data for experiments/physics_aware.py and experiments/forward_gradient.py: a
data set by name, normalised with training-set statistics, as train.py does."""

from __future__ import annotations

import sys

import numpy as np

from funcnn import data


def available(names, script: str) -> list[str]:
    """The names registered in this tree (`funcnn.data.DATASET_NAMES`); says on
    stderr which are not (mnist5k arrives with the learning-rules lab)."""
    found = [n for n in names if n in data.DATASET_NAMES]
    for n in names:
        if n not in found:
            print(
                f"{script}: data set {n!r} is not registered in this tree "
                f"(funcnn.data.DATASET_NAMES = {data.DATASET_NAMES}); skipping it.",
                file=sys.stderr,
            )
    return found


def prepare(name: str, *, limit: int | None = None) -> dict:
    """x_train, y_train, x_test, y_test (float32 images normalised with the
    training set's per-channel statistics) and num_classes; `limit` keeps the
    first images of each split (for smoke runs)."""
    ds = data.load_dataset(name, None, seed=0)
    norm = data.fit_normalizer(ds.x_train)
    out = {
        "x_train": np.asarray(norm.apply(ds.x_train), np.float32),
        "y_train": ds.y_train,
        "x_test": np.asarray(norm.apply(ds.x_test), np.float32),
        "y_test": ds.y_test,
    }
    out = {k: v[:limit] for k, v in out.items()}
    return dict(out, num_classes=ds.num_classes)
