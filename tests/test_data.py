"""Tests for funcnn.data: loaders on tiny real-format files, splits, batching."""

import gzip
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcnn.data import (
    Dataset,
    batches,
    fit_normalizer,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist,
    load_npz,
    normalize,
    num_batches,
    read_idx,
    stratified_split,
)

# --------------------------------------------------------------------------
# Writers for the on-disk formats, built from the format descriptions.


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    magic = struct.pack(">HBB", 0, type_code, array.ndim)
    dims = struct.pack(f">{array.ndim}i", *array.shape)
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return magic + dims + big_endian.tobytes()


def write_idx(path, array, gz=False):
    data = idx_bytes(array)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(directory, rng, n_train=6, n_test=4, hw=(5, 3), gz=False):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array, gz=gz)
    return arrays


def write_cifar(directory, rng, n=3):
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = batch
    return written


# --------------------------------------------------------------------------
# Digits and the stratified split.


def test_digits_shapes_dtypes_range():
    ds = load_digits(seed=0)
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_test.shape == (359,)
    assert (ds.name, ds.num_classes, ds.seed) == ("digits", 10, 0)
    both = np.concatenate([ds.x_train, ds.x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    # The raw values are the integers 0..16, so x * 16 must be whole numbers.
    np.testing.assert_array_equal(both * 16, np.round(both * 16))


def test_digits_split_is_a_partition_of_sklearn_data():
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    ds = load_digits(seed=3)
    ours = np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 64) * 16
    ours_y = np.concatenate([ds.y_train, ds.y_test])
    rows = np.column_stack([ours, ours_y])
    ref = np.column_stack([bunch.data, bunch.target])
    # Same multiset of (image, label) rows: compare after a lexicographic sort.
    np.testing.assert_array_equal(
        rows[np.lexsort(rows.T[::-1])], ref[np.lexsort(ref.T[::-1])]
    )


def test_digits_split_is_stratified():
    ds = load_digits(seed=1)
    p_train = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
    p_test = np.bincount(ds.y_test, minlength=10) / len(ds.y_test)
    np.testing.assert_allclose(p_train, p_test, atol=0.01)


def test_digits_split_is_deterministic_and_seeded():
    a, b, c = load_digits(seed=7), load_digits(seed=7), load_digits(seed=8)
    for x, y in zip(a[:4], b[:4], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_test, c.y_test) or not np.array_equal(
        a.x_test, c.x_test
    )
    assert c.seed == 8


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(
    labels=st.lists(st.integers(0, 4), min_size=4, max_size=60),
    frac=st.floats(0.1, 0.6),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_properties(labels, frac, seed):
    y = np.array(labels)
    n_test = int(round(len(y) * frac))
    if not 1 <= n_test <= len(y) - 1:
        return
    train, test = stratified_split(y, frac, seed)
    assert len(test) == n_test
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, test])), np.arange(len(y))
    )
    for c in np.unique(y):
        n_c = np.sum(y == c)
        # Largest-remainder rounding moves each class count by less than one.
        assert abs(np.sum(y[test] == c) - n_c * n_test / len(y)) < 1.0
    train2, test2 = stratified_split(y, frac, seed)
    np.testing.assert_array_equal(test, test2)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match=r"expected test_fraction in the open"):
        stratified_split(np.arange(10) % 2, frac, 0)


def test_stratified_split_rejects_empty_side():
    with pytest.raises(ValueError, match=r"0 test examples out of 2"):
        stratified_split(np.array([0, 1]), 0.1, 0)


def test_digits_rejects_negative_seed():
    with pytest.raises(ValueError, match=r"load_digits: expected a non-negative seed"):
        load_digits(seed=-1)


