"""The `Dataset` container and the checks every loader runs before returning one.

A loader reads its files, turns them into float32 NCHW images and int labels, and
hands them to `checked_dataset`, which refuses what would otherwise fail later and
far from the cause: an empty split, NaN or infinite pixels, labels outside
`[0, num_classes)`, or test images of another size than the training images. Each
message names the file (and the array in it) the bad value came from.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import NamedTuple

import numpy as np

# The most characters of a foreign object's repr (an exception from a parser,
# say) that go into one of our messages: a damaged pickle once produced a
# UnicodeDecodeError whose repr held 600 KB of the file.
MAX_REPR = 300


class Dataset(NamedTuple):
    """A train/test pair of image arrays with integer labels.

    Attributes:
        x_train: float32 images of shape `(N_train, C, H, W)`, values in [0, 1]
            for the built-in loaders.
        y_train: int32 labels of shape `(N_train,)`, in `[0, num_classes)`.
        x_test: float32 images of shape `(N_test, C, H, W)`.
        y_test: int32 labels of shape `(N_test,)`.
        name: the data set's name, e.g. `"digits"`, `"mnist"`.
        num_classes: the number of classes K; labels lie in `[0, K)`.
        seed: the seed of the train/test split, or -1 when the split comes
            from the files themselves (MNIST, CIFAR-10, a pre-split npz).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    seed: int


def check_seed(func: str, seed: object, name: str = "seed") -> int:
    """Returns `seed` as a non-negative Python int, or raises a clear error.

    Args:
        func: the name of the caller, used in error messages.
        seed: the value to check.
        name: what the value is called in error messages, e.g. "epoch".
    """
    if isinstance(seed, bool):
        raise TypeError(f"{func}: expected {name} to be an int, got bool {seed}.")
    try:
        value = operator.index(seed)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{func}: expected {name} to be an int, got {type(seed).__name__} "
            f"{short_repr(seed)}. Pass a non-negative integer such as 0."
        ) from None
    if value < 0:
        raise ValueError(
            f"{func}: expected a non-negative {name}, got {value}. "
            "numpy's default_rng needs seeds >= 0."
        )
    return value


def short_repr(value: object, limit: int = MAX_REPR) -> str:
    """`repr(value)`, cut to about `limit` characters with a note of the rest."""
    return short_text(repr(value), limit)


def short_text(text: str, limit: int = MAX_REPR) -> str:
    """`text`, cut to about `limit` characters with a note of the rest."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def check_dir(data_dir: str | object, func: str, looked_for: str) -> Path:
    """Returns `data_dir` as a Path, or raises FileNotFoundError naming it."""
    path = Path(data_dir)  # type: ignore[arg-type]
    if not path.is_dir():
        raise FileNotFoundError(
            f"{func}: expected a directory holding {looked_for}, got {path}, "
            "which does not exist or is not a directory."
        )
    return path


def check_images(x: np.ndarray, where: str, func: str) -> None:
    """Refuses an empty image array or one holding NaN or infinite values.

    Args:
        x: images of shape `(N, ...)`, any numeric dtype.
        where: the source, for messages, e.g. `"'x' in data.npz"`.
        func: the name of the caller, used in error messages.
    """
    if x.shape[0] == 0:
        raise ValueError(
            f"{func}: expected at least one image in {where}, got 0 (shape "
            f"{x.shape}). The file holds no images: write the data again, or "
            "point to the complete file."
        )
    if x.dtype.kind != "f":
        return
    # A float64 sum of float32 values cannot overflow, so it is finite exactly
    # when every value is, and it needs no full-size temporary array.
    if np.isfinite(np.sum(x, dtype=np.float64)):
        return
    bad = ~np.isfinite(x.reshape(x.shape[0], -1))
    images = np.flatnonzero(bad.any(axis=1))
    n_nan = int(np.isnan(x).sum())
    raise ValueError(
        f"{func}: expected finite pixel values in {where}, got {n_nan} NaN and "
        f"{int(bad.sum()) - n_nan} infinite values in {images.size} image(s), the "
        f"first at index {images[0]}. Repair or drop those images: a non-finite "
        "input makes every training step that sees it non-finite."
    )


def check_labels(y: np.ndarray, num_classes: int, where: str, func: str) -> None:
    """Refuses labels that are not integers in `[0, num_classes)`.

    Args:
        y: labels of shape `(N,)`.
        num_classes: the number of classes K.
        where: the source, for messages.
        func: the name of the caller, used in error messages.
    """
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{func}: expected integer labels in {where}, got dtype {y.dtype}. "
            "Store class indices 0..K-1 as integers."
        )
    if y.size == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        outside = int(np.count_nonzero((y < 0) | (y >= num_classes)))
        raise ValueError(
            f"{func}: expected labels in [0, {num_classes}) in {where}, got values "
            f"from {low} to {high} ({outside} outside). A label indexes a class: "
            "out of range, it makes a NaN step or trains the wrong class."
        )


def checked_dataset(
    func: str,
    name: str,
    num_classes: int,
    seed: int,
    train: tuple[np.ndarray, np.ndarray, str, str],
    test: tuple[np.ndarray, np.ndarray, str, str],
) -> Dataset:
    """Builds a `Dataset` after the checks every loader owes its caller.

    Args:
        func: the loader's name, used in error messages.
        name, num_classes, seed: as in `Dataset`.
        train: `(x, y, x_source, y_source)`: images `(N, C, H, W)`, labels
            `(N,)`, and where each came from, for messages.
        test: the same for the test split.

    Returns:
        The `Dataset`, images as float32 and labels as int32.

    Raises:
        ValueError: for an empty split, non-finite images, labels outside
            `[0, num_classes)`, a label count that differs from the image
            count, or test images of another shape than the training images.
    """
    for x, y, x_where, y_where in (train, test):
        check_images(x, x_where, func)
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"{func}: expected one label per image ({x.shape[0]}) in {y_where}, "
                f"got labels of shape {y.shape}."
            )
        check_labels(y, num_classes, y_where, func)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"{func}: expected test images of the training images' shape, got "
            f"{train[0].shape[1:]} in {train[2]} and {test[0].shape[1:]} in "
            f"{test[2]}. Use train and test files of the same data set."
        )
    return Dataset(
        x_train=train[0].astype(np.float32, copy=False),
        y_train=train[1].astype(np.int32, copy=False),
        x_test=test[0].astype(np.float32, copy=False),
        y_test=test[1].astype(np.int32, copy=False),
        name=name,
        num_classes=int(num_classes),
        seed=int(seed),
    )
