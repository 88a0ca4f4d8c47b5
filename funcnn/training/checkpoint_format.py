"""The checkpoint file: a pytree of arrays in one safetensors file, written atomically.

Each leaf is stored as one tensor named by its key path, e.g.
`['params'][0]['w']`, so a file can be inspected with any safetensors reader.
The safetensors header metadata holds two entries:

- `manifest`: JSON with the format name and version, the keys in tree order with
  their shapes and true dtypes, the PRNG implementation of typed key arrays, the
  treedef as text, and the user's metadata (step, epoch, config, ...).
- `sha256`: a SHA-256 over the manifest text and every tensor (its name, stored
  dtype, shape and bytes). A flipped bit anywhere in the manifest, in the
  metadata or in the tensors is caught on loading; nothing in the file is
  trusted before the digest matches.

Version 1 files (written before the digest covered the manifest: there the
digest sat inside the manifest and covered only the tensor bytes) still load.

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
import os
import secrets
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "funcnn.checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_MANIFEST = "manifest"
_DIGEST = "sha256"
_MAX_LISTED = 10
# The most characters of a foreign error's text that go into one message.
_MAX_QUOTED = 300

# Dtypes that safetensors.numpy stores as they are.
_NATIVE = frozenset(
    ["float64", "float32", "float16", "bool"]
    + [f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)]
)
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _quote(text: str) -> str:
    if len(text) <= _MAX_QUOTED:
        return text
    return f"{text[:_MAX_QUOTED]}... ({len(text) - _MAX_QUOTED} more characters)"


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


def _le_bytes(arr: np.ndarray) -> memoryview:
    # Little-endian, as safetensors stores them, so a big-endian array saved
    # here hashes the same as the array read back.
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return le.reshape(-1).view(np.uint8).data


def _digest_v1(arrays: list[np.ndarray]) -> str:
    """Version 1: the tensor bytes in manifest order, nothing else."""
    sha = hashlib.sha256()
    for arr in arrays:
        sha.update(_le_bytes(arr))
    return sha.hexdigest()


def _digest(header: str, tensors: dict[str, np.ndarray]) -> str:
    """Version 2: the manifest text, then each tensor's name, dtype, shape, bytes.

    Every field is length-prefixed, so no two different files hash the same
    stream. Tensors go in name order, the order safetensors lists them.
    """
    sha = hashlib.sha256()

    def put(data: bytes | memoryview) -> None:
        sha.update(len(data).to_bytes(8, "little"))
        sha.update(data)

    put(f"{FORMAT} {VERSION}".encode())
    put(header.encode("utf-8"))
    for name in sorted(tensors):
        arr = tensors[name]
        put(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode("utf-8"))
        put(_le_bytes(arr))
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
            `{"step": 100, "epoch": 2, "config": {...}}`; the checksum covers it.

    Raises:
        FileNotFoundError: if the directory of `path` does not exist.
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
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{func}: expected an existing directory to save {path} in, got "
            f"{path.parent}, which does not exist. Create it first, e.g. "
            "Path(...).mkdir(parents=True); CheckpointManager creates its own."
        )
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
        "metadata": {} if metadata is None else metadata,
    }
    try:
        header = json.dumps(manifest)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{func}: expected JSON-serialisable metadata, got {err}. Convert "
            "numpy values with int(), float() or .tolist()."
        ) from None
    tensors = dict(zip(keys, arrays, strict=True))
    data = safetensors.numpy.save(
        tensors, metadata={_MANIFEST: header, _DIGEST: _digest(header, tensors)}
    )
    _atomic_write(path, data)


def _corrupt(func: str, path: Path, got: str) -> ValueError:
    return ValueError(
        f"{func}: expected a consistent checkpoint in {path}, got {got}. The file "
        "is corrupt; use an older checkpoint."
    )


def _check_v1_manifest(manifest: dict[str, Any]) -> None:
    """Raises KeyError/TypeError unless a version 1 manifest is well formed."""
    keys = manifest["keys"]
    fields = (keys, manifest["shapes"], manifest["dtypes"])
    if not all(isinstance(f, list) and len(f) == len(keys) for f in fields):
        raise TypeError("keys, shapes and dtypes must be lists of one length")
    if not all(isinstance(s, list) for s in manifest["shapes"]):
        raise TypeError("every shape must be a list")
    if not isinstance(manifest["key_impls"], dict):
        raise TypeError("key_impls must be a dict")
    if not isinstance(manifest["metadata"], dict):
        raise TypeError("metadata must be a dict")
    if not isinstance(manifest["sha256"], str):
        raise TypeError("sha256 must be a string")


def _read(path: Path, func: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads and verifies a file; returns (manifest, {key: decoded leaf})."""
    if not path.is_file():
        raise FileNotFoundError(f"{func}: expected a checkpoint file, got {path}.")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            entries = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except safetensors.SafetensorError as err:
        raise ValueError(
            f"{func}: expected a complete safetensors file at {path}, got "
            f"'{_quote(str(err))}'. The file is truncated or corrupt; use an "
            "older checkpoint."
        ) from None
    header, digest = entries.get(_MANIFEST), entries.get(_DIGEST)
    if header is None:
        if entries:
            raise _corrupt(
                func,
                path,
                f"header entries {_quote(str(sorted(entries)))} and no {_MANIFEST!r}",
            )
        raise ValueError(
            f"{func}: expected a funcnn checkpoint manifest in {path}, got none. "
            "Was the file written by save_checkpoint?"
        )
    # Version 2 files carry the digest beside the manifest: check it before
    # trusting a single byte of the manifest.
    if digest is not None and digest != _digest(header, stored):
        raise _corrupt(func, path, "a header or tensors that differ from its SHA-256")
    try:
        manifest = json.loads(header)
    except json.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(
            f"{func}: expected a funcnn checkpoint manifest in {path}, got none. "
            "Was the file written by save_checkpoint?"
        )
    version = manifest.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = " or ".join(map(str, READABLE_VERSIONS))
        raise ValueError(
            f"{func}: expected format version {readable} in {path}, got "
            f"{_quote(repr(version))}. Load it with the funcnn that wrote it."
        )
    if (version >= 2) != (digest is not None):
        raise _corrupt(func, path, f"a version {version} manifest without its digest")
    reason = "tensor bytes that differ from the manifest checksum"
    try:
        if version == 1:
            _check_v1_manifest(manifest)
        keys, impls = manifest["keys"], manifest["key_impls"]
        intact = sorted(keys) == sorted(stored)
        if intact and version == 1:
            intact = _digest_v1([stored[k] for k in keys]) == manifest["sha256"]
        leaves = {
            k: _decode(stored[k], dt, impls.get(k))
            for k, dt in zip(keys, manifest["dtypes"], strict=True)
            if intact
        }
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        intact, leaves = False, {}
        reason = f"a malformed manifest ({_quote(repr(err))})"
    if not intact:
        raise _corrupt(func, path, reason)
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
        ValueError: for a truncated or corrupt file (any flipped bit in the
            header or the tensors), or one that does not match `like` (the
            message lists the first differences).
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