# --------------------------------------------------------------------------
# MNIST IDX files.


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    arrays = write_mnist(tmp_path, np.random.default_rng(0), gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x_train.shape == (6, 1, 5, 3) and ds.x_test.shape == (4, 1, 5, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(
        ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"].astype(np.float32)
    )
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte"] / 255)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert (ds.name, ds.num_classes, ds.seed) == ("mnist", 10, -1)


def test_mnist_prefers_raw_over_gz(tmp_path):
    raw = write_mnist(tmp_path, np.random.default_rng(1), gz=False)
    write_mnist(tmp_path, np.random.default_rng(2), gz=True)
    ds = load_mnist(tmp_path, kind="fashion_mnist")
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte"])
    assert ds.name == "fashion_mnist"


def test_read_idx_hand_written_header(tmp_path):
    # magic 0x00000C02: big-endian int32, 2-D, shape (2, 2).
    path = tmp_path / "ints.idx"
    path.write_bytes(
        bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 2])
        + struct.pack(">4i", 1, -2, 300, 70000)
    )
    np.testing.assert_array_equal(read_idx(path), [[1, -2], [300, 70000]])


def test_mnist_truncated_file(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"expected 60 payload bytes .* got 53 bytes"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path)


def test_mnist_truncated_header(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")
    with pytest.raises(ValueError, match=r"expected a 8-byte IDX header"):
        load_mnist(tmp_path)


def test_mnist_bad_magic(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match=r"magic number .* got 0x12340803"):
        load_mnist(tmp_path)


def test_mnist_labels_swapped_for_images(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(ValueError, match=r"expected uint8 images of rank 3"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"as many labels as images, got 5 .* and 6"):
        load_mnist(tmp_path)


def test_mnist_corrupt_gz(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0), gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"readable IDX file .*train-images"):
        load_mnist(tmp_path)


def test_mnist_missing_directory_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere, which does not exist"):
        load_mnist(missing)
    write_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"
    ):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------
# CIFAR-10 pickled batches.


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar_round_trip(tmp_path, subdir):
    where = tmp_path / "cifar-10-batches-py" if subdir else tmp_path
    written = write_cifar(where, np.random.default_rng(0))
    ds = load_cifar10(tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    b2 = written["data_batch_2"][b"data"]
    # Image 1 of batch 2 is training example 3 + 1; rows hold the R, G, B
    # planes of 1024 pixels each, row-major.
    assert ds.x_train[4, 0, 0, 0] == np.float32(b2[1, 0] / 255)
    assert ds.x_train[4, 1, 1, 2] == np.float32(b2[1, 1024 + 32 + 2] / 255)
    assert ds.x_train[4, 2, 31, 31] == np.float32(b2[1, 3071] / 255)
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][b"labels"])
    test_data = written["test_batch"][b"data"]
    np.testing.assert_allclose(ds.x_test.reshape(3, -1) * 255, test_data, atol=1e-4)
    assert (ds.name, ds.num_classes, ds.seed) == ("cifar10", 10, -1)


