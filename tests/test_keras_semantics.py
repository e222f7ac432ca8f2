"""Keras semantics fastrnn reproduces, pinned to numbers from Keras 3's definitions.

Each expected value here is derived from how Keras 3 defines the operation
(initializers, optimizer updates, cross-entropy, accuracy, label encoding), not
from fastrnn's own output, and needs no TensorFlow.  ``test_parity_tensorflow.py``
checks the same behaviours against a live Keras.
"""

import math

import numpy as np
import pytest

import fastrnn
from fastrnn import initializers, losses
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.optimizers import SGD, Adam, RMSprop
from fastrnn.utils import to_categorical

# Keras's backend epsilon, used both as Adam's default epsilon and as the clip.
EPSILON = 1e-7


# initializers -----------------------------------------------------------------------


def test_glorot_uniform_bounds_mean_and_variance():
    fan_in, fan_out = 300, 500
    limit = math.sqrt(6.0 / (fan_in + fan_out))

    w = initializers.glorot_uniform((fan_in, fan_out), np.random.default_rng(0))

    n = w.size
    assert np.all(np.abs(w) <= limit)
    assert np.max(np.abs(w)) > 0.999 * limit
    # Uniform on [-limit, limit]: mean 0 (standard error limit / sqrt(3 n)) and
    # variance limit^2 / 3 (relative standard error 0.89 / sqrt(n)).
    assert abs(np.mean(w)) < 5 * limit / math.sqrt(3 * n)
    assert np.var(w) == pytest.approx(limit**2 / 3, rel=5 * 0.9 / math.sqrt(n))


@pytest.mark.parametrize("shape", [(40, 40), (60, 20), (20, 60)])
def test_orthogonal_has_orthonormal_columns_or_rows(shape):
    w = initializers.initialize("orthogonal", shape)

    assert w.dtype == np.float32
    rows, cols = shape
    if rows >= cols:
        np.testing.assert_allclose(w.T @ w, np.eye(cols), atol=2e-6)
    else:
        np.testing.assert_allclose(w @ w.T, np.eye(rows), atol=2e-6)


def test_orthogonal_is_uniformly_distributed_in_sign():
    # Without the sign correction by diag(R), Householder QR makes Q[0, 0]
    # negative almost always; a uniform orthogonal matrix has E[Q[0, 0]] = 0.
    rng = np.random.default_rng(1)

    corners = [initializers.orthogonal((4, 4), rng)[0, 0] for _ in range(400)]

    assert abs(np.mean(corners)) < 0.1
    assert 0.3 < np.mean(np.array(corners) > 0) < 0.7


def test_layers_use_keras_default_initializers():
    D, H, K = 30, 20, 10
    model = fastrnn.Sequential(
        [SimpleRNN(H, input_shape=(5, D)), Dense(K), Activation("softmax")]
    )

    kernel, recurrent_kernel, bias, dense_kernel, dense_bias = model.get_weights()

    assert np.all(np.abs(kernel) <= math.sqrt(6.0 / (D + H)))
    np.testing.assert_allclose(
        recurrent_kernel.T @ recurrent_kernel, np.eye(H), atol=2e-6
    )
    assert np.all(bias == 0)
    assert np.all(np.abs(dense_kernel) <= math.sqrt(6.0 / (H + K)))
    assert np.all(dense_bias == 0)


# optimizers -------------------------------------------------------------------------


def _keras_adam(gradients, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=EPSILON):
    """Keras 3's Adam in float64: epsilon is added to sqrt(v), not sqrt(v_hat)."""
    w = m = v = np.zeros_like(gradients[0], dtype=np.float64)
    for t, g in enumerate(gradients, start=1):
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        w = w - alpha * m / (np.sqrt(v) + epsilon)
    return w


def _keras_rmsprop(gradients, lr=1e-3, rho=0.9, epsilon=EPSILON):
    """Keras 3's RMSprop in float64: epsilon inside the square root."""
    w = v = np.zeros_like(gradients[0], dtype=np.float64)
    for g in gradients:
        v = rho * v + (1 - rho) * g * g
        w = w - lr * g / np.sqrt(v + epsilon)
    return w


def _apply(optimizer, gradients):
    w = np.zeros(gradients[0].size, dtype=np.float32)
    optimizer.build(w.size)
    for g in gradients:
        optimizer.apply(w, np.asarray(g, dtype=np.float32))
    return w


GRADIENTS = [
    np.array([1e-8, 1e-6, -1e-4, 1e-3, -1e-2, 0.3, 1.0, 0.0]),
    np.array([2e-8, -1e-6, -3e-4, 1e-3, 2e-2, -0.3, 0.5, 1e-5]),
    np.array([-1e-8, 3e-6, 1e-4, -2e-3, -1e-2, 0.1, -1.0, 0.0]),
]


