"""Numba kernels for SimpleRNN, Dense, softmax cross-entropy and the optimizers.

Every kernel works on float32, C-contiguous arrays and writes its results into
arrays it is given: outputs first, then inputs and saved state, then sizes or
flags.  Kernels never validate; the layers above them do.

Shape letters: B batch, T time steps, D input features, H hidden units,
N rows of a 2-D product (B, or B*T for a per-step Dense), K output units.

The recurrence, written once for the whole package::

    h_t = act(x_t W + h_{t-1} U + b),   h_{-1} = 0

with W the Keras ``kernel`` (D, H), U the ``recurrent_kernel`` (H, H) and b the
``bias`` (H,).  Sequences are stored time-major, (T, B, .), so the slice of one
step is contiguous for the matrix products.

Activation codes: 0 linear, 1 tanh, 2 relu, 3 sigmoid.  Their derivatives are
taken from the activation's output, which is what the forward pass saves.

A C implementation with the same names and argument order lives in ``csrc/``.
"""

import numba
import numpy as np
from numba import prange

from fastrnn.backends._jit import kernel, parallel_kernel
from fastrnn.backends.convert import sequence_to_time_major
from fastrnn.backends.numba_tiles import (
    ALIGN,
    FROM_C,
    FROM_ROW,
    FROM_ZERO,
    MASK_FEATURES,
    NO_ZEROS,
    ZEROS_BY_K,
    ZEROS_BY_ROW,
    address,
    aligned_size,
    factor,
    first_aligned,
    pack_dense,
    pack_rnn,
    packed_dense_size,
    packed_rnn_size,
    pad_columns,
    padded,
    scan_row,
    tiled_dense_forward,
    tiled_product,
    tiled_product_skipping,
    unpad_columns,
)

LINEAR, TANH, RELU, SIGMOID = 0, 1, 2, 3


# --------------------------------------------------------------------------
# element-wise activations

# tanh(x) = x P(x^2) / Q(x^2) on |x| < 9 and exactly +-1 from there on, where
# float32's tanh is 1 to within rounding; exactly 1 keeps the derivative of a
# saturated unit at 0, as in libm and TensorFlow, where the rational function
# at 9 would leave one ulp of it.  The coefficients are a rational least-squares fit of
# tanh(x)/x in float64 (relative error 6e-8); evaluated in float32 the result is
# within 4e-7 of tanh.  Unlike libm's tanhf it has no branches and vectorises,
# which makes the activation about ten times faster.
TANH_CLAMP = np.float32(9.0)
TANH_P0 = np.float32(0.9999999403953552)
TANH_P1 = np.float32(0.12919244170188904)
TANH_P2 = np.float32(0.002920778701081872)
TANH_P3 = np.float32(9.267563655157574e-06)
TANH_P4 = np.float32(-1.2780830616065941e-08)
TANH_P5 = np.float32(1.825614659445307e-11)
TANH_Q1 = np.float32(0.46252527832984924)
TANH_Q2 = np.float32(0.02376323938369751)
TANH_Q3 = np.float32(0.00022810246446169913)


@kernel
def tanh32(x):
    """Rational approximation of tanh for one float32 value (see TANH_*)."""
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    s = x * x
    p = TANH_P5
    p = p * s + TANH_P4
    p = p * s + TANH_P3
    p = p * s + TANH_P2
    p = p * s + TANH_P1
    p = p * s + TANH_P0
    q = TANH_Q3
    q = q * s + TANH_Q2
    q = q * s + TANH_Q1
    q = q * s + np.float32(1.0)
    # Comparisons with a NaN are false, so a NaN passes through.
    if x == TANH_CLAMP:
        return np.float32(1.0)
    if x == -TANH_CLAMP:
        return np.float32(-1.0)
    return x * p / q


@kernel
def activate_in_place(h, activation):
    """h = act(h) element-wise.  h (M,).

    The loops read and write one array: given two, LLVM checks at run time
    whether they overlap, and when they are one array, as in the recurrence, it
    takes its scalar loop, which for tanh is several times slower.
    """
    half = np.float32(0.5)
    if activation == TANH:
        for i in range(h.size):
            h[i] = tanh32(h[i])
    elif activation == RELU:
        for i in range(h.size):
            h[i] = max(h[i], np.float32(0.0))
    elif activation == SIGMOID:
        # sigmoid(z) = (1 + tanh(z / 2)) / 2 shares the vectorised tanh.
        for i in range(h.size):
            h[i] = half + half * tanh32(half * h[i])


@kernel
def activation_backward_in_place(dz, out, activation):
    """dz = dz * act'(z), with act' written in terms of out = act(z).  (M,).

    In place for the reason given in activate_in_place.
    """
    one = np.float32(1.0)
    if activation == TANH:
        for i in range(dz.size):
            dz[i] = dz[i] * (one - out[i] * out[i])
    elif activation == RELU:
        for i in range(dz.size):
            dz[i] = dz[i] if out[i] > 0 else np.float32(0.0)
    elif activation == SIGMOID:
        for i in range(dz.size):
            dz[i] = dz[i] * out[i] * (one - out[i])


@kernel
def activation_forward(out, z, activation):
    """out = act(z) element-wise; ``out`` may be ``z``.  Shapes (M,)."""
    if out.ctypes.data != z.ctypes.data:
        out[:] = z
    activate_in_place(out, activation)


