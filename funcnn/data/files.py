"""Loaders for data sets stored on disk: MNIST-style IDX, CIFAR-10 and `.npz`.

Nothing here downloads. Each loader reads files the user already has, checks
them thoroughly (magic numbers, shapes, payload sizes) and names the offending
file in every error, then returns a `Dataset` of float32 NCHW images in [0, 1].
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from funcnn.data.digits import Dataset, check_seed, load_digits, stratified_split

DATASET_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "npz")

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_SUBDIR = "cifar-10-batches-py"

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike, *, func: str = "read_idx") -> np.ndarray:
    """Reads one IDX file, raw or gzip-compressed (by a `.gz` suffix).

    The format is a 4-byte magic number `0x0000TTDD` (TT: element type, 0x08
    for uint8; DD: the number of dimensions), DD big-endian int32 sizes, then
    the elements in row-major order.

    Args:
        path: the file to read.
        func: the name of the caller, used in error messages.

    Returns:
        The array, with the shape given in the header and a native-endian dtype.

    Raises:
        ValueError: for a bad magic number, a truncated header, or a payload
            whose length differs from what the header promises.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(
            f"{func}: expected a readable IDX file at {path}, got {err!r}. "
            "The file is damaged; download it again."
        ) from err
    if len(raw) < 4:
        raise ValueError(
            f"{func}: expected at least a 4-byte IDX magic number in {path}, got "
            f"{len(raw)} bytes. The file is truncated."
        )
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{func}: expected an IDX magic number such as 0x00000803 (uint8, "
            f"3-D) in {path}, got 0x{struct.unpack('>I', raw[:4])[0]:08X}. "
            "This is not an (uncompressed) IDX file."
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{func}: expected a {header_len}-byte IDX header in {path}, got "
            f"{len(raw)} bytes. The file is truncated."
        )
    dims = struct.unpack(f">{ndim}i", raw[4:header_len])
    if any(d < 0 for d in dims):
        raise ValueError(
            f"{func}: expected non-negative IDX dimensions in {path}, got {dims}."
        )
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise ValueError(
            f"{func}: expected {expected} payload bytes for dims {dims} in {path}, "
            f"got {actual} bytes. The file is {what}; download it again."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, stem: str, func: str) -> Path:
    """Returns the raw IDX file if present, else its `.gz` twin."""
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{func}: expected {stem} or {stem}.gz in {data_dir}, found neither. "
        f"The directory must hold the four IDX files: {', '.join(MNIST_FILES.values())}"
        " (raw or .gz)."
    )


def _check_dir(data_dir: str | os.PathLike, func: str, looked_for: str) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{func}: expected a directory holding {looked_for}, got {path}, "
            "which does not exist or is not a directory."
        )
    return path


def _idx_pair(data_dir: Path, split: str, func: str) -> tuple[np.ndarray, np.ndarray]:
    x_path = _find_idx(data_dir, MNIST_FILES[f"{split}_x"], func)
    y_path = _find_idx(data_dir, MNIST_FILES[f"{split}_y"], func)
    images = read_idx(x_path, func=func)
    labels = read_idx(y_path, func=func)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{func}: expected uint8 images of rank 3 (N, H, W) in {x_path}, got "
            f"{images.dtype} of shape {images.shape}. Is this a labels file?"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{func}: expected uint8 labels of rank 1 (N,) in {y_path}, got "
            f"{labels.dtype} of shape {labels.shape}. Is this an images file?"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{func}: expected as many labels as images, got {labels.shape[0]} in "
            f"{y_path} and {images.shape[0]} in {x_path}."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(
            f"{func}: expected labels in [0, 10) in {y_path}, got {labels.max()}."
        )
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int32)


