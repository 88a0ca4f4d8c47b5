"""Tests for the loaders' defences: CIFAR-10 pickles that cannot run code, the
binary CIFAR-10 version, bounded `.gz` reads, and the checks every loader runs
(empty splits, non-finite pixels, labels out of range, mismatched image sizes)."""

import gzip
import os
import pickle
import shlex
import struct
import tracemalloc

import numpy as np
import pytest
from test_data import idx_bytes, write_cifar, write_idx, write_mnist

from funcnn.data import load_cifar10, load_dataset, load_mnist, load_npz, read_idx

TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]
ALL_NAMES = [*TRAIN_NAMES, "test_batch"]

# --------------------------------------------------------------------------
# Writers of both CIFAR-10 versions, from the format descriptions on the
# CIFAR-10 page: a pickled dict per batch, or 1 + 3072 bytes per record.


def cifar_batch(rng, n, name):
    return {
        b"batch_label": f"{name} of 6".encode(),
        b"data": rng.integers(0, 256, (n, 3072), np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
    }


def py2_pickle(batch) -> bytes:
    """A batch as Python 2's cPickle (protocol 2) wrote the official files.

    Hand-assembled opcodes: Python 2 str values (SHORT_BINSTRING, BINSTRING),
    which Python 3 reads back as bytes, and numpy's array reduction under its
    numpy 1 module path, numpy.core.multiarray._reconstruct.
    """

    def text(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + long(b)

    def long(b):
        return struct.pack("<i", len(b)) + b

    def num(v):
        return b"J" + struct.pack("<i", v)

    data = batch[b"data"]
    out = b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
    out += text(b"batch_label") + text(batch[b"batch_label"])
    out += text(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += num(0) + b"\x85" + text(b"b") + b"\x87R("  # _reconstruct(ndarray, (0,), b)
    out += num(1) + num(data.shape[0]) + num(data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + text(b"u1") + num(0) + num(1) + b"\x87R("
    out += num(3) + text(b"|") + b"NNN" + num(-1) + num(-1) + num(0) + b"tb"
    out += b"\x89" + b"T" + long(data.tobytes()) + b"tb"  # (1, shape, dt, 0, str)
    out += text(b"labels") + b"](" + b"".join(map(num, batch[b"labels"])) + b"e"
    out += text(b"filenames") + b"](" + b"".join(map(text, batch[b"filenames"]))
    return out + b"eu."  # APPENDS, SETITEMS, STOP


def write_cifar_binary(directory, rng, n=3):
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ALL_NAMES:
        labels = rng.integers(0, 10, n, np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), np.uint8)
        (directory / f"{name}.bin").write_bytes(
            np.column_stack([labels, pixels]).tobytes()
        )
        written[name] = (pixels, labels)
    return written


def assert_pixels_equal(images, rows):
    """float32 images (N, 3, 32, 32) in [0, 1] against uint8 rows (N, 3072)."""
    np.testing.assert_array_equal(
        np.round(images.reshape(len(rows), -1) * 255).astype(np.uint8), rows
    )


# --------------------------------------------------------------------------
# Security: a CIFAR-10 file never runs code.


class Payload:
    """Unpickles as call(*args): the way a malicious pickle runs code."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def payloads(marker):
    return {
        "os.system": Payload(os.system, (f"touch {shlex.quote(str(marker))}",)),
        "open": Payload(open, (str(marker), "w")),
    }


@pytest.mark.parametrize("kind", ["os.system", "open"])
@pytest.mark.parametrize("where", ["labels", "whole"])
def test_cifar_malicious_pickle_is_refused_and_never_runs(tmp_path, kind, where):
    marker = tmp_path / "marker"
    payload = payloads(marker)[kind]
    write_cifar(tmp_path, np.random.default_rng(0))
    batch = cifar_batch(np.random.default_rng(1), 2, "data_batch_2")
    if where == "labels":
        batch[b"labels"] = payload
    blob = pickle.dumps(batch if where == "labels" else payload)
    (tmp_path / "data_batch_2").write_bytes(blob)
    qualname = f"{payload.call.__module__}.{payload.call.__name__}"
    with pytest.raises(ValueError, match=rf"data_batch_2 .*{qualname}.* refused"):
        load_cifar10(tmp_path)
    assert not marker.exists()
    # The payload is real: a plain pickle.load runs it.
    loaded = pickle.loads(blob)
    result = loaded if where == "whole" else loaded[b"labels"]
    if kind == "open":
        result.close()
    assert marker.exists()


def test_cifar_refuses_every_global_outside_the_numpy_array_ones(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    batch = cifar_batch(np.random.default_rng(1), 2, "test_batch")
    batch[b"labels"] = [np.int64(1), np.int64(2)]  # numpy scalars: not in the files
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"test_batch .*global numpy.*scalar"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------
# Both real formats, written here and compared pixel for pixel.


@pytest.mark.parametrize("protocol", ["py2", 2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar_python_version_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(3)
    where = tmp_path / "cifar-10-batches-py"
    where.mkdir()
    written = {}
    for i, name in enumerate(ALL_NAMES):
        written[name] = cifar_batch(rng, 2 + i, name)
        blob = (
            py2_pickle(written[name])
            if protocol == "py2"
            else pickle.dumps(written[name], protocol=protocol)
        )
        (where / name).write_bytes(blob)
    ds = load_cifar10(tmp_path)
    assert ds.x_train.shape == (2 + 3 + 4 + 5 + 6, 3, 32, 32)
    assert_pixels_equal(
        ds.x_train, np.concatenate([written[n][b"data"] for n in TRAIN_NAMES])
    )
    assert_pixels_equal(ds.x_test, written["test_batch"][b"data"])
    train_labels = sum((written[n][b"labels"] for n in TRAIN_NAMES), [])
    np.testing.assert_array_equal(ds.y_train, train_labels)
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][b"labels"])
    # The planes are R, G, B: pixel (row 1, col 2) of green is byte 1024 + 34.
    assert ds.x_test[1, 1, 1, 2] * 255 == pytest.approx(
        written["test_batch"][b"data"][1, 1024 + 32 + 2], abs=1e-4
    )


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar_binary_version_round_trip(tmp_path, subdir):
    where = tmp_path / "cifar-10-batches-bin" if subdir else tmp_path
    written = write_cifar_binary(where, np.random.default_rng(4))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.y_train.dtype == np.int32
    assert_pixels_equal(
        ds.x_train, np.concatenate([written[n][0] for n in TRAIN_NAMES])
    )
    np.testing.assert_array_equal(
        ds.y_train, np.concatenate([written[n][1] for n in TRAIN_NAMES])
    )
    assert_pixels_equal(ds.x_test, written["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])
    assert (ds.name, ds.num_classes, ds.seed) == ("cifar10", 10, -1)


def test_cifar_binary_version_wins_over_pickles(tmp_path):
    written = write_cifar_binary(tmp_path, np.random.default_rng(5))
    marker = tmp_path / "marker"
    write_cifar(tmp_path, np.random.default_rng(6))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(payloads(marker)["open"]))
    ds = load_cifar10(tmp_path)
    assert_pixels_equal(ds.x_test, written["test_batch"][0])
    assert not marker.exists()


def test_cifar_binary_bad_files(tmp_path):
    write_cifar_binary(tmp_path, np.random.default_rng(7))
    path = tmp_path / "data_batch_4.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"3073-byte records .*data_batch_4.bin"):
        load_cifar10(tmp_path)
    record = bytearray((tmp_path / "test_batch.bin").read_bytes())
    path.write_bytes(record)
    record[3073] = 10  # the label byte of the second record
    (tmp_path / "test_batch.bin").write_bytes(record)
    with pytest.raises(ValueError, match=r"labels in \[0, 10\) in .*test_batch.bin"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"at least one image in .*test_batch.bin"):
        load_cifar10(tmp_path)


def test_cifar_damaged_pickle_message_is_capped(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    # A BINUNICODE opcode over 600 KB that is not UTF-8: the decoder's error
    # repr holds all of it.
    blob = b"\x80\x02X" + struct.pack("<I", 600_000) + b"\xff" * 600_000 + b"."
    (tmp_path / "data_batch_1").write_bytes(blob)
    with pytest.raises(ValueError, match=r"data_batch_1, got UnicodeDecodeError") as e:
        load_cifar10(tmp_path)
    assert len(str(e.value)) < 1000
    assert "more characters" in str(e.value)


def test_cifar_label_out_of_range_names_the_batch(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    batch = cifar_batch(np.random.default_rng(1), 3, "data_batch_5")
    batch[b"labels"] = [0, -1, 4]
    (tmp_path / "data_batch_5").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"\[0, 10\) in .*data_batch_5.*-1 to 4"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------
# IDX files: bounded decompression and clear size errors.


def test_gz_idx_is_never_inflated_past_its_header(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    payload_mb = 64
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_bytes(np.zeros((2, 2, 2), np.uint8)))  # promises 8 bytes
        zeros = bytes(1 << 20)
        for _ in range(payload_mb):
            f.write(zeros)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"at least 9 bytes.*longer than"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A full read would hold the 64 MB payload; the bounded one a few KB.
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while reading {path}"


def test_gz_idx_round_trip_of_a_large_payload(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (40, 160, 200), np.uint8)
    write_idx(tmp_path / "big", array, gz=True)  # 1.28 MB: more than one chunk
    np.testing.assert_array_equal(read_idx(tmp_path / "big.gz"), array)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_overflowing_header_names_the_file(tmp_path, gz):
    # 65536**4 = 2**64 elements: an int64 product wraps around to 0.
    header = struct.pack(">HBB4i", 0, 0x08, 4, *[65536] * 4)
    path = tmp_path / ("huge.gz" if gz else "huge")
    path.write_bytes(gzip.compress(header) if gz else header)
    with pytest.raises(ValueError, match=r"18446744073709551616 payload bytes .*huge"):
        read_idx(path)


def test_mnist_test_images_of_another_size(tmp_path):
    rng = np.random.default_rng(0)
    write_mnist(tmp_path, rng, hw=(5, 3))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 6, 6), np.uint8))
    with pytest.raises(
        ValueError,
        match=r"\(1, 5, 3\) in .*train-images-idx3-ubyte and \(1, 6, 6\) in "
        r".*t10k-images-idx3-ubyte",
    ):
        load_mnist(tmp_path)


def test_mnist_with_no_images(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0), n_train=0)
    with pytest.raises(
        ValueError, match=r"at least one image in .*train-images.*holds no images"
    ):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------
# npz files.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_pixels_are_refused(tmp_path, bad):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 4, 4)).astype(np.float32)
    x[7, 0, 1, 2] = bad
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 3)
    with pytest.raises(
        ValueError,
        match=r"finite pixel values in 'x' in .*d\.npz.* 1 image\(s\), the first "
        r"at index 7",
    ):
        load_npz(tmp_path / "d.npz")


def test_npz_non_finite_pixels_in_a_presplit_test_set(tmp_path):
    x_test = np.zeros((3, 2, 2), np.float64)
    x_test[2, 1, 1] = np.nan
    x_test[0, 0, 0] = np.inf
    np.savez(
        tmp_path / "s.npz",
        x_train=np.zeros((4, 2, 2)),
        y_train=np.arange(4),
        x_test=x_test,
        y_test=np.arange(3),
    )
    with pytest.raises(ValueError, match=r"'x_test' .*got 1 NaN and 1 infinite"):
        load_npz(tmp_path / "s.npz")


@pytest.mark.parametrize("empty", ["x", "x_train", "x_test"])
def test_npz_with_no_images(tmp_path, empty):
    if empty == "x":
        arrays = {"x": np.zeros((0, 1, 8, 8)), "y": np.zeros(0, int)}
    else:
        arrays = {
            "x_train": np.zeros((5, 1, 8, 8)),
            "y_train": np.arange(5),
            "x_test": np.zeros((2, 1, 8, 8)),
            "y_test": np.arange(2),
        }
        arrays[empty] = np.zeros((0, 1, 8, 8))
        arrays["y" + empty[1:]] = np.zeros(0, int)
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(
        ValueError, match=rf"at least one image in '{empty}' .*got 0 \(shape \(0, 1"
    ):
        load_npz(tmp_path / "e.npz")


def test_npy_passed_as_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match=r"a \.npz archive at .*single \.npy array"):
        load_npz(tmp_path / "x.npy")


def test_npz_labels_too_large_for_int32(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2)), y=np.array([0, 1, 2**32, 1]))
    with pytest.raises(ValueError, match=r"below 2147483647 in 'y' .*0 to 4294967296"):
        load_npz(tmp_path / "d.npz")


def test_cifar_array_larger_than_its_file_is_refused(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    # {b"data": ndarray.__new__(ndarray, (20000, 3072), "u1"), b"labels": []}:
    # an array the pickle allocates (NEWOBJ) instead of reading, 61 MB from a
    # file of 60 bytes.
    blob = (
        b"\x80\x04}(C\x04data\x8c\x05numpy\x8c\x07ndarray\x93"
        + b"M\x20\x4eM\x00\x0c\x86\x8c\x02u1\x86\x81"
        + b"C\x06labels]u."
    )
    (tmp_path / "data_batch_3").write_bytes(blob)
    with pytest.raises(ValueError, match=r"read from .*data_batch_3, got an array of"):
        load_cifar10(tmp_path)