@kernel
def activation_backward(dz, dout, out, activation):
    """dz = dout * act'(z), with act' written in terms of out = act(z).

    Shapes (M,).  ``dz`` may be ``dout``.
    """
    if dz.ctypes.data != dout.ctypes.data:
        dz[:] = dout
    activation_backward_in_place(dz, out, activation)


# --------------------------------------------------------------------------
# SimpleRNN


@kernel
def rnn_forward(hs, work, x_tm, W, U, b, activation):
    """Run the recurrence over all T steps.

    hs    (T, B, H)  out: hidden state after every step (saved for BPTT)
    work  (2, B, H)  scratch
    x_tm  (T, B, D)  input sequence, time-major
    W (D, H), U (H, H), b (H,)
    """
    T, B, D = x_tm.shape
    H = W.shape[1]

    # The input projection of every step is one product; only h U is sequential.
    np.dot(x_tm.reshape(T * B, D), W, hs.reshape(T * B, H))
    step = work[0]
    step[:] = 0
    add_step_activate(hs[0], step, b, activation)
    for t in range(1, T):
        np.dot(hs[t - 1], U, step)
        add_step_activate(hs[t], step, b, activation)


@kernel
def add_step_activate(h, step, b, activation):
    """h = act(h + b + step), one pass over memory.  h, step (B, H), b (H,)."""
    B, H = h.shape
    half = np.float32(0.5)
    zero = np.float32(0.0)
    # The activation branch sits outside the loops so that each loop vectorises.
    if activation == TANH:
        for i in range(B):
            for j in range(H):
                h[i, j] = tanh32(h[i, j] + b[j] + step[i, j])
    elif activation == RELU:
        for i in range(B):
            for j in range(H):
                h[i, j] = max(h[i, j] + b[j] + step[i, j], zero)
    elif activation == SIGMOID:
        for i in range(B):
            for j in range(H):
                h[i, j] = half + half * tanh32(half * (h[i, j] + b[j] + step[i, j]))
    else:
        for i in range(B):
            for j in range(H):
                h[i, j] = h[i, j] + b[j] + step[i, j]


@kernel
def rnn_backward(dW, dU, db, dx_tm, dz, work, dh_out, hs, x_tm, W, U, activation):
    """Backpropagation through time for :func:`rnn_forward`.

    dW (D, H), dU (H, H), db (H,)  out: overwritten, not accumulated
    dx_tm  (T, B, D)  out: gradient of the input; pass shape (0, 0, 0) to skip
    dz     (T, B, H)  scratch: gradient of the pre-activation of every step
    work   (2, B, H)  scratch
    dh_out (T, B, H)  gradient of every step's output (return_sequences), or
           (1, B, H)  gradient of the last step's output only
    hs, x_tm, W, U    as saved by :func:`rnn_forward`
    """
    T, B, D = x_tm.shape
    H = W.shape[1]
    every_step = dh_out.shape[0] == T and T > 1

    # Only dh_{t-1} = dz_t U^T + (output gradient) is sequential.
    dh = work[0]
    carry = work[1]
    dh[:] = dh_out[dh_out.shape[0] - 1]
    for t in range(T - 1, -1, -1):
        activation_backward(
            dz[t].reshape(B * H), dh.reshape(B * H), hs[t].reshape(B * H), activation
        )
        if t > 0:
            np.dot(dz[t], U.T, carry)
            if every_step:
                carry += dh_out[t - 1]
            dh, carry = carry, dh

    # The weight gradients are one product each over all steps.
    dz2 = dz.reshape(T * B, H)
    np.dot(x_tm.reshape(T * B, D).T, dz2, dW)
    if T > 1:
        np.dot(
            hs[: T - 1].reshape((T - 1) * B, H).T, dz[1:].reshape((T - 1) * B, H), dU
        )
    else:
        dU[:] = 0
    db[:] = 0
    for i in range(T * B):
        for j in range(H):
            db[j] += dz2[i, j]
    if dx_tm.size:
        np.dot(dz2, W.T, dx_tm.reshape(T * B, D))


# --------------------------------------------------------------------------
# Dense


@kernel
def dense_forward(y, x, V, c):
    """y = x V + c.   y (N, K), x (N, H), V (H, K), c (K,)."""
    np.dot(x, V, y)
    for i in range(y.shape[0]):
        y[i] += c


@kernel
def dense_backward(dV, dc, dx, dy, x, V):
    """Gradients of :func:`dense_forward`.

    dV (H, K), dc (K,)  out: overwritten
    dx (N, H)           out: pass shape (0, 0) to skip
    dy (N, K), x (N, H), V (H, K)
    """
    np.dot(x.T, dy, dV)
    dc[:] = 0
    for i in range(dy.shape[0]):
        dc += dy[i]
    if dx.size:
        np.dot(dy, V.T, dx)


# --------------------------------------------------------------------------
# softmax and losses


@kernel
def shifted_exp_row(p_row, z_row):
    """p_row = exp(z_row - max(z_row)); returns (max, sum of p_row).  (K,).

    Shifting by the row maximum keeps every exp from overflowing.
    """
    m = z_row[0]
    for k in range(1, z_row.size):
        if z_row[k] > m:
            m = z_row[k]
    s = np.float32(0.0)
    for k in range(z_row.size):
        e = np.exp(z_row[k] - m)
        p_row[k] = e
        s += e
    return m, s