def load_mnist(data_dir: str | os.PathLike, kind: str = "mnist") -> Dataset:
    """Loads MNIST or Fashion-MNIST from the four IDX files in `data_dir`.

    Both data sets use the same file names: `train-images-idx3-ubyte`,
    `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    `t10k-labels-idx1-ubyte`, each raw or with a `.gz` suffix; the raw file wins
    when both exist.

    Args:
        data_dir: the directory holding the files.
        kind: `"mnist"` or `"fashion_mnist"`; only sets `Dataset.name`.

    Returns:
        A `Dataset` with 10 classes and `seed=-1` (the files fix the split):
        `x_train` of shape `(60000, 1, 28, 28)` and `x_test` of shape
        `(10000, 1, 28, 28)` for the real files, float32 pixel values / 255.

    Raises:
        FileNotFoundError: if the directory or one of the files is missing.
        ValueError: for an unknown kind or a malformed file.
    """
    func = "load_mnist"
    if kind not in ("mnist", "fashion_mnist"):
        raise ValueError(
            f"{func}: expected kind 'mnist' or 'fashion_mnist', got {kind!r}."
        )
    path = _check_dir(data_dir, func, "the MNIST IDX files")
    x_train, y_train = _idx_pair(path, "train", func)
    x_test, y_test = _idx_pair(path, "test", func)
    return Dataset(x_train, y_train, x_test, y_test, kind, 10, -1)


def _read_cifar_batch(path: Path, func: str) -> tuple[np.ndarray, np.ndarray]:
    # CIFAR-10 is distributed as pickles; unpickling can run code, so only
    # load files from a trusted source.
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except OSError:
        raise
    except Exception as err:  # unpickling fails in many ways on a damaged file
        raise ValueError(
            f"{func}: expected a pickled CIFAR-10 batch in {path}, got {err!r}. "
            "The file is damaged; download it again."
        ) from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = (
            sorted(map(repr, batch))
            if isinstance(batch, dict)
            else type(batch).__name__
        )
        raise ValueError(
            f"{func}: expected a dict with keys b'data' and b'labels' in {path}, "
            f"got {found}. Use the python version of CIFAR-10 "
            "(cifar-10-python.tar.gz)."
        )
    data = batch[b"data"]
    labels = np.asarray(batch[b"labels"])
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        if isinstance(data, np.ndarray):
            got = f"{data.dtype} of shape {data.shape}"
        else:
            got = type(data).__name__
        raise ValueError(
            f"{func}: expected b'data' of dtype uint8 and shape (N, 3072) in "
            f"{path}, got {got}."
        )
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{func}: expected {data.shape[0]} integer b'labels' in {path}, got "
            f"{labels.dtype} of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{func}: expected labels in [0, 10) in {path}, got values from "
            f"{labels.min()} to {labels.max()}."
        )
    # Each row holds the red, then green, then blue 32x32 plane, row-major.
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, labels.astype(np.int32)


