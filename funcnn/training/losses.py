"""Losses and metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