def test_cifar_wrong_keys(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"images": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(
        ValueError, match=r"keys b'data' and b'labels' in .*data_batch_3"
    ):
        load_cifar10(tmp_path)


def test_cifar_wrong_shape(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\) in .*test_batch"):
        load_cifar10(tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"expected 2 integer b'labels'"):
        load_cifar10(tmp_path)


def test_cifar_damaged_pickle(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    path = tmp_path / "data_batch_1"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"pickled CIFAR-10 batch in .*data_batch_1"):
        load_cifar10(tmp_path)


def test_cifar_missing_files(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_1, .*test_batch in "):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------
# npz files.


def test_npz_unsplit_grey_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4), np.uint8)
    y = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz", seed=5, test_fraction=0.25)
    assert ds.x_train.shape == (30, 1, 4, 4) and ds.x_test.shape == (10, 1, 4, 4)
    assert (ds.num_classes, ds.seed, ds.name) == (4, 5, "npz")
    # Quotas are 2.5 per class; largest remainder with ties broken by class
    # order gives the two leftover slots to classes 0 and 1.
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=4), [3, 3, 2, 2])
    # Every (image, label) pair survives the split unchanged.
    got = {
        (bytes(np.round(a[0] * 255).astype(np.uint8)), int(b))
        for a, b in zip(
            np.concatenate([ds.x_train, ds.x_test]),
            np.concatenate([ds.y_train, ds.y_test]),
            strict=True,
        )
    }
    assert got == {(bytes(a), int(b)) for a, b in zip(x, y, strict=True)}
    again = load_npz(tmp_path / "d.npz", seed=5, test_fraction=0.25)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_npz_presplit_float(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.standard_normal((5, 2, 3, 3)).astype(np.float64),
        "y_train": np.array([0, 1, 2, 1, 0]),
        "x_test": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
        "y_test": np.array([6, 1], np.uint8),
    }
    np.savez(tmp_path / "s.npz", **arrays)
    ds = load_dataset("npz", tmp_path / "s.npz", seed=3)
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, [6, 1])
    assert ds.y_test.dtype == np.int32 and ds.x_test.dtype == np.float32
    assert (ds.num_classes, ds.seed) == (7, -1)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2, 2))}, r"expected keys 'x' and 'y', or .*got \['x'\]"),
        ({"x_train": np.zeros((4, 2, 2)), "y": np.zeros(4, int)}, r"expected keys"),
        ({"x": np.zeros((4, 2, 2)), "y": np.zeros(3, int)}, r"one label per image"),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros(4, int)},
            r"rank 4 .* got shape \(4, 2\)",
        ),
        ({"x": np.zeros((4, 2, 2)), "y": np.zeros(4)}, r"expected integer 'y'"),
        ({"x": np.zeros((4, 2, 2)), "y": -np.ones(4, int)}, r"non-negative labels"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.npz, which does not exist"):
        load_npz(tmp_path / "nope.npz")


# --------------------------------------------------------------------------
# The dispatcher.


def test_load_dataset_dispatch(tmp_path):
    for a, b in zip(
        load_dataset("digits", seed=4)[:4], load_digits(4)[:4], strict=True
    ):
        np.testing.assert_array_equal(a, b)
    write_mnist(tmp_path, np.random.default_rng(0))
    assert load_dataset("fashion_mnist", tmp_path).name == "fashion_mnist"
    assert load_dataset("mnist", str(tmp_path)).x_train.shape == (6, 1, 5, 3)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected a name in .*got 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"expected data_dir for 'mnist', got None"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=r"the CIFAR-10 python batches"):
        load_dataset("cifar10", tmp_path / "missing")


# --------------------------------------------------------------------------
# Batching.


def ids(n):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)


def collect(*args, **kwargs):
    return [(bx.copy(), by.copy()) for bx, by in batches(*args, **kwargs)]


def test_batches_deterministic_per_seed_and_epoch():
    x, y = ids(50)
    a = collect(x, y, 8, seed=1, epoch=3)
    for _ in batches(x, y, 8, seed=1, epoch=0):
        pass  # Iterating other epochs first must not change epoch 3.
    b = collect(x, y, 8, seed=1, epoch=3)
    for (ax, ay), (bx, by) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ax, bx)
        np.testing.assert_array_equal(ay, by)
    other_epoch = collect(x, y, 8, seed=1, epoch=4)
    other_seed = collect(x, y, 8, seed=2, epoch=3)
    assert not np.array_equal(a[0][1], other_epoch[0][1])
    assert not np.array_equal(a[0][1], other_seed[0][1])
    # The order is exactly default_rng([seed, epoch]).permutation(n).
    order = np.random.default_rng([1, 3]).permutation(50)
    np.testing.assert_array_equal(np.concatenate([by for _, by in a]), order[:48])


