"""Images and labels from a `.npz` file: pre-split, or split here with a seed.

The archive is opened with `allow_pickle=False`, so it cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from funcnn.data.base import (
    Dataset,
    check_images,
    check_seed,
    checked_dataset,
    short_repr,
)
from funcnn.data.digits import stratified_split

_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Labels become int32, and num_classes = max label + 1 must fit too.
_MAX_LABEL = 2**31 - 1


def _images(x: np.ndarray, where: str, func: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(
            f"{func}: expected {where} of rank 4 (N, C, H, W) or 3 (N, H, W), got "
            f"shape {x.shape}."
        )
    if x.dtype.kind not in "uif":
        raise ValueError(f"{func}: expected numeric {where}, got dtype {x.dtype}.")
    check_images(x, where, func)
    # uint8 images are raw pixels; anything else is taken as already scaled.
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int, where: str, func: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"{func}: expected integer {where} of rank 1 (N,), got {y.dtype} of "
            f"shape {y.shape}."
        )
    if y.shape[0] != n:
        raise ValueError(
            f"{func}: expected {where} to have one label per image ({n}), got "
            f"{y.shape[0]}."
        )
    if y.size and (y.min() < 0 or y.max() >= _MAX_LABEL):
        raise ValueError(
            f"{func}: expected non-negative labels below {_MAX_LABEL} in {where}, "
            f"got values from {y.min()} to {y.max()}. Labels are class indices "
            "0..K-1."
        )
    return y


def _read_arrays(path: Path, func: str) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"{func}: expected a readable .npz file at {path}, got {short_repr(err)}."
        ) from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{func}: expected a .npz archive at {path}, got a single .npy array "
            f"of shape {loaded.shape}. Save images and labels together: "
            "np.savez(path, x=images, y=labels)."
        )
    try:
        with loaded as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"{func}: expected a readable .npz file at {path}, got {short_repr(err)}."
        ) from err


def load_npz(
    path: str | os.PathLike, seed: int = 0, test_fraction: float = 0.2
) -> Dataset:
    """Loads images and labels from a `.npz` file.

    The file holds either `x` and `y`, split here like `load_digits` (seeded,
    stratified), or `x_train`, `y_train`, `x_test`, `y_test` used as given.
    Images are `(N, C, H, W)` or `(N, H, W)` (a channel axis is added). uint8
    images are divided by 255; other numeric dtypes are cast to float32 as is.

    Args:
        path: the `.npz` file.
        seed: a non-negative int fixing the split of `x`, `y`.
        test_fraction: the fraction held out when splitting `x`, `y`.

    Returns:
        A `Dataset` named `"npz"` with `num_classes = max label + 1`, images of
        shape `(N, C, H, W)` float32 and int32 labels; `seed` is the split seed,
        or -1 for a pre-split file.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is not a `.npz` archive, missing keys, bad
            ranks, mismatched lengths, no images, NaN or infinite pixels, or
            negative labels.
    """
    func = "load_npz"
    seed = check_seed(func, seed)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{func}: expected a .npz file holding 'x' and 'y' (or 'x_train', "
            f"'y_train', 'x_test', 'y_test'), got {path}, which does not exist."
        )
    arrays = _read_arrays(path, func)

    def where(key: str) -> str:
        return f"{key!r} in {path}"

    if all(k in arrays for k in _SPLIT_KEYS):
        x_train = _images(arrays["x_train"], where("x_train"), func)
        x_test = _images(arrays["x_test"], where("x_test"), func)
        y_train = _labels(arrays["y_train"], len(x_train), where("y_train"), func)
        y_test = _labels(arrays["y_test"], len(x_test), where("y_test"), func)
        split_seed = -1
        train_src = (where("x_train"), where("y_train"))
        test_src = (where("x_test"), where("y_test"))
    elif "x" in arrays and "y" in arrays:
        x = _images(arrays["x"], where("x"), func)
        y = _labels(arrays["y"], len(x), where("y"), func)
        train_idx, test_idx = stratified_split(y, test_fraction, seed, func=func)
        x_train, y_train = x[train_idx], y[train_idx]
        x_test, y_test = x[test_idx], y[test_idx]
        split_seed = seed
        train_src = test_src = (where("x"), where("y"))
    else:
        raise ValueError(
            f"{func}: expected keys 'x' and 'y', or 'x_train', 'y_train', "
            f"'x_test' and 'y_test' in {path}, got {short_repr(sorted(arrays))}."
        )
    num_classes = int(max(y_train.max(), y_test.max())) + 1  # both are non-empty
    return checked_dataset(
        func,
        "npz",
        num_classes,
        split_seed,
        (x_train, y_train, train_src[0], train_src[1]),
        (x_test, y_test, test_src[0], test_src[1]),
    )
