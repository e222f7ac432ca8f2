"""The two seed workloads, their data, their initial weights and reference results.

Both workloads train SimpleRNN(50) -> Dense(10) -> softmax with Adam(1e-3) on
categorical cross-entropy, in batches of B = 50:

- ``mnist``: MNIST images read row by row (T = 28 steps of D = 28 pixels, scaled
  to [0, 1]); predict and evaluate run on the 10,000 test images in one batch.
- ``digits``: scikit-learn's 8 x 8 digits (T = 8, D = 8, raw pixel values 0..16
  as the digits job uses them), split 70/30 with ``random_state=0``; predict and
  evaluate run on the 540 test images in one batch.

Every implementation starts from the same weights: those a fastrnn model draws
with ``set_random_seed(0)``.  The reference results are those of the plain NumPy
twin of the kernels (``tests/numpy_twin.py``) computed in float64.
"""

import dataclasses
import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn.datasets import DatasetUnavailableError, digits, mnist
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.utils import to_categorical

UNITS = 50
CLASSES = 10
BATCH_SIZE = 50
LEARNING_RATE = 1e-3
SEED = 0

# Training steps cycle over this many distinct batches from the start of the
# training split.
TRAIN_BATCHES = 20

# Agreement with the reference required before anything is timed: absolute, on
# the loss of each checked training step, on every predicted probability and on
# the evaluated loss.
TOLERANCE = 1e-4

# The first this many training steps are checked; the second step's loss shows
# that the first step's gradients and Adam update agree too.
CHECKED_STEPS = 2


def _load_numpy_twin():
    # Loaded by path: tests/ is not a package, and a module named ``tests``
    # installed by some other distribution could shadow it.
    path = Path(__file__).resolve().parents[1] / "tests" / "numpy_twin.py"
    spec = importlib.util.spec_from_file_location("fastrnn_bench_numpy_twin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


numpy_twin = _load_numpy_twin()


@dataclasses.dataclass(frozen=True)
class Split:
    """Inputs x (N, T, D) float32, one-hot targets y (N, K) float32, labels (N,)."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_labels(cls, x, labels):
        labels = np.asarray(labels, dtype=np.int64)
        y = to_categorical(labels, CLASSES).astype(np.float32)
        return cls(np.ascontiguousarray(x, dtype=np.float32), y, labels)

    def __getitem__(self, index):
        return Split(self.x[index], self.y[index], self.labels[index])

    def __len__(self):
        return self.x.shape[0]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One seed workload: its shapes, its data and how long to time it."""

    name: str
    T: int
    D: int
    batches: tuple  # TRAIN_BATCHES training Splits of BATCH_SIZE samples
    test: Split  # evaluated in one batch of len(test) samples
    eval_rounds: int  # timed rounds of predict and of evaluate

    @property
    def eval_batch_size(self):
        return len(self.test)


def _mnist():
    try:
        (x_train, y_train), (x_test, y_test) = mnist.load_data()
    except (FileNotFoundError, DatasetUnavailableError) as error:
        pytest.skip(f"MNIST is not available: {error}")
    n = TRAIN_BATCHES * BATCH_SIZE
    train = Split.from_labels(x_train[:n] / np.float32(255.0), y_train[:n])
    test = Split.from_labels(x_test / np.float32(255.0), y_test)
    return train, test, 25


def _digits():
    (x_train, y_train), (x_test, y_test) = digits.load_data(random_state=SEED)
    train = Split.from_labels(x_train, y_train)
    test = Split.from_labels(x_test, y_test)
    return train, test, 50


_LOADERS = {"mnist": _mnist, "digits": _digits}

NAMES = tuple(_LOADERS)


@functools.cache
def load(name):
    """The :class:`Workload` called ``name`` ('mnist' or 'digits')."""
    train, test, eval_rounds = _LOADERS[name]()
    batches = tuple(
        train[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(TRAIN_BATCHES)
    )
    _, T, D = test.x.shape
    return Workload(name, T, D, batches, test, eval_rounds)


@functools.cache
def _initial_weights(T, D):
    fastrnn.set_random_seed(SEED)
    model = fastrnn.Sequential(
        [SimpleRNN(UNITS, input_shape=(T, D)), Dense(CLASSES), Activation("softmax")]
    )
    return tuple(model.get_weights())


def initial_weights(workload):
    """Fresh float32 copies of [kernel, recurrent_kernel, bias, kernel, bias].

    Keras's order and shapes: W (D, H), U (H, H), b (H,), V (H, K), c (K,).
    """
    return [w.copy() for w in _initial_weights(workload.T, workload.D)]


@dataclasses.dataclass(frozen=True)
class Reference:
    """float64 NumPy twin results on the test split from the initial weights."""

    probabilities: np.ndarray  # (N, K)
    loss: float  # mean cross-entropy
    accuracy: float


@functools.cache
def reference(name):
    """The :class:`Reference` of workload ``name``."""
    workload = load(name)
    params = [w.astype(np.float64) for w in initial_weights(workload)]
    test = workload.test
    out, saved = numpy_twin.model_output_rows(params, test.x.astype(np.float64), "tanh")
    logits = saved[-1]
    loss = numpy_twin.softmax_cross_entropy(logits, test.y.astype(np.float64))
    accuracy = np.mean(out.argmax(axis=1) == test.labels)
    return Reference(out, float(loss), float(accuracy))


def _adam_step_pytorch(w, g, m, v, t, learning_rate, epsilon=1e-8):
    """Step t of Adam as ``torch.optim.Adam`` takes it.  Returns new (w, m, v).

    Unlike Keras, epsilon is added to the bias-corrected sqrt(v_t / (1 - beta_2^t)):
    at t = 1 Keras's 1e-7 acts as about 3e-6 here, so the two rules move weights
    with tiny gradients (rarely lit pixels, saturated tanh units) differently.
    """
    beta_1, beta_2 = 0.9, 0.999
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g * g
    m_hat = m / (1 - beta_1**t)
    v_hat = v / (1 - beta_2**t)
    return w - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon), m, v


@functools.cache
def step_losses(name, adam="keras"):
    """Losses of the first CHECKED_STEPS training steps of workload ``name``.

    Each loss is that of its batch before the step's update, computed in float64
    by the NumPy twin; ``adam`` is the form of the update, 'keras' (fastrnn,
    Keras, the twin) or 'pytorch'.
    """
    workload = load(name)
    params = [w.astype(np.float64) for w in initial_weights(workload)]
    moments = [(np.zeros_like(w), np.zeros_like(w)) for w in params]
    update = {"keras": numpy_twin.adam_step, "pytorch": _adam_step_pytorch}[adam]
    losses = []
    for t, batch in enumerate(workload.batches[:CHECKED_STEPS], start=1):
        loss, grads = numpy_twin.model_loss_and_gradients(
            params, batch.x.astype(np.float64), batch.y.astype(np.float64), "tanh"
        )
        losses.append(float(loss))
        stepped = [
            update(w, g, m, v, t, LEARNING_RATE)
            for w, g, (m, v) in zip(params, grads, moments)
        ]
        params = [w for w, _, _ in stepped]
        moments = [(m, v) for _, m, v in stepped]
    return tuple(losses)
