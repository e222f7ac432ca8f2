"""Time the kernels of each backend at the MNIST shapes.

B = 50, T = 28, D = 28, H = 50, K = 10, tanh, as in training: the SimpleRNN
forward + backward pass, the fused train step (the batch cut in two parts, as
the models cut it on two cores) and predict on 10,000 samples.  Before timing,
the C backend's results must agree with Numba's; the first calls (Numba's
compilation) run outside the timed region.  Plain ``pytest`` runs each once as
a test; ``pytest --benchmark-only`` times them.
"""

import numpy as np
import pytest

from fastrnn import backends
from fastrnn.backends import _threads, available_backends, numba_kernels

B, T, D, H, K = 50, 28, 28, 50, 10
PREDICT_ROWS = 10_000
TANH, ADAM = numba_kernels.TANH, numba_kernels.ADAM
TOLERANCE = 1e-5
BACKENDS = ["numba", "cython"]


def backend_kernels(name):
    if name not in available_backends():
        pytest.skip(f"the {name} backend is not built")
    return __import__(f"fastrnn.backends.{name}_kernels", fromlist=["_"])


def agree(actual, desired, what):
    np.testing.assert_allclose(
        actual, desired, rtol=TOLERANCE, atol=TOLERANCE, err_msg=what
    )


def weights(rng):
    f32 = np.float32
    return (
        (rng.standard_normal((D, H)) / np.sqrt(D)).astype(f32),
        (0.5 * rng.standard_normal((H, H)) / np.sqrt(H)).astype(f32),
        np.zeros(H, f32),
        (rng.standard_normal((H, K)) / np.sqrt(H)).astype(f32),
        np.zeros(K, f32),
    )


# --------------------------------------------------------------------------
# SimpleRNN forward + backward


def make_rnn_case():
    rng = np.random.default_rng(0)
    f32 = np.float32
    W, U, b, _, _ = weights(rng)
    return {
        "x_tm": rng.standard_normal((T, B, D)).astype(f32),
        "W": W,
        "U": U,
        "b": b,
        "dh_out": rng.standard_normal((1, B, H)).astype(f32),
        "hs": np.empty((T, B, H), f32),
        "work": np.empty((2, B, H), f32),
        "dz": np.empty((T, B, H), f32),
        "dW": np.empty((D, H), f32),
        "dU": np.empty((H, H), f32),
        "db": np.empty(H, f32),
        "no_dx": np.zeros((0, 0, 0), f32),
    }


def forward_backward(kernels, case):
    c = case
    kernels.rnn_forward(c["hs"], c["work"], c["x_tm"], c["W"], c["U"], c["b"], TANH)
    kernels.rnn_backward(
        c["dW"], c["dU"], c["db"], c["no_dx"], c["dz"], c["work"], c["dh_out"],
        c["hs"], c["x_tm"], c["W"], c["U"], TANH,
    )  # fmt: skip


@pytest.mark.parametrize("name", BACKENDS)
def test_rnn_forward_backward(benchmark, name):
    kernels = backend_kernels(name)
    # Products of one training batch run on one BLAS thread, as in fit().
    _threads.use_threads_for_batch(B)

    reference, case = make_rnn_case(), make_rnn_case()
    forward_backward(numba_kernels, reference)
    forward_backward(kernels, case)
    for key in ("hs", "dz", "dW", "dU", "db"):
        agree(case[key], reference[key], key)

    benchmark.group = "rnn_forward+rnn_backward B50-T28-D28-H50"
    benchmark.pedantic(
        forward_backward, args=(kernels, case), rounds=300, warmup_rounds=20
    )


# --------------------------------------------------------------------------
# the fused train step


def make_train_case():
    """Arguments of rnn_dense_xent_train_step, laid out as the models lay them."""
    rng = np.random.default_rng(1)
    f32 = np.float32
    layout = [(D, H), (H, H), (H,), (H, K), (K,)]
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in layout])
    spans = list(zip(offsets, offsets[1:], layout))
    params = np.concatenate([w.ravel() for w in weights(rng)])
    grads = np.zeros_like(params)
    bounds = np.array([0, B // 2, B], dtype=np.int64)
    scratch_size = backends.train_scratch_size(T, B - B // 2, D, H, K)
    y = np.eye(K, dtype=f32)[rng.integers(0, K, B)]
    hyper = np.array([1e-3 * np.sqrt(1 - 0.999) / (1 - 0.9), 0.9, 0.999, 1e-7])
    return (
        params, grads, np.zeros_like(params), np.zeros_like(params),
        np.empty((2, scratch_size), f32), np.empty((2, params.size), f32),
        rng.random((B, T, D)).astype(f32), y, bounds,
        *[params[i:j].reshape(s) for i, j, s in spans],
        *[grads[i:j].reshape(s) for i, j, s in spans],
        TANH, ADAM, hyper, 2,
    )  # fmt: skip


@pytest.mark.parametrize("name", BACKENDS)
def test_rnn_dense_xent_train_step(benchmark, name):
    kernels = backend_kernels(name)
    # The parts run on their own threads; BLAS adds none, as in fit().
    _threads.use_threads_for_batch(1)

    reference, case = make_train_case(), make_train_case()
    ref_loss, ref_correct, _ = numba_kernels.rnn_dense_xent_train_step(*reference)
    loss, correct, inputs_finite = kernels.rnn_dense_xent_train_step(*case)
    assert inputs_finite
    agree(loss, ref_loss, "loss")
    assert correct == ref_correct
    for index, what in ((0, "params"), (1, "grads"), (2, "state_1"), (3, "state_2")):
        agree(case[index], reference[index], what)

    benchmark.group = "rnn_dense_xent_train_step B50-T28-D28-H50-K10, 2 parts"
    benchmark.pedantic(
        kernels.rnn_dense_xent_train_step, args=case, rounds=300, warmup_rounds=20
    )


# --------------------------------------------------------------------------
# inference


@pytest.mark.parametrize("name", BACKENDS)
def test_rnn_dense_predict(benchmark, name):
    kernels = backend_kernels(name)
    _threads.use_threads_for_batch(1)
    rng = np.random.default_rng(2)
    W, U, b, V, c = weights(rng)
    x = rng.random((PREDICT_ROWS, T, D), dtype=np.float32)

    reference = np.empty((PREDICT_ROWS, K), np.float32)
    logits = np.empty((PREDICT_ROWS, K), np.float32)
    assert numba_kernels.rnn_dense_predict(reference, x, W, U, b, V, c, TANH)
    assert kernels.rnn_dense_predict(logits, x, W, U, b, V, c, TANH)
    agree(logits, reference, "logits")

    benchmark.group = f"rnn_dense_predict B{PREDICT_ROWS}-T28-D28-H50-K10"
    benchmark.pedantic(
        kernels.rnn_dense_predict,
        args=(logits, x, W, U, b, V, c, TANH),
        rounds=30,
        warmup_rounds=3,
    )
