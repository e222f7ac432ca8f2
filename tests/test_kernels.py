"""Every kernel of every built backend against the plain NumPy twin.

The kernels work in float32; the twin runs in float64 on the same float32 inputs,
so the difference is the kernels' rounding alone.  Output arrays are filled with
NaN before each call: a kernel that reads an output before writing it, or that
accumulates instead of overwriting, fails here.
"""

import math

import numpy as np
import numpy_twin as twin
import pytest

from fastrnn import backends

F32 = np.float32

# Relative to the largest expected magnitude: float32 carries ~7 digits, and the
# longest sums here (B*T = 1400 terms at the MNIST shape) lose about one more.
RTOL = 1e-5

# (B, T, D, H): B = 1, T = 1, D != H both ways, and the MNIST shape.
RNN_SHAPES = [
    (1, 1, 3, 4),
    (1, 6, 3, 5),
    (4, 1, 5, 3),
    (3, 7, 6, 2),
    (2, 3, 4, 4),
    (50, 28, 28, 50),
]
RNN_IDS = [f"B{b}-T{t}-D{d}-H{h}" for b, t, d, h in RNN_SHAPES]

# (N, H, K): one row, more units than inputs and fewer, the MNIST head, and a Dense
# applied at every step of the MNIST shape (N = T * B).
DENSE_SHAPES = [(1, 4, 3), (5, 3, 7), (6, 8, 2), (50, 50, 10), (28 * 50, 50, 10)]
DENSE_IDS = [f"N{n}-H{h}-K{k}" for n, h, k in DENSE_SHAPES]

# Kernels every backend must provide, all exercised below; the fused train step is
# optional and tested at the end of the file when a backend has it.
TESTED_KERNELS = {
    "activation_forward",
    "activation_backward",
    "rnn_forward",
    "rnn_backward",
    "dense_forward",
    "dense_backward",
    "softmax_forward",
    "softmax_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "sparse_to_onehot",
    "adam_update",
    "sgd_update",
    "rmsprop_update",
}


@pytest.fixture
def kernels(backend):
    """The kernel module of the backend this test runs on (see conftest.py)."""
    assert backends.get_backend() == backend
    return backends.kernels()


