"""Losses and the accuracy metric, on rows of the model's output.

A model output of shape (B, K) or (B, T, K) is seen here as N = B or B*T rows of
K values; every loss is the mean of a per-row loss over the N rows.

When the model ends in a softmax, cross-entropy is computed from the logits in
one kernel (log-sum-exp, no clipping), as the TensorFlow backend of Keras does.
Cross-entropy on probabilities that did not come from a softmax clips them to
[1e-7, 1 - 1e-7] after normalising each row to sum to one, as Keras does.
"""

import numpy as np

from fastrnn.backends import kernels

PROBABILITY_CLIP = 1e-7

CATEGORICAL = "categorical_crossentropy"
SPARSE = "sparse_categorical_crossentropy"
MSE = "mean_squared_error"

_ALIASES = {
    CATEGORICAL: CATEGORICAL,
    SPARSE: SPARSE,
    MSE: MSE,
    "mse": MSE,
}


def canonical_name(loss):
    """The loss's canonical name; raises for anything not supported."""
    if isinstance(loss, str) and loss.lower() in _ALIASES:
        return _ALIASES[loss.lower()]
    raise ValueError(f"loss must be one of {sorted(_ALIASES)}, got {loss!r}")


def is_cross_entropy(name):
    return name in (CATEGORICAL, SPARSE)


class RowBuffers:
    """Scratch arrays of shape (N, K) for one loss evaluation."""

    def __init__(self, N, K):
        self.logits = np.empty((N, K), dtype=np.float32)
        self.probabilities = np.empty((N, K), dtype=np.float32)
        self.gradient = np.empty((N, K), dtype=np.float32)


def softmax_cross_entropy(buffers, logits, targets, need_gradient):
    """Fused softmax + cross-entropy.  Returns (loss, probabilities, gradient)."""
    k = kernels()
    p = buffers.probabilities
    loss = k.softmax_xent_forward(p, logits, targets)
    if not need_gradient:
        return loss, p, None
    k.softmax_xent_backward(buffers.gradient, p, targets)
    return loss, p, buffers.gradient


def probability_cross_entropy(output, targets, need_gradient):
    """Cross-entropy of targets against probabilities.  Returns (loss, gradient)."""
    output = output.astype(np.float64)
    total = output.sum(axis=1, keepdims=True)
    q = output / total
    clipped = np.clip(q, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    N = output.shape[0]
    loss = float(-(targets * np.log(clipped)).sum() / N)
    if not need_gradient:
        return loss, None
    # Through log(clip(q)): -y/q inside the clip range, 0 outside it; then through
    # q = o / sum(o), whose Jacobian is (I - q 1^T) / sum(o) per row.
    inside = (q >= PROBABILITY_CLIP) & (q <= 1.0 - PROBABILITY_CLIP)
    dq = np.where(inside, -targets / clipped, 0.0) / N
    do = (dq - (dq * q).sum(axis=1, keepdims=True)) / total
    return loss, do.astype(np.float32)


def mean_squared_error(output, targets, need_gradient):
    """mean((output - targets)^2) over all N*K values.  Returns (loss, gradient)."""
    diff = output.astype(np.float64) - targets
    loss = float(np.mean(diff * diff))
    if not need_gradient:
        return loss, None
    return loss, (2.0 * diff / diff.size).astype(np.float32)


def accuracy(scores, targets):
    """Fraction of rows whose highest score (first on ties) hits the target.

    scores (N, K); targets (N, K) one-hot or a distribution (its argmax counts).
    """
    return float(np.mean(np.argmax(scores, axis=1) == np.argmax(targets, axis=1)))
