# cython: language_level=3, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""C kernels of fastrnn (csrc/), with the names, argument order and semantics of
:mod:`fastrnn.backends.numba_kernels`, which states the recurrence and the
conventions.

Each function checks that the shapes of its arrays agree and then calls C
without the GIL.  The check is the one thing added here: where a Numba product
raises on a bad shape, C would read or write out of bounds.  The per-layer
kernels' matrix products run through SciPy's BLAS, handed to C as a function
pointer; the fused train step, predict and evaluate use register tiles of
their own and spread their work over OpenMP threads when the extension was
built with OpenMP.
"""

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm

from fastrnn.backends.convert import sequence_to_time_major
from fastrnn.backends.numba_kernels import PREDICT_CHUNK

LINEAR, TANH, RELU, SIGMOID = 0, 1, 2, 3

cdef fr_sgemm_fn _sgemm = <fr_sgemm_fn>sgemm

# Parts of a fused train step whose results fit in arrays on the stack.
cdef enum:
    STACK_PARTS = 16


cdef inline int _dim(Py_ssize_t n) except -1:
    # BLAS counts rows and columns in C int.
    if n > INT_MAX:
        raise OverflowError(f"dimension {n} exceeds the BLAS limit {INT_MAX}")
    return <int>n


def _mismatch(kernel, **arrays):
    shapes = ", ".join(f"{name} {tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"{kernel}: array shapes do not agree: {shapes}")


# --------------------------------------------------------------------------
# element-wise activations


def activation_forward(float[::1] out, const float[::1] z, int activation):
    """out = act(z) element-wise; ``out`` may be ``z``.  Shapes (M,)."""
    if out.shape[0] != z.shape[0]:
        raise _mismatch("activation_forward", out=out, z=z)
    with nogil:
        fr_activation_forward(&out[0], &z[0], z.shape[0], activation)


def activation_backward(
    float[::1] dz, const float[::1] dout, const float[::1] out, int activation
):
    """dz = dout * act'(z) from out = act(z).  Shapes (M,); ``dz`` may be ``dout``."""
    if not (dz.shape[0] == dout.shape[0] == out.shape[0]):
        raise _mismatch("activation_backward", dz=dz, dout=dout, out=out)
    with nogil:
        fr_activation_backward(&dz[0], &dout[0], &out[0], dz.shape[0], activation)


# --------------------------------------------------------------------------
# SimpleRNN


def rnn_forward(
    float[:, :, ::1] hs,
    float[:, :, ::1] work,
    const float[:, :, ::1] x_tm,
    const float[:, ::1] W,
    const float[:, ::1] U,
    const float[::1] b,
    int activation,
):
    """Run the recurrence over all T steps.

    hs (T, B, H) out, work (2, B, H) scratch, x_tm (T, B, D), W (D, H), U (H, H),
    b (H,).  ``work`` is kept for the shared signature; the C kernel accumulates
    into ``hs`` in place and does not touch it.
    """
    cdef int T = _dim(x_tm.shape[0]), B = _dim(x_tm.shape[1])
    cdef int D = _dim(x_tm.shape[2]), H = _dim(W.shape[1])
    _dim(x_tm.shape[0] * x_tm.shape[1])
    if not (
        hs.shape[0] == T and hs.shape[1] == B and hs.shape[2] == H
        and W.shape[0] == D and U.shape[0] == H and U.shape[1] == H
        and b.shape[0] == H
    ):
        raise _mismatch("rnn_forward", hs=hs, x_tm=x_tm, W=W, U=U, b=b)
    with nogil:
        fr_rnn_forward(
            &hs[0, 0, 0], &x_tm[0, 0, 0], &W[0, 0], &U[0, 0], &b[0],
            T, B, D, H, activation, _sgemm,
        )


