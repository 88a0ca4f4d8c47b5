"""Operations with hand-written backward rules: conv2d, conv_transpose2d, max_pool2d,
avg_pool2d, the adaptive pools and max_unpool2d; and upsample2d (autodiff)."""

from funcnn.ops.adaptive import adaptive_avg_pool2d as adaptive_avg_pool2d
from funcnn.ops.adaptive import adaptive_max_pool2d as adaptive_max_pool2d
from funcnn.ops.conv import conv2d as conv2d
from funcnn.ops.conv import conv2d_reference as conv2d_reference
from funcnn.ops.conv_transpose import conv_transpose2d as conv_transpose2d
from funcnn.ops.pool import avg_pool2d as avg_pool2d
from funcnn.ops.pool import max_pool2d as max_pool2d
from funcnn.ops.unpool import max_unpool2d as max_unpool2d
from funcnn.ops.upsample import upsample2d as upsample2d

__all__ = [
    "conv2d",
    "conv2d_reference",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "max_unpool2d",
    "upsample2d",
]
