"""A gradient checker for ops, layers and whole models, in float64.

`gradcheck(target, *args, ...)` compares three gradients of one scalar objective:

- **custom**: `jax.grad` with `grad="custom"`, the hand-written backward rules;
- **autodiff**: `jax.grad` with `grad="autodiff"`, JAX's own derivative of the
  plain-lax forward (skip it with `autodiff=False`);
- **finite differences (FD)**: central differences `(f(p + h) - f(p - h)) / 2h` on
  every coordinate of a small leaf and a seeded random sample of a big one, plus
  random directional derivatives, which reach the coordinates the sample missed.

The objective is `vdot(output, g)` with a seeded random cotangent `g` for an op or a
layer (unlike `.sum()`, it weights every output position differently), and the loss
for a model (a layer given `labels`).

Finite differences mean nothing where the function has a kink inside the step:
ReLU at 0, a max-pool window whose two largest values lie within `h` of each other.
So every probe also gets the one-sided slopes `(f(p+h) - f(p)) / h` and
`(f(p) - f(p-h)) / h`. Where they disagree beyond the FD tolerance, the probe is
retried at h/4 and h/16: a smooth function's gap (about `h * f''`) shrinks with the
step, the jump at a kink does not. A probe still disagreeing is reported as
non-smooth and skipped, with a count and its coordinates, neither failed nor hidden.
The test uses only function values, so a wrong backward rule cannot hide in it.

Everything runs in float64: `gradcheck` enables x64 for its own duration (the
thread-local `jax.enable_x64` context, so the caller's setting is untouched) and
casts inputs, parameters and state to float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from funcnn.nn.core import Layer
from funcnn.training.losses import softmax_cross_entropy

_CHUNK = 32  # FD evaluations per compiled call: one shape, so one compile
_REFINE = (4, 16)  # step divisors tried where the one-sided slopes disagree


class LeafCheck(NamedTuple):
    """The result for one differentiated leaf; `None` means not checked.

    Each error is the largest absolute difference and that difference relative to
    the largest gradient magnitude among the values compared.
    """

    name: str  # e.g. "params['00_conv']['w']", "x"
    shape: tuple[int, ...]
    ad_abs: float | None  # custom vs autodiff, over every coordinate
    ad_rel: float | None
    ad_ok: bool | None
    fd_abs: float | None  # custom vs FD, over smooth coordinates and directions
    fd_rel: float | None
    fd_ok: bool | None
    fd_coords: int  # coordinates differenced: all of a small leaf, else a sample
    fd_directions: int  # random directional derivatives
    nonsmooth: tuple[tuple[int, ...], ...]  # skipped coordinates, as index tuples
    nonsmooth_directions: int  # skipped directions

    @property
    def ok(self) -> bool:
        return self.ad_ok is not False and self.fd_ok is not False


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """What `gradcheck` found: `report.ok`, and `print(report)` for a table."""

    title: str
    objective: str
    rows: tuple[LeafCheck, ...]
    eps: float
    ad_tol: tuple[float, float]  # (atol, rtol)
    fd_tol: tuple[float, float]
    autodiff: bool

    @property
    def ok(self) -> bool:
        """No checked leaf failed (non-smooth points are skipped, not failures)."""
        return all(row.ok for row in self.rows)

    @property
    def num_nonsmooth(self) -> int:
        return sum(len(r.nonsmooth) + r.nonsmooth_directions for r in self.rows)

    def __str__(self) -> str:
        def num(v):
            return "-" if v is None else f"{v:.1e}"

        def result(r: LeafCheck) -> str:
            bad = [n for n, v in (("autodiff", r.ad_ok), ("FD", r.fd_ok)) if v is False]
            return f"FAIL ({', '.join(bad)})" if bad else "ok"

        table = [
            ["leaf", "shape", "ad abs", "ad rel", "FD abs", "FD rel", "FD coords"]
            + ["dirs", "non-smooth", "result"]
        ]
        for r in self.rows:
            size = int(np.prod(r.shape, dtype=np.int64))
            skipped = len(r.nonsmooth) + r.nonsmooth_directions
            table.append(
                [r.name, str(r.shape), num(r.ad_abs), num(r.ad_rel), num(r.fd_abs)]
                + [num(r.fd_rel), f"{r.fd_coords}/{size}", str(r.fd_directions)]
                + [str(skipped), result(r)]
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = [
            f"gradcheck: {self.title}",
            f"  objective: {self.objective}; float64; FD step h = {self.eps:g}",
        ]
        for line in table:
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths))
            ]
            lines.append("  " + "  ".join(cells).rstrip())
        for r in self.rows:
            if r.nonsmooth or r.nonsmooth_directions:
                where = [f"{r.name}{list(i)}" for i in r.nonsmooth[:4]]
                where += [f"... {len(r.nonsmooth) - 4} more"] * (len(r.nonsmooth) > 4)
                where += [f"{r.nonsmooth_directions} direction(s) in {r.name}"] * (
                    r.nonsmooth_directions > 0
                )
                lines.append(f"  non-smooth (skipped): {', '.join(where)}")
        ad = "autodiff: skipped" if not self.autodiff else "autodiff"
        lines.append(
            f"  pass: abs <= atol + rtol * max|gradient|; {ad} (atol "
            f"{self.ad_tol[0]:g}, rtol {self.ad_tol[1]:g}); FD (atol "
            f"{self.fd_tol[0]:g}, rtol {self.fd_tol[1]:g})"
        )
        lines.append(
            f"  result: {'ok' if self.ok else 'FAILED'} ({len(self.rows)} leaves, "
            f"{sum(not r.ok for r in self.rows)} failed, {self.num_nonsmooth} "
            "non-smooth probes skipped)"
        )
        return "\n".join(lines)


def gradcheck(
    target: Callable | Layer,
    *args: Any,
    kwargs: dict | None = None,
    input_shape: tuple[int, ...] | None = None,
    params: Any = None,
    state: Any = None,
    labels: Any = None,
    loss: Callable | None = None,
    train: bool = False,
    autodiff: bool = True,
    max_coords_per_leaf: int = 32,
    directions: int = 2,
    eps: float = 1e-6,
    ad_tol: tuple[float, float] = (1e-12, 1e-9),
    fd_tol: tuple[float, float] = (1e-8, 1e-6),
    seed: int = 0,
    title: str | None = None,
) -> GradcheckReport:
    """Checks custom gradients against autodiff and finite differences, in float64.

    Args:
      target: an op, a callable `target(*args, grad=..., **kwargs)`; or a `Layer`,
        checked w.r.t. its params and its input; or a model: a Layer (e.g. built
        with `serial`) given `labels`.
      *args: for an op, its positional arguments: floating-point arrays are
        differentiated, anything else (a window size, None) passes through. For a
        layer or model, the input `x`, e.g. of shape `(N, C, H, W)`; or nothing,
        with `input_shape`.
      kwargs: keyword arguments for an op (stride=..., padding=...).
      input_shape: draw a random normal input of this shape for a layer (a batch
        axis of -1 becomes 2).
      params, state: a layer's parameters and state; by default `layer.init` makes
        them from the seed.
      labels: makes the target a model whose objective is `loss(outputs, labels)`,
        e.g. integer labels of shape `(N,)` for the default softmax cross-entropy.
      loss: `loss(outputs, labels) -> scalar`, e.g. `funcnn.mse` with targets.
      train: apply the layer in training mode: BatchNorm uses batch statistics and
        Dropout one fixed key, so every evaluation sees the same mask.
      autodiff: also compare with `grad="autodiff"`. Turn it off where JAX cannot
        differentiate the reference (it aborts XLA:CPU for some strided convs).
      max_coords_per_leaf: difference every coordinate of a leaf this small, else
        a seeded random sample of this many.
      directions: random directional derivatives per leaf (0 for none).
      eps: the FD step h.
      ad_tol, fd_tol: `(atol, rtol)`; a leaf passes when its largest absolute
        error is at most `atol + rtol * (largest gradient magnitude compared)`.
      seed: seeds the cotangent, the FD sample and directions, and whatever
        `gradcheck` initialises (params, the random input, Dropout's key).
      title: the report's heading; defaults to the target's name.

    Returns:
      A `GradcheckReport`: `report.ok`, one `LeafCheck` per leaf in
      `report.rows` (named like `params['00_conv']['w']`, or `x`), and a table
      from `print(report)`.

    Raises:
      TypeError, ValueError: for a target or arguments it cannot check.
    """
    if max_coords_per_leaf < 0 or directions < 0 or not eps > 0:
        raise ValueError(
            "gradcheck: expected max_coords_per_leaf >= 0, directions >= 0 and "
            f"eps > 0, got {max_coords_per_leaf}, {directions} and {eps}."
        )
    with _enable_x64():
        if isinstance(target, Layer):
            built = _layer_objective(
                target, args, input_shape, params, state, labels, loss, train, seed
            )
        else:
            layer_only = dict(input_shape=input_shape, params=params, state=state)
            given = [k for k, v in layer_only.items() if v is not None]
            given += ["labels"] * (labels is not None) + ["loss"] * (loss is not None)
            if given:
                raise ValueError(
                    f"gradcheck: expected {given} only with a Layer target, got an op "
                    f"{getattr(target, '__name__', target)!r}."
                )
            built = _op_objective(target, args, kwargs, seed)
        objective, diff, names, default_title, what = built
        flat0, unravel = ravel_pytree(diff)

        def grad_of(mode):
            grad = jax.jit(jax.grad(lambda p: objective(unravel(p), mode)))
            return np.asarray(grad(flat0))

        g_custom = grad_of("custom")
        g_auto = grad_of("autodiff") if autodiff else None
        # lax.map, not vmap: vmapping over weights makes XLA:CPU run slow grouped
        # convolutions; a loop over single evaluations is several times faster.
        f_map = jax.jit(
            lambda ps: jax.lax.map(lambda p: objective(unravel(p), "custom"), ps)
        )
        probes, start = [], 0
        for i, leaf in enumerate(jax.tree_util.tree_leaves(diff)):
            seg = slice(start, start + leaf.size)
            start += leaf.size
            rng = np.random.default_rng([seed, i])
            probes.append(
                _Probes.draw(seg, leaf.shape, rng, max_coords_per_leaf, directions)
            )
        fd = _finite_differences(f_map, np.asarray(flat0), probes, eps, fd_tol)
        rows = []
        for name, probe, (central, kink) in zip(names, probes, fd):
            analytic = g_custom[probe.seg]
            ad = (None, None, None)
            if g_auto is not None:
                ad = _compare(analytic, g_auto[probe.seg], *ad_tol)
            rows.append(_leaf_check(name, probe, analytic, ad, central, kink, fd_tol))
    return GradcheckReport(
        title or default_title, what, tuple(rows), eps, ad_tol, fd_tol, autodiff
    )


# ---------------------------------------------------------------- objectives


def _enable_x64():
    """`jax.enable_x64(True)`, or the experimental spelling of older JAX versions."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined]

    return enable_x64()


def _is_float_array(a) -> bool:
    return isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(
        a.dtype, jnp.floating
    )


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if _is_float_array(a) else a, tree
    )


