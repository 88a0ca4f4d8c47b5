"""MobileNet v1 (Howard et al. 2017): depthwise-separable convolutions."""

from __future__ import annotations

from funcnn.nn.basic import Dense, Relu
from funcnn.nn.combinators import serial
from funcnn.nn.conv import Conv2D
from funcnn.nn.core import Layer
from funcnn.nn.norm import BatchNorm
from funcnn.nn.pool import GlobalAvgPool2D

# (output channels, stride) of the 13 depthwise-separable blocks.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def _separable(in_channels: int, out_channels: int, stride: int, layout: str) -> Layer:
    """A 3x3 depthwise conv (groups = C_in) and a 1x1 pointwise conv, each with
    BatchNorm and ReLU: `(N, C_in, H, W)` -> `(N, C_out, ceil(H/S), ceil(W/S))`."""
    return serial(
        Conv2D(
            in_channels,
            3,
            stride=stride,
            padding=1,
            groups=in_channels,
            use_bias=False,
            layout=layout,
        ),
        BatchNorm(layout=layout),
        Relu(),
        Conv2D(out_channels, 1, use_bias=False, layout=layout),
        BatchNorm(layout=layout),
        Relu(),
    )


def mobilenet_v1_layers(
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    small_inputs: bool = False,
    layout: str = "NCHW",
) -> list[Layer]:
    """The layers of `mobilenet_v1`, as a list."""
    if not width > 0:
        raise ValueError(f"mobilenet_v1: expected width > 0, got {width!r}.")
    first = _scaled(32, width)
    stride = 1 if small_inputs else 2
    layers: list[Layer] = [
        Conv2D(first, 3, stride=stride, padding=1, use_bias=False, layout=layout),
        BatchNorm(layout=layout),
        Relu(),
    ]
    in_channels = first
    for channels, stride in _BLOCKS:
        out_channels = _scaled(channels, width)
        if small_inputs and stride == 2 and out_channels == _scaled(1024, width):
            stride = 1  # keep a 2x2 map at 32x32 inputs instead of 1x1
        layers.append(_separable(in_channels, out_channels, stride, layout))
        in_channels = out_channels
    return layers + [GlobalAvgPool2D(layout=layout), Dense(num_classes)]


def mobilenet_v1(
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    small_inputs: bool = False,
    layout: str = "NCHW",
) -> Layer:
    """MobileNet v1: `(N, 3, H, W)` -> `(N, num_classes)`.

    A 3x3/2 conv with 32 filters, 13 depthwise-separable blocks (a 3x3 depthwise
    conv through `groups=C` and a 1x1 pointwise conv, each with BatchNorm and
    ReLU) up to 1024 channels, global average pooling and a dense layer. `width`
    is the paper's width multiplier alpha: every layer's channels are scaled by it
    (at least 8). `small_inputs=True` (32x32 images) makes the first conv and the
    last strided block stride 1, so the final map is 2x2 rather than 1x1 at 32x32.
    `layout="NHWC"` takes `(N, H, W, C)` images with the same parameters.
    """
    layers = mobilenet_v1_layers(
        num_classes, width=width, small_inputs=small_inputs, layout=layout
    )
    return serial(*layers)
