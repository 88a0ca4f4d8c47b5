"""Ready-made networks built from funcnn layers."""

from __future__ import annotations

from funcnn.combinators import serial
from funcnn.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    Relu,
)


def lenet(
    num_classes: int = 10, *, input_hw: tuple[int, int] = (28, 28), width: int = 1
) -> Layer:
    """LeNet-5 style CNN for `(N, C, H, W)` images -> `(N, num_classes)` logits.

    conv(6w, 5x5) - relu - maxpool 2 - conv(16w, 5x5) - relu - maxpool 2 -
    dense 120 - relu - dense 84 - relu - dense num_classes. At 28x28 the first conv
    pads by 2 and the second is unpadded, as in the original; inputs smaller than
    16x16 (such as the 8x8 digits) use "SAME" padding so that both pools fit.
    `width` multiplies the number of filters.
    """
    small = min(input_hw) < 16
    return serial(
        Conv2D(6 * width, 5, padding="SAME" if small else 2),
        Relu,
        MaxPool2D(2),
        Conv2D(16 * width, 5, padding="SAME" if small else 0),
        Relu,
        MaxPool2D(2),
        Flatten(),
        Dense(120),
        Relu,
        Dense(84),
        Relu,
        Dense(num_classes),
    )


def vgg_small(
    num_classes: int = 10, *, batchnorm: bool = True, dropout: float = 0.25
) -> Layer:
    """A small VGG-style CNN: conv32-conv32-pool-conv64-conv64-pool-dense.

    Each conv is 3x3 with "SAME" padding, followed by BatchNorm (optional) and ReLU;
    dropout (the probability of dropping) precedes the final dense layer.
    `(N, C, H, W)` -> `(N, num_classes)`.
    """

    def block(channels: int) -> list[Layer]:
        norm = [BatchNorm()] if batchnorm else []
        return [
            Conv2D(channels, 3, padding="SAME", use_bias=not batchnorm),
            *norm,
            Relu,
        ]

    return serial(
        *block(32),
        *block(32),
        MaxPool2D(2),
        *block(64),
        *block(64),
        MaxPool2D(2),
        Flatten(),
        *([Dropout(dropout)] if dropout > 0 else []),
        Dense(num_classes),
    )


MODELS = {"lenet": lenet, "vgg": vgg_small}