def test_adam_first_step_on_a_tiny_gradient_is_0_240_lr():
    # Keras's form: alpha * m / (sqrt(v) + eps) = 0.240 * lr for g = 1e-6.
    # PyTorch's m_hat / (sqrt(v_hat) + eps) would give 0.990 * lr.
    w = _apply(Adam(learning_rate=1e-3), [np.array([1e-6])])

    assert -w[0] / 1e-3 == pytest.approx(0.2402, abs=1e-3)


def test_adam_step_through_a_model_is_0_240_lr():
    # Dense(1) without bias, weight 0, x = 1, target -5e-7: the gradient of the
    # squared error is 2 * (0 - (-5e-7)) = 1e-6.
    model = fastrnn.Sequential([Dense(1, use_bias=False, input_shape=(1,))])
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="mse")
    model.set_weights([np.zeros((1, 1), dtype=np.float32)])

    model.train_on_batch(np.ones((1, 1)), np.full((1, 1), -5e-7))

    assert -model.get_weights()[0][0, 0] / 1e-3 == pytest.approx(0.2402, abs=1e-3)


def test_adam_matches_keras_form_over_steps():
    w = _apply(Adam(learning_rate=1e-3), GRADIENTS)

    np.testing.assert_allclose(w, _keras_adam(GRADIENTS), rtol=1e-5, atol=1e-12)


def test_rmsprop_matches_keras_form():
    # One step of g = 1e-3: v = 1e-7, so the step is lr * g / sqrt(2e-7) = 2.236 lr
    # (3.16 lr with epsilon outside the root).
    w = _apply(RMSprop(learning_rate=1e-3), [np.array([1e-3])])
    assert -w[0] / 1e-3 == pytest.approx(math.sqrt(5.0), rel=1e-5)

    w = _apply(RMSprop(learning_rate=1e-3), GRADIENTS)
    np.testing.assert_allclose(w, _keras_rmsprop(GRADIENTS), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    ("nesterov", "steps_of_lr"),
    # velocity = 0.9 velocity - lr g; w += velocity, or with Nesterov
    # w += 0.9 velocity - lr g.  With g = 1: -(1 + 1.9) and -(1.9 + 2.71).
    [(False, 2.9), (True, 4.61)],
)
def test_sgd_momentum_two_steps(nesterov, steps_of_lr):
    optimizer = SGD(learning_rate=0.01, momentum=0.9, nesterov=nesterov)

    w = _apply(optimizer, [np.ones(1), np.ones(1)])

    assert -w[0] / 0.01 == pytest.approx(steps_of_lr, rel=1e-6)


def test_plain_sgd_step():
    w = _apply(SGD(learning_rate=0.01), [np.array([2.0, -1.0])])

    np.testing.assert_allclose(w, [-0.02, 0.01], rtol=1e-6)


# cross-entropy ----------------------------------------------------------------------


def _compiled(layers, loss, optimizer=None):
    model = fastrnn.Sequential(layers)
    model.compile(
        optimizer=optimizer or SGD(learning_rate=1e-6), loss=loss, metrics=["accuracy"]
    )
    return model


def _targets(loss, labels, K):
    if loss == "categorical_crossentropy":
        return to_categorical(labels, K)
    return np.asarray(labels)


LOSSES = ["categorical_crossentropy", "sparse_categorical_crossentropy"]

# Logits 20 for the wrong class and -20 for the right one.
WRONG_BY_40 = 40.0 + math.log1p(math.exp(-40.0))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("separate_softmax", [False, True])
def test_softmax_cross_entropy_comes_from_logits_without_clipping(
    loss, separate_softmax
):
    if separate_softmax:
        layers = [Dense(2, input_shape=(1,)), Activation("softmax")]
    else:
        layers = [Dense(2, activation="softmax", input_shape=(1,))]
    model = _compiled(layers, loss)
    model.set_weights([np.array([[20.0, -20.0]]), np.zeros(2)])

    got = model.test_on_batch(np.ones((1, 1)), _targets(loss, [1], 2))[0]

    assert got == pytest.approx(WRONG_BY_40, rel=1e-6)
    assert got > -math.log(EPSILON) + 20


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_recurrent_softmax_cross_entropy_comes_from_logits(loss, return_sequences):
    # Zero recurrent weights give h = 0, so the logits are the Dense bias.  The
    # last-step model trains through the fused kernel, the other layer by layer.
    B, T = 3, 4
    model = _compiled(
        [
            SimpleRNN(2, return_sequences=return_sequences, input_shape=(T, 1)),
            Dense(2),
            Activation("softmax"),
        ],
        loss,
    )
    model.set_weights(
        [np.zeros((1, 2)), np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2)), [20, -20]]
    )
    labels = np.ones((B, T) if return_sequences else B, dtype=np.int64)
    x = np.ones((B, T, 1))
    y = _targets(loss, labels, 2)

    assert model.test_on_batch(x, y)[0] == pytest.approx(WRONG_BY_40, rel=1e-6)
    assert model.train_on_batch(x, y)[0] == pytest.approx(WRONG_BY_40, rel=1e-6)


