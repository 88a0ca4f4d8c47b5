"""The benchmark grid: op cases and train-step models, as plain JSON-able dicts.

A case is shared by the JAX and the PyTorch side, so both measure the same shapes,
batch and dtype. Padding is an int or a pair, the forms both frameworks accept.
"""

from __future__ import annotations

OP_PARTS_FULL = ("fwd", "bwd", "fwdbwd")
# Every pool shows its forward alone (inference) beside forward + backward.
POOL_PARTS = ("fwd", "fwdbwd")
DTYPE = "float32"  # both frameworks' arrays and parameters
RESNET18_BATCH = 32


def conv(name, x, c_out, k, *, stride=1, padding=0, dilation=1, groups=1):
    n, c_in, h, w = x
    return {
        "name": name,
        "op": "conv2d",
        "x": list(x),
        "w": [c_out, c_in // groups, k, k],
        "b": [c_out],
        "kwargs": {
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": groups,
        },
        "parts": ["fwdbwd"],
        "dtype": DTYPE,
    }


def pool(name, op, x, window, *, stride=None, padding=0, ceil_mode=False, parts=None):
    kwargs = {"stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    return {
        "name": name,
        "op": op,
        "x": list(x),
        "window": window,
        "kwargs": kwargs,
        "parts": list(parts or POOL_PARTS),
        "dtype": DTYPE,
    }


HEADLINE_MAXPOOL = "maxpool 2x2/2 128x16x32x32"


def op_cases(quick: bool) -> list[dict]:
    """The op grid. `quick` is a tiny grid for the smoke test (ratios meaningless)."""
    if quick:
        return [
            conv("conv 4->8 3x3 p1 8x4x12x12", (8, 4, 12, 12), 8, 3, padding=1),
            pool(
                "maxpool 2x2/2 8x4x12x12",
                "max_pool2d",
                (8, 4, 12, 12),
                2,
                parts=OP_PARTS_FULL,
            ),
            pool("avgpool 2x2/2 8x4x12x12", "avg_pool2d", (8, 4, 12, 12), 2),
        ]
    b = 128
    return [
        conv("conv 16->32 3x3 p1 @32", (b, 16, 32, 32), 32, 3, padding=1),
        conv("conv 32->64 3x3 p1 @16", (b, 32, 16, 16), 64, 3, padding=1),
        conv("conv 32->64 3x3 s2 p1 @16", (b, 32, 16, 16), 64, 3, stride=2, padding=1),
        conv("conv 3->32 3x3 p1 @32", (b, 3, 32, 32), 32, 3, padding=1),
        conv("conv 1->6 5x5 p2 @28", (b, 1, 28, 28), 6, 5, padding=2),
        pool(HEADLINE_MAXPOOL, "max_pool2d", (b, 16, 32, 32), 2, parts=OP_PARTS_FULL),
        pool(
            "maxpool 3x3/2 128x32x32x32",
            "max_pool2d",
            (b, 32, 32, 32),
            3,
            stride=2,
            parts=OP_PARTS_FULL,
        ),
        pool("avgpool 2x2/2 128x16x32x32", "avg_pool2d", (b, 16, 32, 32), 2),
        pool(
            "avgpool 3x3/1 p1 128x16x32x32",
            "avg_pool2d",
            (b, 16, 32, 32),
            3,
            stride=1,
            padding=1,
        ),
    ]


def train_cases(quick: bool) -> list[dict]:
    """Models for the train-step section: name, input shape (with batch), classes.

    "vgg" is `funcnn.models.vgg_small()` (BatchNorm, dropout 0.25); "vgg_nobn" is
    the issue's model conv32-conv32-pool-conv64-conv64-pool-dense, without either;
    "resnet20" is He et al.'s CIFAR ResNet at CIFAR's shape, batch 128; "resnet18"
    torchvision's ResNet-18 at ImageNet's 224x224 (10 classes).
    """
    if quick:
        return [{"model": "lenet", "input": [8, 1, 28, 28], "dtype": DTYPE}]
    return [
        {"model": "lenet", "input": [128, 1, 28, 28], "dtype": DTYPE},
        {"model": "vgg", "input": [128, 3, 32, 32], "dtype": DTYPE},
        {"model": "vgg_nobn", "input": [128, 3, 32, 32], "dtype": DTYPE},
        {"model": "resnet20", "input": [128, 3, 32, 32], "dtype": DTYPE},
        # ImageNet's shape at batch 32: about 3 GB of activations in float32.
        {"model": "resnet18", "input": [RESNET18_BATCH, 3, 224, 224], "dtype": DTYPE},
    ]


def memory_cases(quick: bool) -> list[dict]:
    """Configurations for peak-RSS measurement, one subprocess each."""
    configs = (("jax", "custom"), ("jax", "autodiff"), ("torch", "-"))
    if quick:
        configs = (("jax", "custom"),)
    return [
        {**case, "framework": framework, "grad": grad}
        for case in train_cases(quick)
        for framework, grad in configs
    ]
