"""CIFAR-10 from its python batches (read without running code) or binary batches.

The python version (`cifar-10-python.tar.gz`) holds pickles, and a plain
`pickle.load` runs whatever code a pickle names. Here the batches go through an
unpickler that admits only what those files contain: dicts, lists, bytes, str and
int, plus the numpy calls that rebuild a uint8 array. A pickle that names any
other global is refused before that global is even imported.

The binary version (`cifar-10-binary.tar.gz`) needs no unpickling at all: each
record is one label byte and 3,072 pixel bytes. When both versions are present,
the binary one is read.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from funcnn.data.base import (
    Dataset,
    check_dir,
    check_images,
    check_labels,
    short_repr,
    short_text,
)

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR10_BIN_SUBDIR = "cifar-10-batches-bin"
# One record of the binary version: a label byte, then the R, G, B planes.
_RECORD = 1 + 3 * 32 * 32


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Python 3 pickles bytes for protocols 0-2 as _codecs.encode(text, "latin1").
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"_codecs.encode is admitted only as (str, 'latin1'), got encoding "
            f"{short_repr(encoding)}"
        )
    return text.encode("latin1")


# The globals a CIFAR-10 batch may name, mapped to what they load as. The numpy
# functions are taken from the reductions numpy itself emits, so they are the
# real ones whichever numpy wrote or reads the file, and no deprecated module
# path (numpy.core) is imported to find them.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer
_ADMITTED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_bytes,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global that a CIFAR-10 batch never holds."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are those of `_ADMITTED`."""

    def find_class(self, module, name):
        found = _ADMITTED.get((module, name))
        if found is None:
            raise RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not admitted")


def _unpickle_batch(path: Path, func: str):
    try:
        raw = path.read_bytes()
        # Python 2 wrote the real files: its str become bytes, as in b"data".
        return _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except OSError:
        raise
    except RefusedGlobal as err:
        raise ValueError(
            f"{func}: expected a CIFAR-10 python batch in {path} holding only "
            "dicts, lists, bytes, str, ints and numpy arrays, got a pickle that "
            f"names the global {short_text(err.qualname)}, which was refused: the "
            "real batches never name it, and unpickling a global can run code. "
            "Use the official files, or the binary version "
            "(cifar-10-binary.tar.gz), which needs no unpickling."
        ) from None
    except Exception as err:  # unpickling fails in many ways on a damaged file
        raise ValueError(
            f"{func}: expected a pickled CIFAR-10 batch in {path}, got "
            f"{short_repr(err)}. The file is damaged; download it again."
        ) from None


def _read_python_batch(path: Path, func: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_batch(path, func)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = (
            short_repr(sorted(map(repr, batch)))
            if isinstance(batch, dict)
            else type(batch).__name__
        )
        raise ValueError(
            f"{func}: expected a dict with keys b'data' and b'labels' in {path}, "
            f"got {found}. Use the python version of CIFAR-10 "
            "(cifar-10-python.tar.gz)."
        )
    data = batch[b"data"]
    labels = batch[b"labels"]
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
    if data.nbytes > path.stat().st_size:
        # Only an array built empty by the pickle, not read from it, is larger
        # than its file; refuse it before its memory is touched.
        raise ValueError(
            f"{func}: expected b'data' read from {path}, got an array of "
            f"{data.nbytes} bytes in a file of {path.stat().st_size}. The file is "
            "not a CIFAR-10 batch."
        )
    ok_list = isinstance(labels, list) and all(type(v) is int for v in labels)
    if not ok_list or len(labels) != data.shape[0]:
        got = f"{len(labels)} labels" if ok_list else type(labels).__name__
        raise ValueError(
            f"{func}: expected {data.shape[0]} integer b'labels' in {path}, got {got}."
        )
    return data, np.asarray(labels, dtype=np.int64)


def _read_binary_batch(path: Path, func: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % _RECORD:
        raise ValueError(
            f"{func}: expected a whole number of {_RECORD}-byte records (a label "
            f"byte and 3072 pixel bytes) in {path}, got {raw.size} bytes. The "
            "file is truncated or not a CIFAR-10 binary batch."
        )
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:], records[:, 0]


def _find_batches(root: Path, func: str) -> tuple[list[Path], bool]:
    """The six batch paths (train first), and whether they are binary."""
    py_names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    options = [
        (root, [f"{n}.bin" for n in py_names], True),
        (root / CIFAR10_BIN_SUBDIR, [f"{n}.bin" for n in py_names], True),
        (root, list(py_names), False),
        (root / CIFAR10_SUBDIR, list(py_names), False),
    ]
    for directory, names, binary in options:
        paths = [directory / n for n in names]
        if all(p.is_file() for p in paths):
            return paths, binary
    raise FileNotFoundError(
        f"{func}: expected the files {', '.join(py_names)} in {root} or in "
        f"{root / CIFAR10_SUBDIR} (python version), or the same names with .bin "
        f"in {root} or in {root / CIFAR10_BIN_SUBDIR} (binary version), found "
        "no complete set. Unpack cifar-10-python.tar.gz or "
        "cifar-10-binary.tar.gz there."
    )


def load_cifar10(data_dir: str | os.PathLike) -> Dataset:
    """Loads CIFAR-10 from its python or binary batches.

    Looks for the binary batches `data_batch_1.bin` ... `data_batch_5.bin` and
    `test_batch.bin` in `data_dir` and then in `data_dir/cifar-10-batches-bin`;
    failing those, for the python batches `data_batch_1` ... `data_batch_5` and
    `test_batch` in `data_dir` and then in `data_dir/cifar-10-batches-py` (where
    the archives unpack). Python batches are unpickled by an unpickler that
    refuses every global but the numpy array reconstruction, so a file cannot
    run code.

    Args:
        data_dir: the directory holding the batches, or their parent.

    Returns:
        A `Dataset` named `"cifar10"` with 10 classes and `seed=-1`: `x_train`
        of shape `(50000, 3, 32, 32)` and `x_test` of shape `(10000, 3, 32, 32)`
        for the real files, float32 pixel values / 255.

    Raises:
        FileNotFoundError: if no directory holds all six batches.
        ValueError: for a batch that names a refused global, is damaged, has
            the wrong keys, shapes or sizes, no images, or labels outside
            [0, 10).
    """
    func = "load_cifar10"
    root = check_dir(data_dir, func, "the CIFAR-10 python batches or binary batches")
    paths, binary = _find_batches(root, func)
    read = _read_binary_batch if binary else _read_python_batch
    xs, ys = [], []
    for path in paths:
        data, labels = read(path, func)
        # Each row holds the red, then green, then blue 32x32 plane, row-major.
        x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        # Checked batch by batch, so that a message names the file.
        check_images(x, str(path), func)
        check_labels(labels, 10, str(path), func)
        xs.append(x)
        ys.append(labels.astype(np.int32))
    return Dataset(
        x_train=np.concatenate(xs[:-1]),
        y_train=np.concatenate(ys[:-1]),
        x_test=xs[-1],
        y_test=ys[-1],
        name="cifar10",
        num_classes=10,
        seed=-1,
    )