@kernel
def softmax_forward(p, z):
    """Row-wise softmax.  p, z (N, K)."""
    N, K = z.shape
    for i in range(N):
        _, s = shifted_exp_row(p[i], z[i])
        for k in range(K):
            p[i, k] /= s


@kernel
def softmax_backward(dz, dp, p):
    """dz = p * (dp - sum(dp * p)) row-wise.  dz, dp, p (N, K)."""
    N, K = p.shape
    for i in range(N):
        s = np.float32(0.0)
        for k in range(K):
            s += dp[i, k] * p[i, k]
        for k in range(K):
            dz[i, k] = p[i, k] * (dp[i, k] - s)


@kernel
def softmax_xent_forward(p, logits, y):
    """Softmax cross-entropy from logits, mean over the N rows.

    p (N, K) out: probabilities; logits (N, K); y (N, K) target distribution.
    Uses log p = z - max - log(sum exp(z - max)), so no clipping is needed.
    """
    N, K = logits.shape
    total = 0.0
    for i in range(N):
        m, s = shifted_exp_row(p[i], logits[i])
        log_s = np.log(s)
        row = np.float32(0.0)
        for k in range(K):
            p[i, k] /= s
            if y[i, k] != 0:
                row -= y[i, k] * (logits[i, k] - m - log_s)
        total += row
    return total / N


@kernel
def softmax_xent_backward(dlogits, p, y):
    """Gradient of the mean softmax cross-entropy w.r.t. the logits.

    dlogits (N, K) out; p (N, K) from the forward pass; y (N, K).
    d/dz of -sum_k y_k log softmax(z)_k is p * sum_k y_k - y.
    """
    N, K = p.shape
    inv_n = np.float32(1.0 / N)
    for i in range(N):
        s = np.float32(0.0)
        for k in range(K):
            s += y[i, k]
        for k in range(K):
            dlogits[i, k] = (p[i, k] * s - y[i, k]) * inv_n


@kernel
def sparse_to_onehot(y, labels):
    """y[i] = one-hot(labels[i]).  y (N, K) float32, labels (N,) int64."""
    y[:] = 0
    for i in range(labels.shape[0]):
        y[i, labels[i]] = 1


# --------------------------------------------------------------------------
# optimizers on flat parameter vectors, all of shape (P,)


