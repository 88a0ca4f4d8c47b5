"""ResNets: the CIFAR ResNet-20 of He et al. (2016) and torchvision's ResNet-18.

Both are built from `residual` blocks, so every layer has a readable path, e.g.
`"03_residual/00_conv"` for the first conv of ResNet-20's first block.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcnn.nn.basic import Dense, Relu
from funcnn.nn.combinators import residual, serial
from funcnn.nn.conv import Conv2D
from funcnn.nn.core import Layer, check_shape, leaf, positive_int
from funcnn.nn.norm import BatchNorm
from funcnn.nn.pool import GlobalAvgPool2D, MaxPool2D
from funcnn.ops import _args


def ShortcutA(out_channels: int, stride: int = 1, *, layout: str = "NCHW") -> Layer:
    """He et al.'s option-A shortcut: the identity, subsampled by `stride` and with
    zero channels appended. No parameters.

    `(N, C_in, H, W)` -> `(N, out_channels, ceil(H / S), ceil(W / S))` (or NHWC),
    with `out_channels >= C_in`; the first C_in channels are `x[:, :, ::S, ::S]`.
    """
    label = "ShortcutA"
    positive_int(label, "out_channels", out_channels)
    positive_int(label, "stride", stride)
    _args.check_layout(label, layout)
    axes = _args.spatial_axes(layout)
    channel = _args.channel_axis(layout)

    def init(key, input_shape):
        del key
        shape = check_shape(label, input_shape, 4, _args.axes_text(layout))
        n, c, h, w = _args.nchw_shape(shape, layout)
        if c > out_channels:
            raise ValueError(
                f"{label}: expected out_channels (={out_channels}) >= C_in (={c})."
            )
        hw = (-(-h // stride), -(-w // stride))
        return _args.layout_shape(n, out_channels, hw, layout), {}, {}

    def apply(params, state, x, **_):
        del params
        index = [slice(None)] * 4
        for axis in axes:
            index[axis] = slice(None, None, stride)
        pads = [(0, 0)] * 4
        pads[channel] = (0, out_channels - x.shape[channel])
        return jnp.pad(x[tuple(index)], pads), state

    return leaf(label, "shortcut_a", init, apply)


def _basic_block(
    channels: int, stride: int, in_channels: int, shortcut: str, layout: str
) -> Layer:
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (the block's ReLU follows it)."""
    short = None
    if stride != 1 or in_channels != channels:
        if shortcut == "A":
            short = ShortcutA(channels, stride, layout=layout)
        else:
            short = serial(
                Conv2D(channels, 1, stride=stride, use_bias=False, layout=layout),
                BatchNorm(layout=layout),
            )
    return residual(
        Conv2D(channels, 3, stride=stride, padding=1, use_bias=False, layout=layout),
        BatchNorm(layout=layout),
        Relu(),
        Conv2D(channels, 3, padding=1, use_bias=False, layout=layout),
        BatchNorm(layout=layout),
        shortcut=short,
    )


def resnet20_layers(
    num_classes: int = 10, *, depth: int = 20, layout: str = "NCHW"
) -> list[Layer]:
    """The layers of `resnet20`, as a list (ResNet-`depth` for depth = 6n + 2)."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(
            f"resnet20: expected depth = 6n + 2 >= 8 (20, 32, 44, 56, 110), "
            f"got {depth}."
        )
    n = (depth - 2) // 6
    layers: list[Layer] = [
        Conv2D(16, 3, padding=1, use_bias=False, layout=layout),
        BatchNorm(layout=layout),
        Relu(),
    ]
    in_channels = 16
    for stage, channels in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            block = _basic_block(channels, stride, in_channels, "A", layout)
            layers += [block, Relu()]
            in_channels = channels
    return layers + [GlobalAvgPool2D(layout=layout), Dense(num_classes)]


def resnet20(num_classes: int = 10, *, depth: int = 20, layout: str = "NCHW") -> Layer:
    """The CIFAR ResNet-20 of He et al. 2016 (section 4.2), for `(N, 3, 32, 32)`.

    A 3x3 conv with 16 filters, then three stages of `n = (depth - 2) / 6` basic
    blocks at 16, 32 and 64 channels (the first block of stages 2 and 3 halves H
    and W with stride 2), global average pooling and a dense layer:
    `(N, 3, H, W)` -> `(N, num_classes)`. Shortcuts use option A, as in the paper's
    CIFAR experiments: the identity, subsampled and zero-padded in channels where
    the shape changes (`ShortcutA`), so shortcuts add no parameters. ResNet-20 has
    269,722 trainable parameters with 10 classes (0.27M in the paper); BatchNorm
    running statistics are state, not parameters. `layout="NHWC"` takes
    `(N, H, W, C)` images with the same parameters.
    """
    return serial(*resnet20_layers(num_classes, depth=depth, layout=layout))


def resnet18_layers(
    num_classes: int = 1000, *, small_inputs: bool = False, layout: str = "NCHW"
) -> list[Layer]:
    """The layers of `resnet18`, as a list."""
    if small_inputs:
        stem = [
            Conv2D(64, 3, padding=1, use_bias=False, layout=layout),
            BatchNorm(layout=layout),
            Relu(),
        ]
    else:
        stem = [
            Conv2D(64, 7, stride=2, padding=3, use_bias=False, layout=layout),
            BatchNorm(layout=layout),
            Relu(),
            MaxPool2D(3, stride=2, padding=1, layout=layout),
        ]
    layers, in_channels = stem, 64
    for stage, channels in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            block = _basic_block(channels, stride, in_channels, "B", layout)
            layers += [block, Relu()]
            in_channels = channels
    return layers + [GlobalAvgPool2D(layout=layout), Dense(num_classes)]


def resnet18(
    num_classes: int = 1000, *, small_inputs: bool = False, layout: str = "NCHW"
) -> Layer:
    """torchvision's ResNet-18: `(N, 3, H, W)` -> `(N, num_classes)`.

    A 7x7/2 conv and a 3x3/2 max pool, four stages of two basic blocks at 64, 128,
    256 and 512 channels (projection shortcuts, option B: a 1x1 conv with stride
    and BatchNorm, where the shape changes), global average pooling and a dense
    layer. With 1000 classes it has exactly 11,689,512 trainable parameters, as
    torchvision's. `small_inputs=True` swaps the stem for a 3x3/1 conv without the
    max pool, the usual choice for 32x32 images. `layout="NHWC"` takes
    `(N, H, W, C)` images with the same parameters.
    """
    return serial(
        *resnet18_layers(num_classes, small_inputs=small_inputs, layout=layout)
    )
