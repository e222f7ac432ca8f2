"""Time one SimpleRNN forward + backward pass per backend at the MNIST shapes.

B = 50, T = 28, D = 28, H = 50, tanh, the gradient of the last step only, as in
training.  Before timing, the C backend's results must agree with Numba's; the
first calls (Numba's compilation) run outside the timed region.  Not collected by
plain ``pytest``; run it as
``pytest benches/bench_kernels_backends.py --benchmark-only``.
"""

import numpy as np
import pytest

from fastrnn.backends import _threads, available_backends, numba_kernels

B, T, D, H = 50, 28, 28, 50
TOLERANCE = 1e-5


def make_case():
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "x_tm": rng.standard_normal((T, B, D)).astype(f32),
        "W": (rng.standard_normal((D, H)) / np.sqrt(D)).astype(f32),
        "U": (0.5 * rng.standard_normal((H, H)) / np.sqrt(H)).astype(f32),
        "b": np.zeros(H, f32),
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
    kernels.rnn_forward(c["hs"], c["work"], c["x_tm"], c["W"], c["U"], c["b"], 1)
    kernels.rnn_backward(
        c["dW"], c["dU"], c["db"], c["no_dx"], c["dz"], c["work"], c["dh_out"],
        c["hs"], c["x_tm"], c["W"], c["U"], 1,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["numba", "cython"])
def test_rnn_forward_backward(benchmark, name):
    if name not in available_backends():
        pytest.skip(f"the {name} backend is not built")
    kernels = __import__(f"fastrnn.backends.{name}_kernels", fromlist=["_"])
    # Products of one training batch run on one BLAS thread, as in fit().
    _threads.use_threads_for_batch(B)

    reference, case = make_case(), make_case()
    forward_backward(numba_kernels, reference)
    forward_backward(kernels, case)
    for key in ("hs", "dz", "dW", "dU", "db"):
        np.testing.assert_allclose(
            case[key], reference[key], rtol=TOLERANCE, atol=TOLERANCE, err_msg=key
        )

    benchmark.group = "rnn_forward+rnn_backward B50-T28-D28-H50"
    benchmark.pedantic(
        forward_backward, args=(kernels, case), rounds=300, warmup_rounds=20
    )
