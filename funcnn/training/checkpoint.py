"""Checkpoints: a pytree of arrays in one safetensors file, written atomically.

Each leaf is stored as one tensor named by its key path, e.g.
`['params'][0]['w']`, so a file can be inspected with any safetensors reader.
The header metadata holds a JSON manifest: the format version, the keys in
tree order with their shapes and true dtypes, the treedef as text, a SHA-256 of
the tensor bytes and the user's metadata (step, epoch, config, ...).

Dtypes safetensors cannot hold natively are stored as raw bits: bfloat16 (and
the other ml_dtypes floats) as unsigned ints of the same width, typed PRNG key
arrays (`jax.random.key`) as their uint32 key data plus the PRNG name.

A file is written to a temporary name in the same directory, flushed, fsynced
and then renamed over the final name, and the directory is fsynced. A reader
therefore sees either the old complete file or the new complete file, even if
the writer is killed or the machine loses power mid-write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import secrets
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "funcnn.checkpoint"
VERSION = 1
_MANIFEST = "manifest"
_MAX_LISTED = 10

# Dtypes that safetensors.numpy stores as they are.
_NATIVE = frozenset(
    ["float64", "float32", "float16", "bool"]
    + [f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)]
)
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _is_key_array(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key)


def _encode(leaf: Any, key: str) -> tuple[np.ndarray, str, str | None]:
    """Returns (stored array, true dtype name, PRNG impl name or None)."""
    if _is_key_array(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, str(leaf.dtype), str(jax.random.key_impl(leaf))
    arr = np.asarray(leaf)
    name = arr.dtype.name
    if name in _NATIVE:
        return np.asarray(arr, order="C"), name, None
    if arr.dtype.kind == "V" and arr.dtype.itemsize in _BITS:
        with contextlib.suppress(TypeError):
            if jax.numpy.dtype(name) == arr.dtype:
                bits = _BITS[arr.dtype.itemsize]
                return np.asarray(arr, order="C").view(bits), name, None
    raise TypeError(
        f"save_checkpoint: expected numeric array leaves, got dtype {arr.dtype} at "
        f"{key or '<root>'}. Convert the leaf to an array of numbers, or move it "
        "into metadata."
    )


def _decode(stored: np.ndarray, dtype: str, impl: str | None) -> Any:
    if impl is not None:
        return jax.random.wrap_key_data(jax.numpy.asarray(stored), impl=impl)
    if dtype in _NATIVE:
        return stored
    return stored.view(jax.numpy.dtype(dtype))


def _digest(arrays: list[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for arr in arrays:
        sha.update(np.asarray(arr, order="C").reshape(-1).view(np.uint8).data)
    return sha.hexdigest()


def _leaf_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    """The shape and dtype name of a template leaf (array, struct or scalar)."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), str(leaf.dtype)
    arr = np.asarray(leaf)
    return arr.shape, arr.dtype.name


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; POSIX only (Windows cannot open dirs).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def save_checkpoint(
    path: str | os.PathLike, tree: Any, metadata: dict[str, Any] | None = None
) -> None:
    """Saves a pytree of arrays to one safetensors file, atomically.

    Args:
        path: the file to write; its directory must exist. An existing file is
            replaced only once the new one is complete on disk.
        tree: a pytree (dicts, lists, tuples, NamedTuples, ...) whose leaves are
            jax or numpy arrays or Python numbers of any shape: float64/32/16,
            bfloat16, (u)int8..64, bool, and raw or typed PRNG keys.
        metadata: a JSON-serialisable dict stored alongside, e.g.
            `{"step": 100, "epoch": 2, "config": {...}}`.

    Raises:
        TypeError: for a leaf of unsupported dtype or unserialisable metadata.
        ValueError: if two leaves have the same key path.
    """
    func = "save_checkpoint"
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(
            f"{func}: expected metadata to be a dict or None, got "
            f"{type(metadata).__name__}."
        )
    path = Path(path)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys, arrays, dtypes, impls = [], [], [], {}
    for key_path, leaf in leaves:
        key = jax.tree_util.keystr(key_path)
        stored, dtype, impl = _encode(leaf, key)
        keys.append(key)
        arrays.append(stored)
        dtypes.append(dtype)
        if impl is not None:
            impls[key] = impl
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(
            f"{func}: expected distinct key paths, got {dup} twice. Use dict keys "
            "whose repr() differ."
        )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "keys": keys,
        "shapes": [list(np.shape(leaf)) for _, leaf in leaves],
        "dtypes": dtypes,
        "key_impls": impls,
        "treedef": str(treedef),
        "sha256": _digest(arrays),
        "metadata": {} if metadata is None else metadata,
    }
    try:
        header = json.dumps(manifest)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{func}: expected JSON-serialisable metadata, got {err}. Convert "
            "numpy values with int(), float() or .tolist()."
        ) from None
    data = safetensors.numpy.save(
        dict(zip(keys, arrays, strict=True)), metadata={_MANIFEST: header}
    )
    _atomic_write(path, data)