def rnn_backward(
    float[:, ::1] dW,
    float[:, ::1] dU,
    float[::1] db,
    float[:, :, ::1] dx_tm,
    float[:, :, ::1] dz,
    float[:, :, ::1] work,
    const float[:, :, ::1] dh_out,
    const float[:, :, ::1] hs,
    const float[:, :, ::1] x_tm,
    const float[:, ::1] W,
    const float[:, ::1] U,
    int activation,
):
    """Backpropagation through time for :func:`rnn_forward`.

    dW (D, H), dU (H, H), db (H,) out: overwritten.  dx_tm (T, B, D) out, or of
    size 0 to skip.  dz (T, B, H) out: pre-activation gradients.  work unused
    (see :func:`rnn_forward`).  dh_out (T, B, H) for every step's output or
    (1, B, H) for the last one's; hs, x_tm, W, U as in the forward pass.
    """
    cdef int T = _dim(x_tm.shape[0]), B = _dim(x_tm.shape[1])
    cdef int D = _dim(x_tm.shape[2]), H = _dim(W.shape[1])
    cdef int dh_steps = _dim(dh_out.shape[0])
    cdef bint want_dx = dx_tm.shape[0] * dx_tm.shape[1] * dx_tm.shape[2] != 0
    _dim(x_tm.shape[0] * x_tm.shape[1])
    if not (
        dW.shape[0] == D and dW.shape[1] == H
        and dU.shape[0] == H and dU.shape[1] == H and db.shape[0] == H
        and dz.shape[0] == T and dz.shape[1] == B and dz.shape[2] == H
        and (dh_steps == 1 or dh_steps == T)
        and dh_out.shape[1] == B and dh_out.shape[2] == H
        and hs.shape[0] == T and hs.shape[1] == B and hs.shape[2] == H
        and W.shape[0] == D and U.shape[0] == H and U.shape[1] == H
        and (
            not want_dx
            or (dx_tm.shape[0] == T and dx_tm.shape[1] == B and dx_tm.shape[2] == D)
        )
    ):
        raise _mismatch(
            "rnn_backward", dW=dW, dU=dU, db=db, dx_tm=dx_tm, dz=dz, dh_out=dh_out,
            hs=hs, x_tm=x_tm, W=W, U=U,
        )
    with nogil:
        fr_rnn_backward(
            &dW[0, 0], &dU[0, 0], &db[0], &dx_tm[0, 0, 0] if want_dx else NULL,
            &dz[0, 0, 0], &dh_out[0, 0, 0], &hs[0, 0, 0], &x_tm[0, 0, 0], &W[0, 0],
            &U[0, 0], T, B, D, H, dh_steps, activation, _sgemm,
        )


# --------------------------------------------------------------------------
# Dense


def dense_forward(
    float[:, ::1] y, const float[:, ::1] x, const float[:, ::1] V, const float[::1] c
):
    """y = x V + c.   y (N, K), x (N, H), V (H, K), c (K,)."""
    cdef int N = _dim(x.shape[0]), H = _dim(x.shape[1]), K = _dim(V.shape[1])
    if not (
        y.shape[0] == N and y.shape[1] == K and V.shape[0] == H and c.shape[0] == K
    ):
        raise _mismatch("dense_forward", y=y, x=x, V=V, c=c)
    with nogil:
        fr_dense_forward(&y[0, 0], &x[0, 0], &V[0, 0], &c[0], N, H, K, _sgemm)


