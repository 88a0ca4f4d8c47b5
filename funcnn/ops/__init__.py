"""Operations with hand-written backward rules: conv2d, conv_transpose2d, dense,
max_pool2d, avg_pool2d, the adaptive pools, max_unpool2d and batch_norm; and
upsample2d (autodiff). Each but batch_norm also runs a backward rule value from
`funcnn.rules`. Forward-mode autodiff (jax.jvp, jacfwd, linearize) runs through
the hand-written rules too: each is declared with `custom_vjp` (`funcnn.ops._vjp`),
jax.custom_vjp plus a forward mode that differentiates the plain forward.

Inside, imports go one way (import-linter checks it in CI): `_args`, `_vjp`,
`_windows`, `init` (checks, the custom-VJP mechanism, window geometry,
initializers) <- `kernels.*` (each op's plain-lax reference and hand-written
rule) <- `rule` (the `Rule` protocol, built on the kernels) <- `registry`,
`ruled` (rule names; the VJPs that run a rule value) <- the public ops (`conv`,
`dense`, `pool`, ...). Nothing here imports from the rest of funcnn.
"""

from funcnn.ops._vjp import custom_vjp as custom_vjp
from funcnn.ops._vjp import forward_mode_available as forward_mode_available
from funcnn.ops.adaptive import adaptive_avg_pool2d as adaptive_avg_pool2d
from funcnn.ops.adaptive import adaptive_max_pool2d as adaptive_max_pool2d
from funcnn.ops.avg_pool import avg_pool2d as avg_pool2d
from funcnn.ops.conv import conv2d as conv2d
from funcnn.ops.conv_transpose import conv_transpose2d as conv_transpose2d
from funcnn.ops.dense import dense as dense
from funcnn.ops.kernels.conv import conv2d_input_grad as conv2d_input_grad
from funcnn.ops.kernels.conv import conv2d_reference as conv2d_reference
from funcnn.ops.kernels.conv import conv2d_weight_grad as conv2d_weight_grad
from funcnn.ops.kernels.dense import dense_input_grad as dense_input_grad
from funcnn.ops.kernels.dense import dense_reference as dense_reference
from funcnn.ops.kernels.dense import dense_weight_grad as dense_weight_grad
from funcnn.ops.norm import batch_norm as batch_norm
from funcnn.ops.pool import max_pool2d as max_pool2d
from funcnn.ops.unpool import max_unpool2d as max_unpool2d
from funcnn.ops.upsample import upsample2d as upsample2d

__all__ = [
    "conv2d",
    "conv2d_input_grad",
    "conv2d_reference",
    "conv2d_weight_grad",
    "conv_transpose2d",
    "custom_vjp",
    "dense",
    "dense_input_grad",
    "dense_reference",
    "dense_weight_grad",
    "forward_mode_available",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "max_unpool2d",
    "upsample2d",
    "batch_norm",
]
