"""A seeded stratified split, and scikit-learn's digits.

The digits set ships inside scikit-learn, so it needs no download: 1,797 grey
images of 8x8 pixels with values 0..16, ten classes. It is the default data set
of the library because a small CNN trains on it in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np

from funcnn.data.base import Dataset, check_seed


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int, *, func: str = "stratified_split"
) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices into train and test with equal class proportions.

    Each class c with n_c examples sends about `n_c * test_fraction` of them to
    the test set. The per-class counts are rounded by largest remainder so that
    the test set has exactly `round(N * test_fraction)` examples. The split is a
    deterministic function of `(y, test_fraction, seed)` and does not depend on
    the scikit-learn version.

    Args:
        y: integer labels of shape `(N,)`.
        test_fraction: the fraction of examples to hold out, in (0, 1).
        seed: a non-negative int seeding `numpy.random.default_rng`.
        func: the name of the caller, used in error messages.

    Returns:
        `(train_idx, test_idx)`: sorted int64 index arrays of shapes
        `(N - N_test,)` and `(N_test,)` that together cover `range(N)` once.

    Raises:
        ValueError: if `test_fraction` is outside (0, 1) or leaves an empty
            train or test set.
    """
    seed = check_seed(func, seed)
    y = np.asarray(y)
    n = y.shape[0]
    try:
        frac = float(test_fraction)
    except (TypeError, ValueError):
        raise TypeError(
            f"{func}: expected test_fraction to be a float, got "
            f"{type(test_fraction).__name__} {test_fraction!r}."
        ) from None
    if not 0.0 < frac < 1.0:
        raise ValueError(
            f"{func}: expected test_fraction in the open interval (0, 1), got "
            f"{test_fraction!r}. Use e.g. 0.2 to hold out a fifth of the data."
        )
    n_test = int(round(n * frac))
    if n_test < 1 or n_test > n - 1:
        raise ValueError(
            f"{func}: expected a split leaving both sets non-empty, got "
            f"{n_test} test examples out of {n} (test_fraction={test_fraction}). "
            "Use more examples or a different test_fraction."
        )
    classes, counts = np.unique(y, return_counts=True)
    quotas = counts * (n_test / n)
    per_class = np.floor(quotas).astype(np.int64)
    # Largest remainder: hand the leftover test slots to the classes whose
    # quotas lost the most to flooring; a stable sort breaks ties by class.
    leftover = n_test - int(per_class.sum())
    order = np.argsort(-(quotas - per_class), kind="stable")
    per_class[order[:leftover]] += 1

    rng = np.random.default_rng(seed)
    test_parts = []
    for c, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(y == c)
        test_parts.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    is_test = np.zeros(n, dtype=bool)
    is_test[test_idx] = True
    train_idx = np.flatnonzero(~is_test).astype(np.int64)
    return train_idx, test_idx


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Loads scikit-learn's 8x8 digits with a seeded stratified split.

    Args:
        seed: a non-negative int fixing the train/test split.
        test_fraction: the fraction of the 1,797 images held out for testing.

    Returns:
        A `Dataset` named `"digits"` with 10 classes: `x_train` of shape
        `(N_train, 1, 8, 8)` and `x_test` of shape `(N_test, 1, 8, 8)`, float32 in
        [0, 1] (raw pixel values divided by 16), and int32 labels. With the
        default fraction, N_test = round(0.2 * 1797) = 359.

    Raises:
        ValueError: for a negative seed or a test_fraction outside (0, 1).
    """
    # Imported here because scikit-learn takes about a second to import and
    # only this loader needs it.
    from sklearn.datasets import load_digits as _sklearn_digits

    pixels, target = _sklearn_digits(return_X_y=True)
    x = (np.asarray(pixels, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(target, dtype=np.int32)
    train_idx, test_idx = stratified_split(y, test_fraction, seed, func="load_digits")
    return Dataset(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        name="digits",
        num_classes=10,
        seed=int(seed),
    )
