"""The angle between two updates: how far a rule's gradient or delta points from
the exact one (Lillicrap et al.: under 90 degrees, the rule's update still
descends).

The angle is `2 * atan2(|u - v|, |u + v|)` of the unit vectors, exact to rounding
near 0 and 180 degrees where arccos of the cosine is not; NaN when either vector
is zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def angle(a: Any, b: Any) -> jax.Array:
    """Degrees between pytrees `a` and `b` of equal structure, as flat vectors."""
    va = jnp.concatenate([jnp.ravel(t) for t in jax.tree_util.tree_leaves(a)])
    vb = jnp.concatenate([jnp.ravel(t) for t in jax.tree_util.tree_leaves(b)])
    na, nb = jnp.linalg.norm(va), jnp.linalg.norm(vb)
    ok = (na > 0) & (nb > 0)
    ua = va / jnp.where(ok, na, 1)
    ub = vb / jnp.where(ok, nb, 1)
    rad = 2 * jnp.arctan2(jnp.linalg.norm(ua - ub), jnp.linalg.norm(ua + ub))
    return jnp.where(ok, jnp.degrees(rad), jnp.nan)
