"""Finite differences for `funcnn.gradcheck`, with kinks told apart from curvature.

Central differences `(f(p + h) - f(p - h)) / 2h` probe chosen coordinates of each
leaf and random unit directions through it. Every probe also gets the one-sided
slopes `(f(p+h) - f(p)) / h` and `(f(p) - f(p-h)) / h`; where they disagree beyond
the FD tolerance, the probe is retried at h/4 and h/16: a smooth function's gap
(about `h * f''`) shrinks with the step, the jump at a kink (ReLU at 0, a max-pool
tie) does not. A probe still disagreeing is non-smooth: skipped and counted. Only
function values are used, so a wrong backward rule cannot hide here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

_CHUNK = 32  # FD evaluations per compiled call: one shape, so one compile
_REFINE = (4, 16)  # step divisors tried where the one-sided slopes disagree


class Probes(NamedTuple):
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


def finite_differences(f_map, flat0, probes, eps, fd_tol):
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
        values = evaluate(f_map, flat0, probes, todo, h, with_origin=f0 is None)
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


def evaluate(f_map, flat0, probes, todo, h, *, with_origin) -> np.ndarray:
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


def compare(a: np.ndarray, b: np.ndarray, atol: float, rtol: float):
    """(largest abs difference, it relative to the largest magnitude, passes)."""
    if a.size == 0:
        return None, None, None
    err = float(np.max(np.abs(a - b)))
    scale = float(max(np.max(np.abs(a)), np.max(np.abs(b))))
    rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
    return err, rel, bool(err <= atol + rtol * scale)
