"""The C backend against the Numba reference, kernel by kernel, and backend choice.

Both backends get the same inputs; every output must agree within 1e-5
(relative and absolute).  Outputs are filled with NaN before each call, so a
kernel that leaves part of an output unwritten fails.  The comparisons are
skipped when the C extension is not built, except under
``FASTRNN_REQUIRE_CYTHON=1`` (set by CI), where a missing extension fails.
"""

import inspect
import os
import warnings

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastrnn import backends
from fastrnn._warnings import FastRNNWarning
from fastrnn.backends import numba_kernels as nk
from fastrnn.backends.numba_tiles import compile_features

# These tests choose their backends themselves (see tests/conftest.py).
BACKEND_INDEPENDENT = True

try:
    from fastrnn.backends import cython_kernels as ck

    MISSING = None
except ImportError as error:
    ck = None
    MISSING = f"the C backend is not built ({error})"

needs_c = pytest.mark.skipif(ck is None, reason=MISSING or "")

TOL = 1e-5
ACTIVATIONS = (nk.LINEAR, nk.TANH, nk.RELU, nk.SIGMOID)
ACTIVATION_IDS = ("linear", "tanh", "relu", "sigmoid")

# (B, T, D, H): B = 1, T = 1, D != H, D == H, and the MNIST workload.
RNN_SHAPES = [
    (1, 1, 3, 4),
    (1, 6, 5, 3),
    (4, 1, 5, 3),
    (3, 7, 2, 6),
    (2, 4, 5, 5),
    (50, 28, 28, 50),
]
RNN_IDS = [f"B{b}-T{t}-D{d}-H{h}" for b, t, d, h in RNN_SHAPES]

# (N, H, K) for Dense: one row, one unit, the MNIST head, a per-step head.
DENSE_SHAPES = [(1, 1, 1), (1, 5, 3), (7, 4, 10), (50, 50, 10), (1400, 50, 10)]


def agree(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=TOL, atol=TOL)


def normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def nans(shape):
    return np.full(shape, np.nan, dtype=np.float32)


def on_both(name, make_arguments):
    """Call kernel ``name`` of each backend on its own fresh copy of the arguments.

    Returns (numba arguments, C arguments, numba result, C result).
    """
    ref_args = make_arguments()
    c_args = make_arguments()
    ref_result = getattr(nk, name)(*ref_args)
    c_result = getattr(ck, name)(*c_args)
    return ref_args, c_args, ref_result, c_result


def rnn_weights(rng, D, H):
    # Scaled so that 28 linear steps neither vanish nor explode.
    W = normal(rng, (D, H), 1.0 / np.sqrt(D))
    U = normal(rng, (H, H), 0.5 / np.sqrt(H))
    b = normal(rng, (H,), 0.1)
    return W, U, b


# --------------------------------------------------------------------------
# the contract


@needs_c
def test_every_kernel_has_the_reference_signature():
    for name in backends.KERNEL_NAMES + backends.OPTIONAL_KERNEL_NAMES:
        function = getattr(nk, name)
        reference = inspect.signature(getattr(function, "py_func", function))
        built = inspect.signature(getattr(ck, name))
        assert list(built.parameters) == list(reference.parameters), name


@needs_c
def test_activation_codes_match():
    assert (ck.LINEAR, ck.TANH, ck.RELU, ck.SIGMOID) == ACTIVATIONS


def test_c_backend_is_built_when_required():
    if os.environ.get("FASTRNN_REQUIRE_CYTHON") != "1":
        pytest.skip("FASTRNN_REQUIRE_CYTHON=1 is not set; the C backend is optional")
    assert ck is not None, MISSING
    assert "cython" in backends.available_backends()


# --------------------------------------------------------------------------
# element-wise activations


@needs_c
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("M", [1, 17, 2500, 70000])
def test_activation_forward(activation, M):
    rng = np.random.default_rng(M)
    z = normal(rng, M, 4.0)
    # Values the approximations clamp or pass through.
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 9.5, -30.0, 1e-30]
    z[: min(M, len(special))] = special[:M]

    ref, c, _, _ = on_both("activation_forward", lambda: (nans(M), z, activation))
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_activation_forward_in_place(activation):
    z = normal(np.random.default_rng(1), 1001, 3.0)
    expected = nans(z.size)
    nk.activation_forward(expected, z, activation)
    out = z.copy()
    ck.activation_forward(out, out, activation)
    agree(out, expected)


@needs_c
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("M", [1, 17, 2500])
@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in_place"])
def test_activation_backward(activation, M, in_place):
    rng = np.random.default_rng(M)
    out = nans(M)
    nk.activation_forward(out, normal(rng, M, 2.0), activation)
    dout = normal(rng, M)

    def arguments():
        d = dout.copy()
        return (d if in_place else nans(M)), d, out, activation

    ref, c, _, _ = on_both("activation_backward", arguments)
    agree(c[0], ref[0])


