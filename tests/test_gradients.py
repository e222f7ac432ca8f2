"""Gradient checks of SimpleRNN + Dense + loss, in three layers.

1. The NumPy twin's analytic gradients against central differences in float64:
   this proves the math.
2. The compiled model's gradients (float32 kernels) against the twin's, evaluated
   in float64 at the same float32 weights and inputs.
3. The compiled model's own loss against central differences in float32, with a
   step large enough to rise above float32 rounding, on a few coordinates.

Every weight is checked: kernel, recurrent_kernel and bias of the SimpleRNN, and
kernel and bias of the Dense layer.
"""

import math

import numpy as np
import numpy_twin as twin
import pytest

from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.models import Sequential
from fastrnn.optimizers import SGD, Adam, RMSprop

F32 = np.float32

# D != H != K, so a transposed product cannot pass by accident.
D, H, K = 3, 4, 5
BATCH_AND_STEPS = [(B, T) for B in (1, 2, 3) for T in (1, 2, 3, 4)]
BT_IDS = [f"B{B}-T{T}" for B, T in BATCH_AND_STEPS]

WEIGHT_NAMES = ["kernel", "recurrent_kernel", "bias", "dense_kernel", "dense_bias"]

# Output activation, loss, return_sequences.  "softmax-ce" is the fused path;
# the others go through the non-fused losses and the per-step Dense.
PATHS = {
    "softmax-ce": ("softmax", "categorical_crossentropy", False),
    "softmax-ce-sequences": ("softmax", "categorical_crossentropy", True),
    "separate-softmax-ce": ("softmax", "categorical_crossentropy", False),
    "sparse": ("softmax", "sparse_categorical_crossentropy", False),
    "sparse-sequences": ("softmax", "sparse_categorical_crossentropy", True),
    "sigmoid-ce": ("sigmoid", "categorical_crossentropy", False),
    "sigmoid-ce-sequences": ("sigmoid", "categorical_crossentropy", True),
    "softmax-mse": ("softmax", "mse", False),
    "linear-mse": ("linear", "mse", False),
    "tanh-mse-sequences": ("tanh", "mse", True),
}
OTHER_PATHS = [name for name in PATHS if name != "softmax-ce"]

# cases ----------------------------------------------------------------------------


class Case:
    """float32 weights, input and targets for one configuration."""

    def __init__(self, B, T, rnn_activation, path="softmax-ce", seed=0):
        self.B, self.T = B, T
        self.rnn_activation = rnn_activation
        self.path = path
        self.output, self.loss, self.return_sequences = PATHS[path]
        rng = np.random.default_rng(seed + 100 * B + 10 * T)
        self.params = [
            (rng.standard_normal((D, H)) / math.sqrt(D)).astype(F32),
            (0.6 * rng.standard_normal((H, H)) / math.sqrt(H)).astype(F32),
            (0.3 * rng.standard_normal(H)).astype(F32),
            (rng.standard_normal((H, K)) / math.sqrt(H)).astype(F32),
            (0.3 * rng.standard_normal(K)).astype(F32),
        ]
        self.x = rng.standard_normal((B, T, D)).astype(F32)
        lead = (B, T) if self.return_sequences else (B,)
        labels = rng.integers(0, K, lead)
        if self.loss == "sparse_categorical_crossentropy":
            self.y = labels
        elif self.loss == "categorical_crossentropy":
            self.y = twin.one_hot(labels, K, dtype=F32)
        else:
            self.y = rng.random(lead + (K,)).astype(F32)

    def params64(self):
        return [w.astype(np.float64) for w in self.params]

    def twin_loss_and_gradients(self, params=None):
        return twin.model_loss_and_gradients(
            self.params64() if params is None else params,
            self.x.astype(np.float64),
            self.y,
            self.rnn_activation,
            self.output,
            self.loss,
            self.return_sequences,
        )

    def twin_loss(self, params):
        return self.twin_loss_and_gradients(params)[0]

    def model(self, optimizer=None):
        """The compiled model holding this case's weights."""
        rnn = SimpleRNN(
            H,
            activation=self.rnn_activation,
            input_shape=(self.T, D),
            return_sequences=self.return_sequences,
        )
        if self.path == "separate-softmax-ce":
            head = [Dense(K), Activation("softmax")]
        else:
            head = [Dense(K, activation=self.output)]
        model = Sequential([rnn] + head)
        model.compile(optimizer=optimizer or SGD(learning_rate=1.0), loss=self.loss)
        model.set_weights(self.params)
        return model


