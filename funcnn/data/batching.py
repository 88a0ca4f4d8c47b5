"""Per-channel normalisation and deterministic, resumable mini-batching.

The batch order of an epoch is a pure function of `(seed, epoch)`, so a run
resumed at epoch k from a checkpoint sees exactly the batches the original run
would have seen.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from funcnn.data.base import check_seed


class Normalizer(NamedTuple):
    """Per-channel statistics of a training set.

    Attributes:
        mean: float32 channel means of shape `(C,)`.
        std: float32 channel standard deviations of shape `(C,)`; a channel
            that is constant in the training set gets std 1, so it maps to 0.
    """

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x):
        """Normalises `x` of shape `(N, C, H, W)`; see `normalize`."""
        return normalize(x, self.mean, self.std)


def fit_normalizer(x_train) -> Normalizer:
    """Computes the per-channel mean and std of a training set.

    Fit on the training set only, then apply the same statistics to the test
    set, so no test information leaks into training.

    Args:
        x_train: images of shape `(N, C, H, W)`, N >= 1.

    Returns:
        A `Normalizer` with `mean` and `std` of shape `(C,)`, float32, computed
        in float64 over the N, H and W axes (population std, ddof=0).

    Raises:
        ValueError: if `x_train` is not rank 4 or is empty.
    """
    x = np.asarray(x_train)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"fit_normalizer: expected a non-empty x_train of rank 4 "
            f"(N, C, H, W), got shape {x.shape}. Add a channel axis with "
            "x[:, None] for grey images."
        )
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    std = x64.std(axis=(0, 2, 3))
    std = np.where(std > 0.0, std, 1.0)
    return Normalizer(mean.astype(np.float32), std.astype(np.float32))


def normalize(x, mean, std):
    """Subtracts the channel mean and divides by the channel std.

    Works on numpy and jax arrays alike and keeps a float32 input float32.

    Args:
        x: images of shape `(N, C, H, W)`.
        mean: channel means of shape `(C,)`.
        std: positive channel standard deviations of shape `(C,)`.

    Returns:
        `(x - mean) / std` broadcast over channels, of shape `(N, C, H, W)`.

    Raises:
        ValueError: if the ranks or channel counts disagree.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    shape = np.shape(x)
    if len(shape) != 4:
        raise ValueError(
            f"normalize: expected x of rank 4 (N, C, H, W), got shape {shape}."
        )
    if mean.shape != (shape[1],) or std.shape != (shape[1],):
        raise ValueError(
            f"normalize: expected mean and std of shape ({shape[1]},) to match "
            f"the C axis of x {shape}, got {mean.shape} and {std.shape}."
        )
    return (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def _check_batch_size(func: str, batch_size: object) -> int:
    if isinstance(batch_size, bool):
        raise TypeError(f"{func}: expected batch_size to be an int, got bool.")
    try:
        value = operator.index(batch_size)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{func}: expected batch_size to be an int, got "
            f"{type(batch_size).__name__} {batch_size!r}."
        ) from None
    if value <= 0:
        raise ValueError(f"{func}: expected batch_size > 0, got {value}. Use e.g. 64.")
    return value


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """The number of batches `batches` yields for n examples.

    Args:
        n: the number of examples, n >= 0.
        batch_size: examples per batch, > 0.
        drop_last: whether a final partial batch is dropped.

    Returns:
        `n // batch_size` if `drop_last`, else `ceil(n / batch_size)`.

    Raises:
        ValueError: if `batch_size <= 0` or `n < 0`.
    """
    batch_size = _check_batch_size("num_batches", batch_size)
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"num_batches: expected n >= 0 examples, got {n}.")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x,
    y,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields the mini-batches of one epoch in a reproducible order.

    The order is `numpy.random.default_rng([seed, epoch]).permutation(N)`, so it
    depends only on `(seed, epoch)`: each epoch gets a fresh order, and a run
    resumed at epoch k sees the same batches as an uninterrupted one. The
    arguments are checked when `batches` is called, not at the first `next`.

    Args:
        x: inputs of shape `(N, ...)`, e.g. `(N, C, H, W)`.
        y: labels of shape `(N,)` (or any `(N, ...)`).
        batch_size: examples per batch B, > 0.
        seed: a non-negative int, the run's data seed.
        epoch: a non-negative int, the epoch number.
        shuffle: whether to permute; if False the order is 0..N-1.
        drop_last: whether to drop the final batch when it has fewer than B
            examples; keeping it makes every example appear exactly once.

    Returns:
        An iterator over `num_batches(N, B, drop_last)` pairs
        `(x_batch, y_batch)` of numpy arrays, shapes `(B, ...)` and `(B,)`
        (the last one smaller when `drop_last=False`).

    Raises:
        ValueError: for `batch_size <= 0`, x and y of different lengths, or
            `drop_last=True` with fewer than `batch_size` examples (the epoch
            would be empty).
        TypeError: for a non-integer batch_size, seed or epoch.
    """
    func = "batches"
    batch_size = _check_batch_size(func, batch_size)
    seed = check_seed(func, seed)
    epoch = check_seed(func, epoch, "epoch")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{func}: expected x and y with the same leading length N, got "
            f"shapes {x.shape} and {y.shape}."
        )
    n = x.shape[0]
    if drop_last and n < batch_size:
        raise ValueError(
            f"{func}: expected at least batch_size={batch_size} examples when "
            f"drop_last=True, got {n}, so the epoch would be empty. Lower "
            "batch_size or pass drop_last=False."
        )
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    count = num_batches(n, batch_size, drop_last)
    return _iterate(x, y, order, batch_size, count)


def _iterate(x, y, order, batch_size, count):
    for i in range(count):
        idx = order[i * batch_size : (i + 1) * batch_size]
        yield x[idx], y[idx]
