"""The classic small CNNs: LeNet-5 (two forms) and a small VGG."""

from __future__ import annotations

from funcnn.nn.basic import Dense, Dropout, Flatten, Relu
from funcnn.nn.combinators import serial
from funcnn.nn.conv import Conv2D
from funcnn.nn.core import Layer
from funcnn.nn.norm import BatchNorm
from funcnn.nn.pool import MaxPool2D


def lenet_layers(
    num_classes: int = 10,
    *,
    input_hw: tuple[int, int] = (28, 28),
    width: int = 1,
    second_kernel: int = 5,
    layout: str = "NCHW",
) -> list[Layer]:
    """The layers of `lenet`, as a list (to replay or inspect them one by one).

    `second_kernel` sets the second conv's window (5 in LeNet-5). On inputs under
    16x16 that conv sees a 4x4 map, where a 5x5 window sends XLA:CPU's
    convolution down a slow path (9 ms instead of 0.12 ms for 3x3, per batch of
    32 at width 4, measured on a 2-core CPU); the main job passes 3 there.
    """
    small = min(input_hw) < 16
    return [
        Conv2D(6 * width, 5, padding="SAME" if small else 2, layout=layout),
        Relu(),
        MaxPool2D(2, layout=layout),
        Conv2D(
            16 * width, second_kernel, padding="SAME" if small else 0, layout=layout
        ),
        Relu(),
        MaxPool2D(2, layout=layout),
        Flatten(layout=layout),
        Dense(120),
        Relu(),
        Dense(84),
        Relu(),
        Dense(num_classes),
    ]


def lenet(
    num_classes: int = 10,
    *,
    input_hw: tuple[int, int] = (28, 28),
    width: int = 1,
    second_kernel: int = 5,
    layout: str = "NCHW",
) -> Layer:
    """LeNet-5 style CNN for `(N, C, H, W)` images -> `(N, num_classes)` logits.

    conv(6w, 5x5) - relu - maxpool 2 - conv(16w, 5x5) - relu - maxpool 2 -
    dense 120 - relu - dense 84 - relu - dense num_classes. At 28x28 the first conv
    pads by 2 and the second is unpadded, as in the original; inputs smaller than
    16x16 (such as the 8x8 digits) use "SAME" padding so that both pools fit.
    `width` multiplies the number of filters; `second_kernel` is the second conv's
    window (see `lenet_layers`). With layout="NHWC" it takes `(N, H, W, C)` images,
    with the same parameters.
    """
    return serial(
        *lenet_layers(
            num_classes,
            input_hw=input_hw,
            width=width,
            second_kernel=second_kernel,
            layout=layout,
        )
    )


def lenet5_layers(
    num_classes: int = 10,
    *,
    input_hw: tuple[int, int] = (28, 28),
    layout: str = "NCHW",
) -> list[Layer]:
    """The layers of `lenet5`, as a list."""
    if tuple(input_hw) not in ((28, 28), (32, 32)):
        raise ValueError(
            f"lenet5: expected input_hw (28, 28) or (32, 32), got {input_hw!r}. Its "
            "third conv must see a 5x5 map; for other sizes use funcnn.models.lenet."
        )
    pad = (32 - input_hw[0]) // 2  # 28x28 is padded to LeNet-5's 32x32 field
    return [
        Conv2D(6, 5, padding=pad, layout=layout),
        Relu(),
        MaxPool2D(2, layout=layout),
        Conv2D(16, 5, layout=layout),
        Relu(),
        MaxPool2D(2, layout=layout),
        Conv2D(120, 5, layout=layout),
        Relu(),
        Flatten(layout=layout),
        Dense(84),
        Dense(num_classes),
    ]


def lenet5(
    num_classes: int = 10,
    *,
    input_hw: tuple[int, int] = (28, 28),
    layout: str = "NCHW",
) -> Layer:
    """LeNet-5 as BioTorch's MNIST benchmark model (`LeNetMNIST`), on 28x28 or
    32x32 `(N, 1, H, W)` images -> `(N, num_classes)` logits.

    conv(6, 5x5) - relu - maxpool 2 - conv(16, 5x5) - relu - maxpool 2 -
    conv(120, 5x5) - relu - flatten - dense 84 - dense num_classes. The first conv
    pads 28x28 images by 2 (32x32 ones by 0), so the third conv sees a 5x5 map and
    returns `(N, 120, 1, 1)`. As in BioTorch, there is no activation between the
    two dense layers. It differs from `lenet` there, and in that its third layer
    is a conv (the same map as a dense layer on the flattened 16x5x5 features,
    but a backward rule sees a conv2d). 61,706 parameters with 10 classes.
    """
    return serial(*lenet5_layers(num_classes, input_hw=input_hw, layout=layout))


def vgg_small_layers(
    num_classes: int = 10,
    *,
    batchnorm: bool = True,
    dropout: float = 0.25,
    layout: str = "NCHW",
) -> list[Layer]:
    """The layers of `vgg_small`, as a list."""

    def block(channels: int) -> list[Layer]:
        norm = [BatchNorm(layout=layout)] if batchnorm else []
        conv = Conv2D(
            channels, 3, padding="SAME", use_bias=not batchnorm, layout=layout
        )
        return [conv, *norm, Relu()]

    return [
        *block(32),
        *block(32),
        MaxPool2D(2, layout=layout),
        *block(64),
        *block(64),
        MaxPool2D(2, layout=layout),
        Flatten(layout=layout),
        *([Dropout(dropout)] if dropout > 0 else []),
        Dense(num_classes),
    ]


def vgg_small(
    num_classes: int = 10,
    *,
    batchnorm: bool = True,
    dropout: float = 0.25,
    layout: str = "NCHW",
) -> Layer:
    """A small VGG-style CNN: conv32-conv32-pool-conv64-conv64-pool-dense.

    Each conv is 3x3 with "SAME" padding, followed by BatchNorm (optional) and ReLU;
    dropout (the probability of dropping) precedes the final dense layer.
    `(N, C, H, W)` -> `(N, num_classes)`; with layout="NHWC", `(N, H, W, C)` images
    and the same parameters.
    """
    return serial(
        *vgg_small_layers(
            num_classes, batchnorm=batchnorm, dropout=dropout, layout=layout
        )
    )