# Rows of non-softmax outputs: one clipped low, one inside the clip range, one
# summing to more than one.  Their labels are 2, 2 and 1.
PROBABILITY_ROWS = np.array([[0.5, 0.25, 1e-9], [0.5, 0.25, 0.125], [2.0, 1.0, 0.5]])
PROBABILITY_LABELS = [2, 2, 1]
# Normalise each row, clip to [1e-7, 1 - 1e-7], take -log of the label's entry.
CATEGORICAL_EXPECTED = [-math.log(EPSILON), math.log(7.0), math.log(3.5)]
# Clip, then normalise: -log(clip(p_y)) + log(sum(clip(p))).
SPARSE_EXPECTED = [
    -math.log(EPSILON) + math.log(0.75 + EPSILON),
    math.log(7.0),
    -math.log(1.0 - EPSILON) + math.log(2 * (1.0 - EPSILON) + 0.5),
]


def _relu_output_model(row, loss):
    # relu attaches no logits, so cross-entropy must use its outputs as given.
    model = _compiled([Dense(3, activation="relu", input_shape=(1,))], loss)
    model.set_weights([np.zeros((1, 3)), PROBABILITY_ROWS[row]])
    return model


@pytest.mark.parametrize("row", range(len(PROBABILITY_ROWS)))
def test_categorical_cross_entropy_on_probabilities_clips(row):
    model = _relu_output_model(row, "categorical_crossentropy")
    y = to_categorical(PROBABILITY_LABELS[row : row + 1], 3)

    got = model.test_on_batch(np.ones((1, 1)), y)[0]

    assert got == pytest.approx(CATEGORICAL_EXPECTED[row], rel=1e-6)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_sparse_cross_entropy_on_probabilities_clips_first(row):
    model = _relu_output_model(row, "sparse_categorical_crossentropy")
    y = np.array(PROBABILITY_LABELS[row : row + 1])

    got = model.test_on_batch(np.ones((1, 1)), y)[0]

    assert got == pytest.approx(SPARSE_EXPECTED[row], rel=1e-6)


@pytest.mark.parametrize(
    ("sparse", "expected"), [(False, CATEGORICAL_EXPECTED), (True, SPARSE_EXPECTED)]
)
def test_probability_cross_entropy_values(sparse, expected):
    targets = to_categorical(PROBABILITY_LABELS, 3)

    for row in range(len(PROBABILITY_ROWS)):
        got, _ = losses.probability_cross_entropy(
            PROBABILITY_ROWS[row : row + 1], targets[row : row + 1], False, sparse
        )
        assert got == pytest.approx(expected[row], rel=1e-9)


@pytest.mark.parametrize("sparse", [False, True])
def test_probability_cross_entropy_gradient_by_central_differences(sparse):
    rng = np.random.default_rng(2)
    # Inside the clip range, where the loss is smooth; one row sums past one.
    output = rng.uniform(0.05, 0.9, size=(4, 3))
    output[3] *= 3
    targets = to_categorical([0, 2, 1, 1], 3).astype(np.float64)

    _, gradient = losses.probability_cross_entropy(output, targets, True, sparse)

    step = 1e-6
    numeric = np.zeros_like(output)
    for index in np.ndindex(output.shape):
        shift = np.zeros_like(output)
        shift[index] = step
        up, _ = losses.probability_cross_entropy(output + shift, targets, False, sparse)
        down, _ = losses.probability_cross_entropy(
            output - shift, targets, False, sparse
        )
        numeric[index] = (up - down) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_test_on_batch_after_training_equals_loss_from_predict(loss, return_sequences):
    rng = np.random.default_rng(3)
    B, T, D, H, K = 8, 5, 3, 6, 4
    model = _compiled(
        [
            SimpleRNN(H, return_sequences=return_sequences, input_shape=(T, D)),
            Dense(K),
            Activation("softmax"),
        ],
        loss,
        optimizer=Adam(learning_rate=1e-2),
    )
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    labels = rng.integers(0, K, size=(B, T) if return_sequences else B)
    y = _targets(loss, labels, K)
    for _ in range(5):
        model.train_on_batch(x, y)

    loss_value, accuracy = model.test_on_batch(x, y)

    p = model.predict(x).astype(np.float64)
    picked = np.take_along_axis(p, labels[..., None], axis=-1)
    assert loss_value == pytest.approx(float(-np.mean(np.log(picked))), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(np.argmax(p, axis=-1) == labels))


# accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_evaluate_accuracy_is_the_argmax_hit_rate(loss, return_sequences):
    rng = np.random.default_rng(4)
    n, T, D, K = 37, 4, 3, 5
    model = _compiled(
        [
            SimpleRNN(7, return_sequences=return_sequences, input_shape=(T, D)),
            Dense(K, activation="softmax"),
        ],
        loss,
    )
    x = rng.standard_normal((n, T, D))
    labels = rng.integers(0, K, size=(n, T) if return_sequences else n)

    # A batch size that does not divide n: the batch means must be weighted.
    _, accuracy = model.evaluate(x, _targets(loss, labels, K), batch_size=8)

    hits = np.argmax(model.predict(x), axis=-1) == labels
    assert accuracy == pytest.approx(np.mean(hits), abs=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_accuracy_ties_go_to_the_first_maximum(loss):
    # Zero weights except the Dense bias: every sample scores (0, 1, 1), so
    # only label 1 is a hit.  train_on_batch reports accuracy from the fused
    # kernel, evaluate from the layer-by-layer path.
    T = 3
    model = _compiled(
        [SimpleRNN(2, input_shape=(T, 1)), Dense(3), Activation("softmax")], loss
    )
    model.set_weights(
        [np.zeros((1, 2)), np.zeros((2, 2)), np.zeros(2), np.zeros((2, 3)), [0, 1, 1]]
    )
    labels = np.array([1, 2, 1, 0, 2, 1, 2, 2])
    x = np.ones((labels.size, T, 1))
    y = _targets(loss, labels, 3)

    assert model.evaluate(x, y)[1] == pytest.approx(3 / 8, abs=1e-12)
    assert model.train_on_batch(x, y)[1] == pytest.approx(3 / 8, abs=1e-12)


# to_categorical ---------------------------------------------------------------------


def test_to_categorical_column_labels_give_float32_rows():
    out = to_categorical(np.array([[2], [0], [1]]), num_classes=4)

    assert out.shape == (3, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(4, dtype=np.float32)[[2, 0, 1]])


@pytest.mark.parametrize("labels", [[0, 3], [0, 4], [-1, 1]])
def test_to_categorical_rejects_labels_outside_the_classes(labels):
    with pytest.raises(ValueError):
        to_categorical(labels, num_classes=3)


def test_to_categorical_rejects_negative_labels_without_num_classes():
    with pytest.raises(ValueError):
        to_categorical([2, -1])


# batch_input_shape ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_batch_model():
    """A model declared for batches of 50, with 10,000 random samples."""
    rng = np.random.default_rng(5)
    model = fastrnn.Sequential(
        [
            SimpleRNN(50, batch_input_shape=(50, 28, 28)),
            Dense(10),
            Activation("softmax"),
        ]
    )
    model.compile(
        optimizer=Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    x = rng.random((10000, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, size=10000)
    return model, x, labels


def _numpy_loss_and_accuracy(p, labels):
    p = p.astype(np.float64)
    loss = -np.mean(np.log(p[np.arange(labels.size), labels]))
    return loss, np.mean(np.argmax(p, axis=1) == labels)


def test_declared_batch_size_does_not_limit_ten_thousand_samples(fixed_batch_model):
    model, x, labels = fixed_batch_model

    p = model.predict(x, batch_size=10000)
    loss, accuracy = model.evaluate(x, to_categorical(labels, 10), batch_size=10000)

    assert p.shape == (10000, 10)
    np.testing.assert_allclose(
        p[:100], model.predict(x[:100], batch_size=50), atol=1e-6
    )
    expected_loss, expected_accuracy = _numpy_loss_and_accuracy(p, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy == pytest.approx(expected_accuracy, abs=1e-12)


def test_declared_batch_size_does_not_forbid_one_sample(fixed_batch_model):
    model, x, labels = fixed_batch_model

    p = model.predict(x[:1])
    loss, accuracy = model.evaluate(x[:1], to_categorical(labels[:1], 10))

    assert p.shape == (1, 10)
    np.testing.assert_allclose(p, model.predict(x[:50], batch_size=50)[:1], atol=1e-6)
    expected_loss, expected_accuracy = _numpy_loss_and_accuracy(p, labels[:1])
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy == expected_accuracy