def _read(path: Path, func: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads and verifies a file; returns (manifest, {key: decoded leaf})."""
    if not path.is_file():
        raise FileNotFoundError(f"{func}: expected a checkpoint file, got {path}.")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            header = (f.metadata() or {}).get(_MANIFEST)
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(
            f"{func}: expected a complete safetensors file at {path}, got "
            f"'{err}'. The file is truncated or corrupt; use an older checkpoint."
        ) from None
    try:
        manifest = json.loads(header) if header is not None else None
    except json.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(
            f"{func}: expected a funcnn checkpoint manifest in {path}, got none. "
            "Was the file written by save_checkpoint?"
        )
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{func}: expected format version {VERSION} in {path}, got "
            f"{manifest.get('version')}. Load it with the funcnn that wrote it."
        )
    reason = "tensor bytes that differ from the manifest checksum"
    try:
        keys, impls = manifest["keys"], manifest["key_impls"]
        intact = sorted(keys) == sorted(stored)
        intact = intact and _digest([stored[k] for k in keys]) == manifest["sha256"]
        leaves = {
            k: _decode(stored[k], dt, impls.get(k))
            for k, dt in zip(keys, manifest["dtypes"], strict=True)
            if intact
        }
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        intact, leaves, reason = False, {}, f"a malformed manifest ({err!r})"
    if not intact:
        raise ValueError(
            f"{func}: expected a consistent checkpoint in {path}, got {reason}. "
            "The file is corrupt; use an older checkpoint."
        )
    return manifest, leaves


def _differences(manifest: dict[str, Any], like_specs: dict[str, Any]) -> list[str]:
    saved = {
        k: (tuple(s), d)
        for k, s, d in zip(
            manifest["keys"], manifest["shapes"], manifest["dtypes"], strict=True
        )
    }
    diffs = []
    for key, (shape, dtype) in like_specs.items():
        if key not in saved:
            diffs.append(f"missing from file: {key} (template {shape} {dtype})")
            continue
        saved_shape, saved_dtype = saved[key]
        if saved_shape != shape:
            diffs.append(f"shape at {key}: file {saved_shape} vs template {shape}")
        if saved_dtype != dtype:
            diffs.append(f"dtype at {key}: file {saved_dtype} vs template {dtype}")
    for key in saved:
        if key not in like_specs:
            diffs.append(f"extra in file: {key} {saved[key][0]} {saved[key][1]}")
    return diffs


def load_checkpoint(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict]:
    """Loads a checkpoint written by `save_checkpoint`.

    Args:
        path: the file to read.
        like: an optional template pytree, e.g. freshly initialised parameters
            or `jax.eval_shape` output. Its key paths, shapes and dtypes must
            match the file's.

    Returns:
        `(tree, metadata)`. With `like`, `tree` has the template's structure;
        a leaf is a jax array where the template's leaf is one, else a numpy
        array. Without `like`, `tree` is a flat dict from key path (e.g.
        `"['params'][0]['w']"`) to numpy array in the saved order (typed PRNG
        keys come back as jax key arrays). `metadata` is the saved dict.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for a truncated or corrupt file, or one that does not match
            `like` (the message lists the first differences).
    """
    func = "load_checkpoint"
    path = Path(path)
    manifest, leaves = _read(path, func)
    if like is None:
        return leaves, manifest["metadata"]
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    specs = {jax.tree_util.keystr(p): _leaf_spec(leaf) for p, leaf in flat}
    diffs = _differences(manifest, specs)
    if diffs:
        shown = "; ".join(diffs[:_MAX_LISTED])
        hidden = len(diffs) - _MAX_LISTED
        more = f" (and {hidden} more)" if hidden > 0 else ""
        raise ValueError(
            f"{func}: expected {path} to match the template, got {len(diffs)} "
            f"difference(s): {shown}{more}. Build `like` the same way as the "
            "saved tree, or load without `like` to inspect the file."
        )
    out = []
    for key_path, leaf in flat:
        value = leaves[jax.tree_util.keystr(key_path)]
        if isinstance(leaf, jax.Array) and not isinstance(value, jax.Array):
            value = jax.numpy.asarray(value)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out), manifest["metadata"]


class CheckpointManager:
    """Keeps the last few checkpoints of a run in one directory.

    Files are named `ckpt_{step:08d}.safetensors`; temporary files start with
    a dot and never match, so a writer killed mid-save leaves at most a stray
    temporary file and every listed checkpoint is complete.

    Args:
        directory: the run's checkpoint directory, created if missing.
        keep: how many checkpoints to keep (>= 1), or None to keep all.
    """

    _NAME = re.compile(r"ckpt_(\d{8,})\.safetensors")
    _TEMP = re.compile(r"\.ckpt_\d{8,}\.safetensors\.[0-9a-f]+\.tmp")

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        if keep is not None and (isinstance(keep, bool) or operator.index(keep) < 1):
            raise ValueError(
                f"CheckpointManager: expected keep >= 1 or None, got {keep!r}. "
                "Use keep=None to keep every checkpoint."
            )
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, step: int) -> Path:
        """The file that holds `step`."""
        return self.directory / f"ckpt_{step:08d}.safetensors"

    def steps(self) -> list[int]:
        """The steps with a checkpoint on disk, ascending."""
        found = []
        for entry in os.scandir(self.directory):
            match = self._NAME.fullmatch(entry.name)
            if match and entry.is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def remove_temp_files(self) -> int:
        """Deletes temporary files left by writers that were killed mid-save.

        Call this only while no other process saves into the directory, or it
        may delete a file that process is still writing.

        Returns:
            The number of files deleted.
        """
        removed = 0
        for entry in os.scandir(self.directory):
            if self._TEMP.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def latest_step(self) -> int | None:
        """The largest saved step, or None if there is no checkpoint."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: Any, metadata: dict | None = None) -> Path:
        """Saves `tree` for `step`, then prunes old checkpoints.

        The new file is kept in any case; among the others, those with the
        largest steps are kept, `keep` files in all. Pruning starts only after
        the new file is durably in place.

        Args:
            step: a non-negative int.
            tree: the pytree to save; see `save_checkpoint`.
            metadata: a JSON-serialisable dict; see `save_checkpoint`.

        Returns:
            The path of the new checkpoint.
        """
        if isinstance(step, bool) or operator.index(step) < 0:
            raise ValueError(
                f"CheckpointManager.save: expected a non-negative int step, got "
                f"{step!r}."
            )
        step = operator.index(step)
        path = self.path_for(step)
        save_checkpoint(path, tree, metadata)
        if self.keep is not None:
            others = [s for s in self.steps() if s != step]
            for old in others[: max(0, len(others) - (self.keep - 1))]:
                with contextlib.suppress(FileNotFoundError):
                    self.path_for(old).unlink()
        return path

    def restore(self, like: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """Loads the checkpoint of `step`, or of the latest step if None.

        Args:
            like: a template pytree, or None for a flat dict; see
                `load_checkpoint`.
            step: the step to load; None loads the latest.

        Returns:
            `(tree, metadata)` as from `load_checkpoint`.

        Raises:
            FileNotFoundError: if there is no checkpoint (for `step`).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"CheckpointManager.restore: expected a checkpoint in "
                    f"{self.directory}, got none. Train and save first."
                )
        path = self.path_for(step)
        if not path.is_file():
            raise FileNotFoundError(
                f"CheckpointManager.restore: expected a checkpoint for step {step} "
                f"at {path}, got none. Saved steps: {self.steps()}."
            )
        return load_checkpoint(path, like)
