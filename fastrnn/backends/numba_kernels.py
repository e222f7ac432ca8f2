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

LINEAR, TANH, RELU, SIGMOID = 0, 1, 2, 3


# --------------------------------------------------------------------------
# element-wise activations

# tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 and +-1 beyond, where float32's tanh
# is 1 to within rounding.  The coefficients are a rational least-squares fit of
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
    return x * p / q


@kernel
def activation_forward(out, z, activation):
    """out = act(z) element-wise; ``out`` may be ``z``.  Shapes (M,)."""
    half = np.float32(0.5)
    if activation == TANH:
        for i in range(z.size):
            out[i] = tanh32(z[i])
    elif activation == RELU:
        for i in range(z.size):
            out[i] = max(z[i], np.float32(0.0))
    elif activation == SIGMOID:
        # sigmoid(z) = (1 + tanh(z / 2)) / 2 shares the vectorised tanh.
        for i in range(z.size):
            out[i] = half + half * tanh32(half * z[i])
    else:
        out[:] = z


@kernel
def activation_backward(dz, dout, out, activation):
    """dz = dout * act'(z), with act' written in terms of out = act(z).

    Shapes (M,).  ``dz`` may be ``dout``.
    """
    one = np.float32(1.0)
    if activation == TANH:
        for i in range(dz.size):
            dz[i] = dout[i] * (one - out[i] * out[i])
    elif activation == RELU:
        for i in range(dz.size):
            dz[i] = dout[i] if out[i] > 0 else np.float32(0.0)
    elif activation == SIGMOID:
        for i in range(dz.size):
            dz[i] = dout[i] * out[i] * (one - out[i])
    else:
        dz[:] = dout


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
    """Elements of scratch that one part of ``rows`` batch rows needs."""
    return T * rows * D + 2 * T * rows * H + 3 * rows * H + 3 * rows * K


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
    The parts run on as many threads as ``numba.set_num_threads`` allows.

    Returns (mean loss, number of correct rows, inputs finite).  If x holds a
    value that is not finite, or the loss is not finite, params and the
    optimizer state are left untouched.
    """
    B, T, D = x.shape
    H = W.shape[1]
    K = V.shape[1]
    parts = bounds.shape[0] - 1
    part_loss = np.zeros(parts)
    part_correct = np.zeros(parts, dtype=np.int64)
    part_finite = np.ones(parts, dtype=np.bool_)
    for part in prange(parts):
        first = bounds[part]
        n = bounds[part + 1] - first
        row = scratch[part]

        # Carve this part's buffers out of its scratch row.
        at = 0
        x_part = row[at : at + T * n * D].reshape(T, n, D)
        at += T * n * D
        hs = row[at : at + T * n * H].reshape(T, n, H)
        at += T * n * H
        dz = row[at : at + T * n * H].reshape(T, n, H)
        at += T * n * H
        work = row[at : at + 2 * n * H].reshape(2, n, H)
        at += 2 * n * H
        dh_last = row[at : at + n * H].reshape(1, n, H)
        at += n * H
        logits = row[at : at + n * K].reshape(n, K)
        at += n * K
        probs = row[at : at + n * K].reshape(n, K)
        at += n * K
        dlogits = row[at : at + n * K].reshape(n, K)
        g = part_grads[part]
        at = 0
        gW = g[at : at + D * H].reshape(D, H)
        at += D * H
        gU = g[at : at + H * H].reshape(H, H)
        at += H * H
        gb = g[at : at + H]
        at += H
        gV = g[at : at + H * K].reshape(H, K)
        at += H * K
        gc = g[at : at + K]
        y_part = y[first : first + n]
        # The part's rows, time-major, checked as they are copied: a part with
        # an input that is not finite computes nothing.
        finite = True
        for i in range(n):
            for t in range(T):
                for d in range(D):
                    value = x[first + i, t, d]
                    finite &= np.isfinite(value)
                    x_part[t, i, d] = value
        part_finite[part] = finite
        if finite:
            # forward
            rnn_forward(hs, work, x_part, W, U, b, activation)
            dense_forward(logits, hs[T - 1], V, c)

            # loss, fused with the softmax; the part's mean is weighted by its
            # share
            part_loss[part] = softmax_xent_forward(probs, logits, y_part) * n
            part_correct[part] = count_correct(probs, y_part)
            softmax_xent_backward(dlogits, probs, y_part)
            share = np.float32(n / B)
            for i in range(n):
                for k in range(K):
                    dlogits[i, k] *= share

            # backward
            dense_backward(gV, gc, dh_last[0], dlogits, hs[T - 1], V)
            rnn_backward(
                gW, gU, gb, x_part[:0], dz, work, dh_last, hs, x_part, W, U, activation
            )

    if not part_finite.all():
        return np.nan, 0, False
    loss = part_loss.sum() / B
    correct = part_correct.sum()
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
    cached kernel, so this plain function sets it around the call.
    """
    cores = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, cores)))
    try:
        return _rnn_dense_xent_train_step(
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
        )
    finally:
        numba.set_num_threads(cores)