@kernel
def adam_update(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """Adam (Kingma and Ba, 2015) in the form Keras uses.

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) is computed by the caller;
    epsilon is added to sqrt(v_t), not to the bias-corrected sqrt(v_hat).
    """
    a = np.float32(alpha)
    b1 = np.float32(1.0 - beta_1)
    b2 = np.float32(1.0 - beta_2)
    eps = np.float32(epsilon)
    for i in range(w.size):
        gi = g[i]
        m[i] += (gi - m[i]) * b1
        v[i] += (gi * gi - v[i]) * b2
        w[i] -= (m[i] * a) / (np.sqrt(v[i]) + eps)


@kernel
def sgd_update(w, g, velocity, learning_rate, momentum, nesterov):
    """SGD with optional (Nesterov) momentum, velocity = mu v - lr g."""
    lr = np.float32(learning_rate)
    mu = np.float32(momentum)
    if momentum == 0.0:
        for i in range(w.size):
            w[i] -= lr * g[i]
        return
    for i in range(w.size):
        velocity[i] = mu * velocity[i] - lr * g[i]
        if nesterov:
            w[i] += mu * velocity[i] - lr * g[i]
        else:
            w[i] += velocity[i]


@kernel
def rmsprop_update(w, g, velocity, learning_rate, rho, epsilon):
    """RMSprop: v = rho v + (1 - rho) g^2;  w -= lr g / sqrt(v + epsilon).

    epsilon sits inside the root, as in Keras 3 (Keras 2 and PyTorch add it
    outside).
    """
    lr = np.float32(learning_rate)
    r = np.float32(rho)
    eps = np.float32(epsilon)
    for i in range(w.size):
        gi = g[i]
        velocity[i] = r * velocity[i] + (np.float32(1.0) - r) * gi * gi
        w[i] -= lr * gi / np.sqrt(velocity[i] + eps)


# --------------------------------------------------------------------------
# the whole train step of SimpleRNN -> Dense -> softmax cross-entropy

ADAM, SGD, RMSPROP = 0, 1, 2


@kernel
def optimizer_update(w, g, state_1, state_2, optimizer, hyper):
    """Dispatch to the update of ``optimizer`` (ADAM, SGD, RMSPROP).

    hyper: ADAM (alpha_t, beta_1, beta_2, epsilon); SGD (learning_rate, momentum,
    nesterov); RMSPROP (learning_rate, rho, epsilon).
    """
    if optimizer == ADAM:
        adam_update(w, g, state_1, state_2, hyper[0], hyper[1], hyper[2], hyper[3])
    elif optimizer == SGD:
        sgd_update(w, g, state_1, hyper[0], hyper[1], hyper[2] != 0.0)
    else:
        rmsprop_update(w, g, state_1, hyper[0], hyper[1], hyper[2])


@kernel
def count_correct(p, y):
    """Rows whose first maximum of p is at the first maximum of y.  (N, K)."""
    N, K = p.shape
    correct = 0
    for i in range(N):
        best_p = 0
        best_y = 0
        for k in range(1, K):
            if p[i, k] > p[i, best_p]:
                best_p = k
            if y[i, k] > y[i, best_y]:
                best_y = k
        if best_p == best_y:
            correct += 1
    return correct


def train_scratch_size(T, rows, D, H, K):
    """Elements of scratch that one part of ``rows`` batch rows needs.

    The buffers :func:`train_part` carves, each rounded up to whole cache lines,
    and room to move the first one onto a line.
    """
    n, Hp, Kp = rows, padded(H), padded(K)
    return (
        ALIGN
        + packed_rnn_size(D, H)
        + packed_dense_size(H, K)
        + aligned_size(n * Kp)
        + aligned_size(H * Kp)
        + aligned_size(T * n * Hp)
        + 2 * aligned_size(n * Hp)
        + aligned_size(D * Hp)
        + aligned_size(H * Hp)
        + aligned_size(Hp)
        + 3 * aligned_size(n * K)
        + aligned_size(1)
        + (aligned_size(2 * T * n) if D <= MASK_FEATURES else 0)
        + aligned_size(2 * max(n, D))
    )


@kernel
def carve(row, at, size):
    """The ``size`` floats of ``row`` from ``at``, and the aligned offset after them."""
    return row[at : at + size], at + aligned_size(size)


@kernel
def train_part(row, g, x, y, W, U, b, V, c, first, n, activation):
    """Forward, loss and backward of batch rows first .. first + n - 1.

    row (S,)  scratch, S at least train_scratch_size(T, n, D, H, K)
    g (G,)    out: the part's gradients of W (D, H), U (H, H), b (H,), V (H, K)
              and c (K,), flattened in that order
    x (B, T, D) read in place, y (B, K), W (D, H), U (H, H), b (H,), V (H, K),
    c (K,)

    Every product is a tiled one on padded rows (see numba_tiles): at these
    sizes a BLAS call costs more in overhead and packing than the product.
    Returns the part's mean loss times n, its number of correct rows and
    whether its inputs are all finite; with an input that is not, the part
    computes nothing else.
    """
    B, T, D = x.shape
    H = W.shape[1]
    K = V.shape[1]
    Hp, Kp = padded(H), padded(K)
    nHp = n * Hp

    # Carve this part's buffers out of its scratch row, from a cache line on;
    # wide holds rows of Kp: the logits, then dlogits
    at = first_aligned(row)
    packed, at = carve(row, at, packed_rnn_size(D, H))
    dense, at = carve(row, at, packed_dense_size(H, K))
    wide, at = carve(row, at, n * Kp)
    gV_wide, at = carve(row, at, H * Kp)
    hs, at = carve(row, at, T * nHp)
    dz, at = carve(row, at, nHp)
    dz_prev, at = carve(row, at, nHp)
    dW, at = carve(row, at, D * Hp)
    dU, at = carve(row, at, H * Hp)
    db, at = carve(row, at, Hp)
    logits, at = carve(row, at, n * K)
    probs, at = carve(row, at, n * K)
    dlogits, at = carve(row, at, n * K)
    one, at = carve(row, at, 1)
    mask_room, at = carve(row, at, 2 * T * n if D <= MASK_FEATURES else 0)
    ks_room, at = carve(row, at, 2 * max(n, D))
    logits = logits.reshape(n, K)
    probs = probs.reshape(n, K)
    dlogits = dlogits.reshape(n, K)
    gW = g[: D * H].reshape(D, H)
    gU = g[D * H : D * H + H * H].reshape(H, H)
    gb = g[D * H + H * H : D * H + H * H + H].reshape(1, H)
    gV = g[D * H + H * H + H : D * H + H * H + H + H * K].reshape(H, K)
    gc = g[D * H + H * H + H + H * K : D * H + H * H + H + H * K + K]
    y_part = y[first : first + n]

    # The tiles take raw pointers; every buffer is a view of an argument, which
    # outlives them.  x is read where it lies, through its strides.
    sample_stride = x.strides[0] // 4
    step_stride = x.strides[1] // 4
    feature_stride = x.strides[2] // 4
    strides = (sample_stride, step_stride, feature_stride)
    x_at = first * sample_stride
    masks = mask_room.view(np.uint64)
    ks = ks_room.view(np.int64)
    if not scan_inputs(masks, x, x_at, strides, n, T, D):
        return 0.0, 0, False
    offsets = pack_rnn(packed, W, U, b, True)
    dense_offsets = pack_dense(dense, V, c, True)
    U_T_at = offsets[2]
    p_packed = address(packed)
    p_hs = address(hs)
    p_x = address(x)
    one[0] = 1
    p_one = address(one)
    p_masks = address(masks)
    p_ks = address(ks)
    zeros_kind = ZEROS_BY_K if masks.size > 0 else NO_ZEROS
    no_factor = factor(p_one, 0, 0, 0, p_one, 0, 0, 0)

    # forward
    tiled_rnn_forward(hs, x, x_at, strides, masks, ks, packed, offsets, n, T, D, H,
                      activation, True)  # fmt: skip
    last_at = (T - 1) * nHp
    tiled_dense_forward(logits, wide, hs, last_at, dense, dense_offsets, H)

    # loss, fused with the softmax; the part's mean is weighted by its share of
    # the batch, so that the parts' gradients sum to that of the batch mean
    loss = softmax_xent_forward(probs, logits, y_part) * n
    correct = count_correct(probs, y_part)
    softmax_xent_backward(dlogits, probs, y_part)
    share = np.float32(n / B)
    for i in range(n):
        for k in range(K):
            dlogits[i, k] *= share

    # Dense backward, from dlogits padded to (n, Kp) in wide: gV = h_last^T
    # dlogits, then dh_last = dlogits V^T into dz, whose padding stays zero as
    # that of V^T is
    gc[:] = 0
    for i in range(n):
        gc += dlogits[i]
    pad_columns(wide, dlogits, Kp)
    p_dense = address(dense)
    p_wide = address(wide)
    h_T = factor(p_hs, last_at, 1, Hp, p_wide, 0, Kp, n)
    tiled_product(address(gV_wide), 0, Kp, H, Kp, FROM_ZERO, p_one, 0, h_T, no_factor)
    unpad_columns(gV, gV_wide, Kp)
    back = factor(p_wide, 0, Kp, 1, p_dense, dense_offsets[1], Hp, K)
    tiled_product(address(dz), 0, Hp, n, Hp, FROM_ZERO, p_one, 0, back, no_factor)
    activation_backward_in_place(dz, hs[last_at : last_at + nHp], activation)

    # BPTT, gathering each step's share of dW, dU and db while its dz is in
    # cache: dz_{t-1} = (dz_t U^T) * act'(h_{t-1}), with h_{t-1} pairing with dz_t
    # in dU.  db is the product of a row of ones with dz, which adds each row
    # exactly as a plain sum would.
    dW[:] = 0
    dU[:] = 0
    db[:] = 0
    for t in range(T - 1, -1, -1):
        p_dz = address(dz)
        h_prev_at = (t - 1) * nHp
        ones = factor(p_one, 0, 0, 0, p_dz, 0, Hp, n)
        tiled_product(address(db), 0, Hp, 1, Hp, FROM_C, p_one, 0, ones, no_factor)
        x_T = factor(
            p_x, x_at + t * step_stride, feature_stride, sample_stride,
            p_dz, 0, Hp, n,
        )  # fmt: skip
        # samples whose inputs are zero in all the tile's features drop out
        tiled_product_skipping(address(dW), 0, Hp, D, Hp, FROM_C, p_one, 0, x_T,
                               no_factor, p_masks, t * n, zeros_kind, p_ks)  # fmt: skip
        if t == 0:
            break
        h_T = factor(p_hs, h_prev_at, 1, Hp, p_dz, 0, Hp, n)
        tiled_product(address(dU), 0, Hp, H, Hp, FROM_C, p_one, 0, h_T, no_factor)
        back = factor(p_dz, 0, Hp, 1, p_packed, U_T_at, Hp, H)
        p_dz_prev = address(dz_prev)
        tiled_product(p_dz_prev, 0, Hp, n, Hp, FROM_ZERO, p_one, 0, back, no_factor)
        activation_backward_in_place(
            dz_prev, hs[h_prev_at : h_prev_at + nHp], activation
        )
        dz, dz_prev = dz_prev, dz
    unpad_columns(gW, dW, Hp)
    unpad_columns(gU, dU, Hp)
    unpad_columns(gb, db, Hp)
    return loss, correct, True


@parallel_kernel
def _rnn_dense_xent_train_step(
    params,
    grads,
    state_1,
    state_2,
    scratch,
    part_grads,
    x,
    y,
    bounds,
    W,
    U,
    b,
    V,
    c,
    dW,
    dU,
    db,
    dV,
    dc,
    activation,
    optimizer,
    hyper,
):
    """Forward, loss, BPTT and optimizer update of SimpleRNN -> Dense -> softmax.

    The batch is cut into parts by ``bounds``; each part runs forward and
    backward on its own core, then the parts' gradients are summed and one
    update is made.  On two cores this beats BLAS threading, which cannot split
    the small per-step products profitably.

    params, grads (P,)  flat weights (W, U, b, V, c are views of params) and
                        gradients (dW, dU, db, dV, dc are views of grads)
    state_1, state_2 (P,)  optimizer state (see optimizer_update)
    scratch (S, train_scratch_size(T, largest part, D, H, K))  one row per part
    part_grads (S, G)   each part's gradients of W, U, b, V, c, flattened in
                        that order (G = D H + H H + H + H K + K)
    x (B, T, D)         input, batch-major, read in place
    y (B, K)            target distributions
    bounds (S + 1,)     part s holds batch rows bounds[s] to bounds[s + 1]
    The parts run on as many threads as ``numba.set_num_threads`` allows; the
    serial twin below runs them one after the other with the same arithmetic.

    Returns (mean loss, number of correct rows, inputs finite).  If x holds a
    value that is not finite, or the loss is not finite, params and the
    optimizer state are left untouched.
    """
    # Only the loop over parts is here: with parallel=True, Numba turns every
    # array expression and slice copy of a kernel into a parallel loop of its
    # own, each costing a launch, so the rest lives in serial kernels.
    results = part_results(bounds.shape[0] - 1)
    for part in prange(bounds.shape[0] - 1):
        run_part(results, part, scratch, part_grads, x, y, bounds, W, U, b, V, c,
                 activation)  # fmt: skip
    return finish_step(results, params, grads, state_1, state_2, part_grads, x,
                       dW, dU, db, dV, dc, optimizer, hyper)  # fmt: skip


@kernel
def _rnn_dense_xent_train_step_serial(
    params,
    grads,
    state_1,
    state_2,
    scratch,
    part_grads,
    x,
    y,
    bounds,
    W,
    U,
    b,
    V,
    c,
    dW,
    dU,
    db,
    dV,
    dc,
    activation,
    optimizer,
    hyper,
):
    """:func:`_rnn_dense_xent_train_step` with the parts on the calling thread."""
    results = part_results(bounds.shape[0] - 1)
    for part in range(bounds.shape[0] - 1):
        run_part(results, part, scratch, part_grads, x, y, bounds, W, U, b, V, c,
                 activation)  # fmt: skip
    return finish_step(results, params, grads, state_1, state_2, part_grads, x,
                       dW, dU, db, dV, dc, optimizer, hyper)  # fmt: skip


@kernel
def part_results(parts):
    """Each part's (loss times its rows, correct rows, inputs finite), (parts, 3)."""
    return np.zeros((parts, 3))


@kernel
def run_part(results, part, scratch, part_grads, x, y, bounds, W, U, b, V, c,
             activation):  # fmt: skip
    """Part ``part`` of the train step, its results in results[part]."""
    first = bounds[part]
    loss, correct, finite = train_part(
        scratch[part], part_grads[part], x, y, W, U, b, V, c, first,
        bounds[part + 1] - first, activation,
    )  # fmt: skip
    results[part, 0] = loss
    results[part, 1] = correct
    results[part, 2] = finite


@kernel
def finish_step(results, params, grads, state_1, state_2, part_grads, x, dW, dU,
                db, dV, dc, optimizer, hyper):  # fmt: skip
    """Sum the parts' results and gradients, then update; see the train step."""
    B = x.shape[0]
    D, H = dW.shape
    K = dV.shape[1]
    parts = results.shape[0]
    loss = 0.0
    correct = 0
    # Summed in part order, so that the result does not depend on the threads.
    for part in range(parts):
        if results[part, 2] == 0:
            return np.nan, 0, False
        loss += results[part, 0]
        correct += int(results[part, 1])
    loss /= B
    if not np.isfinite(loss):
        return loss, correct, True

    # The gradient of the batch mean is the sum of the parts' weighted gradients;
    # it goes to the views of grads (or to scratch for a bias the model lacks).
    total = part_grads[0]
    for part in range(1, parts):
        total += part_grads[part]
    dW.reshape(D * H)[:] = total[: D * H]
    at = D * H
    dU.reshape(H * H)[:] = total[at : at + H * H]
    at += H * H
    db[:] = total[at : at + H]
    at += H
    dV.reshape(H * K)[:] = total[at : at + H * K]
    at += H * K
    dc[:] = total[at : at + K]

    # update
    optimizer_update(params, grads, state_1, state_2, optimizer, hyper)
    return loss, correct, True


def rnn_dense_xent_train_step(
    params,
    grads,
    state_1,
    state_2,
    scratch,
    part_grads,
    x,
    y,
    bounds,
    W,
    U,
    b,
    V,
    c,
    dW,
    dU,
    db,
    dV,
    dc,
    activation,
    optimizer,
    hyper,
    threads,
):
    """The fused train step (see ``_rnn_dense_xent_train_step``) on ``threads``.

    threads: cores to run the parts on; 1 runs them one after the other with
    the same arithmetic, so the result does not depend on it.  Numba reads the
    count from the calling thread's setting, which cannot be changed inside a
    cached kernel, so this plain function sets it around the call when fewer
    threads than parts and cores are asked for.
    """
    arguments = (
        params, grads, state_1, state_2, scratch, part_grads, x, y, bounds,
        W, U, b, V, c, dW, dU, db, dV, dc, activation, optimizer, hyper,
    )  # fmt: skip
    if threads <= 1:
        return _rnn_dense_xent_train_step_serial(*arguments)
    cores = numba.get_num_threads()
    if threads >= min(cores, bounds.shape[0] - 1):
        # Each change of the setting costs about a microsecond.
        return _rnn_dense_xent_train_step(*arguments)
    numba.set_num_threads(threads)
    try:
        return _rnn_dense_xent_train_step(*arguments)
    finally:
        numba.set_num_threads(cores)


# --------------------------------------------------------------------------
# inference of SimpleRNN -> Dense on many samples, both cores

# Rows per chunk: enough for the tiles to run at full speed, few enough that a
# chunk's hidden states stay in the L2 cache and that the chunks spread evenly
# over the cores.  The C backend uses the same.
PREDICT_CHUNK = 256


def rnn_dense_predict(logits, x, W, U, b, V, c, activation):
    """logits = h_T V + c for every sample, in chunks spread over the cores.

    logits (B, K) out;  x (B, T, D) any real dtype and layout
    W (D, H), U (H, H), b (H,), V (H, K), c (K,)

    A float32 x is read where it lies, through its strides; any other x is
    converted chunk by chunk.  Only the current and previous hidden states are
    kept, so memory does not grow with T.  Returns False if x holds a value
    that is not finite in float32.
    """
    x = _inference_input("rnn_dense_predict", x)
    no_targets = np.empty((0, V.shape[1]), dtype=np.float32)
    return _run_chunks(logits, no_targets, x, W, U, b, V, c, activation)[2]


def rnn_dense_xent_evaluate(x, y, W, U, b, V, c, activation):
    """Softmax cross-entropy of the logits h_T V + c against y, summed over samples.

    x (B, T, D) any real dtype and layout, read as :func:`rnn_dense_predict`
    reads it;  y (B, K) target distributions;  W (D, H), U (H, H), b (H,),
    V (H, K), c (K,)

    Runs the chunks of :func:`rnn_dense_predict` and scores each as the train
    step scores its parts, without keeping the logits; the chunks' sums are
    added in order, so the result does not depend on the threads.  Returns
    (loss summed over the B samples, number of samples whose first largest
    logit is at y's first maximum, inputs finite).
    """
    x = _inference_input("rnn_dense_xent_evaluate", x)
    no_logits = np.empty((0, V.shape[1]), dtype=np.float32)
    return _run_chunks(no_logits, y, x, W, U, b, V, c, activation)


def _inference_input(kernel_name, x):
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{kernel_name}: x must be (B, T, D), got {x.shape}")
    return x


def _run_chunks(logits, y, x, W, U, b, V, c, activation):
    """(loss sum, correct, finite) of the chunk kernels, on x in place or not."""
    strides = _element_strides(x)
    if strides is None:
        return _chunks_converted(logits, y, x, W, U, b, V, c, activation)
    # x stays referenced here while the kernel reads it through its address.
    return _chunks_in_place(
        logits, y, x.ctypes.data, *strides, *x.shape, W, U, b, V, c, activation
    )


def _element_strides(x):
    """(sample, step, feature) strides of x in floats, or None if x is not
    float32 that the kernels can read in place."""
    if x.dtype != np.float32 or not x.dtype.isnative or not x.flags.aligned:
        return None
    if any(s % 4 for s in x.strides):
        return None
    return tuple(s // 4 for s in x.strides)


@kernel
def pack_for_predict(W, U, b, V, c):
    """W, U and b, then V and c, in padded rows, and the offsets of each in its
    part (see pack_rnn and pack_dense)."""
    D, H = W.shape
    rnn_size = packed_rnn_size(D, H)
    size = ALIGN + rnn_size + packed_dense_size(H, V.shape[1])
    buffer = np.empty(size, dtype=np.float32)
    packed = buffer[first_aligned(buffer) :]
    dense = packed[rnn_size:]
    return packed, pack_rnn(packed, W, U, b, False), pack_dense(dense, V, c, False)


@kernel
def scan_inputs(masks, x_source, x_at, strides, n, T, D):
    """Read x once: True if its n samples from x_at are all finite.

    x_source  x (n, T, D) as an array or the address of its floats, with
              strides (sample, step, feature) in floats
    masks (T * n,) uint64  out: bit d of masks[t * n + i] set where x_t (i, d)
              != 0; pass an empty array when D > MASK_FEATURES

    Sample by sample, so that a batch-major x is read in one forward sweep, which
    the hardware prefetcher follows best; predict relies on this pass to bring
    each chunk into cache.
    """
    x = address(x_source)
    sample_stride, step_stride, feature_stride = strides
    in_vectors = D <= MASK_FEATURES and (feature_stride == 1 or D == 1)
    keep = masks.size > 0
    finite = True
    for i in range(n):
        for t in range(T):
            at = x_at + i * sample_stride + t * step_stride
            if in_vectors:
                nonzero, bad = scan_row(x, at, D)
                finite &= bad == 0
            else:
                nonzero = np.uint64(0)
                for d in range(D):
                    value = x[at + d * feature_stride]
                    finite &= np.isfinite(value)
                    if keep and value != 0:
                        nonzero |= np.uint64(1) << np.uint64(d)
            if keep:
                masks[t * n + i] = nonzero
    return finite


@kernel
def input_masks(T, n, D):
    """Room for the zero masks of n samples of T steps, or none if D is too wide."""
    return np.empty(T * n if D <= MASK_FEATURES else 0, dtype=np.uint64)


@kernel
def tiled_rnn_forward(hs, x_source, x_at, strides, masks, ks, packed, offsets, n,
                      T, D, H, activation, keep_all):  # fmt: skip
    """h_t = act(x_t W + h_{t-1} U + b) for t = 0 .. T - 1, h_{-1} = 0, on tiles.

    hs (T, n, Hp) flat  out: every state if ``keep_all``, else only two, with
                        h_t at (t % 2) n Hp (then hs needs only 2 n Hp)
    x_source            x (n, T, D) as an array, or the address of its floats,
                        read where it lies: sample i's step t starts at
                        x_at + i sample + t step, with strides (sample, step,
                        feature) in floats.  The caller keeps it alive.
    masks (T * n,)      x's zero masks from scan_inputs, which let the input
                        products leave out features that are zero in every row
                        of a tile, or empty;  ks (D,) int64 scratch
    packed, offsets     W, U, b in padded rows and their offsets, from pack_rnn
    Returns the offset of the last state in hs (zero if T is 0).
    """
    W_at, U_at, _, b_at = offsets
    sample_stride, step_stride, feature_stride = strides
    Hp = padded(H)
    nHp = n * Hp
    p_hs = address(hs)
    p_x = address(x_source)
    p_packed = address(packed)
    p_masks = address(masks)
    p_ks = address(ks)
    zeros_kind = ZEROS_BY_ROW if masks.size > 0 else NO_ZEROS
    h_at = 0
    if T == 0:
        hs[:nHp] = 0
    for t in range(T):
        h_prev_at = h_at
        h_at = t * nHp if keep_all else t % 2 * nHp
        inputs = factor(
            p_x, x_at + t * step_stride, sample_stride, feature_stride,
            p_packed, W_at, Hp, D,
        )  # fmt: skip
        recurrent = factor(
            p_hs, h_prev_at, Hp, 1, p_packed, U_at, Hp, H if t > 0 else 0
        )
        tiled_product_skipping(p_hs, h_at, Hp, n, Hp, FROM_ROW, p_packed, b_at,
                               inputs, recurrent, p_masks, t * n, zeros_kind,
                               p_ks)  # fmt: skip
        h = hs[h_at : h_at + nHp]
        activate_in_place(h, activation)
    return h_at


@kernel
def predict_chunk(logits, x_source, x_at, strides, T, D, packed, offsets,
                  dense_offsets, H, activation):  # fmt: skip
    """logits (n, K) of the n samples of x from x_at; False if x is not finite.

    x_source, x_at, strides  x (n, T, D), as for tiled_rnn_forward
    packed, offsets, dense_offsets  W, U, b, V, c in padded rows and their
                             offsets, from pack_for_predict
    """
    n, K = logits.shape
    nHp = n * padded(H)
    masks = input_masks(T, n, D)
    ks = np.empty(D, dtype=np.int64)
    finite = scan_inputs(masks, x_source, x_at, strides, n, T, D)

    # Two hidden states, current and previous, then the logits in rows of Kp
    buffer = np.empty(ALIGN + 2 * nHp + n * padded(K), dtype=np.float32)
    h = buffer[first_aligned(buffer) :]
    wide = h[2 * nHp :]
    last_at = tiled_rnn_forward(h, x_source, x_at, strides, masks, ks, packed,
                                offsets, n, T, D, H, activation, False)  # fmt: skip
    dense = packed[packed_rnn_size(D, H) :]
    tiled_dense_forward(logits, wide, h, last_at, dense, dense_offsets, H)
    return finite


@kernel
def chunk_logits(logits, start, n):
    """Rows start .. start + n - 1 of logits, or a buffer of n rows of their own
    when logits keeps none (shape (0, K))."""
    if logits.shape[0] == 0:
        return np.empty((n, logits.shape[1]), dtype=np.float32)
    return logits[start : start + n]


@kernel
def score_chunk(logits, y):
    """(loss summed over the rows, correct rows) of logits (n, K) against y
    (n, K), as the train step scores a part; (0, 0) when y has no rows."""
    n, K = logits.shape
    if y.shape[0] == 0:
        return 0.0, 0
    probs = np.empty((n, K), dtype=np.float32)
    loss = softmax_xent_forward(probs, logits, y) * n
    return loss, count_correct(probs, y)


@kernel
def sum_chunks(chunk_loss, chunk_correct, finite):
    """The chunks' (loss sum, correct, finite), added in chunk order."""
    loss_sum = 0.0
    correct = 0
    for chunk in range(chunk_loss.size):
        loss_sum += chunk_loss[chunk]
        correct += chunk_correct[chunk]
    return loss_sum, correct, finite.all()


@parallel_kernel
def _chunks_in_place(logits, y, x_address, sample_stride, step_stride,
                     feature_stride, B, T, D, W, U, b, V, c, activation):  # fmt: skip
    """Predict (into logits (B, K)) or evaluate (against y (B, K)) a float32 x
    (B, T, D) at x_address, with element strides between samples, steps and
    features.  The unused one of logits and y has no rows."""
    H = W.shape[1]
    packed, offsets, dense_offsets = pack_for_predict(W, U, b, V, c)
    strides = (sample_stride, step_stride, feature_stride)
    n_chunks = (B + PREDICT_CHUNK - 1) // PREDICT_CHUNK
    chunk_loss = np.zeros(n_chunks)
    chunk_correct = np.zeros(n_chunks, dtype=np.int64)
    finite = np.ones(n_chunks, dtype=np.bool_)
    for chunk in prange(n_chunks):
        start = chunk * PREDICT_CHUNK
        n = min(B, start + PREDICT_CHUNK) - start
        x_at = start * sample_stride
        out = chunk_logits(logits, start, n)
        finite[chunk] = predict_chunk(
            out, x_address, x_at, strides, T, D, packed, offsets, dense_offsets, H,
            activation,
        )  # fmt: skip
        chunk_loss[chunk], chunk_correct[chunk] = score_chunk(out, y[start : start + n])
    return sum_chunks(chunk_loss, chunk_correct, finite)


@parallel_kernel
def _chunks_converted(logits, y, x, W, U, b, V, c, activation):
    """_chunks_in_place for an x (B, T, D) of another dtype or byte order, each
    chunk converted to float32, time-major."""
    B, T, D = x.shape
    H = W.shape[1]
    packed, offsets, dense_offsets = pack_for_predict(W, U, b, V, c)
    n_chunks = (B + PREDICT_CHUNK - 1) // PREDICT_CHUNK
    chunk_loss = np.zeros(n_chunks)
    chunk_correct = np.zeros(n_chunks, dtype=np.int64)
    finite = np.ones(n_chunks, dtype=np.bool_)
    for chunk in prange(n_chunks):
        start = chunk * PREDICT_CHUNK
        n = min(B, start + PREDICT_CHUNK) - start
        x_tm = np.empty((T, n, D), dtype=np.float32)
        converted = sequence_to_time_major(x_tm, x[start : start + n])
        out = chunk_logits(logits, start, n)
        scanned = predict_chunk(out, x_tm, 0, (D, n * D, 1), T, D, packed, offsets,
                                dense_offsets, H, activation)  # fmt: skip
        finite[chunk] = converted and scanned
        chunk_loss[chunk], chunk_correct[chunk] = score_chunk(out, y[start : start + n])
    return sum_chunks(chunk_loss, chunk_correct, finite)