@pytest.mark.parametrize(("n", "bs"), [(10, 3), (12, 4), (1, 5), (7, 7)])
def test_batches_cover_every_example_once_without_drop_last(n, bs):
    x, y = ids(n)
    got = collect(x, y, bs, seed=0, epoch=1, drop_last=False)
    assert len(got) == num_batches(n, bs, drop_last=False) == -(-n // bs)
    assert all(len(by) == bs for _, by in got[:-1]) and 1 <= len(got[-1][1]) <= bs
    seen = np.concatenate([by for _, by in got])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for bx, by in got:  # x and y stay paired
        np.testing.assert_array_equal(bx[:, 0], 2 * by)


def test_batches_drop_last_and_no_shuffle():
    x, y = ids(10)
    got = collect(x, y, 3, seed=0, epoch=0, shuffle=False)
    assert len(got) == num_batches(10, 3) == 3
    np.testing.assert_array_equal(np.concatenate([by for _, by in got]), np.arange(9))


@pytest.mark.parametrize("bs", [0, -2])
def test_batches_bad_batch_size(bs):
    x, y = ids(4)
    with pytest.raises(
        ValueError, match=rf"batches: expected batch_size > 0, got {bs}"
    ):
        batches(x, y, bs, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"num_batches: expected batch_size > 0"):
        num_batches(4, bs)


def test_batches_other_errors():
    x, y = ids(4)
    with pytest.raises(TypeError, match=r"expected batch_size to be an int, got float"):
        batches(x, y, 2.0, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"same leading length N, got shapes"):
        batches(x, y[:3], 2, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"at least batch_size=5 examples"):
        batches(x, y, 5, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"expected a non-negative epoch, got -1"):
        batches(x, y, 2, seed=0, epoch=-1)


def test_normalizer_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 5.0, 0.1]).reshape(1, 3, 1, 1)
    offset = np.array([0.5, -3.0, 10.0]).reshape(1, 3, 1, 1)
    x = (rng.standard_normal((20, 3, 6, 6)) * scale + offset).astype(np.float32)
    norm = fit_normalizer(x)
    assert norm.mean.shape == norm.std.shape == (3,)
    ref_mean = [x[:, c].astype(np.float64).mean() for c in range(3)]
    np.testing.assert_allclose(norm.mean, ref_mean, rtol=1e-6)
    z = normalize(x, norm.mean, norm.std)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(norm.apply(x), z)


def test_normalizer_constant_channel_and_errors():
    x = np.ones((2, 2, 3, 3), np.float32)
    x[:, 1] = np.arange(9).reshape(3, 3)
    norm = fit_normalizer(x)
    assert norm.std[0] == 1.0
    np.testing.assert_array_equal(normalize(x, norm.mean, norm.std)[:, 0], 0.0)
    with pytest.raises(ValueError, match=r"fit_normalizer: expected a non-empty"):
        fit_normalizer(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match=r"mean and std of shape \(2,\)"):
        normalize(x, np.zeros(3), np.ones(3))


def test_augment_batches_draws_each_batch_from_seed_epoch_and_index():
    from funcnn.data import augment_batches, random_crop_flip, random_shift

    x = np.arange(3 * 4 * 1 * 6 * 6, dtype=np.float32).reshape(12, 1, 6, 6)
    y = np.arange(12)
    pairs = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    fill = np.array([-0.5], np.float32)
    # The same draws made by hand: batch i of epoch 3 from default_rng([7, 3, i]).
    for augment, by_hand in (
        ("shift", lambda xb, rng: random_shift(xb, rng, 0.5, fill)),
        ("crop-flip", lambda xb, rng: random_crop_flip(xb, rng, pad=2, fill=fill)),
        ("none", lambda xb, rng: xb),
    ):
        got = list(
            augment_batches(
                iter(pairs), augment, seed=7, epoch=3, fill=fill, shift=0.5, pad=2
            )
        )
        assert len(got) == len(pairs)
        for i, ((xa, ya), (xb, yb)) in enumerate(zip(got, pairs, strict=True)):
            want = by_hand(xb, np.random.default_rng([7, 3, i]))
            np.testing.assert_array_equal(xa, want, err_msg=f"{augment} batch {i}")
            np.testing.assert_array_equal(ya, yb)
    # Another epoch draws other offsets.
    first = next(augment_batches(iter(pairs), "shift", seed=7, epoch=4, fill=fill))
    assert not np.array_equal(
        first[0], random_shift(x[:4], np.random.default_rng([7, 3, 0]), 0.5, fill)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(augment="flip"), r"augment_batches: expected augment in .*got 'flip'"),
        (
            dict(augment="shift", shift=2.0),
            r"augment_batches: expected 0 <= shift <= 1, got 2.0",
        ),
    ],
)
def test_augment_batches_refuses_bad_settings_at_the_call(kwargs, match):
    from funcnn.data import augment_batches

    with pytest.raises(ValueError, match=match):
        augment_batches(iter([]), seed=0, epoch=0, **kwargs)
