"""Tests for funcnn.ops.upsample2d: values and gradients against PyTorch's
F.interpolate (float64, one subprocess per sweep), by hand, and its errors."""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blocks import LAYOUTS, ints, to_layout, to_nchw, torch_or_none  # noqa: F401
from helpers import assert_close, fast_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from funcnn import ops

pytestmark = pytest.mark.usefixtures("release_compiled")

scales = st.sampled_from((0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0))


@st.composite
def configs(draw):
    mode = draw(st.sampled_from(("nearest", "bilinear")))
    kw = {"mode": mode, "layout": draw(st.sampled_from(LAYOUTS))}
    if mode == "bilinear":
        kw["align_corners"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["size"] = draw(st.one_of(ints(1, 9), st.tuples(ints(1, 9), ints(1, 9))))
    else:
        kw["scale_factor"] = draw(st.one_of(scales, st.tuples(scales, scales)))
    shape = (draw(ints(1, 2)), draw(ints(1, 3)), draw(ints(2, 6)), draw(ints(2, 6)))
    return shape, tuple(sorted(kw.items()))


def out_shape(shape, kw):
    """`(N, C, OH, OW)`, by PyTorch's rule: OH = floor(H * scale), or the size."""
    if "size" in kw:
        size = kw["size"]
        return shape[:2] + ((size, size) if isinstance(size, int) else size)
    s = kw["scale_factor"]
    s = (s, s) if isinstance(s, float) else s
    return shape[:2] + tuple(int(np.floor(n * f)) for n, f in zip(shape[2:], s))


@partial(fast_jit, static_argnums=0)
def resize_and_grad(kw, x, g):
    y, vjp = jax.vjp(partial(ops.upsample2d, **dict(kw)), x)
    return y, vjp(g)[0]


_TORCH = """
for i, c in enumerate(configs):
    x = t(f"x{i}", True)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}
    y = F.interpolate(x, **kw)
    y.backward(t(f"g{i}"))
    save(f"y{i}", y)
    save(f"dx{i}", x.grad)
"""


def _sweep(examples):
    def test(torch_or_none):  # noqa: F811 (the fixture)
        if torch_or_none is None:
            pytest.skip("torch is not installed")
        records = []

        @settings(derandomize=True, database=None, deadline=None, max_examples=examples)
        @given(cfg=configs(), seed=ints(0, 2**32 - 1))
        def sweep(cfg, seed):
            shape, kwargs = cfg
            kw = dict(kwargs)
            rng = np.random.default_rng(seed)
            x = jnp.asarray(to_layout(rng.standard_normal(shape), kw["layout"]))
            g = jnp.asarray(to_layout(rng.standard_normal(out_shape(shape, kw)),
                                      kw["layout"]))  # fmt: skip
            y, dx = resize_and_grad(kwargs, x, g)
            records.append([kw] + [to_nchw(a, kw["layout"]) for a in (x, g, y, dx)])

        sweep()
        arrays, meta = {}, []
        for i, (kw, x, g, _, _) in enumerate(records):
            arrays.update({f"x{i}": x, f"g{i}": g})
            meta.append({k: v for k, v in kw.items() if k != "layout"})
        theirs = torch_or_none(_TORCH, arrays, meta)
        for i, (_, _, _, y, dx) in enumerate(records):
            assert y.shape == theirs[f"y{i}"].shape, meta[i]
            assert_close(y, theirs[f"y{i}"], 1e-12)
            assert_close(dx, theirs[f"dx{i}"], 1e-12)

    return test


test_matches_torch = _sweep(100)
test_matches_torch_slow = pytest.mark.slow(_sweep(600))


def test_by_hand():
    x = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_array_equal(
        ops.upsample2d(x, scale_factor=2)[0, 0],
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]],
    )
    # Corners aligned: the output's corners are the input's, and the middle
    # column is the mean of its neighbours.
    y = ops.upsample2d(x, size=(2, 3), mode="bilinear", align_corners=True)
    np.testing.assert_array_equal(y[0, 0], [[1.0, 1.5, 2.0], [3.0, 3.5, 4.0]])
    # Edges aligned: source columns (j + 0.5) * 2 / 4 - 0.5 = -0.25 -> 0, 0.25,
    # 0.75, 1.25.
    y = ops.upsample2d(x[:, :, :1], size=(1, 4), mode="bilinear")
    np.testing.assert_array_equal(y[0, 0, 0], [1.0, 1.25, 1.75, 2.0])


@pytest.mark.parametrize(
    "kwargs, err, message",
    [
        (dict(), ValueError,
         "upsample2d: expected exactly one of size and scale_factor, got size=None "
         "and scale_factor=None."),
        (dict(size=2, scale_factor=2), ValueError, "expected exactly one of size"),
        (dict(size=2, mode="bicubic"), ValueError,
         "upsample2d: expected mode to be one of ('nearest', 'bilinear'), got "
         "'bicubic'."),
        (dict(size=2, align_corners=True), ValueError,
         "upsample2d: expected align_corners=None with mode='nearest', got True. Only "
         "bilinear resizing has corners to align."),
        (dict(scale_factor=0), ValueError,
         "upsample2d: expected scale_factor to be a positive number or a pair of "
         "them, got 0."),
        (dict(scale_factor=0.1), ValueError,
         "upsample2d: expected an output of at least 1x1, got (0, 0) from input "
         "(4, 4) and scale_factor 0.1."),
        (dict(size=0), ValueError, "upsample2d: expected size >= 1, got 0."),
        (dict(size=2, layout="HWC"), ValueError,
         "upsample2d: expected layout to be one of ('NCHW', 'NHWC'), got 'HWC'."),
    ],
)  # fmt: skip
def test_errors(kwargs, err, message):
    with pytest.raises(err, match=re.escape(message)):
        ops.upsample2d(jnp.zeros((1, 1, 4, 4)), **kwargs)
