"""Tests for funcnn.gradcheck: it passes correct rules, fails wrong ones, and reports
non-smooth points (max-pool ties, ReLU at 0) as skipped rather than as failures."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.inspect.gradcheck import GradcheckReport, LeafCheck


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


# A deliberately wrong backward rule: d(x**3) = 2 x**2 instead of 3 x**2.
@jax.custom_vjp
def _bad_cube(x):
    return x**3


def _bad_cube_bwd(x, g):
    return (2 * x**2 * g,)


_bad_cube.defvjp(lambda x: (x**3, x), _bad_cube_bwd)


def bad_cube(x, *, grad="custom"):
    return _bad_cube(x) if grad == "custom" else x**3


# A rule wrong at one coordinate only (index 123 of a (200,) input).
@jax.custom_vjp
def _bad_at_one(x):
    return x**3


_bad_at_one.defvjp(lambda x: (x**3, x), lambda x, g: ((3 * x**2 * g).at[123].add(1.0),))


def bad_at_one(x, *, grad="custom"):
    return _bad_at_one(x) if grad == "custom" else x**3


# --------------------------------------------------------------- correct rules


@pytest.mark.parametrize(
    "op, shapes, kwargs, names",
    [
        (funcnn.conv2d, [(2, 2, 5, 5), (3, 2, 3, 3), (3,)], dict(padding=1), "xwb"),
        (
            funcnn.conv2d,
            [(1, 4, 7, 6), (4, 2, 2, 3)],
            dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(2, 1), groups=2),
            "xw",
        ),
        (funcnn.max_pool2d, [(2, 2, 6, 5)], dict(stride=2, ceil_mode=True), "x"),
        (funcnn.max_pool2d, [(1, 2, 7, 7)], dict(stride=1, dilation=2), "x"),
        (funcnn.avg_pool2d, [(2, 1, 5, 6)], dict(padding=1, stride=2), "x"),
    ],
)
def test_ops_pass(op, shapes, kwargs, names):
    arrays = [_normal(i, *s) for i, s in enumerate(shapes)]
    args = arrays if op is funcnn.conv2d else [*arrays, 3]
    report = funcnn.gradcheck(op, *args, kwargs=kwargs, max_coords_per_leaf=20)
    assert isinstance(report, GradcheckReport)
    assert report.ok, str(report)
    assert [r.name for r in report.rows] == list(names)
    for row in report.rows:
        assert isinstance(row, LeafCheck)
        assert row.ad_ok and row.fd_ok
        assert row.ad_rel < 1e-12 and row.fd_rel < 1e-6
        assert row.fd_coords == min(20, int(np.prod(row.shape)))


def test_conv_config_where_autodiff_aborts_checks_against_fd_only():
    # jax.grad of the reference conv aborts XLA:CPU for this configuration.
    x, w = _normal(0, 1, 1, 6, 2), _normal(1, 1, 1, 2, 3)
    kwargs = dict(stride=2, padding=((1, 2), (1, 2)), dilation=(1, 2))
    report = funcnn.gradcheck(funcnn.conv2d, x, w, kwargs=kwargs, autodiff=False)
    assert report.ok, str(report)
    assert all(r.ad_abs is None and r.ad_ok is None for r in report.rows)
    assert all(r.fd_ok for r in report.rows)
    assert "autodiff: skipped" in str(report)


def test_layer_with_input_shape_and_given_params():
    layer = funcnn.Conv2D(3, 3, stride=2, padding=1)
    report = funcnn.gradcheck(layer, input_shape=(-1, 2, 5, 5))
    assert report.ok, str(report)
    assert [r.name for r in report.rows] == ["params['b']", "params['w']", "x"]
    assert report.rows[-1].shape == (2, 2, 5, 5)
    # Given float32 params and input are cast to float64 inside.
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}
    x = _normal(3, 4, 3).astype(np.float32)
    report = funcnn.gradcheck(funcnn.Dense(2), x, params=params)
    assert report.ok, str(report)
    assert report.rows[1].shape == (2, 3)
    # Dense carries its own hand-written rule (funcnn.ops.dense): compared, not
    # the same program as autodiff.
    assert not _same_path(report) and all(r.ad_ok for r in report.rows)


def test_batchnorm_and_dropout_in_training():
    layer = funcnn.serial(funcnn.BatchNorm(), funcnn.Dropout(0.5))
    report = funcnn.gradcheck(layer, _normal(0, 4, 3, 2, 2), train=True)
    assert report.ok, str(report)
    assert "params['00_batchnorm']['scale']" in [r.name for r in report.rows]
    # BatchNorm carries its own hand-written rule (funcnn.ops.batch_norm):
    # compared with autodiff, not the same program.
    assert not _same_path(report) and all(r.ad_ok for r in report.rows)


def test_model_with_loss_passes_and_names_leaves():
    model = funcnn.serial(
        funcnn.Conv2D(2, 3, padding=1),
        funcnn.Relu(),
        funcnn.MaxPool2D(2),
        funcnn.Flatten(),
        funcnn.Dense(3),
    )
    x, labels = _normal(0, 3, 1, 6, 6), np.array([0, 2, 1], np.int32)
    report = funcnn.gradcheck(model, x, labels=labels)
    assert report.ok, str(report)
    assert not report.same_path and all(r.ad_ok for r in report.rows)
    names = [r.name for r in report.rows]
    assert names == [
        "params['00_conv']['b']",
        "params['00_conv']['w']",
        "params['04_dense']['b']",
        "params['04_dense']['w']",
        "x",
    ]
    text = str(report)
    assert "softmax_cross_entropy" in text
    for name in names:
        assert name in text
    line = next(li for li in text.splitlines() if "params['00_conv']['w']" in li)
    assert len(re.findall(r"\d\.\de[-+]\d\d", line)) == 4
    assert text.splitlines()[-1].strip().startswith("result: ok")


def test_model_with_mse_targets():
    model = funcnn.serial(funcnn.Dense(2), funcnn.Sigmoid())
    x, t = _normal(0, 2, 3), np.array([[0.1, 0.9], [0.5, 0.2]])
    report = funcnn.gradcheck(model, x, labels=t, loss=funcnn.mse)
    assert report.ok, str(report)
    assert "mse(model(x), labels)" in str(report)


def test_x64_is_restored():
    before = jax.config.jax_enable_x64
    funcnn.gradcheck(funcnn.avg_pool2d, _normal(0, 1, 1, 4, 4), 2)
    assert jax.config.jax_enable_x64 == before
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)


# ----------------------------------------------------------------- wrong rules


def test_wrong_rule_fails_against_autodiff_and_fd():
    report = funcnn.gradcheck(bad_cube, _normal(0, 3, 4))
    assert not report.ok
    (row,) = report.rows
    assert row.ad_ok is False and row.fd_ok is False
    assert row.fd_rel == pytest.approx(1 / 3, rel=1e-4)  # 2x**2 vs 3x**2
    text = str(report)
    assert "FAIL (autodiff, FD)" in text and "result: FAILED" in text


def test_wrong_rule_fails_against_fd_alone():
    report = funcnn.gradcheck(bad_cube, _normal(0, 5), autodiff=False)
    assert not report.ok
    assert report.rows[0].fd_ok is False


def test_directions_catch_an_error_no_sampled_coordinate_sees():
    x = _normal(0, 200)
    only_dirs = funcnn.gradcheck(
        bad_at_one, x, autodiff=False, max_coords_per_leaf=0, directions=2
    )
    assert only_dirs.rows[0].fd_coords == 0
    assert only_dirs.rows[0].fd_ok is False


def test_nothing_compared_is_unchecked_not_ok():
    """No autodiff and no FD probe: the report says unchecked, never ok."""
    x = _normal(0, 200)
    unchecked = funcnn.gradcheck(
        bad_at_one, x, autodiff=False, max_coords_per_leaf=0, directions=0
    )
    (row,) = unchecked.rows
    assert row.fd_ok is None and row.ad_ok is None and not row.checked
    assert row.result == "unchecked" and not row.ok
    assert not unchecked.ok and unchecked.status == "unchecked"
    assert str(unchecked).splitlines()[-1].strip().startswith("result: unchecked")
    # Autodiff alone is a comparison: the wrong rule fails, with no FD at all.
    ad_only = funcnn.gradcheck(bad_at_one, x, max_coords_per_leaf=0, directions=0)
    assert ad_only.status == "FAILED" and ad_only.rows[0].ad_ok is False


def _same_path(report):
    """Both grad modes ran the same code: the autodiff column says so instead of
    printing a zero, and the verdict rests on finite differences alone."""
    text = str(report)
    return (
        report.same_path
        and all(r.ad_ok is None and r.ad_abs is None for r in report.rows)
        and all(r.fd_ok for r in report.rows)
        and "same path" in text
        and "0.0e+00" not in text
    )


def test_same_path_with_nothing_else_compared_is_unchecked():
    report = funcnn.gradcheck(
        funcnn.Relu(), _normal(0, 3, 4), max_coords_per_leaf=0, directions=0
    )
    assert report.same_path and report.status == "unchecked" and not report.ok


# ------------------------------------------------------------ non-smooth points


def test_max_pool_ties_and_near_ties_are_reported_non_smooth():
    # Window 1 holds an exact tie (1, 1); window 2 a near tie (2, 2 + 1e-9), far
    # closer than the FD step: there one-sided differences disagree.
    x = np.array([[[[1.0, 1.0, 2.0, 2.0 + 1e-9], [0.2, 0.3, 0.5, -1.0]]]])
    report = funcnn.gradcheck(funcnn.max_pool2d, x, 2)
    (row,) = report.rows
    assert set(row.nonsmooth) == {
        (0, 0, 0, 0),
        (0, 0, 0, 1),
        (0, 0, 0, 2),
        (0, 0, 0, 3),
    }
    assert row.fd_coords == 8 and row.fd_ok is True
    assert row.ad_ok is True  # both rules send the delta to the first maximum
    assert report.ok and report.num_nonsmooth >= 4
    text = str(report)
    assert "non-smooth (skipped): x[0, 0, 0, 0]" in text
    assert "non-smooth probes skipped" in text


def test_relu_at_zero_is_reported_non_smooth():
    x = np.array([[0.0, 1.5, -0.7, 0.0, 2.0]])
    report = funcnn.gradcheck(funcnn.Relu(), x)
    (row,) = report.rows
    assert set(row.nonsmooth) == {(0, 0), (0, 3)}
    assert report.ok, str(report)
    assert _same_path(report)


def test_smooth_curvature_is_not_mistaken_for_a_kink():
    # tanh(50 x): second derivatives up to ~2000, so the one-sided slopes at the
    # default step disagree at most points; the smaller steps show it is smooth.
    layer = funcnn.nn.elementwise(lambda x: jnp.tanh(50.0 * x), "steep")
    report = funcnn.gradcheck(layer, 0.02 * _normal(0, 4, 8))
    assert report.ok, str(report)
    assert report.num_nonsmooth == 0


# ----------------------------------------------------------------------- errors


def test_errors():
    x = _normal(0, 1, 1, 4, 4)
    with pytest.raises(TypeError, match="expected an op .* or a Layer, got int"):
        funcnn.gradcheck(3, x)
    with pytest.raises(TypeError, match="expected an op that takes a grad= keyword"):
        funcnn.gradcheck(jnp.sin, x)
    with pytest.raises(ValueError, match="expected an input x or input_shape="):
        funcnn.gradcheck(funcnn.Relu())
    with pytest.raises(ValueError, match="expected a floating-point array"):
        funcnn.gradcheck(funcnn.max_pool2d, np.ones((1, 1, 2, 2), np.int32), 2)
    with pytest.raises(ValueError, match=r"expected \['labels'\] only with a Layer"):
        funcnn.gradcheck(funcnn.max_pool2d, x, 2, labels=np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="expected labels= with loss="):
        funcnn.gradcheck(funcnn.Relu(), x, loss=funcnn.mse)
    with pytest.raises(ValueError, match="expected max_coords_per_leaf >= 0"):
        funcnn.gradcheck(funcnn.Relu(), x, eps=0.0)