def dense_backward(
    float[:, ::1] dV,
    float[::1] dc,
    float[:, ::1] dx,
    const float[:, ::1] dy,
    const float[:, ::1] x,
    const float[:, ::1] V,
):
    """Gradients of :func:`dense_forward`.

    dV (H, K), dc (K,) out: overwritten.  dx (N, H) out, or of size 0 to skip.
    dy (N, K), x (N, H), V (H, K).
    """
    cdef int N = _dim(x.shape[0]), H = _dim(x.shape[1]), K = _dim(V.shape[1])
    cdef bint want_dx = dx.shape[0] * dx.shape[1] != 0
    if not (
        dV.shape[0] == H and dV.shape[1] == K and dc.shape[0] == K
        and dy.shape[0] == N and dy.shape[1] == K and V.shape[0] == H
        and (not want_dx or (dx.shape[0] == N and dx.shape[1] == H))
    ):
        raise _mismatch("dense_backward", dV=dV, dc=dc, dx=dx, dy=dy, x=x, V=V)
    with nogil:
        fr_dense_backward(
            &dV[0, 0], &dc[0], &dx[0, 0] if want_dx else NULL, &dy[0, 0], &x[0, 0],
            &V[0, 0], N, H, K, _sgemm,
        )


# --------------------------------------------------------------------------
# softmax and losses


def softmax_forward(float[:, ::1] p, const float[:, ::1] z):
    """Row-wise softmax, shifted by the row maximum.  p, z (N, K); p may be z."""
    cdef int N = _dim(z.shape[0]), K = _dim(z.shape[1])
    if not (p.shape[0] == N and p.shape[1] == K):
        raise _mismatch("softmax_forward", p=p, z=z)
    with nogil:
        fr_softmax_forward(&p[0, 0], &z[0, 0], N, K)


def softmax_backward(float[:, ::1] dz, const float[:, ::1] dp, const float[:, ::1] p):
    """dz = p * (dp - sum(dp * p)) row-wise.  dz, dp, p (N, K)."""
    cdef int N = _dim(p.shape[0]), K = _dim(p.shape[1])
    if not (
        dz.shape[0] == N and dz.shape[1] == K and dp.shape[0] == N and dp.shape[1] == K
    ):
        raise _mismatch("softmax_backward", dz=dz, dp=dp, p=p)
    with nogil:
        fr_softmax_backward(&dz[0, 0], &dp[0, 0], &p[0, 0], N, K)


def softmax_xent_forward(
    float[:, ::1] p, const float[:, ::1] logits, const float[:, ::1] y
):
    """Mean softmax cross-entropy from logits, as a Python float.

    p (N, K) out: probabilities; logits (N, K); y (N, K) target distribution.
    """
    cdef int N = _dim(logits.shape[0]), K = _dim(logits.shape[1])
    cdef double loss
    if not (
        p.shape[0] == N and p.shape[1] == K and y.shape[0] == N and y.shape[1] == K
    ):
        raise _mismatch("softmax_xent_forward", p=p, logits=logits, y=y)
    with nogil:
        loss = fr_softmax_xent_forward(&p[0, 0], &logits[0, 0], &y[0, 0], N, K)
    return loss


def softmax_xent_backward(
    float[:, ::1] dlogits, const float[:, ::1] p, const float[:, ::1] y
):
    """Gradient of the mean softmax cross-entropy.  dlogits, p, y (N, K)."""
    cdef int N = _dim(p.shape[0]), K = _dim(p.shape[1])
    if not (
        dlogits.shape[0] == N and dlogits.shape[1] == K
        and y.shape[0] == N and y.shape[1] == K
    ):
        raise _mismatch("softmax_xent_backward", dlogits=dlogits, p=p, y=y)
    with nogil:
        fr_softmax_xent_backward(&dlogits[0, 0], &p[0, 0], &y[0, 0], N, K)


