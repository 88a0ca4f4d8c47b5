"""Tests for funcnn.training.checkpoint: round trips, templates, corruption, crashes."""

import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import funcnn.training.checkpoint as ckpt
import funcnn.training.checkpoint_format as checkpoint_format
from funcnn.training.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)


class Layer(NamedTuple):
    w: object
    b: object


def make_tree(seed=0):
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    # A NaN with a payload: only a bit-exact round trip keeps it.
    f32.view(np.uint32)[0, 0] = 0x7FC0_1234
    return {
        "params": [
            Layer(w=jnp.asarray(f32), b=jnp.arange(4, dtype=jnp.bfloat16) / 3),
            {"w": rng.standard_normal((2, 2)), "scale": np.float16(1.5)},
        ],
        "opt": (jnp.int32(7), np.zeros((0, 3), np.float32), np.array([True, False])),
        "rng": jax.random.PRNGKey(42),
        "typed_key": jax.random.split(jax.random.key(3), 2),
        "counts": np.arange(-3, 3, dtype=np.int8),
        "big": np.array([2**40, -1], np.int64),
        "none_here": None,
    }


def leaf_bits(leaf):
    """(shape, dtype name, raw bytes) of a leaf; PRNG keys via their key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return (
            leaf.shape,
            str(leaf.dtype),
            np.asarray(jax.random.key_data(leaf)).tobytes(),
        )
    arr = np.asarray(leaf)
    return arr.shape, arr.dtype.name, arr.tobytes()


def assert_trees_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        assert leaf_bits(x) == leaf_bits(y)
        assert isinstance(x, jax.Array) == isinstance(y, jax.Array)


def test_round_trip_with_template_is_bit_identical(tmp_path):
    tree = make_tree()
    meta = {"step": 12, "epoch": 3, "config": {"lr": 0.1, "layers": [8, 16]}}
    save_checkpoint(tmp_path / "c.safetensors", tree, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "c.safetensors", like=make_tree(1))
    assert_trees_identical(loaded, tree)
    assert loaded_meta == meta
    assert isinstance(loaded["params"][0], Layer)
    assert loaded["typed_key"].dtype == tree["typed_key"].dtype
    # Restored jax leaves work in jitted code like the originals.
    fn = jax.jit(lambda p: p[0].w.sum() + p[0].b.astype(jnp.float32).sum())
    np.testing.assert_array_equal(fn(loaded["params"]), fn(tree["params"]))


def test_round_trip_without_template_is_flat_dict(tmp_path):
    tree = make_tree()
    save_checkpoint(tmp_path / "c.safetensors", tree)
    flat, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta == {}
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert list(flat) == [jax.tree_util.keystr(p) for p, _ in paths]
    assert "['params'][0].w" in flat and "['opt'][0]" in flat
    for (_, leaf), value in zip(paths, flat.values(), strict=True):
        assert leaf_bits(value) == leaf_bits(leaf)
    assert isinstance(flat["['counts']"], np.ndarray)


def test_file_is_plain_safetensors_with_manifest(tmp_path):
    tree = make_tree()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tree, {"step": 1})
    raw = safetensors.numpy.load_file(path)
    bf16 = np.asarray(tree["params"][0].b)
    assert raw["['params'][0].b"].dtype == np.uint16
    np.testing.assert_array_equal(raw["['params'][0].b"], bf16.view(np.uint16))
    np.testing.assert_array_equal(raw["['rng']"], np.asarray(tree["rng"]))
    assert (
        raw["['typed_key']"].shape == (2, 2) and raw["['typed_key']"].dtype == np.uint32
    )
    # The manifest sits in the header: 8-byte little-endian length, then JSON.
    manifest = json.loads(read_header(path)["__metadata__"]["manifest"])
    assert manifest["version"] == 2 and manifest["metadata"] == {"step": 1}
    assert manifest["dtypes"][manifest["keys"].index("['params'][0].b")] == "bfloat16"
    assert manifest["shapes"][manifest["keys"].index("['typed_key']")] == [2]
    assert manifest["treedef"] == str(jax.tree_util.tree_structure(tree))


def test_single_leaf_and_empty_tree(tmp_path):
    save_checkpoint(tmp_path / "a", np.arange(3.0))
    loaded, _ = load_checkpoint(tmp_path / "a", like=np.zeros(3))
    np.testing.assert_array_equal(loaded, [0.0, 1.0, 2.0])
    save_checkpoint(tmp_path / "b", {}, {"note": "empty"})
    assert load_checkpoint(tmp_path / "b", like={}) == ({}, {"note": "empty"})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            {"a": np.zeros((3, 5), np.float32), "b": np.zeros(2, np.int32)},
            r"1 difference\(s\): shape at \['a'\]: file \(3, 4\) vs template \(3, 5\)",
        ),
        (
            {"a": np.zeros((3, 4), np.float64), "b": np.zeros(2, np.int32)},
            r"dtype at \['a'\]: file float32 vs template float64",
        ),
        (
            {"a": np.zeros((3, 4), np.float32)},
            r"extra in file: \['b'\] \(2,\) int32",
        ),
        (
            {"a": np.zeros((3, 4), np.float32), "b": np.zeros(2, np.int32), "c": 0.0},
            r"missing from file: \['c'\] \(template \(\) float64\)",
        ),
        (
            [np.zeros((3, 4), np.float32), np.zeros(2, np.int32)],
            r"got 4 difference\(s\): missing from file: \[0\]",
        ),
        (
            {
                "a": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16),
                "b": np.zeros(2, np.int32),
            },
            r"dtype at \['a'\]: file float32 vs template bfloat16",
        ),
    ],
)
def test_template_mismatch_errors(tmp_path, template, message):
    save_checkpoint(
        tmp_path / "c", {"a": np.ones((3, 4), np.float32), "b": np.ones(2, np.int32)}
    )
    with pytest.raises(ValueError, match=r"load_checkpoint: expected .*c to match"):
        load_checkpoint(tmp_path / "c", like=template)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path / "c", like=template)


def test_template_mismatch_lists_only_the_first_differences(tmp_path):
    save_checkpoint(tmp_path / "c", {f"k{i:02d}": np.zeros(1) for i in range(15)})
    with pytest.raises(ValueError, match=r"got 15 difference\(s\).*\(and 5 more\)"):
        load_checkpoint(tmp_path / "c", like={})


def test_template_accepts_shape_dtype_structs(tmp_path):
    tree = {"w": jnp.ones((2, 3)), "k": jax.random.key(0)}
    save_checkpoint(tmp_path / "c", tree)
    loaded, _ = load_checkpoint(tmp_path / "c", like=jax.eval_shape(lambda: tree))
    assert leaf_bits(loaded["w"]) == leaf_bits(tree["w"])
    assert leaf_bits(loaded["k"]) == leaf_bits(tree["k"])
    # Templates of shape structs give numpy leaves (typed keys stay jax).
    assert isinstance(loaded["w"], np.ndarray)


def corrupt_cases():
    def garbage(data):
        return b"not a safetensors file at all"

    def truncated(data):
        return data[:-5]

    def header_only(data):
        return data[:20]

    def flipped_tensor_byte(data):
        out = bytearray(data)
        out[-3] ^= 0xFF
        return bytes(out)

    return [garbage, truncated, header_only, flipped_tensor_byte]


@pytest.mark.parametrize("damage", corrupt_cases(), ids=lambda f: f.__name__)
def test_corrupt_files_raise_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, make_tree())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(
        ValueError, match=r"load_checkpoint: expected .*bad\.safetensors.*"
    ):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"corrupt"):
        load_checkpoint(path, like=make_tree())


def test_foreign_safetensors_and_missing_file(tmp_path):
    safetensors.numpy.save_file({"w": np.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match=r"expected a funcnn checkpoint manifest"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(
        FileNotFoundError, match=r"expected a checkpoint file, got .*nope"
    ):
        load_checkpoint(tmp_path / "nope")


class SameRepr:
    """Distinct dict keys whose key paths print the same."""

    def __init__(self, order):
        self.order = order

    def __repr__(self):
        return "'k'"

    def __lt__(self, other):
        return self.order < other.order


def read_header(path):
    """The safetensors header of a file: 8-byte little-endian length, then JSON."""
    data = path.read_bytes()
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


def version_2_digest(manifest_text, tensors):
    """The SHA-256 of a version 2 file, written out from the format description."""
    sha = hashlib.sha256()
    fields = [b"funcnn.checkpoint 2", manifest_text.encode()]
    for name in sorted(tensors):
        arr = tensors[name]
        fields.append(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode())
        fields.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    for field in fields:
        sha.update(struct.pack("<Q", len(field)) + field)
    return sha.hexdigest()


def test_digest_covers_the_manifest_and_every_tensor(tmp_path):
    path = tmp_path / "c"
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(5)}
    save_checkpoint(path, tree, {"step": 3})
    entries = read_header(path)["__metadata__"]
    assert sorted(entries) == ["manifest", "sha256"]
    tensors = safetensors.numpy.load_file(path)
    assert entries["sha256"] == version_2_digest(entries["manifest"], tensors)


def rewrite(path, tensors, entries):
    safetensors.numpy.save_file(tensors, path, entries)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": {"step": 4}}, r"differ from its SHA-256"),
        ({"version": 3}, r"differ from its SHA-256"),
        ({"keys": ["['b']"]}, r"differ from its SHA-256"),
    ],
)
def test_edited_manifest_is_caught_by_the_digest(tmp_path, change, message):
    path = tmp_path / "c"
    save_checkpoint(path, {"a": np.zeros(2, np.float32)}, {"step": 3})
    entries = read_header(path)["__metadata__"]
    manifest = json.loads(entries["manifest"]) | change
    entries["manifest"] = json.dumps(manifest)
    rewrite(path, safetensors.numpy.load_file(path), entries)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_version_2_file_without_its_digest(tmp_path):
    path = tmp_path / "c"
    save_checkpoint(path, {"a": np.zeros(2, np.float32)})
    entries = read_header(path)["__metadata__"]
    del entries["sha256"]
    rewrite(path, safetensors.numpy.load_file(path), entries)
    with pytest.raises(ValueError, match=r"version 2 manifest without its digest"):
        load_checkpoint(path)


def write_version_1(path, tree, metadata):
    """A version 1 file, from that format's description: the digest inside the
    manifest, over the tensor bytes in key order only."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = [jax.tree_util.keystr(p) for p, _ in leaves]
    arrays = [np.asarray(leaf) for _, leaf in leaves]
    manifest = {
        "format": "funcnn.checkpoint",
        "version": 1,
        "keys": keys,
        "shapes": [list(a.shape) for a in arrays],
        "dtypes": [a.dtype.name for a in arrays],
        "key_impls": {},
        "treedef": str(treedef),
        "sha256": hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest(),
        "metadata": metadata,
    }
    tensors = dict(zip(keys, arrays, strict=True))
    safetensors.numpy.save_file(tensors, path, {"manifest": json.dumps(manifest)})
    return manifest


