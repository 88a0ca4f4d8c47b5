"""Operations with hand-written backward rules: conv2d, max_pool2d, avg_pool2d."""

from funcnn.ops.conv import conv2d as conv2d
from funcnn.ops.conv import conv2d_reference as conv2d_reference
from funcnn.ops.pool import avg_pool2d as avg_pool2d
from funcnn.ops.pool import max_pool2d as max_pool2d

__all__ = ["conv2d", "conv2d_reference", "max_pool2d", "avg_pool2d"]