def sparse_to_onehot(float[:, ::1] y, labels):
    """y[i] = one-hot(labels[i]).  y (N, K) float32, labels (N,) of integers.

    Any integer dtype is taken (converted to int64 when needed), as the Numba
    twin takes it.  A label outside [0, K) raises ValueError instead of writing
    out of bounds.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"sparse_to_onehot: labels must be integers, got {labels.dtype}"
        )
    cdef const int64_t[::1] lab = np.ascontiguousarray(labels, dtype=np.int64)
    cdef int N = _dim(y.shape[0]), K = _dim(y.shape[1])
    cdef int bad
    if lab.shape[0] != N:
        raise _mismatch("sparse_to_onehot", y=y, labels=labels)
    with nogil:
        bad = fr_sparse_to_onehot(&y[0, 0], &lab[0], N, K)
    if bad:
        raise ValueError(
            f"sparse_to_onehot: {bad} labels fall outside [0, {y.shape[1]})"
        )


# --------------------------------------------------------------------------
# optimizers on flat parameter vectors, all of shape (P,)


def adam_update(
    float[::1] w,
    const float[::1] g,
    float[::1] m,
    float[::1] v,
    double alpha,
    double beta_1,
    double beta_2,
    double epsilon,
):
    """Adam (Kingma and Ba, 2015) in Keras' form, see the Numba twin.

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) comes from the caller;
    epsilon is added to sqrt(v_t).
    """
    if not (w.shape[0] == g.shape[0] == m.shape[0] == v.shape[0]):
        raise _mismatch("adam_update", w=w, g=g, m=m, v=v)
    with nogil:
        fr_adam_update(
            &w[0], &g[0], &m[0], &v[0], w.shape[0], alpha, beta_1, beta_2, epsilon
        )


def sgd_update(
    float[::1] w,
    const float[::1] g,
    float[::1] velocity,
    double learning_rate,
    double momentum,
    bint nesterov,
):
    """SGD with optional (Nesterov) momentum; ``velocity`` is unused at momentum 0."""
    cdef bint with_velocity = momentum != 0.0
    if w.shape[0] != g.shape[0] or (with_velocity and velocity.shape[0] != w.shape[0]):
        raise _mismatch("sgd_update", w=w, g=g, velocity=velocity)
    with nogil:
        fr_sgd_update(
            &w[0], &g[0], &velocity[0] if with_velocity else NULL, w.shape[0],
            learning_rate, momentum, nesterov,
        )


def rmsprop_update(
    float[::1] w,
    const float[::1] g,
    float[::1] velocity,
    double learning_rate,
    double rho,
    double epsilon,
):
    """RMSprop: v = rho v + (1 - rho) g^2;  w -= lr g / sqrt(v + epsilon)."""
    if not (w.shape[0] == g.shape[0] == velocity.shape[0]):
        raise _mismatch("rmsprop_update", w=w, g=g, velocity=velocity)
    with nogil:
        fr_rmsprop_update(
            &w[0], &g[0], &velocity[0], w.shape[0], learning_rate, rho, epsilon
        )


# --------------------------------------------------------------------------
# the whole train step of SimpleRNN -> Dense -> softmax cross-entropy

ADAM, SGD, RMSPROP = 0, 1, 2


def train_scratch_size(T, rows, D, H, K):
    """Elements of scratch that one part of ``rows`` batch rows needs."""
    return fr_train_scratch_size(_dim(T), _dim(rows), _dim(D), _dim(H), _dim(K))


def rnn_dense_xent_train_step(
    float[::1] params,
    float[::1] grads,
    float[::1] state_1,
    float[::1] state_2,
    float[:, ::1] scratch,
    float[:, ::1] part_grads,
    const float[:, :, ::1] x,
    const float[:, ::1] y,
    const int64_t[::1] bounds,
    const float[:, ::1] W,
    const float[:, ::1] U,
    const float[::1] b,
    const float[:, ::1] V,
    const float[::1] c,
    float[:, ::1] dW,
    float[:, ::1] dU,
    float[::1] db,
    float[:, ::1] dV,
    float[::1] dc,
    int activation,
    int optimizer,
    const double[::1] hyper,
    int threads,
):
    """Forward, loss, BPTT and optimizer update of SimpleRNN -> Dense -> softmax.

    The arguments are those of the Numba twin: W, U, b, V, c are views of the
    flat params (P,), dW, dU, db, dV, dc of grads (P,) (or of other memory for
    an absent bias); state_1, state_2 (P,) the optimizer state; scratch (S, at
    least ``train_scratch_size(T, largest part, D, H, K)``) and part_grads
    (S, D H + H H + H + H K + K) one row per part; x (B, T, D), batch-major,
    read in place; y (B, K); bounds (S + 1,) int64, part s holding batch rows
    bounds[s] to bounds[s + 1].  hyper (float64) holds the optimizer's
    hyperparameters, see ``optimizer_update`` of the Numba twin.  The parts run
    on up to ``threads`` OpenMP threads; the result does not depend on how many.

    Returns (mean loss, number of correct rows, inputs finite).  If x holds a
    value that is not finite, or the loss is not finite, params and the
    optimizer state are left untouched.
    """
    cdef int B = _dim(x.shape[0]), T = _dim(x.shape[1])
    cdef int D = _dim(x.shape[2]), H = _dim(W.shape[1]), K = _dim(V.shape[1])
    cdef int parts = _dim(bounds.shape[0] - 1) if bounds.shape[0] > 0 else 0
    cdef Py_ssize_t P = params.shape[0]
    cdef Py_ssize_t G = D * H + H * H + H + H * K + K
    cdef Py_ssize_t rows = 0
    cdef int correct, inputs_finite, part
    cdef double loss
    cdef double *part_loss
    cdef int *part_correct
    _dim(x.shape[0] * x.shape[1])
    # Parts must lie inside the batch, in order: C trusts them as row offsets.
    cdef bint ordered = parts >= 1 and bounds[0] >= 0 and bounds[parts] <= B
    for part in range(parts):
        ordered = ordered and bounds[part] <= bounds[part + 1]
        rows = max(rows, bounds[part + 1] - bounds[part])
    if not (
        T >= 1 and ordered
        and W.shape[0] == D and U.shape[0] == H and U.shape[1] == H
        and b.shape[0] == H and V.shape[0] == H and c.shape[0] == K
        and dW.shape[0] == D and dW.shape[1] == H
        and dU.shape[0] == H and dU.shape[1] == H and db.shape[0] == H
        and dV.shape[0] == H and dV.shape[1] == K and dc.shape[0] == K
        and grads.shape[0] == P and state_1.shape[0] == P and state_2.shape[0] == P
        and scratch.shape[0] >= parts
        and scratch.shape[1] >= fr_train_scratch_size(T, <int>rows, D, H, K)
        and part_grads.shape[0] >= parts and part_grads.shape[1] == G
        and y.shape[0] == B and y.shape[1] == K
        and hyper.shape[0] >= (4 if optimizer == ADAM else 3)
    ):
        raise _mismatch(
            "rnn_dense_xent_train_step", params=params, grads=grads,
            state_1=state_1, state_2=state_2, scratch=scratch, part_grads=part_grads,
            x=x, y=y, bounds=bounds, W=W, U=U, b=b, V=V, c=c, dW=dW, dU=dU,
            db=db, dV=dV, dc=dc, hyper=hyper,
        )
    # The parts' results: on the stack for the few parts the models use, so a
    # training step allocates nothing.
    cdef double few_losses[STACK_PARTS]
    cdef int few_correct[STACK_PARTS]
    part_loss, part_correct = few_losses, few_correct
    if parts > STACK_PARTS:
        part_loss = <double *>PyMem_Malloc(parts * sizeof(double))
        part_correct = <int *>PyMem_Malloc(parts * sizeof(int))
    try:
        if part_loss == NULL or part_correct == NULL:
            raise MemoryError()
        with nogil:
            loss = fr_rnn_dense_xent_train_step(
                &correct, &inputs_finite, &params[0], &grads[0], &state_1[0],
                &state_2[0], &scratch[0, 0], &part_grads[0, 0], part_loss,
                part_correct, &x[0, 0, 0], T * D, D, &y[0, 0], &bounds[0],
                &W[0, 0], &U[0, 0], &b[0], &V[0, 0], &c[0], &dW[0, 0], &dU[0, 0],
                &db[0], &dV[0, 0], &dc[0], P, scratch.shape[1], parts, T, B, D, H,
                K, activation, optimizer, &hyper[0], threads,
            )
    finally:
        if parts > STACK_PARTS:
            PyMem_Free(part_loss)
            PyMem_Free(part_correct)
    return loss, correct, bool(inputs_finite)


# --------------------------------------------------------------------------
# inference of SimpleRNN -> Dense on many samples


def _readable_in_place(x):
    """Element strides (between samples, between steps) of a float32 x (B, T, D)
    that C can read without a copy, or None."""
    B, T, D = x.shape
    if x.dtype != np.float32 or not x.dtype.isnative or not x.flags.aligned:
        return None
    sample, step, feature = (s // 4 for s in x.strides)
    if any(s % 4 for s in x.strides) or (D > 1 and feature != 1):
        return None
    # A stride along an axis of length 1 is never followed; it is set to one
    # that covers a row, as the kernels expect of every stride.
    sample = max(D, 1) if B == 1 else sample
    step = 0 if T == 1 else step
    if sample < max(D, 1) or sample > INT_MAX or step < 0:
        return None
    return sample, step


def rnn_dense_predict(
    float[:, ::1] logits,
    x,
    const float[:, ::1] W,
    const float[:, ::1] U,
    const float[::1] b,
    const float[:, ::1] V,
    const float[::1] c,
    int activation,
):
    """logits = h_T V + c for every sample, in chunks spread over the threads.

    logits (B, K) out;  x (B, T, D) any real dtype and layout
    W (D, H), U (H, H), b (H,), V (H, K), c (K,)

    A float32 x whose features are contiguous (C order, or a transposed view of
    a time-major array) is read where it lies.  Any other x is converted to
    float32, time-major, one block of chunks at a time, so memory stays bounded
    whatever B is.  Returns False if x holds a value that is not finite in
    float32.
    """
    x = _inference_input("rnn_dense_predict", x, W, U, b, V, c)
    if not (logits.shape[0] == x.shape[0] and logits.shape[1] == V.shape[1]):
        raise _mismatch(
            "rnn_dense_predict", logits=logits, x=x, W=W, U=U, b=b, V=V, c=c
        )
    finite = True
    no_rows = np.empty((0, V.shape[1]), dtype=np.float32)
    for start, stop, block, sample_stride, step_stride, block_finite in _blocks(x):
        _, _, block_finite_x = _run_block(
            logits[start:stop], no_rows, block, W, U, b, V, c, sample_stride,
            step_stride, activation,
        )
        finite = finite and block_finite and block_finite_x
    return bool(finite)


def rnn_dense_xent_evaluate(
    x,
    const float[:, ::1] y,
    const float[:, ::1] W,
    const float[:, ::1] U,
    const float[::1] b,
    const float[:, ::1] V,
    const float[::1] c,
    int activation,
):
    """Softmax cross-entropy of SimpleRNN -> Dense logits, summed over samples.

    x (B, T, D) any real dtype and layout, read as :func:`rnn_dense_predict`
    reads it;  y (B, K) target distributions;  W, U, b, V, c as there.

    Returns (loss summed over the B samples, number of samples whose first
    largest logit is at y's first maximum, inputs finite).  The logits are not
    kept, and the sums do not depend on the number of threads.
    """
    x = _inference_input("rnn_dense_xent_evaluate", x, W, U, b, V, c)
    if not (y.shape[0] == x.shape[0] and y.shape[1] == V.shape[1]):
        raise _mismatch(
            "rnn_dense_xent_evaluate", x=x, y=y, W=W, U=U, b=b, V=V, c=c
        )
    loss_sum, correct, finite = 0.0, 0, True
    no_rows = np.empty((0, V.shape[1]), dtype=np.float32)
    for start, stop, block, sample_stride, step_stride, block_finite in _blocks(x):
        block_loss, block_correct, block_finite_x = _run_block(
            no_rows, y[start:stop], block, W, U, b, V, c, sample_stride,
            step_stride, activation,
        )
        loss_sum += block_loss
        correct += block_correct
        finite = finite and block_finite and block_finite_x
    return loss_sum, correct, bool(finite)


def _inference_input(kernel, x, W, U, b, V, c):
    """x as a (B, T, D) array whose shapes agree with the weights'."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{kernel}: x must be (B, T, D), got shape {x.shape}")
    for size in x.shape:
        _dim(size)
    H, K = W.shape[1], V.shape[1]
    if not (
        W.shape[0] == x.shape[2] and U.shape[0] == H and U.shape[1] == H
        and b.shape[0] == H and V.shape[0] == H and c.shape[0] == K
    ):
        raise _mismatch(kernel, x=x, W=W, U=U, b=b, V=V, c=c)
    return x


def _blocks(x):
    """(start, stop, block, sample stride, step stride, finite) over x's samples.

    A float32 x that C can read in place is one block.  Any other is converted
    to float32, time-major, one block of chunks at a time (one chunk per
    thread), into one reused buffer, so memory stays bounded whatever B is;
    finite says whether that block's conversion kept every value finite.
    """
    B, T, D = x.shape
    if B == 0:
        return
    strides = _readable_in_place(x) if T > 0 and D > 0 else None
    if strides is not None:
        yield 0, B, x, strides[0], strides[1], True
        return
    block = PREDICT_CHUNK * fr_max_threads()
    buffer = np.empty(T * min(B, block) * D, dtype=np.float32)
    for start in range(0, B, block):
        stop = min(B, start + block)
        x_tm = buffer[: T * (stop - start) * D].reshape(T, stop - start, D)
        finite = sequence_to_time_major(x_tm, x[start:stop])
        yield start, stop, x_tm.transpose(1, 0, 2), D, (stop - start) * D, finite


cdef tuple _run_block(
    float[:, ::1] logits,
    const float[:, ::1] y,
    const float[:, :, :] x,
    const float[:, ::1] W,
    const float[:, ::1] U,
    const float[::1] b,
    const float[:, ::1] V,
    const float[::1] c,
    Py_ssize_t sample_stride,
    Py_ssize_t step_stride,
    int activation,
):
    # One block of predict (y has no rows: the logits go to logits) or of
    # evaluate (logits has no rows: only the sums are kept).  x (B, T, D)
    # float32 with the given element strides (see _readable_in_place).
    # Returns (loss sum, correct, finite); the sums are 0 for predict.
    cdef int B = _dim(x.shape[0]), T = _dim(x.shape[1]), D = _dim(x.shape[2])
    cdef int H = _dim(W.shape[1]), K = _dim(V.shape[1])
    cdef int finite, correct = 0
    cdef double loss_sum = 0.0
    cdef int chunk = PREDICT_CHUNK
    cdef bint evaluate = y.shape[0] > 0
    with nogil:
        if evaluate:
            finite = fr_rnn_dense_xent_evaluate(
                &loss_sum, &correct, &x[0, 0, 0], &y[0, 0], &W[0, 0], &U[0, 0],
                &b[0], &V[0, 0], &c[0], sample_stride, step_stride, B, T, D, H, K,
                chunk, activation,
            )
        else:
            finite = fr_rnn_dense_predict(
                &logits[0, 0], &x[0, 0, 0], &W[0, 0], &U[0, 0], &b[0], &V[0, 0],
                &c[0], sample_stride, step_stride, B, T, D, H, K, chunk, activation,
            )
    if finite < 0:
        raise MemoryError("no memory for the hidden states of predict or evaluate")
    return loss_sum, correct, bool(finite)