def load_cifar10(data_dir: str | os.PathLike) -> Dataset:
    """Loads CIFAR-10 from its python batches.

    Looks for `data_batch_1` ... `data_batch_5` and `test_batch` in `data_dir`
    and then in `data_dir/cifar-10-batches-py` (where the archive unpacks).

    Args:
        data_dir: the directory holding the batches, or their parent.

    Returns:
        A `Dataset` named `"cifar10"` with 10 classes and `seed=-1`: `x_train`
        of shape `(50000, 3, 32, 32)` and `x_test` of shape `(10000, 3, 32, 32)`
        for the real files, float32 pixel values / 255.

    Raises:
        FileNotFoundError: if no directory holds all six batches.
        ValueError: for a batch with the wrong keys, shapes or labels.
    """
    func = "load_cifar10"
    root = _check_dir(data_dir, func, "the CIFAR-10 python batches")
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    candidates = (root, root / CIFAR10_SUBDIR)
    for directory in candidates:
        if all((directory / n).is_file() for n in names):
            break
    else:
        raise FileNotFoundError(
            f"{func}: expected the files {', '.join(names)} in {root} or in "
            f"{root / CIFAR10_SUBDIR}, found them in neither. Unpack "
            "cifar-10-python.tar.gz there."
        )
    parts = [_read_cifar_batch(directory / n, func) for n in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_cifar_batch(directory / CIFAR10_TEST_FILE, func)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return Dataset(x_train, y_train, x_test, y_test, "cifar10", 10, -1)


def _npz_images(x: np.ndarray, key: str, path: Path, func: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(
            f"{func}: expected {key!r} of rank 4 (N, C, H, W) or 3 (N, H, W) in "
            f"{path}, got shape {x.shape}."
        )
    if x.dtype.kind not in "uif":
        raise ValueError(
            f"{func}: expected numeric {key!r} in {path}, got dtype {x.dtype}."
        )
    # uint8 images are raw pixels; anything else is taken as already scaled.
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _npz_labels(y: np.ndarray, key: str, n: int, path: Path, func: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"{func}: expected integer {key!r} of rank 1 (N,) in {path}, got "
            f"{y.dtype} of shape {y.shape}."
        )
    if y.shape[0] != n:
        raise ValueError(
            f"{func}: expected {key!r} to have one label per image ({n}), got "
            f"{y.shape[0]} in {path}."
        )
    if y.size and y.min() < 0:
        raise ValueError(
            f"{func}: expected non-negative labels in {key!r} in {path}, got {y.min()}."
        )
    return y.astype(np.int32)


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
        ValueError: for missing keys, bad ranks or mismatched lengths.
    """
    func = "load_npz"
    seed = check_seed(func, seed)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{func}: expected a .npz file holding 'x' and 'y' (or 'x_train', "
            f"'y_train', 'x_test', 'y_test'), got {path}, which does not exist."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError) as err:
        raise ValueError(
            f"{func}: expected a readable .npz file at {path}, got {err!r}."
        ) from err
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    if all(k in arrays for k in split_keys):
        x_train = _npz_images(arrays["x_train"], "x_train", path, func)
        x_test = _npz_images(arrays["x_test"], "x_test", path, func)
        y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), path, func)
        y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), path, func)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(
                f"{func}: expected train and test images of one shape in {path}, "
                f"got {x_train.shape[1:]} and {x_test.shape[1:]}."
            )
        split_seed = -1
    elif "x" in arrays and "y" in arrays:
        x = _npz_images(arrays["x"], "x", path, func)
        y = _npz_labels(arrays["y"], "y", len(x), path, func)
        train_idx, test_idx = stratified_split(y, test_fraction, seed, func=func)
        x_train, y_train = x[train_idx], y[train_idx]
        x_test, y_test = x[test_idx], y[test_idx]
        split_seed = seed
    else:
        raise ValueError(
            f"{func}: expected keys 'x' and 'y', or 'x_train', 'y_train', "
            f"'x_test' and 'y_test' in {path}, got {sorted(arrays)}."
        )
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    return Dataset(x_train, y_train, x_test, y_test, "npz", num_classes, split_seed)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
) -> Dataset:
    """Loads a data set by name.

    Args:
        name: one of `"digits"`, `"mnist"`, `"fashion_mnist"`, `"cifar10"`,
            `"npz"`.
        data_dir: the directory holding the files (MNIST, Fashion-MNIST,
            CIFAR-10), or the `.npz` file itself for `"npz"`; ignored for
            `"digits"`, which ships with scikit-learn.
        seed: the split seed for `"digits"` and for an unsplit `"npz"`; the other
            data sets come pre-split.
        test_fraction: the held-out fraction where a split is made.

    Returns:
        The `Dataset`, images of shape `(N, C, H, W)` float32 in [0, 1].

    Raises:
        ValueError: for an unknown name or a missing `data_dir`.
        FileNotFoundError: if the files are not where `data_dir` says.
    """
    func = "load_dataset"
    if name not in DATASET_NAMES:
        raise ValueError(
            f"{func}: expected a name in {DATASET_NAMES}, got {name!r}. For other "
            "data, save arrays x and y to a .npz file and use name='npz'."
        )
    if name == "digits":
        return load_digits(seed=seed, test_fraction=test_fraction)
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
