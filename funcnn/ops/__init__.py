"""Operations with hand-written backward rules: conv2d, dense, max_pool2d,
avg_pool2d. Each also runs a backward rule value from `funcnn.rules`."""

from funcnn.ops.conv import conv2d as conv2d
from funcnn.ops.conv import conv2d_input_grad as conv2d_input_grad
from funcnn.ops.conv import conv2d_reference as conv2d_reference
from funcnn.ops.conv import conv2d_weight_grad as conv2d_weight_grad
from funcnn.ops.dense import dense as dense
from funcnn.ops.dense import dense_input_grad as dense_input_grad
from funcnn.ops.dense import dense_reference as dense_reference
from funcnn.ops.dense import dense_weight_grad as dense_weight_grad
from funcnn.ops.pool import avg_pool2d as avg_pool2d
from funcnn.ops.pool import max_pool2d as max_pool2d

__all__ = [
    "conv2d",
    "conv2d_input_grad",
    "conv2d_reference",
    "conv2d_weight_grad",
    "dense",
    "dense_input_grad",
    "dense_reference",
    "dense_weight_grad",
    "max_pool2d",
    "avg_pool2d",
]
