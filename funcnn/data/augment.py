"""Training-time augmentation on host arrays, as pure functions of a numpy
Generator, so a run seeded by (seed, epoch, batch) replays exactly on resume.

- `random_shift`: random sub-pixel translations (the digits main job);
- `random_crop_flip`: pad, random crop and horizontal flip (the CIFAR recipe of
  He et al. 2016);
- `augment_batches`: either one applied to an epoch's batches, batch i drawing
  from `numpy.random.default_rng([seed, epoch, i])`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

AUGMENTATIONS = ("none", "shift", "crop-flip")
"""The names `augment_batches` takes: none, random shifts, random crops and flips."""


def augment_batches(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    augment: str,
    *,
    seed: int,
    epoch: int,
    fill=0.0,
    shift: float = 0.5,
    pad: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Augments the images of one epoch's batches, reproducibly.

    Batch i of epoch e draws from `numpy.random.default_rng([seed, e, i])`, so a
    resumed run sees the same augmented batches as an uninterrupted one.

    Args:
        batches: pairs `(x, y)`, x of shape `(B, C, H, W)`, e.g. from `batches`.
        augment: `"none"`, `"shift"` (`random_shift` by up to `shift` pixels) or
            `"crop-flip"` (`random_crop_flip` with `pad`).
        seed: the run's data seed.
        epoch: the epoch number.
        fill: the border value, a scalar or `(C,)` (e.g. a normalised black pixel).

    Returns:
        An iterator over pairs `(x_augmented, y)`, x of shape `(B, C, H, W)`.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"augment_batches: expected augment in {AUGMENTATIONS}, got {augment!r}."
        )
    if augment == "shift" and not 0.0 <= shift <= 1.0:  # checked before the first batch
        raise ValueError(f"augment_batches: expected 0 <= shift <= 1, got {shift!r}.")
    return _augmented(batches, augment, seed, epoch, fill, shift, pad)


def _augmented(batches, augment, seed, epoch, fill, shift, pad):
    for i, (x, y) in enumerate(batches):
        rng = np.random.default_rng([seed, epoch, i])
        if augment == "shift":
            x = random_shift(x, rng, shift, fill)
        elif augment == "crop-flip":
            x = random_crop_flip(x, rng, pad=pad, fill=fill)
        yield x, y


def random_crop_flip(
    x: np.ndarray, rng: np.random.Generator, *, pad: int = 4, fill=0.0
) -> np.ndarray:
    """The CIFAR recipe of He et al.: pad by `pad` pixels, crop a random window of
    the original size, and flip horizontally with probability 1/2.

    Args:
        x: images of shape `(N, C, H, W)`.
        rng: draws each image's crop offset `(dy, dx)` in `[0, 2 * pad]` and flip.
        pad: the padding on every side, >= 0.
        fill: the padding value, a scalar or an array of shape `(C,)` (e.g. the
            normalised value of a black pixel).

    Returns:
        Augmented images of shape `(N, C, H, W)` and x's dtype.
    """
    if x.ndim != 4:
        raise ValueError(
            f"random_crop_flip: expected images of shape (N, C, H, W), got {x.shape}."
        )
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"random_crop_flip: expected pad >= 0, got {pad!r}.")
    n, c, h, w = x.shape
    padded = np.empty((n, c, h + 2 * pad, w + 2 * pad), x.dtype)
    padded[...] = np.asarray(fill, x.dtype).reshape(1, -1, 1, 1)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)[None]  # (N, H)
    cols = dx[:, None] + np.arange(w)[None]  # (N, W)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    idx = np.arange(n)[:, None, None]
    # (N, H, W, C) gathered, then back to NCHW.
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def random_shift(
    x: np.ndarray, rng: np.random.Generator, amplitude: float, fill=0.0
) -> np.ndarray:
    """Translates each image by a random sub-pixel offset, bilinearly.

    Args:
        x: images of shape `(N, C, H, W)`.
        rng: draws each image's offset `(dy, dx)`, uniform in
            `[-amplitude, amplitude]`.
        amplitude: the largest shift in pixels, in `[0, 1]`.
        fill: the value shifted in at the borders, a scalar or `(C,)` (e.g. the
            normalised value of a black pixel).

    Returns:
        Shifted images of shape `(N, C, H, W)` and x's dtype.
    """
    if x.ndim != 4:
        raise ValueError(
            f"random_shift: expected images of shape (N, C, H, W), got {x.shape}."
        )
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(
            f"random_shift: expected 0 <= amplitude <= 1 pixel, got {amplitude!r}."
        )
    n, c, h, w = x.shape
    d = rng.uniform(-amplitude, amplitude, size=(n, 2)).astype(np.float32)
    base = np.floor(d).astype(np.int64)  # -1 or 0
    frac = d - base
    padded = np.empty((n, c, h + 3, w + 3), x.dtype)
    padded[...] = np.asarray(fill, x.dtype).reshape(1, -1, 1, 1)
    padded[:, :, 1 : h + 1, 1 : w + 1] = x
    rows = 1 + base[:, :1] + np.arange(h)[None]  # (N, H)
    cols = 1 + base[:, 1:] + np.arange(w)[None]  # (N, W)
    idx = np.arange(n)[:, None, None]

    def at(dr, dc):  # the (N, H, W, C) gather, back to (N, C, H, W)
        taps = padded[idx, :, rows[:, :, None] + dr, cols[:, None, :] + dc]
        return taps.transpose(0, 3, 1, 2)

    fy, fx = frac[:, 0, None, None, None], frac[:, 1, None, None, None]
    top = (1 - fx) * at(0, 0) + fx * at(0, 1)
    bottom = (1 - fx) * at(1, 0) + fx * at(1, 1)
    return ((1 - fy) * top + fy * bottom).astype(x.dtype)