def test_version_1_files_still_load(tmp_path):
    tree = {"w": np.arange(6.0).reshape(2, 3), "step": np.int32(9)}
    write_version_1(tmp_path / "v1", tree, {"epoch": 2})
    loaded, meta = load_checkpoint(tmp_path / "v1", like=tree)
    assert_trees_identical(loaded, tree)
    assert meta == {"epoch": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 3}, r"expected format version 1 or 2 in .*, got 3"),
        ({"dtypes": ["no_such_dtype"]}, r"got a malformed manifest"),
        ({"metadata": None}, r"got a malformed manifest .*metadata must be a dict"),
        ({"keys": ["['b']"]}, r"differ from the manifest checksum"),
    ],
)
def test_tampered_version_1_manifest(tmp_path, change, message):
    path = tmp_path / "c"
    manifest = write_version_1(path, {"a": np.zeros(2, np.float32)}, {})
    tensors = safetensors.numpy.load_file(path)
    safetensors.numpy.save_file(
        tensors, path, {"manifest": json.dumps(manifest | change)}
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_missing_metadata_in_a_version_1_manifest(tmp_path):
    path = tmp_path / "c"
    manifest = write_version_1(path, {"a": np.zeros(2, np.float32)}, {})
    del manifest["metadata"]
    tensors = safetensors.numpy.load_file(path)
    safetensors.numpy.save_file(tensors, path, {"manifest": json.dumps(manifest)})
    with pytest.raises(ValueError, match=r"malformed manifest \(KeyError\('metadata"):
        load_checkpoint(path)


def test_every_flipped_header_bit_raises_or_loads_identically(tmp_path):
    """Flips each bit of the header (length prefix, tensor table, manifest and
    digest) of a small checkpoint: each must raise a clear ValueError or load
    the very tree and metadata that were saved, never a changed step or config."""
    tree = {
        "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)},
        "step": np.int32(7),
        "key": np.array([0, 42], np.uint32),
    }
    meta = {"step": 12, "epoch": 3, "config": {"lr": 0.1, "model": "lenet"}}
    path = tmp_path / "flipped"
    save_checkpoint(path, tree, meta)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    raised = identical = 0
    # One byte is rewritten in place and restored after each load: reopening
    # the file for every flip would cost 30 times more than the loads.
    with open(path, "r+b", buffering=0) as f:
        for bit in range(8 * header_end):
            pos = bit // 8
            f.seek(pos)
            f.write(bytes([data[pos] ^ (1 << (bit % 8))]))
            try:
                loaded, loaded_meta = load_checkpoint(path, like=tree)
            except ValueError as err:
                assert str(err).startswith("load_checkpoint: expected"), (bit, err)
                assert str(path) in str(err), (bit, err)
                raised += 1
            else:
                assert loaded_meta == meta, bit
                assert_trees_identical(loaded, tree)
                identical += 1
            f.seek(pos)
            f.write(data[pos : pos + 1])
    assert path.read_bytes() == data
    assert raised + identical == 8 * header_end
    print(f"{8 * header_end} flips: {raised} raised, {identical} loaded identical")


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match=r"expected JSON-serialisable metadata"):
        save_checkpoint(tmp_path / "c", {"a": np.zeros(1)}, {"step": np.arange(2)})
    with pytest.raises(
        TypeError, match=r"expected metadata to be a dict or None, got list"
    ):
        save_checkpoint(tmp_path / "c", {"a": np.zeros(1)}, [1])
    with pytest.raises(
        TypeError, match=r"expected numeric array leaves, got dtype <U3 at \['s'\]"
    ):
        save_checkpoint(tmp_path / "c", {"s": "abc"})
    with pytest.raises(
        ValueError, match=r"expected distinct key paths, got \['k'\] twice"
    ):
        save_checkpoint(
            tmp_path / "c", {SameRepr(1): np.zeros(1), SameRepr(2): np.zeros(1)}
        )
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_missing_directory_names_the_users_path(tmp_path):
    path = tmp_path / "no_such_dir" / "c.safetensors"
    with pytest.raises(
        FileNotFoundError, match=r"save .*no_such_dir/c.safetensors"
    ) as e:
        save_checkpoint(path, {"a": np.zeros(1)})
    assert ".tmp" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": np.zeros(2)}, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_format.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": np.ones(2)}, {"v": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    assert load_checkpoint(path)[1] == {"v": 1}
    save_checkpoint(path, {"a": np.ones(2)}, {"v": 3})
    assert load_checkpoint(path)[1] == {"v": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


# --------------------------------------------------------------------------
# CheckpointManager.


def test_manager_prunes_and_restores(tmp_path):
    mgr = CheckpointManager(tmp_path / "run", keep=2)
    assert mgr.latest_step() is None
    for step in range(1, 6):
        mgr.save(step, {"x": np.full(3, step)}, {"step": step})
    assert mgr.steps() == [4, 5] and mgr.latest_step() == 5
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "ckpt_00000004.safetensors",
        "ckpt_00000005.safetensors",
    ]
    tree, meta = mgr.restore({"x": np.zeros(3, np.int64)})
    np.testing.assert_array_equal(tree["x"], [5, 5, 5])
    assert meta == {"step": 5}
    flat, meta = mgr.restore(None, step=4)
    np.testing.assert_array_equal(flat["['x']"], [4, 4, 4])
    # Saving an older step keeps it, plus the largest other steps.
    mgr.save(2, {"x": np.full(3, 2)})
    assert mgr.steps() == [2, 5]
    mgr.save(123_456_789, {"x": np.zeros(3)})
    assert mgr.latest_step() == 123_456_789


def test_manager_keep_none_and_ignored_names(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=None)
    for step in range(4):
        mgr.save(step, {"x": np.zeros(1)})
    for name in [
        ".ckpt_00000009.safetensors.ab12.tmp",
        "ckpt_9.safetensors",
        "notes.txt",
    ]:
        (tmp_path / name).write_bytes(b"junk")
    assert mgr.steps() == [0, 1, 2, 3]
    assert mgr.remove_temp_files() == 1
    assert (tmp_path / "notes.txt").exists() and (
        tmp_path / "ckpt_9.safetensors"
    ).exists()


def test_manager_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected keep >= 1 or None, got 0"):
        CheckpointManager(tmp_path, keep=0)
    mgr = CheckpointManager(tmp_path / "empty")
    with pytest.raises(
        FileNotFoundError, match=r"expected a checkpoint in .*empty, got none"
    ):
        mgr.restore(None)
    mgr.save(3, {"x": np.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"step 7 .* Saved steps: \[3\]"):
        mgr.restore(None, step=7)
    with pytest.raises(ValueError, match=r"expected a non-negative int step, got -1"):
        mgr.save(-1, {"x": np.zeros(1)})


# --------------------------------------------------------------------------
# Crash safety: SIGKILL a writer at random moments, then check the files.

STATE_SRC = """
import numpy as np

def state(step):
    # Every value is a function of the step, so a torn or mixed file shows.
    return {
        "params": [{"w": np.full((384, 384), step, np.float64),
                    "b": np.full(1000, -step, np.float32)}],
        "key": np.array([step, step * 7 + 1], np.uint32),
        "step": np.int32(step),
    }
"""

CHILD_SRC = """
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("funcnn_checkpoint", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt)
mgr = ckpt.CheckpointManager(sys.argv[2], keep=2)
latest = mgr.latest_step()
step = 0 if latest is None else latest + 1
print("ready", step, flush=True)
while True:
    mgr.save(step, state(step), {"step": step})
    step += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_never_leaves_a_broken_latest_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(STATE_SRC) + textwrap.dedent(CHILD_SRC))
    namespace: dict = {}
    exec(STATE_SRC, namespace)
    state = namespace["state"]
    module_path = Path(ckpt.__file__).resolve()
    run_dir = tmp_path / "run"
    mgr = CheckpointManager(run_dir, keep=2)
    rng = random.Random(1234)
    previous = None
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        for _kill in range(20):
            child = subprocess.Popen(
                [sys.executable, str(script), str(module_path), str(run_dir)],
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            try:
                line = child.stdout.readline().split()
                assert line[:1] == [b"ready"], (tmp_path / "stderr.txt").read_text()
                # The child resumes right after the newest complete checkpoint.
                assert int(line[1]) == (0 if previous is None else previous + 1)
                time.sleep(rng.uniform(0.0, 0.3))
                assert child.poll() is None, (tmp_path / "stderr.txt").read_text()
            finally:
                # Never leave the endless writer running, even on failure.
                if child.poll() is None:
                    os.kill(child.pid, signal.SIGKILL)
                child.wait()
                child.stdout.close()

            latest = mgr.latest_step()
            if previous is not None:
                assert latest is not None and latest >= previous
            # A kill between writing and pruning leaves extra files (one per such
            # kill in a row); the next completed save prunes them (checked below).
            for step in mgr.steps():
                tree, meta = mgr.restore(state(0), step=step)
                assert meta == {"step": step}
                assert_trees_identical(tree, state(step))
            previous = latest
    # Hundreds of saves happen in practice; ten shows the writer made progress.
    assert previous is not None and previous >= 10
    # Kills mid-write leave temporary files; they never count as checkpoints.
    temps = [p for p in run_dir.iterdir() if p.name.startswith(".")]
    assert mgr.remove_temp_files() == len(temps)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        mgr.path_for(s).name for s in mgr.steps()
    ]
    mgr.save(previous + 1, state(previous + 1), metadata={"step": previous + 1})
    assert mgr.steps() == [previous, previous + 1]
