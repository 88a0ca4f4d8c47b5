"""A small U-Net (Ronneberger et al. 2015): an encoder and a decoder joined by
skip connections that concatenate channels (the texts' "fusion" layer), with
transposed convolutions for the upsampling."""

from __future__ import annotations

from funcnn.nn.basic import Relu
from funcnn.nn.combinators import Concat, Identity, branches, serial
from funcnn.nn.conv import Conv2D, ConvTranspose2D
from funcnn.nn.core import Layer, positive_int
from funcnn.nn.norm import BatchNorm
from funcnn.nn.pool import MaxPool2D
from funcnn.ops import _args


def _double_conv(channels: int, layout: str) -> list[Layer]:
    """(3x3 conv, BatchNorm, ReLU) twice, keeping H and W."""
    layers: list[Layer] = []
    for _ in range(2):
        layers += [
            Conv2D(channels, 3, padding=1, use_bias=False, layout=layout),
            BatchNorm(layout=layout),
            Relu(),
        ]
    return layers


def _level(channels: int, inner: list[Layer], layout: str) -> list[Layer]:
    """One encoder level and its decoder around `inner` (the levels below):
    double conv; then the skip (identity) beside max pool 2 -> inner -> 2x2
    transposed conv with stride 2; concatenate; double conv."""
    down_up = serial(
        MaxPool2D(2, layout=layout),
        *inner,
        ConvTranspose2D(channels, 2, stride=2, layout=layout),
    )
    return [
        *_double_conv(channels, layout),
        branches(Identity(), down_up),
        Concat(axis=_args.channel_axis(layout)),
        *_double_conv(channels, layout),
    ]


def unet_small_layers(
    num_classes: int = 2, *, width: int = 16, depth: int = 2, layout: str = "NCHW"
) -> list[Layer]:
    """The layers of `unet_small`, as a list."""
    label = "unet_small"
    positive_int(label, "num_classes", num_classes)
    positive_int(label, "width", width)
    positive_int(label, "depth", depth)
    _args.check_layout(label, layout)
    inner = _double_conv(width * 2**depth, layout)  # the bottleneck
    for level in reversed(range(depth)):
        inner = _level(width * 2**level, inner, layout)
    return inner + [Conv2D(num_classes, 1, layout=layout)]


def unet_small(
    num_classes: int = 2, *, width: int = 16, depth: int = 2, layout: str = "NCHW"
) -> Layer:
    """A small U-Net for per-pixel classification: `(N, C, H, W)` ->
    `(N, num_classes, H, W)` logits (or NHWC), H and W divisible by `2**depth`.

    `depth` levels, each a double 3x3 conv (with BatchNorm and ReLU) at `width *
    2**level` channels whose output is both kept (the skip connection) and max
    pooled into the level below; below the last level a double conv at `width *
    2**depth` channels (the bottleneck). On the way up, a 2x2 transposed conv
    with stride 2 (`ConvTranspose2D`) doubles H and W, the result is concatenated
    with the level's skip along the channels (`branches` + `Concat`), and a
    double conv mixes them. A 1x1 conv gives the per-pixel logits.
    """
    return serial(
        *unet_small_layers(num_classes, width=width, depth=depth, layout=layout)
    )