# --------------------------------------------------------------------------
# inference of SimpleRNN -> Dense on many samples, both cores

# Rows per chunk: small enough that a chunk's buffers stay in the L2 cache, large
# enough that each product is worth a BLAS call.
PREDICT_CHUNK = 256


@parallel_kernel
def rnn_dense_predict(logits, x, W, U, b, V, c, activation):
    """logits = h_T V + c for every sample, in chunks spread over the cores.

    logits (B, K) out;  x (B, T, D) any real dtype and layout (converted here)
    W (D, H), U (H, H), b (H,), V (H, K), c (K,)

    Only the current and previous hidden states are kept, so memory does not
    grow with T.  Returns False if x holds a value that is not finite in float32.
    """
    B = x.shape[0]
    n_chunks = (B + PREDICT_CHUNK - 1) // PREDICT_CHUNK
    finite = np.ones(n_chunks, dtype=np.bool_)
    for chunk in prange(n_chunks):
        start = chunk * PREDICT_CHUNK
        stop = min(B, start + PREDICT_CHUNK)
        finite[chunk] = rnn_dense_predict_chunk(
            logits[start:stop], x[start:stop], W, U, b, V, c, activation
        )
    return finite.all()


@kernel
def rnn_dense_predict_chunk(logits, x, W, U, b, V, c, activation):
    """logits (n, K) of the n samples of x (n, T, D); False if x is not finite."""
    n, T, D = x.shape
    H = W.shape[1]
    x_tm = np.empty((T, n, D), dtype=np.float32)
    finite = sequence_to_time_major(x_tm, x)
    h = np.empty((2, n, H), dtype=np.float32)
    step = np.zeros((n, H), dtype=np.float32)
    for t in range(T):
        current = h[t % 2]
        np.dot(x_tm[t], W, current)
        if t > 0:
            np.dot(h[(t - 1) % 2], U, step)
        add_step_activate(current, step, b, activation)
    dense_forward(logits, h[(T - 1) % 2], V, c)
    return finite


@parallel_kernel
def rnn_dense_xent_evaluate(x, y, W, U, b, V, c, activation):
    """Softmax cross-entropy of the logits h_T V + c against y, summed over samples.

    x (B, T, D) any real dtype and layout (converted here);  y (B, K) target
    distributions;  W (D, H), U (H, H), b (H,), V (H, K), c (K,)

    Runs the chunks of :func:`rnn_dense_predict` and scores each as the train
    step scores its parts; the chunks' sums are added in order, so the result
    does not depend on the threads.  Returns (loss summed over the B samples,
    number of samples whose first largest logit is at y's first maximum, inputs
    finite).
    """
    B, T, D = x.shape
    K = V.shape[1]
    n_chunks = (B + PREDICT_CHUNK - 1) // PREDICT_CHUNK
    chunk_loss = np.zeros(n_chunks)
    chunk_correct = np.zeros(n_chunks, dtype=np.int64)
    finite = np.ones(n_chunks, dtype=np.bool_)
    for chunk in prange(n_chunks):
        start = chunk * PREDICT_CHUNK
        stop = min(B, start + PREDICT_CHUNK)
        logits = np.empty((stop - start, K), dtype=np.float32)
        probs = np.empty((stop - start, K), dtype=np.float32)
        finite[chunk] = rnn_dense_predict_chunk(
            logits, x[start:stop], W, U, b, V, c, activation
        )
        y_chunk = y[start:stop]
        chunk_loss[chunk] = softmax_xent_forward(probs, logits, y_chunk) * (
            stop - start
        )
        chunk_correct[chunk] = count_correct(probs, y_chunk)
    loss_sum = 0.0
    correct = 0
    for chunk in range(n_chunks):
        loss_sum += chunk_loss[chunk]
        correct += chunk_correct[chunk]
    return loss_sum, correct, finite.all()
