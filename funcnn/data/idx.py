"""MNIST-style IDX files, raw or gzip-compressed, and the MNIST loader.

The IDX format is a 4-byte magic number `0x0000TTDD` (TT: element type, 0x08 for
uint8; DD: the number of dimensions), DD big-endian int32 sizes, then the elements
in row-major order. The header therefore says exactly how many payload bytes
follow, and `read_idx` never reads (or, for `.gz`, decompresses) more than that
plus one byte: a file that holds more is refused without being inflated.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from funcnn.data.base import Dataset, check_dir, checked_dataset, short_repr

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Decompressed bytes read per call, so memory follows what the file really holds.
_CHUNK = 1 << 20


def _read_at_most(f, limit: int) -> bytearray:
    """Reads up to `limit` bytes from `f` in chunks; fewer only at end of file."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = f.read(min(_CHUNK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_header(f, path: Path, func: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Reads the magic number and sizes; returns (dims, dtype, header bytes)."""
    magic = f.read(4)
    if len(magic) < 4:
        raise ValueError(
            f"{func}: expected at least a 4-byte IDX magic number in {path}, got "
            f"{len(magic)} bytes. The file is truncated."
        )
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{func}: expected an IDX magic number such as 0x00000803 (uint8, "
            f"3-D) in {path}, got 0x{struct.unpack('>I', magic)[0]:08X}. "
            "This is not an (uncompressed) IDX file."
        )
    header_len = 4 + 4 * ndim
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(
            f"{func}: expected a {header_len}-byte IDX header in {path}, got "
            f"{4 + len(sizes)} bytes. The file is truncated."
        )
    dims = struct.unpack(f">{ndim}i", sizes)
    if any(d < 0 for d in dims):
        raise ValueError(
            f"{func}: expected non-negative IDX dimensions in {path}, got {dims}."
        )
    return dims, _IDX_DTYPES[type_code], header_len


def read_idx(path: str | os.PathLike, *, func: str = "read_idx") -> np.ndarray:
    """Reads one IDX file, raw or gzip-compressed (by a `.gz` suffix).

    The payload size the header declares is checked before the payload is read:
    against the file size for a raw file, and while decompressing for a `.gz`
    file, which is never inflated past that size plus one byte.

    Args:
        path: the file to read.
        func: the name of the caller, used in error messages.

    Returns:
        The array, with the shape given in the header and a native-endian dtype.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a bad magic number, a truncated header, a damaged `.gz`
            stream, or a payload whose length differs from what the header
            promises (including sizes too large to exist).
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            dims, dtype, header_len = _parse_header(f, path, func)
            # Python ints: a header whose sizes multiply past 2**63 gets a
            # clear size mismatch below instead of a wrapped-around count.
            expected = math.prod(dims) * dtype.itemsize
            if gz:
                payload = _read_at_most(f, expected + 1)
                actual = len(payload)
            else:
                payload = bytearray()
                actual = os.fstat(f.fileno()).st_size - header_len
                if actual == expected:
                    payload = _read_at_most(f, expected)
                    actual = len(payload)
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(
            f"{func}: expected a readable IDX file at {path}, got "
            f"{short_repr(err)}. The file is damaged; download it again."
        ) from err
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        # A .gz file is decompressed only one byte past the promised size.
        got = f"at least {actual}" if gz and actual > expected else str(actual)
        raise ValueError(
            f"{func}: expected {expected} payload bytes for dims {dims} in {path}, "
            f"got {got} bytes. The file is {what}; download it again."
        )
    data = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


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


def _idx_pair(data_dir: Path, split: str, func: str):
    """Reads one split: (images (N, 1, H, W) float32, labels, x path, y path)."""
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
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels, str(x_path), str(y_path)


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
        ValueError: for an unknown kind, a malformed file, an empty split,
            labels outside [0, 10), or test images of another size than the
            training images.
    """
    func = "load_mnist"
    if kind not in ("mnist", "fashion_mnist"):
        raise ValueError(
            f"{func}: expected kind 'mnist' or 'fashion_mnist', got {kind!r}."
        )
    path = check_dir(data_dir, func, "the MNIST IDX files")
    train = _idx_pair(path, "train", func)
    test = _idx_pair(path, "test", func)
    return checked_dataset(func, kind, 10, -1, train, test)
