"""The same SimpleRNN model built twice, in fastrnn and in Keras, for parity tests.

A :class:`Case` names one architecture, optimizer, label encoding and data source.
:func:`run_keras` builds the Keras model with Keras's own seeded initial weights;
:func:`run_fast` builds the fastrnn model from those weights.  Both are driven
through the same calls by :func:`drive`, which records what each returns, so the
tests only compare numbers.

Import this module only after TensorFlow is known to be installed: it imports
Keras, and asks for the TensorFlow backend before doing so.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.layers import Activation, Dense, SimpleRNN  # noqa: E402
from fastrnn.utils import to_categorical  # noqa: E402

# The same class name and keyword arguments construct the optimizer in both
# libraries, so a difference in the result can only come from the update rule.
OPTIMIZERS = {
    "adam": ("Adam", {"learning_rate": 1e-3}),
    "sgd": ("SGD", {"learning_rate": 0.01, "momentum": 0.9}),
    "nesterov": ("SGD", {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}),
    "rmsprop": ("RMSprop", {"learning_rate": 1e-3}),
}

LOSSES = {
    "categorical": "categorical_crossentropy",
    "sparse": "sparse_categorical_crossentropy",
}

# Shapes (B, T, D, H, K) of each data source.  The random data keep D != H and
# small sizes; MNIST rows are the time steps of the classic RNN-on-MNIST set-up.
SHAPES = {
    "random": (16, 6, 5, 8, 4),
    "mnist": (32, 28, 28, 16, 10),
}

TRAIN_STEPS = 25


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity scenario.

    Attributes
    ----------
    activation : {'tanh', 'relu'}
        Activation of the SimpleRNN.
    return_sequences : bool
        If True the Dense layer is applied to every time step and the targets
        have shape (B, T, K) (or (B, T) for integer labels).
    optimizer : {'adam', 'sgd', 'nesterov', 'rmsprop'}
        A key of ``OPTIMIZERS``.
    labels : {'categorical', 'sparse'}
        One-hot targets with categorical cross-entropy, or integer targets with
        sparse categorical cross-entropy.
    data : {'random', 'mnist'}
        Standard normal inputs with random labels, or MNIST images scaled to
        [0, 1] with their digit as label (of every step, for sequences).
    softmax_in_dense : bool
        Softmax as the Dense layer's activation rather than a separate
        ``Activation`` layer; the two take different paths in both libraries.
    """

    activation: str
    return_sequences: bool
    optimizer: str
    labels: str
    data: str
    softmax_in_dense: bool

    @property
    def id(self):
        sequences = "seq" if self.return_sequences else "last"
        softmax = "dense-softmax" if self.softmax_in_dense else "act-softmax"
        return (
            f"{self.activation}-{sequences}-{self.optimizer}-{self.labels}-"
            f"{self.data}-{softmax}"
        )


@dataclasses.dataclass
class Record:
    """What one library returned along a case's schedule."""

    initial_weights: list
    predictions: np.ndarray
    test_loss: float
    test_accuracy: float
    first_train_loss: float
    weights_after_one: list
    weights_after_all: list


def make_batches(case, mnist_arrays=None, seed=0):
    """Training batches and one evaluation batch for ``case``.

    Returns
    -------
    train : list of (x, y)
        ``TRAIN_STEPS`` batches; x float32 of shape (B, T, D).
    evaluation : (x, y)
        A batch of twice the training size, not trained on.
    """
    B, T, D, _, K = SHAPES[case.data]
    rng = np.random.default_rng(seed)
    n = B * (TRAIN_STEPS + 2)
    if case.data == "random":
        x = rng.standard_normal((n, T, D)).astype(np.float32)
        if case.return_sequences:
            labels = rng.integers(0, K, size=(n, T))
        else:
            labels = rng.integers(0, K, size=n)
    else:
        (x_train, y_train), _ = mnist_arrays
        x = (x_train[:n] / 255.0).astype(np.float32)
        labels = y_train[:n].astype(np.int64)
        if case.return_sequences:
            labels = np.repeat(labels[:, None], T, axis=1)
    y = to_categorical(labels, K) if case.labels == "categorical" else labels
    train = [
        (x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]) for i in range(TRAIN_STEPS)
    ]
    start = TRAIN_STEPS * B
    evaluation = (x[start:], y[start:])
    return train, evaluation


def build_keras(case, seed=0):
    """The Keras model of ``case``, compiled, with Keras's seeded initial weights."""
    _, T, D, H, K = SHAPES[case.data]
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input(shape=(T, D)),
        keras.layers.SimpleRNN(
            H, activation=case.activation, return_sequences=case.return_sequences
        ),
    ]
    if case.softmax_in_dense:
        layers.append(keras.layers.Dense(K, activation="softmax"))
    else:
        layers += [keras.layers.Dense(K), keras.layers.Activation("softmax")]
    model = keras.Sequential(layers)
    name, kwargs = OPTIMIZERS[case.optimizer]
    model.compile(
        optimizer=getattr(keras.optimizers, name)(**kwargs),
        loss=LOSSES[case.labels],
        metrics=["accuracy"],
    )
    return model


def build_fast(case, weights):
    """The fastrnn model of ``case``, compiled, holding ``weights``."""
    _, T, D, H, K = SHAPES[case.data]
    layers = [
        SimpleRNN(
            H,
            activation=case.activation,
            return_sequences=case.return_sequences,
            input_shape=(T, D),
        )
    ]
    if case.softmax_in_dense:
        layers.append(Dense(K, activation="softmax"))
    else:
        layers += [Dense(K), Activation("softmax")]
    model = fastrnn.Sequential(layers)
    name, kwargs = OPTIMIZERS[case.optimizer]
    model.compile(
        optimizer=getattr(fastrnn.optimizers, name)(**kwargs),
        loss=LOSSES[case.labels],
        metrics=["accuracy"],
    )
    model.set_weights(weights)
    return model


def drive(model, train, evaluation):
    """Predict, test, then train along ``train``; the same calls for both libraries.

    ``predict`` and ``test_on_batch`` run before any training, so they see the
    shared initial weights.
    """
    x_eval, y_eval = evaluation
    initial = [np.asarray(w).copy() for w in model.get_weights()]
    predictions = np.asarray(model.predict(x_eval, verbose=0))
    test_loss, test_accuracy = model.test_on_batch(x_eval, y_eval)
    first_loss, _ = model.train_on_batch(*train[0])
    after_one = [np.asarray(w).copy() for w in model.get_weights()]
    for x, y in train[1:]:
        model.train_on_batch(x, y)
    after_all = [np.asarray(w).copy() for w in model.get_weights()]
    return Record(
        initial_weights=initial,
        predictions=predictions,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        first_train_loss=float(first_loss),
        weights_after_one=after_one,
        weights_after_all=after_all,
    )


def run_keras(case, mnist_arrays=None, seed=0):
    """Build the Keras model of ``case`` and drive it; returns its Record."""
    train, evaluation = make_batches(case, mnist_arrays, seed)
    return drive(build_keras(case, seed), train, evaluation)


def run_fast(case, initial_weights, mnist_arrays=None, seed=0):
    """Build the fastrnn model of ``case`` from ``initial_weights`` and drive it."""
    train, evaluation = make_batches(case, mnist_arrays, seed)
    return drive(build_fast(case, initial_weights), train, evaluation)


def max_abs_difference(ours, theirs):
    """Largest absolute difference over two lists of arrays of equal shapes."""
    assert len(ours) == len(theirs)
    return max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(ours, theirs)
    )