# --------------------------------------------------------------------------
# SimpleRNN


@needs_c
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=RNN_IDS)
def test_rnn_forward(shape, activation):
    B, T, D, H = shape
    rng = np.random.default_rng(B * 1000 + T)
    W, U, b = rnn_weights(rng, D, H)
    x_tm = normal(rng, (T, B, D))

    def arguments():
        return nans((T, B, H)), nans((2, B, H)), x_tm, W, U, b, activation

    ref, c, _, _ = on_both("rnn_forward", arguments)
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("want_dx", [False, True], ids=["skip_dx", "dx"])
@pytest.mark.parametrize("every_step", [False, True], ids=["dh_last", "dh_every"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=RNN_IDS)
def test_rnn_backward(shape, activation, every_step, want_dx):
    B, T, D, H = shape
    rng = np.random.default_rng(B * 1000 + T)
    W, U, b = rnn_weights(rng, D, H)
    x_tm = normal(rng, (T, B, D))
    # Both backends differentiate the same saved state, the reference's.
    hs = nans((T, B, H))
    nk.rnn_forward(hs, nans((2, B, H)), x_tm, W, U, b, activation)
    dh_out = normal(rng, (T if every_step else 1, B, H))

    def arguments():
        dx_tm = nans((T, B, D)) if want_dx else np.zeros((0, 0, 0), np.float32)
        return (
            nans((D, H)), nans((H, H)), nans(H), dx_tm, nans((T, B, H)),
            nans((2, B, H)), dh_out, hs, x_tm, W, U, activation,
        )  # fmt: skip

    ref, c, _, _ = on_both("rnn_backward", arguments)
    for name, index in (("dW", 0), ("dU", 1), ("db", 2), ("dx_tm", 3), ("dz", 4)):
        assert c[index].shape == ref[index].shape, name
        agree(c[index], ref[index])


@needs_c
def test_rnn_accepts_read_only_inputs():
    rng = np.random.default_rng(0)
    W, U, b = rnn_weights(rng, 3, 4)
    x_tm = normal(rng, (5, 2, 3))
    for array in (W, U, b, x_tm):
        array.flags.writeable = False
    hs = nans((5, 2, 4))
    expected = nans((5, 2, 4))
    nk.rnn_forward(expected, nans((2, 2, 4)), x_tm, W, U, b, nk.TANH)
    ck.rnn_forward(hs, nans((2, 2, 4)), x_tm, W, U, b, nk.TANH)
    agree(hs, expected)


@needs_c
def test_rnn_rejects_shapes_that_do_not_agree():
    # Where Numba's products raise, C would write out of bounds: the wrapper
    # checks instead.
    rng = np.random.default_rng(0)
    W, U, b = rnn_weights(rng, 3, 4)
    x_tm = normal(rng, (5, 2, 3))
    with pytest.raises(ValueError, match="rnn_forward.*hs \\(5, 2, 5\\)"):
        ck.rnn_forward(nans((5, 2, 5)), nans((2, 2, 4)), x_tm, W, U, b, nk.TANH)
    with pytest.raises(ValueError, match="rnn_backward"):
        ck.rnn_backward(
            nans((3, 4)), nans((4, 4)), nans(4), nans((5, 2, 2)), nans((5, 2, 4)),
            nans((2, 2, 4)), nans((3, 2, 4)), nans((5, 2, 4)), x_tm, W, U, nk.TANH,
        )  # fmt: skip


@needs_c
def test_rnn_rejects_non_contiguous_arrays():
    rng = np.random.default_rng(0)
    W, U, b = rnn_weights(rng, 3, 4)
    x_tm = normal(rng, (5, 2, 6))[:, :, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        ck.rnn_forward(nans((5, 2, 4)), nans((2, 2, 4)), x_tm, W, U, b, nk.TANH)


# --------------------------------------------------------------------------
# Dense


@needs_c
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=[str(s) for s in DENSE_SHAPES])
def test_dense_forward(shape):
    N, H, K = shape
    rng = np.random.default_rng(N)
    x, V, c_bias = normal(rng, (N, H)), normal(rng, (H, K)), normal(rng, K)
    ref, c, _, _ = on_both("dense_forward", lambda: (nans((N, K)), x, V, c_bias))
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("want_dx", [False, True], ids=["skip_dx", "dx"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=[str(s) for s in DENSE_SHAPES])
def test_dense_backward(shape, want_dx):
    N, H, K = shape
    rng = np.random.default_rng(N)
    x, V, dy = normal(rng, (N, H)), normal(rng, (H, K)), normal(rng, (N, K))

    def arguments():
        dx = nans((N, H)) if want_dx else np.zeros((0, 0), np.float32)
        return nans((H, K)), nans(K), dx, dy, x, V

    ref, c, _, _ = on_both("dense_backward", arguments)
    for index in range(3):
        assert c[index].shape == ref[index].shape
        agree(c[index], ref[index])


# --------------------------------------------------------------------------
# softmax and losses

SOFTMAX_SHAPES = [(1, 1), (1, 10), (50, 10), (1400, 10), (3, 7)]


def logits_for(rng, N, K):
    z = normal(rng, (N, K), 3.0)
    z[0, 0] = 80.0  # exp overflows in float32 without the shift
    return z


@needs_c
@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in_place"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=[str(s) for s in SOFTMAX_SHAPES])
def test_softmax_forward(shape, in_place):
    z = logits_for(np.random.default_rng(shape[0]), *shape)

    def arguments():
        zc = z.copy()
        return (zc if in_place else nans(shape)), zc

    ref, c, _, _ = on_both("softmax_forward", arguments)
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("in_place", [False, True], ids=["new", "in_place"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=[str(s) for s in SOFTMAX_SHAPES])
def test_softmax_backward(shape, in_place):
    rng = np.random.default_rng(shape[0])
    p = nans(shape)
    nk.softmax_forward(p, logits_for(rng, *shape))
    dp = normal(rng, shape)

    def arguments():
        d = dp.copy()
        return (d if in_place else nans(shape)), d, p

    ref, c, _, _ = on_both("softmax_backward", arguments)
    agree(c[0], ref[0])


def targets_for(rng, N, K, kind):
    if kind == "onehot":
        y = np.zeros((N, K), np.float32)
        y[np.arange(N), rng.integers(0, K, N)] = 1.0
        return y
    # Unnormalised soft targets exercise the sum_k y_k factor of the gradient.
    return rng.uniform(0.0, 1.0, (N, K)).astype(np.float32)


@needs_c
@pytest.mark.parametrize("kind", ["onehot", "soft"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=[str(s) for s in SOFTMAX_SHAPES])
def test_softmax_xent_forward(shape, kind):
    rng = np.random.default_rng(shape[0])
    z = logits_for(rng, *shape)
    y = targets_for(rng, *shape, kind)
    ref, c, ref_loss, c_loss = on_both(
        "softmax_xent_forward", lambda: (nans(shape), z, y)
    )
    assert type(c_loss) is float
    assert c_loss == pytest.approx(ref_loss, rel=TOL, abs=TOL)
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("kind", ["onehot", "soft"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=[str(s) for s in SOFTMAX_SHAPES])
def test_softmax_xent_backward(shape, kind):
    rng = np.random.default_rng(shape[0])
    p = nans(shape)
    nk.softmax_forward(p, logits_for(rng, *shape))
    y = targets_for(rng, *shape, kind)
    ref, c, _, _ = on_both("softmax_xent_backward", lambda: (nans(shape), p, y))
    agree(c[0], ref[0])


@needs_c
@pytest.mark.parametrize("N, K", [(1, 1), (1, 10), (50, 10), (1400, 10)])
def test_sparse_to_onehot(N, K):
    labels = np.random.default_rng(N).integers(0, K, N).astype(np.int64)
    ref, c, _, _ = on_both("sparse_to_onehot", lambda: (nans((N, K)), labels))
    np.testing.assert_array_equal(c[0], ref[0])


@needs_c
def test_sparse_to_onehot_takes_any_integer_dtype_and_refuses_bad_labels():
    y = nans((3, 4))
    ck.sparse_to_onehot(y, np.array([3, 0, 1], dtype=np.uint8))
    np.testing.assert_array_equal(y.argmax(axis=1), [3, 0, 1])
    assert y.sum() == 3
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        ck.sparse_to_onehot(y, np.array([0, 4, 1], dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        ck.sparse_to_onehot(y, np.array([0.0, 1.0, 2.0]))


# --------------------------------------------------------------------------
# optimizers

PARAMETER_COUNTS = [1, 7, 1000, 12345]


def run_updates(module, name, P, hyper, n_state):
    """Three updates with fixed gradients; returns the weights and the state."""
    rng = np.random.default_rng(P)
    w = normal(rng, P)
    state = [np.zeros(P, np.float32) for _ in range(n_state)]
    for _ in range(3):
        getattr(module, name)(w, normal(rng, P), *state, *hyper)
    return [w] + state


@needs_c
@pytest.mark.parametrize("P", PARAMETER_COUNTS)
def test_adam_update(P):
    hyper = (0.001 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3), 0.9, 0.999, 1e-7)
    ref = run_updates(nk, "adam_update", P, hyper, 2)
    c = run_updates(ck, "adam_update", P, hyper, 2)
    for a, b in zip(c, ref):
        agree(a, b)


@needs_c
@pytest.mark.parametrize(
    "momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)]
)
@pytest.mark.parametrize("P", PARAMETER_COUNTS)
def test_sgd_update(P, momentum, nesterov):
    hyper = (0.01, momentum, nesterov)
    ref = run_updates(nk, "sgd_update", P, hyper, 1)
    c = run_updates(ck, "sgd_update", P, hyper, 1)
    for a, b in zip(c, ref):
        agree(a, b)


@needs_c
def test_sgd_without_momentum_needs_no_velocity():
    w = np.ones(5, np.float32)
    ck.sgd_update(w, np.full(5, 2.0, np.float32), np.zeros(0, np.float32), 0.5, 0.0, 0)
    agree(w, np.zeros(5, np.float32))


@needs_c
@pytest.mark.parametrize("P", PARAMETER_COUNTS)
def test_rmsprop_update(P):
    hyper = (0.001, 0.9, 1e-7)
    ref = run_updates(nk, "rmsprop_update", P, hyper, 1)
    c = run_updates(ck, "rmsprop_update", P, hyper, 1)
    for a, b in zip(c, ref):
        agree(a, b)


# --------------------------------------------------------------------------
# the fused train step

OPTIMIZER_CASES = {
    "adam": (nk.ADAM, (0.001 * np.sqrt(1 - 0.999) / (1 - 0.9), 0.9, 0.999, 1e-7)),
    "sgd": (nk.SGD, (0.01, 0.0, 0.0)),
    "nesterov": (nk.SGD, (0.01, 0.9, 1.0)),
    "rmsprop": (nk.RMSPROP, (0.001, 0.9, 1e-7)),
}
# (B, T, D, H, K) and the part bounds: one part, two, uneven parts, B = 1, and the
# MNIST workload as the models split it.
FUSED_CASES = [
    ((1, 1, 3, 4, 2), [0, 1]),
    ((3, 5, 2, 6, 4), [0, 3]),
    ((3, 5, 2, 6, 4), [0, 1, 3]),
    ((7, 4, 3, 5, 3), [0, 3, 7]),
    ((8, 3, 4, 4, 2), [0, 2, 4, 5, 8]),
    ((50, 28, 28, 50, 10), [0, 25, 50]),
]
FUSED_IDS = [f"B{s[0]}-T{s[1]}-parts{len(b) - 1}" for s, b in FUSED_CASES]


def train_step_arguments(shape, bounds, activation, optimizer, poison=False, threads=2):
    """Arguments of rnn_dense_xent_train_step laid out as the models lay them."""
    B, T, D, H, K = shape
    rng = np.random.default_rng(B + T)
    layout = [(D, H), (H, H), (H,), (H, K), (K,)]
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in layout])
    params = np.empty(offsets[-1], np.float32)
    grads = nans(offsets[-1])
    weights = [params[a:z].reshape(s) for a, z, s in zip(offsets, offsets[1:], layout)]
    W, U, b = rnn_weights(rng, D, H)
    for view, value in zip(weights, (W, U, b, normal(rng, (H, K)), normal(rng, K))):
        view[...] = value
    gradients = [grads[a:z].reshape(s) for a, z, s in zip(offsets, offsets[1:], layout)]
    x = normal(rng, (B, T, D))
    if poison == "x":
        x[B - 1, T - 1, D - 1] = np.inf
    elif poison == "loss":
        # finite inputs, but a weight that makes the loss NaN
        weights[3][0, 0] = np.inf
    code, values = OPTIMIZER_CASES[optimizer]
    hyper = np.zeros(4)
    hyper[: len(values)] = values
    bounds = np.array(bounds, dtype=np.int64)
    parts = bounds.size - 1
    rows = int(np.diff(bounds).max())
    scratch = nans((parts, backends.train_scratch_size(T, rows, D, H, K)))
    return (
        params, grads, np.zeros(params.size, np.float32),
        np.zeros(params.size, np.float32), scratch, nans((parts, offsets[-1])),
        x, targets_for(rng, B, K, "onehot"), bounds,
        *weights, *gradients, activation, code, hyper, threads,
    )  # fmt: skip


@needs_c
@pytest.mark.parametrize("optimizer", list(OPTIMIZER_CASES))
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape, bounds", FUSED_CASES, ids=FUSED_IDS)
def test_rnn_dense_xent_train_step(shape, bounds, activation, optimizer):
    ref = train_step_arguments(shape, bounds, activation, optimizer)
    c = train_step_arguments(shape, bounds, activation, optimizer)
    ref_loss, ref_correct, ref_finite = nk.rnn_dense_xent_train_step(*ref)
    c_loss, c_correct, c_finite = ck.rnn_dense_xent_train_step(*c)
    assert ref_finite and c_finite
    assert np.isfinite(ref_loss)
    assert type(c_loss) is float
    assert c_loss == pytest.approx(ref_loss, rel=TOL, abs=TOL)
    assert c_correct == ref_correct
    # params, grads, both optimizer states, every part's gradients
    for index in (0, 1, 2, 3, 5):
        agree(c[index], ref[index])

    # Later steps start from weights that differ by rounding, which Adam's
    # normalisation magnifies where a gradient is near 0: only the loss is held
    # to the tolerance of one call.
    for _ in range(2):
        ref_loss = nk.rnn_dense_xent_train_step(*ref)[0]
        c_loss = ck.rnn_dense_xent_train_step(*c)[0]
        assert c_loss == pytest.approx(ref_loss, rel=TOL, abs=TOL)


def mostly_zero(rng, shape, nonzero=0.2):
    """Normal values of which only a fraction are not exactly zero, as in the
    pixels of MNIST's images, which the tiles skip."""
    x = normal(rng, shape)
    x[rng.random(shape) >= nonzero] = 0
    return x


# (B, T, D, H, K) and part bounds: MNIST, features beyond one 64-bit mask (the
# products then take every term), exactly one mask, a zero sample.
SPARSE_CASES = [
    ((50, 28, 28, 50, 10), [0, 25, 50]),
    ((7, 4, 70, 5, 3), [0, 3, 7]),
    ((8, 3, 64, 20, 2), [0, 2, 4, 5, 8]),
    ((3, 5, 1, 6, 4), [0, 1, 3]),
]
SPARSE_IDS = [f"B{s[0]}-D{s[2]}" for s, _ in SPARSE_CASES]


@needs_c
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape, bounds", SPARSE_CASES, ids=SPARSE_IDS)
def test_rnn_dense_xent_train_step_on_inputs_that_are_mostly_zero(
    shape, bounds, activation
):
    ref = train_step_arguments(shape, bounds, activation, "adam")
    c = train_step_arguments(shape, bounds, activation, "adam")
    x = mostly_zero(np.random.default_rng(shape[2]), shape[:3])
    x[0] = 0
    ref[6][...] = x
    c[6][...] = x
    ref_loss, ref_correct, ref_finite = nk.rnn_dense_xent_train_step(*ref)
    c_loss, c_correct, c_finite = ck.rnn_dense_xent_train_step(*c)
    assert ref_finite and c_finite
    assert c_loss == pytest.approx(ref_loss, rel=TOL, abs=TOL)
    assert c_correct == ref_correct
    for index in (0, 1, 2, 3, 5):
        agree(c[index], ref[index])


@needs_c
def test_rnn_dense_xent_train_step_does_not_depend_on_the_split():
    # The parts' weighted gradients sum to those of the whole batch.
    whole = train_step_arguments((7, 4, 3, 5, 3), [0, 7], nk.TANH, "sgd")
    split = train_step_arguments((7, 4, 3, 5, 3), [0, 3, 7], nk.TANH, "sgd")
    whole_loss, whole_correct, _ = ck.rnn_dense_xent_train_step(*whole)
    split_loss, split_correct, _ = ck.rnn_dense_xent_train_step(*split)
    assert split_loss == pytest.approx(whole_loss, rel=TOL, abs=TOL)
    assert split_correct == whole_correct
    agree(split[1], whole[1])
    agree(split[0], whole[0])


@pytest.mark.parametrize("module", ["numba", "cython"])
def test_rnn_dense_xent_train_step_gives_the_same_bits_on_any_thread_count(module):
    if module == "cython" and ck is None:
        pytest.skip("the C backend is not built")
    kernels = nk if module == "numba" else ck
    runs = []
    for threads in (1, 2, 4):
        arguments = train_step_arguments(
            (50, 6, 5, 7, 4), [0, 25, 50], nk.TANH, "adam", threads=threads
        )
        loss, correct, _ = kernels.rnn_dense_xent_train_step(*arguments)
        runs.append((loss, correct, arguments[0].copy()))
    for loss, correct, params in runs[1:]:
        assert (loss, correct) == runs[0][:2]
        np.testing.assert_array_equal(params, runs[0][2])


@pytest.mark.parametrize("module", ["numba", "cython"])
@pytest.mark.parametrize("poison", ["loss", "x"])
def test_rnn_dense_xent_train_step_skips_the_update_on_non_finite_values(
    module, poison
):
    # An infinite input is reported and nothing is computed; with finite inputs
    # a loss that is not finite skips the update.
    if module == "cython" and ck is None:
        pytest.skip("the C backend is not built")
    kernels = nk if module == "numba" else ck
    c = train_step_arguments((3, 4, 2, 5, 3), [0, 1, 3], nk.RELU, "adam", poison=poison)
    params = c[0].copy()
    loss, _, inputs_finite = kernels.rnn_dense_xent_train_step(*c)
    assert inputs_finite == (poison == "loss")
    assert not np.isfinite(loss)
    np.testing.assert_array_equal(c[0], params)
    assert np.isnan(c[1]).all()
    np.testing.assert_array_equal(c[2], 0.0)


@needs_c
@pytest.mark.parametrize("bounds", [[0, 4, 3], [1, 3, 8], [-1, 3], [0], []], ids=str)
def test_rnn_dense_xent_train_step_rejects_bad_bounds(bounds):
    arguments = list(train_step_arguments((7, 4, 3, 5, 3), [0, 7], nk.TANH, "sgd"))
    arguments[8] = np.array(bounds, dtype=np.int64)
    with pytest.raises(ValueError, match="rnn_dense_xent_train_step"):
        ck.rnn_dense_xent_train_step(*arguments)


@needs_c
def test_rnn_dense_xent_train_step_rejects_scratch_too_small_for_a_part():
    arguments = list(train_step_arguments((7, 4, 3, 5, 3), [0, 3, 7], nk.TANH, "sgd"))
    arguments[4] = nans((2, backends.train_scratch_size(4, 3, 3, 5, 3)))
    with pytest.raises(ValueError, match="scratch"):
        ck.rnn_dense_xent_train_step(*arguments)


# --------------------------------------------------------------------------
# inference

# (B, T, D, H, K): B = 1, T = 1, one chunk, several chunks with a short last one,
# more rows than one block of chunks per thread.
PREDICT_SHAPES = [
    (1, 1, 3, 4, 2),
    (1, 6, 5, 3, 4),
    (7, 4, 3, 5, 3),
    (nk.PREDICT_CHUNK + 45, 5, 4, 6, 3),
    (4 * nk.PREDICT_CHUNK + 3, 3, 2, 4, 5),
]
PREDICT_IDS = [f"B{b}-T{t}-D{d}-H{h}-K{k}" for b, t, d, h, k in PREDICT_SHAPES]


def predict_weights(rng, D, H, K):
    W, U, b = rnn_weights(rng, D, H)
    return W, U, b, normal(rng, (H, K)), normal(rng, K)


def predict_on_both(x, weights, activation):
    """(Numba logits, C logits, Numba's finite flag, C's finite flag)."""
    K = weights[3].shape[1]
    ref, c = nans((x.shape[0], K)), nans((x.shape[0], K))
    ref_finite = nk.rnn_dense_predict(ref, x, *weights, activation)
    c_finite = ck.rnn_dense_predict(c, x, *weights, activation)
    return ref, c, ref_finite, c_finite


def layouts(x):
    """The same values (B, T, D) in the dtypes and layouts the models pass."""
    B, T, D = x.shape
    time_major = np.ascontiguousarray(x.transpose(1, 0, 2))
    every_other = np.empty((2 * B, T, D), np.float32)
    every_other[::2] = x
    read_only = x.copy()
    read_only.flags.writeable = False
    return {
        "float32": x,
        "float64": x.astype(np.float64),
        "time_major_view": time_major.transpose(1, 0, 2),
        "every_other_sample": every_other[::2],
        "fortran": np.asfortranarray(x),
        "reversed_steps": np.ascontiguousarray(x[:, ::-1])[:, ::-1],
        "read_only": read_only,
    }


LAYOUTS = list(layouts(np.zeros((1, 1, 1), np.float32)))


@needs_c
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", PREDICT_SHAPES, ids=PREDICT_IDS)
def test_rnn_dense_predict(shape, activation, layout):
    B, T, D, H, K = shape
    rng = np.random.default_rng(B + T)
    weights = predict_weights(rng, D, H, K)
    x = layouts(normal(rng, (B, T, D)))[layout]
    ref, c, ref_finite, c_finite = predict_on_both(x, weights, activation)
    assert ref_finite and c_finite is True
    agree(c, ref)


@needs_c
@pytest.mark.skipif(
    "fma" not in compile_features() or os.environ.get("FASTRNN_PORTABLE", "0") != "0",
    reason="the C backend fuses multiply-adds only when built for a CPU with FMA",
)
@pytest.mark.parametrize("activation", [nk.LINEAR, nk.RELU], ids=["linear", "relu"])
@pytest.mark.parametrize("shape", [(300, 28, 28, 50, 10), (7, 5, 3, 70, 4)], ids=str)
def test_rnn_dense_predict_tiles_sum_in_the_c_backends_order(shape, activation):
    # Both backends' tiles add each element's terms in one order, one fused
    # multiply-add at a time; without tanh's rounding in between, the results
    # are the same bits (H = 70 needs a tile of one vector beside those of four),
    # also where both leave out the terms of inputs that are zero.  This holds
    # for a C backend built for this machine, as setup.py builds it.
    B, T, D, H, K = shape
    rng = np.random.default_rng(H)
    weights = predict_weights(rng, D, H, K)
    for x in (normal(rng, (B, T, D)), mostly_zero(rng, (B, T, D))):
        ref, c, _, _ = predict_on_both(x, weights, activation)
        np.testing.assert_array_equal(c, ref)


@needs_c
def test_rnn_dense_predict_takes_integer_input():
    rng = np.random.default_rng(3)
    weights = predict_weights(rng, 4, 5, 3)
    x = rng.integers(0, 3, (9, 6, 4)).astype(np.uint8)
    ref, c, _, c_finite = predict_on_both(x, weights, nk.TANH)
    assert c_finite
    agree(c, ref)


# Only float64 holds a finite value beyond float32's range.
NON_FINITE_CASES = [
    (value, layout)
    for value in (np.nan, np.inf, -np.inf)
    for layout in ("float32", "float64", "time_major_view")
] + [(1e39, "float64")]


def poisoned_case(value, layout, seed):
    """Weights and an x of two chunks with `value` in the second-last sample."""
    B, T, D, H, K = nk.PREDICT_CHUNK + 45, 4, 3, 5, 2
    rng = np.random.default_rng(seed)
    weights = predict_weights(rng, D, H, K)
    x = layouts(normal(rng, (B, T, D)))[layout]
    x[B - 2, T - 1, D - 1] = value
    return rng, weights, x


@needs_c
@pytest.mark.parametrize("value, layout", NON_FINITE_CASES, ids=str)
def test_rnn_dense_predict_reports_non_finite_input(value, layout):
    _, weights, x = poisoned_case(value, layout, seed=4)
    B = x.shape[0]
    ref, c, ref_finite, c_finite = predict_on_both(x, weights, nk.TANH)
    assert not ref_finite
    assert c_finite is False
    # Rows without the bad value are still computed.
    agree(c[: B - 2], ref[: B - 2])


@needs_c
def test_rnn_dense_predict_of_no_samples():
    weights = predict_weights(np.random.default_rng(0), 3, 4, 2)
    logits = nans((0, 2))
    assert ck.rnn_dense_predict(logits, np.zeros((0, 5, 3)), *weights, nk.TANH)


@needs_c
def test_rnn_dense_predict_rejects_shapes_that_do_not_agree():
    weights = predict_weights(np.random.default_rng(0), 3, 4, 2)
    with pytest.raises(ValueError, match="rnn_dense_predict.*logits \\(5, 3\\)"):
        ck.rnn_dense_predict(nans((5, 3)), np.zeros((5, 2, 3)), *weights, nk.TANH)
    with pytest.raises(ValueError, match="rnn_dense_predict"):
        ck.rnn_dense_predict(nans((5, 2)), np.zeros((5, 2, 4)), *weights, nk.TANH)
    with pytest.raises(ValueError, match="\\(B, T, D\\)"):
        ck.rnn_dense_predict(nans((5, 2)), np.zeros((5, 3)), *weights, nk.TANH)


def evaluate_targets(rng, B, K):
    """One-hot rows, and a few soft ones, as the models pass them."""
    y = np.eye(K, dtype=np.float32)[rng.integers(0, K, B)]
    y[: B // 3] = rng.dirichlet(np.ones(K), B // 3).astype(np.float32)
    return y


def softmax_xent_reference(logits, y):
    """Summed cross-entropy and argmax hits of float64 logits."""
    z = logits.astype(np.float64)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    hits = np.argmax(z, axis=1) == np.argmax(y, axis=1)
    return -(y * log_p).sum(), int(hits.sum())


@pytest.mark.parametrize("layout", ["float32", "float64", "time_major_view"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", PREDICT_SHAPES, ids=PREDICT_IDS)
def test_rnn_dense_xent_evaluate(shape, activation, layout):
    # Both backends' sums agree with the loss of their own predicted logits.
    B, T, D, H, K = shape
    rng = np.random.default_rng(B + T + 1)
    weights = predict_weights(rng, D, H, K)
    x = layouts(normal(rng, (B, T, D)))[layout]
    y = evaluate_targets(rng, B, K)
    logits = nans((B, K))
    assert nk.rnn_dense_predict(logits, x, *weights, activation)
    want_loss, want_correct = softmax_xent_reference(logits, y)
    for module in (nk, ck):
        if module is None:
            continue
        loss_sum, correct, finite = module.rnn_dense_xent_evaluate(
            x, y, *weights, activation
        )
        assert finite
        assert loss_sum == pytest.approx(want_loss, rel=TOL, abs=TOL)
        # A logit within rounding of the largest may win the argmax instead.
        assert abs(correct - want_correct) <= 1


@needs_c
@pytest.mark.parametrize("value, layout", NON_FINITE_CASES, ids=str)
def test_rnn_dense_xent_evaluate_reports_non_finite_input(value, layout):
    rng, weights, x = poisoned_case(value, layout, seed=5)
    y = evaluate_targets(rng, x.shape[0], weights[3].shape[1])
    assert not nk.rnn_dense_xent_evaluate(x, y, *weights, nk.TANH)[2]
    assert ck.rnn_dense_xent_evaluate(x, y, *weights, nk.TANH)[2] is False


@pytest.mark.parametrize("module", ["numba", "cython"])
def test_rnn_dense_xent_evaluate_gives_the_same_bits_on_any_thread_count(module):
    if module == "cython" and ck is None:
        pytest.skip("the C backend is not built")
    kernels = nk if module == "numba" else ck
    B, T, D, H, K = 3 * nk.PREDICT_CHUNK + 7, 5, 4, 6, 3
    rng = np.random.default_rng(6)
    weights = predict_weights(rng, D, H, K)
    x, y = normal(rng, (B, T, D)), evaluate_targets(rng, B, K)
    runs = []
    for threads in (1, 2):
        previous = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(threads, user_api="openmp"):
                runs.append(kernels.rnn_dense_xent_evaluate(x, y, *weights, nk.TANH))
        finally:
            numba.set_num_threads(previous)
    assert runs[0] == runs[1]


@needs_c
def test_rnn_dense_xent_evaluate_of_no_samples_and_bad_shapes():
    weights = predict_weights(np.random.default_rng(0), 3, 4, 2)
    assert ck.rnn_dense_xent_evaluate(
        np.zeros((0, 5, 3)), nans((0, 2)), *weights, nk.TANH
    ) == (0.0, 0, True)
    with pytest.raises(ValueError, match="rnn_dense_xent_evaluate.*y \\(4, 2\\)"):
        ck.rnn_dense_xent_evaluate(np.zeros((5, 2, 3)), nans((4, 2)), *weights, nk.TANH)
    with pytest.raises(ValueError, match="rnn_dense_xent_evaluate"):
        ck.rnn_dense_xent_evaluate(np.zeros((5, 2, 4)), nans((5, 2)), *weights, nk.TANH)


# --------------------------------------------------------------------------
# choosing the backend


@pytest.fixture
def restore_backend(monkeypatch):
    """Undo whatever a test does to the active backend."""
    for key in ("name", "module"):
        monkeypatch.setitem(backends._active, key, backends._active[key])


def pretend_c_backend_is_missing(monkeypatch):
    # An import of a module that does not exist fails as an unbuilt one does.
    monkeypatch.setitem(backends._MODULES, "cython", "fastrnn.backends._not_built")


def test_set_backend_falls_back_to_numba_with_a_warning(monkeypatch, restore_backend):
    pretend_c_backend_is_missing(monkeypatch)
    with pytest.warns(FastRNNWarning, match="'cython' backend is not available"):
        assert backends.set_backend("cython") == "numba"
    assert backends.get_backend() == "numba"
    assert backends.kernels() is nk
    assert "cython" not in backends.available_backends()


def test_environment_asking_for_missing_c_backend_falls_back(
    monkeypatch, restore_backend
):
    pretend_c_backend_is_missing(monkeypatch)
    monkeypatch.setenv("FASTRNN_BACKEND", "cython")
    monkeypatch.setitem(backends._active, "module", None)
    with pytest.warns(FastRNNWarning, match="falling back to 'numba'"):
        assert backends.get_backend() == "numba"


@needs_c
def test_set_backend_selects_the_c_backend(restore_backend):
    assert backends.set_backend("cython") == "cython"
    assert backends.kernels() is ck
    assert "cython" in backends.available_backends()


@pytest.mark.parametrize("spelling", ["NUMBA", " numba ", "Numba"])
def test_backend_names_are_read_in_any_case(spelling, restore_backend):
    assert backends.set_backend(spelling) == "numba"


@pytest.mark.parametrize("name", ["", "c", None, 1])
def test_set_backend_rejects_other_names(name, restore_backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.set_backend(name)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_environment_variable_means_the_default(
    value, monkeypatch, restore_backend
):
    monkeypatch.setenv("FASTRNN_BACKEND", value)
    monkeypatch.setitem(backends._active, "module", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastRNNWarning)
        assert backends.get_backend() == "numba"


def test_an_unknown_environment_variable_warns_and_uses_numba(
    monkeypatch, restore_backend
):
    monkeypatch.setenv("FASTRNN_BACKEND", "fortran")
    monkeypatch.setitem(backends._active, "module", None)
    with pytest.warns(FastRNNWarning, match="FASTRNN_BACKEND must be one of"):
        assert backends.get_backend() == "numba"
