"""Losses and metrics, and `loss_fn`, which turns a loss name into its function."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

LOSSES = ("cross_entropy", "mse")


def _check_logits_labels(name, logits, labels):
    if logits.ndim != 2:
        raise ValueError(
            f"{name}: expected logits of shape (N, K), got shape {logits.shape}."
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"{name}: expected integer labels of shape (N,) = ({logits.shape[0]},), "
            f"got shape {labels.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer labels, got dtype {labels.dtype}.")


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Args:
      logits: `(N, K)` unnormalised class scores.
      labels: `(N,)` integers in [0, K).

    Returns:
      Scalar `mean_n(logsumexp(logits_n) - logits_n[labels_n])`.
    """
    _check_logits_labels("softmax_cross_entropy", logits, labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def mse(outputs, targets):
    """Squared error as in the backprop texts: `sum(0.5 * (target - out)**2)`.

    Summed over outputs and averaged over the batch axis N. Both arrays `(N, ...)`.
    """
    if outputs.shape != targets.shape:
        raise ValueError(
            f"mse: expected outputs and targets of one shape, got {outputs.shape} "
            f"and {targets.shape}."
        )
    per_example = 0.5 * jnp.sum(
        jnp.square(targets - outputs).reshape(outputs.shape[0], -1), axis=1
    )
    return jnp.mean(per_example)


def accuracy(logits, labels):
    """Fraction of rows whose argmax is the label: logits `(N, K)`, labels `(N,)`."""
    _check_logits_labels("accuracy", logits, labels)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def loss_fn(
    loss: str | Callable, label_smoothing: float = 0.0, *, func: str = "make_train_step"
) -> Callable:
    """Maps a loss name to `fn(outputs (N, K), labels (N,)) -> mean scalar`; `func`
    names the caller in error messages."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"{func}: expected 0 <= label_smoothing < 1, got {label_smoothing!r}."
        )
    if label_smoothing and loss != "cross_entropy":
        raise ValueError(
            f"{func}: expected loss='cross_entropy' with label_smoothing, "
            f"got loss={loss!r}."
        )
    if callable(loss):
        return loss
    if loss == "cross_entropy" and label_smoothing:
        return lambda out, y: _smoothed_cross_entropy(out, y, label_smoothing)
    if loss == "cross_entropy":
        return softmax_cross_entropy
    if loss == "mse":
        # The targets of the squared error are one-hot rows of the labels.
        return lambda out, y: mse(
            out, jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
        )
    raise ValueError(f"{func}: expected loss in {LOSSES} or a callable, got {loss!r}.")


def _smoothed_cross_entropy(logits, labels, eps: float):
    """Cross-entropy against `(1 - eps) * one_hot(labels) + eps / K`, averaged.

    logits `(N, K)`, labels `(N,)`: `(1 - eps) * nll + eps * mean_k(-log p_k)`.
    """
    nll = softmax_cross_entropy(logits, labels)
    return (1.0 - eps) * nll - eps * jnp.mean(jax.nn.log_softmax(logits, axis=-1))