def central_differences(f, params, eps):
    """d f / d params by (f(w + eps) - f(w - eps)) / 2 eps, one element at a time."""
    grads = []
    for w in params:
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            kept = w[index]
            w[index] = kept + eps
            up = f(params)
            w[index] = kept - eps
            down = f(params)
            w[index] = kept
            g[index] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def compiled_gradients(model, case):
    """Loss and gradients left in the layers by one forward and backward pass."""
    x = model._check_x(case.x)
    y = model._check_y(case.y, x)
    loss, _, _ = model._loss_on_batch(
        model._convert_x(x), model._convert_y(y, case.B), need_gradient=True
    )
    grads = [g.copy() for layer in model.layers for g in layer.gradients]
    return loss, grads


def assert_float32_close(actual, expected, name, rtol=1e-5, floor=1e-7):
    """Agreement within rtol of the largest expected magnitude (and a tiny floor)."""
    scale = max(float(np.abs(expected).max()), floor / rtol)
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name
    )


# 1. the twin's math, float64 central differences ---------------------------------


def check_twin_against_central_differences(case):
    params = case.params64()
    _, analytic = case.twin_loss_and_gradients(params)

    numeric = central_differences(case.twin_loss, params, eps=1e-6)

    for name, got, want in zip(WEIGHT_NAMES, analytic, numeric):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("B, T", BATCH_AND_STEPS, ids=BT_IDS)
@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
def test_twin_gradients_match_central_differences(activation, B, T):
    check_twin_against_central_differences(Case(B, T, activation))


@pytest.mark.parametrize("B, T", [(1, 1), (2, 3)], ids=["B1-T1", "B2-T3"])
@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
@pytest.mark.parametrize("path", OTHER_PATHS)
def test_twin_gradients_match_central_differences_on_other_paths(
    path, activation, B, T
):
    check_twin_against_central_differences(Case(B, T, activation, path))


def test_central_differences_notice_a_wrong_gradient():
    case = Case(2, 3, "tanh")
    params = case.params64()
    _, analytic = case.twin_loss_and_gradients(params)
    numeric = central_differences(case.twin_loss, params, eps=1e-6)
    analytic[1] = analytic[1].T  # dU transposed: the classic BPTT slip

    with pytest.raises(AssertionError):
        np.testing.assert_allclose(analytic[1], numeric[1], rtol=1e-6, atol=1e-9)


# 2. the compiled gradients against the twin's -------------------------------------


def check_compiled_against_twin(case):
    model = case.model()
    loss, grads = compiled_gradients(model, case)

    expected_loss, expected = case.twin_loss_and_gradients()
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, got, want in zip(WEIGHT_NAMES, grads, expected):
        assert got.shape == want.shape, name
        assert_float32_close(got, want, name)


@pytest.mark.parametrize("B, T", BATCH_AND_STEPS, ids=BT_IDS)
@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
def test_compiled_gradients_match_twin(backend, activation, B, T):
    check_compiled_against_twin(Case(B, T, activation, seed=1))


@pytest.mark.parametrize("B, T", [(1, 1), (3, 4)], ids=["B1-T1", "B3-T4"])
@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
@pytest.mark.parametrize("path", OTHER_PATHS)
def test_compiled_gradients_match_twin_on_other_paths(backend, path, activation, B, T):
    check_compiled_against_twin(Case(B, T, activation, path, seed=2))


@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
@pytest.mark.parametrize("path", list(PATHS))
def test_sgd_step_of_one_moves_weights_by_minus_the_gradient(backend, path, activation):
    case = Case(2, 3, activation, path, seed=3)
    model = case.model(SGD(learning_rate=1.0))
    before = model.get_weights()

    loss = model.train_on_batch(case.x, case.y)

    expected_loss, expected = case.twin_loss_and_gradients()
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    after = model.get_weights()
    for name, w0, w1, want in zip(WEIGHT_NAMES, before, after, expected):
        # w0 - w1 loses the low bits of w0, hence the absolute floor.
        assert_float32_close(
            w0.astype(np.float64) - w1, want, name, rtol=1e-5, floor=1e-6
        )


