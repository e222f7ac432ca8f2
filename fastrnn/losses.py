"""Losses and the accuracy metric, on rows of the model's output.

A model output of shape (B, K) or (B, T, K) is seen here as N = B or B*T rows of
K values; every loss is the mean of a per-row loss over the N rows.

When the model ends in a softmax, cross-entropy is computed from the logits in
one kernel (log-sum-exp, no clipping), as the TensorFlow backend of Keras does.
Cross-entropy on probabilities that did not come from a softmax clips them to
[1e-7, 1 - 1e-7] and normalises each row to sum to one, as Keras does: in that
order for integer labels (``sparse=True``), in the reverse order for one-hot
targets.

TODO: Keras's TensorFlow backend also takes a sigmoid output's input as logits
and computes softmax cross-entropy from them; fastrnn clips the sigmoid's
probabilities instead, so a sigmoid output layer trained with cross-entropy
gives a different loss than in Keras.
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


def probability_cross_entropy(output, targets, need_gradient, sparse=False):
    """Cross-entropy of targets against probabilities, with Keras's clipping.

    Parameters
    ----------
    output : ndarray of shape (N, K)
        The model's output rows, not produced by a softmax.
    targets : ndarray of shape (N, K)
        Target distributions; one-hot rows for integer labels.
    need_gradient : bool
        Whether to return the gradient too.
    sparse : bool, default False
        Follow ``sparse_categorical_crossentropy``: clip the outputs, then
        normalise them (Keras feeds the log of the clipped values to a softmax),
        rather than normalise, then clip.  The orders differ only where the clip
        is active.

    Returns
    -------
    loss : float
        Mean over the N rows.
    gradient : ndarray of shape (N, K), float32, or None
        Gradient of ``loss`` with respect to ``output``.
    """
    output = output.astype(np.float64)
    N = output.shape[0]
    if sparse:
        return _clipped_then_normalised(output, targets, need_gradient, N)
    total = output.sum(axis=1, keepdims=True)
    q = output / total
    clipped = np.clip(q, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    loss = float(-(targets * np.log(clipped)).sum() / N)
    if not need_gradient:
        return loss, None
    # Through log(clip(q)): -y/q inside the clip range, 0 outside it; then through
    # q = o / sum(o), whose Jacobian is (I - q 1^T) / sum(o) per row.
    inside = (q >= PROBABILITY_CLIP) & (q <= 1.0 - PROBABILITY_CLIP)
    dq = np.where(inside, -targets / clipped, 0.0) / N
    do = (dq - (dq * q).sum(axis=1, keepdims=True)) / total
    return loss, do.astype(np.float32)


def _clipped_then_normalised(output, targets, need_gradient, N):
    """-sum_k y_k log(c_k / sum(c)) with c = clip(output), averaged over rows."""
    clipped = np.clip(output, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    total = clipped.sum(axis=1, keepdims=True)
    # The normaliser enters once per unit of target mass, which is 1 per row
    # for one-hot targets.
    mass = targets.sum(axis=1, keepdims=True)
    loss = float(((mass * np.log(total)).sum() - (targets * np.log(clipped)).sum()) / N)
    if not need_gradient:
        return loss, None
    # d/dc_k is sum(y) / sum(c) - y_k / c_k; the clip passes it only inside its
    # range, bounds included, as TensorFlow's clip_by_value does.
    inside = (output >= PROBABILITY_CLIP) & (output <= 1.0 - PROBABILITY_CLIP)
    dc = np.where(inside, mass / total - targets / clipped, 0.0) / N
    return loss, dc.astype(np.float32)


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