def _leaf_names(prefix: str, tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [prefix + jax.tree_util.keystr(path) for path, _ in paths]


def _random_cotangent(shapes, seed):
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return treedef.unflatten(
        [jax.random.normal(k, s.shape, jnp.float64) for k, s in zip(keys, leaves)]
    )


def _vdot(out, cot):
    terms = jax.tree_util.tree_map(lambda o, g: jnp.vdot(o, g), out, cot)
    return sum(jax.tree_util.tree_leaves(terms))


def _op_objective(target, args, kwargs, seed):
    label = getattr(target, "__name__", type(target).__name__)
    if not callable(target):
        raise TypeError(
            f"gradcheck: expected an op (a callable taking grad=) or a Layer, got "
            f"{label}."
        )
    sig = None
    with contextlib.suppress(TypeError, ValueError):
        sig = inspect.signature(target)
    params = list(sig.parameters.values()) if sig else []
    if sig and not any(p.name == "grad" or p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(
            f"gradcheck: expected an op that takes a grad= keyword, got {label}{sig}. "
            "Wrap a plain function so that it takes one: lambda x, *, grad: f(x)."
        )
    names = [
        p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    slots = [i for i, a in enumerate(args) if _is_float_array(a)]
    if not slots:
        raise ValueError(
            "gradcheck: expected a floating-point array argument to differentiate, "
            f"got argument types {[type(a).__name__ for a in args]}."
        )
    diff = {i: jnp.asarray(args[i], jnp.float64) for i in slots}
    leaf_names = [names[i] if i < len(names) else f"args[{i}]" for i in slots]

    def call(d, mode):
        full = [d.get(i, a) for i, a in enumerate(args)]
        return target(*full, grad=mode, **(kwargs or {}))

    cot = _random_cotangent(jax.eval_shape(lambda d: call(d, "custom"), diff), seed)

    def objective(d, mode):
        return _vdot(call(d, mode), cot)

    return objective, diff, leaf_names, label, "vdot(output, random g)"


def _layer_objective(
    layer, args, input_shape, params, state, labels, loss, train, seed
):
    if len(args) > 1:
        raise TypeError(
            f"gradcheck: expected at most one input x for a Layer, got {len(args)} "
            "positional arguments."
        )
    key_init, key_x, key_apply = jax.random.split(jax.random.key(seed), 3)
    if args:
        x = _to64(args[0])
    elif input_shape is not None:
        shape = tuple(2 if d == -1 else d for d in input_shape)
        x = jax.random.normal(key_x, shape, jnp.float64)
    else:
        raise ValueError(
            "gradcheck: expected an input x or input_shape= for a Layer, got "
            "neither. Pass e.g. gradcheck(layer, x) or input_shape=(2, 1, 8, 8)."
        )
    if params is None or state is None:
        shapes = jax.tree_util.tree_map(lambda a: a.shape, x)
        _, init_params, init_state = layer.init(key_init, shapes)
        params = init_params if params is None else params
        state = init_state if state is None else state
    state = _to64(state)
    diff = {"params": _to64(params), "x": x}
    names = _leaf_names("params", diff["params"]) + _leaf_names("x", x)
    apply_key = key_apply if train else None

    def forward(d, mode):
        kw = dict(train=train, key=apply_key, grad=mode)
        return layer.apply(d["params"], state, d["x"], **kw)[0]

    if labels is None and loss is not None:
        raise ValueError("gradcheck: expected labels= with loss=, got labels=None.")
    if labels is not None:
        loss_fn = softmax_cross_entropy if loss is None else loss
        targets = _to64(jnp.asarray(labels))
        what = f"{getattr(loss_fn, '__name__', 'loss')}(model(x), labels)"
        title = f"{layer.name} model"
    else:
        loss_fn = _vdot
        targets = _random_cotangent(
            jax.eval_shape(lambda d: forward(d, "custom"), diff), seed
        )
        what, title = "vdot(layer(params, x), random g)", f"{layer.name} layer"

    def objective(d, mode):
        return loss_fn(forward(d, mode), targets)

    return objective, diff, names, title, what + (", train=True" if train else "")


# -------------------------------------------------------- finite differences


class _Probes(NamedTuple):
    """What FD probes in one leaf: some coordinates, then random directions."""

    seg: slice  # the leaf's span in the flat parameter vector
    shape: tuple[int, ...]
    coords: np.ndarray  # flat indices into the leaf
    dirs: np.ndarray  # (directions, leaf size), random unit vectors

    @classmethod
    def draw(cls, seg, shape, rng, max_coords, directions):
        size = seg.stop - seg.start
        coords = np.arange(size)
        if size > max_coords:
            coords = np.sort(rng.choice(size, max_coords, replace=False))
        # Unit directions: the slope and the curvature along one are then of the
        # size of a coordinate's, whatever the leaf's size.
        dirs = rng.standard_normal((directions, size))
        dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-300)
        return cls(seg, tuple(shape), coords, dirs)

    def add_step(self, k: int, h: float, flat: np.ndarray) -> None:
        """flat += h * probe k, in place (a coordinate, or then a direction)."""
        if k < len(self.coords):
            flat[self.seg.start + self.coords[k]] += h
        else:
            flat[self.seg] += h * self.dirs[k - len(self.coords)]


def _finite_differences(f_map, flat0, probes, eps, fd_tol):
    """Per leaf: central differences for its probes, and which are non-smooth.

    Returns:
      A list of pairs (central differences, non-smooth mask), each of shape
      `(coords + directions,)`.
    """
    todo = [
        (i, k) for i, p in enumerate(probes) for k in range(len(p.coords) + len(p.dirs))
    ]
    central = [np.zeros(len(p.coords) + len(p.dirs)) for p in probes]
    f0, scale = None, {}
    for h in [eps] + [eps / d for d in _REFINE]:
        values = _evaluate(f_map, flat0, probes, todo, h, with_origin=f0 is None)
        if f0 is None:
            f0, values = values[0], values[1:]
        plus, minus = values[0::2], values[1::2]
        fwd, bwd = (plus - f0) / h, (f0 - minus) / h
        groups = [(i, k < len(probes[i].coords)) for i, k in todo]
        if not scale:  # the slope scale of a leaf's coordinates, and its directions
            for g, m in zip(groups, np.maximum(np.abs(fwd), np.abs(bwd))):
                scale[g] = max(scale.get(g, 0.0), float(m))
        still = []
        for j, (i, k) in enumerate(todo):
            central[i][k] = (plus[j] - minus[j]) / (2 * h)
            # A kink that moves the central difference by less than the FD
            # tolerance is harmless; the last term allows for rounding in f.
            limit = 2 * (fd_tol[0] + fd_tol[1] * scale[groups[j]])
            limit += 8 * np.finfo(np.float64).eps * abs(f0) / h
            if abs(fwd[j] - bwd[j]) > limit:
                still.append((i, k))
        todo = still
        if not todo:
            break
    kink = [np.zeros(len(c), bool) for c in central]
    for i, k in todo:
        kink[i][k] = True
    return list(zip(central, kink))


def _evaluate(f_map, flat0, probes, todo, h, *, with_origin) -> np.ndarray:
    """f at flat0 (first, if with_origin), then at flat0 + h and flat0 - h times
    each probe (i, k) in todo, in chunks of one size so one compile serves all."""
    points = [None] * with_origin + [(i, k, s) for i, k in todo for s in (h, -h)]
    out = []
    for start in range(0, len(points), _CHUNK):
        part = points[start : start + _CHUNK]
        chunk = np.tile(flat0, (_CHUNK, 1))
        for row, point in zip(chunk, part):
            if point is not None:
                probes[point[0]].add_step(point[1], point[2], row)
        out.append(np.asarray(f_map(jnp.asarray(chunk)))[: len(part)])
    return np.concatenate(out) if out else np.zeros(0)


def _compare(a: np.ndarray, b: np.ndarray, atol: float, rtol: float):
    """(largest abs difference, it relative to the largest magnitude, passes)."""
    if a.size == 0:
        return None, None, None
    err = float(np.max(np.abs(a - b)))
    scale = float(max(np.max(np.abs(a)), np.max(np.abs(b))))
    rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
    return err, rel, bool(err <= atol + rtol * scale)


def _leaf_check(name, probe: _Probes, analytic, ad, central, kink, fd_tol):
    n = len(probe.coords)
    projected = np.concatenate([analytic[probe.coords], probe.dirs @ analytic])
    # Coordinates and directions are compared apart, each against its own scale.
    results = [
        _compare(projected[part][~kink[part]], central[part][~kink[part]], *fd_tol)
        for part in (slice(0, n), slice(n, None))
    ]
    checked = [r for r in results if r[0] is not None]
    nonsmooth = tuple(
        tuple(int(j) for j in np.unravel_index(c, probe.shape))
        for c in probe.coords[kink[:n]]
    )
    return LeafCheck(
        name,
        probe.shape,
        ad[0],
        ad[1],
        ad[2],
        max((r[0] for r in checked), default=None),
        max((r[1] for r in checked), default=None),
        all(r[2] for r in checked) if checked else None,
        n,
        len(probe.dirs),
        nonsmooth,
        int(kink[n:].sum()),
    )
