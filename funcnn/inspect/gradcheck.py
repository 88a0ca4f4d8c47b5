"""A gradient checker for ops, layers and whole models, in float64.

`gradcheck(target, *args, ...)` compares three gradients of one scalar objective:

- **custom**: `jax.grad` with `grad="custom"`, the hand-written backward rules;
- **autodiff**: `jax.grad` with `grad="autodiff"`, JAX's own derivative of the
  plain-lax forward (skip it with `autodiff=False`). Where both modes trace to the
  same jaxpr (a layer with no custom rule: Dense, BatchNorm, ReLU), comparing them
  would compare a function with itself, so the report says "same path" instead;
- **finite differences (FD)**: central differences on every coordinate of a small
  leaf and a seeded random sample of a big one, plus random directional
  derivatives, which reach the coordinates the sample missed. Probes that straddle
  a kink are skipped and counted (`funcnn.inspect.gradcheck_fd`).

The objective is `vdot(output, g)` with a seeded random cotangent `g` for an op or a
layer, and the loss for a model (`funcnn.inspect.gradcheck_objectives`). A leaf is
ok only when something was compared (`funcnn.inspect.gradcheck_report`).

Everything runs in float64: `gradcheck` enables x64 for its own duration (the
thread-local `jax.enable_x64` context, so the caller's setting is untouched) and
casts inputs, parameters and state to float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from funcnn.inspect.gradcheck_fd import Probes, compare, finite_differences
from funcnn.inspect.gradcheck_objectives import (
    enable_x64,
    layer_objective,
    op_objective,
)
from funcnn.inspect.gradcheck_report import GradcheckReport as GradcheckReport
from funcnn.inspect.gradcheck_report import LeafCheck as LeafCheck
from funcnn.nn.core import Layer


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
      params: a layer's parameters; by default `layer.init` makes them from the
        seed.
      state: a layer's state; by default `layer.init` makes it.
      labels: makes the target a model whose objective is `loss(outputs, labels)`,
        e.g. integer labels of shape `(N,)` for the default softmax cross-entropy.
      loss: `loss(outputs, labels) -> scalar`, e.g. `funcnn.mse` with targets.
      train: apply the layer in training mode: BatchNorm uses batch statistics and
        Dropout one fixed key, so every evaluation sees the same mask.
      autodiff: also compare with `grad="autodiff"`, unless both grad modes trace
        to the same jaxpr ("same path": there is no custom rule to check). Turn
        it off where JAX cannot differentiate the reference (it aborts XLA:CPU
        for some strided convs).
      max_coords_per_leaf: difference every coordinate of a leaf this small, else
        a seeded random sample of this many.
      directions: random directional derivatives per leaf (0 for none).
      eps: the FD step h.
      ad_tol: `(atol, rtol)` against autodiff; a leaf passes when its largest
        absolute error is at most `atol + rtol * (largest gradient magnitude
        compared)`.
      fd_tol: `(atol, rtol)` against finite differences, likewise.
      seed: seeds the cotangent, the FD sample and directions, and whatever
        `gradcheck` initialises (params, the random input, Dropout's key).
      title: the report's heading; defaults to the target's name.

    Returns:
      A `GradcheckReport`: `report.ok` (every leaf compared at least once, and
      nothing failed; else `report.status` is "FAILED" or "unchecked"), one
      `LeafCheck` per leaf in `report.rows` (named like `params['00_conv']['w']`,
      or `x`), and a table from `print(report)`. Where the custom and autodiff
      gradients trace to the same jaxpr, the autodiff comparison is not made and
      the table says "same path".

    Raises:
      TypeError, ValueError: for a target or arguments it cannot check.
    """
    if max_coords_per_leaf < 0 or directions < 0 or not eps > 0:
        raise ValueError(
            "gradcheck: expected max_coords_per_leaf >= 0, directions >= 0 and "
            f"eps > 0, got {max_coords_per_leaf}, {directions} and {eps}."
        )
    with enable_x64():
        if isinstance(target, Layer):
            built = layer_objective(
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
            built = op_objective(target, args, kwargs, seed)
        objective, diff, names, default_title, what = built
        flat0, unravel = ravel_pytree(diff)

        def grad_fn(mode):
            return jax.grad(lambda p: objective(unravel(p), mode))

        same_path = autodiff and _same_jaxpr(
            grad_fn("custom"), grad_fn("autodiff"), flat0
        )
        g_custom = np.asarray(jax.jit(grad_fn("custom"))(flat0))
        g_auto = None
        if autodiff and not same_path:
            g_auto = np.asarray(jax.jit(grad_fn("autodiff"))(flat0))
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
                Probes.draw(seg, leaf.shape, rng, max_coords_per_leaf, directions)
            )
        fd = finite_differences(f_map, np.asarray(flat0), probes, eps, fd_tol)
        rows = []
        for name, probe, (central, kink) in zip(names, probes, fd):
            analytic = g_custom[probe.seg]
            ad = (None, None, None)
            if g_auto is not None:
                ad = compare(analytic, g_auto[probe.seg], *ad_tol)
            rows.append(_leaf_check(name, probe, analytic, ad, central, kink, fd_tol))
    return GradcheckReport(
        title=title or default_title,
        objective=what,
        rows=tuple(rows),
        eps=eps,
        ad_tol=ad_tol,
        fd_tol=fd_tol,
        autodiff=autodiff,
        same_path=bool(same_path),
    )


def _same_jaxpr(f, g, *args) -> bool:
    """Whether `f` and `g` trace to the same jaxpr with equal constants: the same
    computation, so that comparing their values could never fail."""
    jf, jg = jax.make_jaxpr(f)(*args), jax.make_jaxpr(g)(*args)
    if str(jf.jaxpr) != str(jg.jaxpr) or len(jf.consts) != len(jg.consts):
        return False
    return all(a is b or _equal_const(a, b) for a, b in zip(jf.consts, jg.consts))


def _equal_const(a, b) -> bool:
    dtype = getattr(a, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        # Typed PRNG keys compare through their raw key data.
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))


def _leaf_check(name, probe: Probes, analytic, ad, central, kink, fd_tol):
    n = len(probe.coords)
    projected = np.concatenate([analytic[probe.coords], probe.dirs @ analytic])
    # Coordinates and directions are compared apart, each against its own scale.
    results = [
        compare(projected[part][~kink[part]], central[part][~kink[part]], *fd_tol)
        for part in (slice(0, n), slice(n, None))
    ]
    checked = [r for r in results if r[0] is not None]
    nonsmooth = tuple(
        tuple(int(j) for j in np.unravel_index(c, probe.shape))
        for c in probe.coords[kink[:n]]
    )
    return LeafCheck(
        name=name,
        shape=probe.shape,
        ad_abs=ad[0],
        ad_rel=ad[1],
        ad_ok=ad[2],
        fd_abs=max((r[0] for r in checked), default=None),
        fd_rel=max((r[1] for r in checked), default=None),
        fd_ok=all(r[2] for r in checked) if checked else None,
        fd_coords=n,
        fd_directions=len(probe.dirs),
        nonsmooth=nonsmooth,
        nonsmooth_directions=int(kink[n:].sum()),
    )