def assert_close(actual, expected, rtol=RTOL):
    """Elementwise agreement within rtol of the largest expected magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30)
    )


def nan_array(shape):
    return np.full(shape, np.nan, dtype=F32)


def rnn_case(B, T, D, H, seed):
    """float32 input and weights; U is scaled to keep long sequences bounded."""
    rng = np.random.default_rng(seed)
    x_tm = rng.standard_normal((T, B, D)).astype(F32)
    W = (rng.standard_normal((D, H)) / math.sqrt(D)).astype(F32)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    U = (0.9 * q).astype(F32)
    b = (0.3 * rng.standard_normal(H)).astype(F32)
    return x_tm, W, U, b


def as64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


# the backend itself ---------------------------------------------------------------


def test_the_tests_cover_every_kernel_a_backend_must_provide():
    assert TESTED_KERNELS == set(backends.KERNEL_NAMES)


def test_backend_provides_every_kernel(kernels):
    missing = [name for name in backends.KERNEL_NAMES if not hasattr(kernels, name)]
    assert missing == []


# element-wise activations ---------------------------------------------------------


@pytest.mark.parametrize("name", twin.ACTIVATIONS)
@pytest.mark.parametrize("size", [1, 7, 1000])
def test_activation_forward(kernels, name, size):
    z = (3 * np.random.default_rng(size).standard_normal(size)).astype(F32)
    out = nan_array(size)

    kernels.activation_forward(out, z, twin.ACTIVATION_CODES[name])

    assert_close(out, twin.activation(z.astype(np.float64), name))


@pytest.mark.parametrize("name", twin.ACTIVATIONS)
def test_activation_forward_in_place(kernels, name):
    z = (3 * np.random.default_rng(1).standard_normal(50)).astype(F32)
    expected = twin.activation(z.astype(np.float64), name)

    kernels.activation_forward(z, z, twin.ACTIVATION_CODES[name])

    assert_close(z, expected)


@pytest.mark.parametrize("size", [7, 40], ids=["scalar", "vectors"])
def test_activation_forward_tanh_saturates_to_exactly_one(kernels, size):
    # A saturated unit must pass no gradient back, as with libm's tanh: its
    # output is exactly +-1, so 1 - h^2 is exactly 0.
    z = np.resize(np.array([9.0, 9.5, 1e4, 1e30, -9.0, -1e30, np.inf], F32), size)
    out = nan_array(size)

    kernels.activation_forward(out, z, twin.ACTIVATION_CODES["tanh"])

    np.testing.assert_array_equal(out, np.sign(z))


def test_activation_forward_tanh_passes_nan(kernels):
    z = np.resize(np.array([np.nan, 1.0, -np.inf], F32), 40)
    out = nan_array(z.size)

    kernels.activation_forward(out, z, twin.ACTIVATION_CODES["tanh"])

    assert np.isnan(out[::3]).all()
    np.testing.assert_array_equal(out[2::3], -1.0)


def test_activation_forward_sigmoid_saturates_without_nan(kernels):
    z = np.array([-200.0, -90.0, 0.0, 90.0, 200.0], dtype=F32)
    out = nan_array(z.size)

    kernels.activation_forward(out, z, twin.ACTIVATION_CODES["sigmoid"])

    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


@pytest.mark.parametrize("name", twin.ACTIVATIONS)
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in-place"])
def test_activation_backward(kernels, name, in_place):
    rng = np.random.default_rng(2)
    z = (3 * rng.standard_normal(200)).astype(F32)
    out = twin.activation(z.astype(np.float64), name).astype(F32)
    dout = rng.standard_normal(200).astype(F32)
    expected = dout.astype(np.float64) * twin.activation_derivative(
        z.astype(np.float64), name
    )
    dz = dout if in_place else nan_array(200)

    kernels.activation_backward(dz, dout, out, twin.ACTIVATION_CODES[name])

    assert_close(dz, expected)


# SimpleRNN ------------------------------------------------------------------------


@pytest.mark.parametrize("name", twin.ACTIVATIONS)
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=RNN_IDS)
def test_rnn_forward(kernels, shape, name):
    B, T, D, H = shape
    x_tm, W, U, b = rnn_case(B, T, D, H, seed=B * 1000 + T)
    hs = nan_array((T, B, H))
    work = nan_array((2, B, H))

    kernels.rnn_forward(hs, work, x_tm, W, U, b, twin.ACTIVATION_CODES[name])

    expected, _ = twin.rnn_forward(*as64(x_tm, W, U, b), name)
    assert_close(hs, expected)


@pytest.mark.parametrize("want_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("every_step", [True, False], ids=["dh-all", "dh-last"])
@pytest.mark.parametrize("name", twin.ACTIVATIONS)
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=RNN_IDS)
def test_rnn_backward(kernels, shape, name, every_step, want_dx):
    B, T, D, H = shape
    x_tm, W, U, b = rnn_case(B, T, D, H, seed=B * 1000 + T + 1)
    hs64, zs64 = twin.rnn_forward(*as64(x_tm, W, U, b), name)
    hs = hs64.astype(F32)
    rng = np.random.default_rng(T)
    dh_out = rng.standard_normal((T if every_step else 1, B, H)).astype(F32)

    dW, dU, db = nan_array((D, H)), nan_array((H, H)), nan_array(H)
    dx = nan_array((T, B, D)) if want_dx else np.zeros((0, 0, 0), dtype=F32)
    dz, work = nan_array((T, B, H)), nan_array((2, B, H))
    kernels.rnn_backward(
        dW, dU, db, dx, dz, work, dh_out, hs, x_tm, W, U, twin.ACTIVATION_CODES[name]
    )

    dW_ref, dU_ref, db_ref, dx_ref = twin.rnn_backward(
        dh_out.astype(np.float64),
        x_tm.astype(np.float64),
        hs64,
        zs64,
        *as64(W, U),
        name,
    )
    assert_close(dW, dW_ref)
    assert_close(dU, dU_ref)
    assert_close(db, db_ref)
    if want_dx:
        assert_close(dx, dx_ref)


def test_rnn_forward_then_backward_matches_twin_end_to_end(kernels):
    B, T, D, H = 5, 9, 3, 7
    x_tm, W, U, b = rnn_case(B, T, D, H, seed=11)
    code = twin.ACTIVATION_CODES["tanh"]
    hs, work = nan_array((T, B, H)), nan_array((2, B, H))
    kernels.rnn_forward(hs, work, x_tm, W, U, b, code)
    dh_out = np.random.default_rng(0).standard_normal((T, B, H)).astype(F32)
    grads = [nan_array((D, H)), nan_array((H, H)), nan_array(H), nan_array((T, B, D))]

    kernels.rnn_backward(
        *grads, nan_array((T, B, H)), work, dh_out, hs, x_tm, W, U, code
    )

    hs64, zs64 = twin.rnn_forward(*as64(x_tm, W, U, b), "tanh")
    expected = twin.rnn_backward(
        dh_out.astype(np.float64),
        x_tm.astype(np.float64),
        hs64,
        zs64,
        *as64(W, U),
        "tanh",
    )
    for got, want in zip(grads, expected):
        assert_close(got, want)


# Dense ----------------------------------------------------------------------------


def dense_case(N, H, K, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H)).astype(F32)
    V = (rng.standard_normal((H, K)) / math.sqrt(H)).astype(F32)
    c = rng.standard_normal(K).astype(F32)
    dy = rng.standard_normal((N, K)).astype(F32)
    return x, V, c, dy


@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=DENSE_IDS)
def test_dense_forward(kernels, shape):
    N, H, K = shape
    x, V, c, _ = dense_case(N, H, K, seed=N + K)
    y = nan_array((N, K))

    kernels.dense_forward(y, x, V, c)

    assert_close(y, twin.dense_forward(*as64(x, V, c)))


@pytest.mark.parametrize("want_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=DENSE_IDS)
def test_dense_backward(kernels, shape, want_dx):
    N, H, K = shape
    x, V, _, dy = dense_case(N, H, K, seed=N + 2 * K)
    dV, dc = nan_array((H, K)), nan_array(K)
    dx = nan_array((N, H)) if want_dx else np.zeros((0, 0), dtype=F32)

    kernels.dense_backward(dV, dc, dx, dy, x, V)

    dV_ref, dc_ref, dx_ref = twin.dense_backward(*as64(dy, x, V))
    assert_close(dV, dV_ref)
    assert_close(dc, dc_ref)
    if want_dx:
        assert_close(dx, dx_ref)


# softmax and cross-entropy --------------------------------------------------------

SOFTMAX_SHAPES = [(1, 1), (1, 5), (4, 2), (50, 10), (28 * 50, 10)]
SOFTMAX_IDS = [f"N{n}-K{k}" for n, k in SOFTMAX_SHAPES]


def logits_case(N, K, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal((N, K)) + offset).astype(F32)


def targets(N, K, kind, seed):
    """One-hot rows, probability rows, or non-negative weights of any sum."""
    rng = np.random.default_rng(seed)
    if kind == "one-hot":
        return twin.one_hot(rng.integers(0, K, N), K, dtype=F32)
    weights = rng.random((N, K))
    if kind == "distribution":
        weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(F32)


@pytest.mark.parametrize("offset", [0.0, 500.0, -500.0])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=SOFTMAX_IDS)
def test_softmax_forward(kernels, shape, offset):
    N, K = shape
    z = logits_case(N, K, seed=N * K, offset=offset)
    p = nan_array((N, K))

    kernels.softmax_forward(p, z)

    assert_close(p, twin.softmax(z.astype(np.float64)))


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=SOFTMAX_IDS)
def test_softmax_backward(kernels, shape):
    N, K = shape
    z = logits_case(N, K, seed=N + K)
    p64 = twin.softmax(z.astype(np.float64))
    p = p64.astype(F32)
    dp = np.random.default_rng(3).standard_normal((N, K)).astype(F32)
    dz = nan_array((N, K))

    kernels.softmax_backward(dz, dp, p)

    assert_close(dz, twin.softmax_backward(dp.astype(np.float64), p64))


@pytest.mark.parametrize("kind", ["one-hot", "distribution", "weights"])
@pytest.mark.parametrize("offset", [0.0, 500.0])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=SOFTMAX_IDS)
def test_softmax_xent_forward(kernels, shape, offset, kind):
    N, K = shape
    z = logits_case(N, K, seed=7 * N + K, offset=offset)
    y = targets(N, K, kind, seed=N)
    p = nan_array((N, K))

    loss = kernels.softmax_xent_forward(p, z, y)

    expected = twin.softmax_cross_entropy(*as64(z, y))
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=RTOL, abs=1e-6)
    assert_close(p, twin.softmax(z.astype(np.float64)))


@pytest.mark.parametrize("kind", ["one-hot", "distribution", "weights"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=SOFTMAX_IDS)
def test_softmax_xent_backward(kernels, shape, kind):
    N, K = shape
    z = logits_case(N, K, seed=5 * N + K)
    y = targets(N, K, kind, seed=N + 1)
    p = twin.softmax(z.astype(np.float64)).astype(F32)
    dlogits = nan_array((N, K))

    kernels.softmax_xent_backward(dlogits, p, y)

    assert_close(dlogits, twin.softmax_cross_entropy_gradient(*as64(z, y)))


def test_softmax_xent_forward_of_a_sure_right_answer_is_zero(kernels):
    z = np.array([[0.0, 200.0, 0.0]], dtype=F32)
    y = np.array([[0.0, 1.0, 0.0]], dtype=F32)

    loss = kernels.softmax_xent_forward(nan_array((1, 3)), z, y)

    assert loss == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("N, K", [(1, 1), (1, 4), (6, 3), (1400, 10)])
def test_sparse_to_onehot(kernels, N, K):
    labels = np.random.default_rng(N).integers(0, K, N).astype(np.int64)
    y = nan_array((N, K))

    kernels.sparse_to_onehot(y, labels)

    np.testing.assert_array_equal(y, twin.one_hot(labels, K))


# optimizers -----------------------------------------------------------------------

P_SIZES = [1, 17, 4000]


def optimizer_case(P, steps, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(P).astype(F32)
    gs = [rng.standard_normal(P).astype(F32) for _ in range(steps)]
    return w, gs


@pytest.mark.parametrize(
    "beta_1, beta_2, epsilon", [(0.9, 0.999, 1e-7), (0.5, 0.9, 1e-3)]
)
@pytest.mark.parametrize("P", P_SIZES)
def test_adam_update(kernels, P, beta_1, beta_2, epsilon):
    learning_rate = 0.01
    w, gs = optimizer_case(P, steps=6, seed=P)
    m, v = np.zeros(P, F32), np.zeros(P, F32)
    w_ref, m_ref, v_ref = as64(w, m, v)

    for t, g in enumerate(gs, start=1):
        alpha = learning_rate * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        kernels.adam_update(w, g, m, v, alpha, beta_1, beta_2, epsilon)
        w_ref, m_ref, v_ref = twin.adam_step(
            w_ref,
            g.astype(np.float64),
            m_ref,
            v_ref,
            t,
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        )

    assert_close(m, m_ref)
    assert_close(v, v_ref)
    assert_close(w, w_ref)


@pytest.mark.parametrize(
    "momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)]
)
@pytest.mark.parametrize("P", P_SIZES)
def test_sgd_update(kernels, P, momentum, nesterov):
    learning_rate = 0.1
    w, gs = optimizer_case(P, steps=5, seed=P + 1)
    velocity = np.zeros(P, F32)
    w_ref, velocity_ref = as64(w, velocity)

    for g in gs:
        kernels.sgd_update(w, g, velocity, learning_rate, momentum, nesterov)
        w_ref, velocity_ref = twin.sgd_step(
            w_ref,
            g.astype(np.float64),
            velocity_ref,
            learning_rate,
            momentum,
            nesterov,
        )

    assert_close(velocity, velocity_ref)
    assert_close(w, w_ref)


@pytest.mark.parametrize("rho, epsilon", [(0.9, 1e-7), (0.5, 1e-2)])
@pytest.mark.parametrize("P", P_SIZES)
def test_rmsprop_update(kernels, P, rho, epsilon):
    learning_rate = 0.01
    w, gs = optimizer_case(P, steps=5, seed=P + 2)
    velocity = np.zeros(P, F32)
    w_ref, velocity_ref = as64(w, velocity)

    for g in gs:
        kernels.rmsprop_update(w, g, velocity, learning_rate, rho, epsilon)
        w_ref, velocity_ref = twin.rmsprop_step(
            w_ref, g.astype(np.float64), velocity_ref, learning_rate, rho, epsilon
        )

    assert_close(velocity, velocity_ref)
    assert_close(w, w_ref)


# the fused train step (optional: a backend without it takes the layer path) -------

# Optimizer codes and hyper-parameter layouts of rnn_dense_xent_train_step.
FUSED_OPTIMIZERS = {
    "adam": (0, "adam", dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7)),
    "sgd": (1, "sgd", dict(momentum=0.0, nesterov=False)),
    "sgd-nesterov": (1, "sgd", dict(momentum=0.9, nesterov=True)),
    "rmsprop": (2, "rmsprop", dict(rho=0.9, epsilon=1e-7)),
}


def fused_hyper(code, learning_rate, t, options):
    if code == 0:
        b1, b2 = options["beta_1"], options["beta_2"]
        alpha = learning_rate * math.sqrt(1 - b2**t) / (1 - b1**t)
        return np.array([alpha, b1, b2, options["epsilon"]])
    if code == 1:
        nesterov = 1.0 if options["nesterov"] else 0.0
        return np.array([learning_rate, options["momentum"], nesterov])
    return np.array([learning_rate, options["rho"], options["epsilon"]])


def twin_update(twin_name, w, g, state, t, learning_rate, options):
    """One twin optimizer step on flat float64 vectors; returns (w, state)."""
    if twin_name == "adam":
        w, m, v = twin.adam_step(w, g, state[0], state[1], t, learning_rate, **options)
        return w, [m, v]
    if twin_name == "sgd":
        w, velocity = twin.sgd_step(w, g, state[0], learning_rate, **options)
        return w, [velocity]
    w, velocity = twin.rmsprop_step(w, g, state[0], learning_rate, **options)
    return w, [velocity]


# (B, T, D, H, K) and the bounds of the parts the batch is cut into: B = 1, one
# part, two, uneven parts, and the MNIST shape cut as the models cut it.
FUSED_CASES = {
    "B1-T1": ((1, 1, 3, 4, 2), [0, 1]),
    "B4-T6-1part": ((4, 6, 5, 3, 7), [0, 4]),
    "B4-T6-2parts": ((4, 6, 5, 3, 7), [0, 2, 4]),
    "B7-uneven": ((7, 4, 3, 5, 3), [0, 3, 7]),
    "mnist-2parts": ((50, 28, 28, 50, 10), [0, 25, 50]),
}


@pytest.mark.parametrize("optimizer", list(FUSED_OPTIMIZERS))
@pytest.mark.parametrize("name", twin.ACTIVATIONS)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_rnn_dense_xent_train_step(kernels, case, name, optimizer):
    if not hasattr(kernels, "rnn_dense_xent_train_step"):
        pytest.skip("this backend has no fused train step")
    shape, bounds = FUSED_CASES[case]
    B, T, D, H, K = shape
    code, twin_name, options = FUSED_OPTIMIZERS[optimizer]
    learning_rate = 0.01
    x_tm, W, U, b = rnn_case(B, T, D, H, seed=T + B)
    V, c = dense_case(B, H, K, seed=K)[1:3]
    labels = np.random.default_rng(B).integers(0, K, B)
    y = twin.one_hot(labels, K, dtype=F32)
    x = np.ascontiguousarray(x_tm.transpose(1, 0, 2)).astype(np.float64)

    # Flat weights and gradients, with the per-weight views the kernel takes.
    shapes = [(D, H), (H, H), (H,), (H, K), (K,)]
    params = np.concatenate([w.ravel() for w in (W, U, b, V, c)])
    grads = nan_array(params.size)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    spans = list(zip(offsets, offsets[1:], shapes))
    views = [params[i:j].reshape(s) for i, j, s in spans]
    dviews = [grads[i:j].reshape(s) for i, j, s in spans]
    state = [np.zeros(params.size, F32) for _ in range(2 if code == 0 else 1)]

    # One scratch row and one gradient row per part, sized for the largest part.
    bounds = np.array(bounds, dtype=np.int64)
    parts = bounds.size - 1
    rows = int(np.diff(bounds).max())
    scratch_size = backends.train_scratch_size(T, rows, D, H, K)

    for t in range(1, 4):
        before = [w.astype(np.float64) for w in views]
        params_before = params.astype(np.float64)
        state_before = [s.astype(np.float64) for s in state]

        loss, correct, inputs_finite = kernels.rnn_dense_xent_train_step(
            params, grads, state[0], state[-1], nan_array((parts, scratch_size)),
            nan_array((parts, params.size)), x.astype(F32), y, bounds,
            *views, *dviews, twin.ACTIVATION_CODES[name], code,
            fused_hyper(code, learning_rate, t, options), parts,
        )  # fmt: skip

        # forward and loss at the weights the step started from
        expected_loss, expected_grads = twin.model_loss_and_gradients(
            before, x, y, name
        )
        probabilities, _ = twin.model_output_rows(before, x, name)
        assert inputs_finite
        assert loss == pytest.approx(expected_loss, rel=RTOL), t
        assert correct == int(np.sum(probabilities.argmax(axis=1) == labels)), t

        # gradients
        for got, want in zip(dviews, expected_grads):
            assert_close(got, want)

        # update, from the kernel's own gradient: Adam and RMSprop divide by
        # sqrt(v), which would magnify rounding in a near-zero gradient element.
        expected_params, expected_state = twin_update(
            twin_name, params_before, grads.astype(np.float64), state_before, t,
            learning_rate, options,
        )  # fmt: skip
        for got, want in zip(state, expected_state):
            assert_close(got, want)
        # The step is small beside the weights; compare it, not them.  Its float32
        # rounding is that of the weights, hence the looser tolerance.
        assert_close(params - params_before, expected_params - params_before, 1e-4)