# 3. the compiled loss against float32 central differences -------------------------


def relu_sides(case, weights):
    """Which relu units are on, at every step, for these weights (None if no relu)."""
    if case.rnn_activation != "relu":
        return None
    x_tm = case.x.astype(np.float64).transpose(1, 0, 2)
    W, U, b = (w.astype(np.float64) for w in weights[:3])
    _, zs = twin.rnn_forward(x_tm, W, U, b, "relu")
    return zs > 0


def perturbed(case, which, index, step):
    weights = [w.copy() for w in case.params]
    weights[which][index] = F32(weights[which][index] + step)
    return weights


def smooth_coordinates(case, gradient, which, eps, rng, count=3):
    """Up to ``count`` elements, the largest-gradient one first, where the loss is
    smooth on [w - eps, w + eps]: no relu unit changes side in between, since a
    difference across a kink measures the kink, not the gradient."""
    order = [np.unravel_index(int(np.argmax(np.abs(gradient))), gradient.shape)]
    order += [
        np.unravel_index(int(i), gradient.shape) for i in rng.permutation(gradient.size)
    ]
    picks = []
    for index in order:
        if index in picks:
            continue
        up = relu_sides(case, perturbed(case, which, index, eps))
        down = relu_sides(case, perturbed(case, which, index, -eps))
        if up is None or np.array_equal(up, down):
            picks.append(index)
        if len(picks) == count:
            break
    return picks


@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
@pytest.mark.parametrize("path", list(PATHS))
def test_compiled_loss_matches_float32_central_differences(backend, path, activation):
    case = Case(2, 3, activation, path, seed=4)
    model = case.model()
    _, grads = compiled_gradients(model, case)
    rng = np.random.default_rng(0)
    eps = 1e-2

    for which, name in enumerate(WEIGHT_NAMES):
        picks = smooth_coordinates(case, grads[which], which, eps, rng)
        assert picks, name
        for index in picks:
            w_up = perturbed(case, which, index, eps)
            w_down = perturbed(case, which, index, -eps)
            model.set_weights(w_up)
            up = model.test_on_batch(case.x, case.y)
            model.set_weights(w_down)
            down = model.test_on_batch(case.x, case.y)

            step = float(w_up[which][index]) - float(w_down[which][index])
            numeric = (up - down) / step
            analytic = float(grads[which][index])
            assert numeric == pytest.approx(analytic, rel=2e-2, abs=5e-4), (
                name,
                index,
            )


# whole training steps against the twin -------------------------------------------

OPTIMIZERS = {
    "adam": (lambda: Adam(learning_rate=0.01), "adam", {}),
    "adam-betas": (
        lambda: Adam(learning_rate=0.02, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
        "adam",
        dict(beta_1=0.5, beta_2=0.9, epsilon=1e-3),
    ),
    "sgd": (lambda: SGD(learning_rate=0.1), "sgd", {}),
    "sgd-momentum": (
        lambda: SGD(learning_rate=0.1, momentum=0.9),
        "sgd",
        dict(momentum=0.9),
    ),
    "sgd-nesterov": (
        lambda: SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
        "sgd",
        dict(momentum=0.9, nesterov=True),
    ),
    "rmsprop": (lambda: RMSprop(learning_rate=0.01), "rmsprop", {}),
}


@pytest.mark.parametrize("activation", twin.ACTIVATIONS)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_steps_match_twin(backend, optimizer, activation):
    make, twin_name, options = OPTIMIZERS[optimizer]
    learning_rate = make().learning_rate
    case = Case(3, 4, activation, seed=5)
    model = case.model(make())
    params = case.params64()
    state = twin.initial_state(params, twin_name)

    for step in range(1, 4):
        loss = model.train_on_batch(case.x, case.y)
        expected_loss, params, state = twin.train_step(
            params,
            state,
            case.x.astype(np.float64),
            case.y,
            activation,
            twin_name,
            learning_rate,
            step,
            **options,
        )
        assert loss == pytest.approx(expected_loss, rel=1e-5), step

    for name, got, want in zip(WEIGHT_NAMES, model.get_weights(), params):
        assert_float32_close(got, want, name, rtol=1e-5, floor=1e-6)
