"""The same model in every implementation the benchmarks compare.

Each implementation is built from a workload and the shared initial weights and
offers three operations on the workload's NumPy arrays:

- ``train_step(batch)``: one Adam step on a batch; returns the batch's loss
  before the update.
- ``predict(x)``: softmax probabilities, (N, K).
- ``evaluate(split)``: (mean cross-entropy, accuracy) over the split.

``adam`` names the form of Adam's update each one takes (see
``_workloads.step_losses``).

Converting NumPy input to each library's own tensors is part of every timed call,
as it is in a user's script.  Thread pools are left at each library's default:
fastrnn runs its BLAS on one thread for batches below 512 rows and on every core
above; NumPy's BLAS uses every core; TensorFlow and PyTorch keep their own
defaults (PyTorch's ``torch.get_num_threads()``, one thread per physical core).
"""

import os

import _workloads
import numpy as np
import pytest
from _workloads import CLASSES, LEARNING_RATE, UNITS, numpy_twin

import fastrnn
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.optimizers import Adam

# In the order the report lists them.
NAMES = ("numba", "cython", "numpy", "tensorflow", "torch")


def build(name, workload):
    """Implementation ``name`` of ``workload``'s model, or skip the test."""
    if name in ("numba", "cython"):
        return FastRNN(name, workload)
    return {"numpy": NumPyTwin, "tensorflow": KerasTF, "torch": Torch}[name](workload)


class FastRNN:
    """fastrnn's Sequential on the named backend (selected until :meth:`close`)."""

    def __init__(self, backend, workload):
        if backend not in fastrnn.available_backends():
            pytest.skip(f"the fastrnn {backend!r} backend is not built here")
        self.name = backend
        self.adam = "keras"
        self._previous = fastrnn.get_backend()
        fastrnn.set_backend(backend)
        self.version = f"fastrnn {fastrnn.__version__}"
        self.workload = workload
        model = fastrnn.Sequential(
            [
                SimpleRNN(UNITS, input_shape=(workload.T, workload.D)),
                Dense(CLASSES),
                Activation("softmax"),
            ]
        )
        model.set_weights(_workloads.initial_weights(workload))
        model.compile(
            optimizer=Adam(LEARNING_RATE),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        self.model = model

    def train_step(self, batch):
        return self.model.train_on_batch(batch.x, batch.y)[0]

    def predict(self, x):
        return self.model.predict(x, batch_size=self.workload.eval_batch_size)

    def evaluate(self, split):
        loss, accuracy = self.model.evaluate(
            split.x, split.y, batch_size=self.workload.eval_batch_size
        )
        return loss, accuracy

    def close(self):
        fastrnn.set_backend(self._previous)


class NumPyTwin:
    """tests/numpy_twin.py: NumPy over the batch, a Python loop over time steps.

    The twin turns targets into float64 rows, so its gradients, and from the
    second training step on its weights, are float64; predict and evaluate run
    on the float32 initial weights.
    """

    name = "numpy"
    adam = "keras"

    def __init__(self, workload):
        self.version = f"numpy {np.__version__}"
        self.params = _workloads.initial_weights(workload)
        self.state = numpy_twin.initial_state(self.params, "adam")
        self.step = 0

    def train_step(self, batch):
        self.step += 1
        loss, self.params, self.state = numpy_twin.train_step(
            self.params,
            self.state,
            batch.x,
            batch.y,
            "tanh",
            "adam",
            LEARNING_RATE,
            self.step,
        )
        return loss

    def predict(self, x):
        return numpy_twin.model_output_rows(self.params, x, "tanh")[0]

    def evaluate(self, split):
        out, saved = numpy_twin.model_output_rows(self.params, split.x, "tanh")
        loss = numpy_twin.softmax_cross_entropy(saved[-1], split.y)
        return loss, np.mean(out.argmax(axis=1) == split.labels)

    def close(self):
        pass


class KerasTF:
    """Keras 3 on TensorFlow: SimpleRNN(50) -> Dense(10) -> Activation('softmax')."""

    name = "tensorflow"
    adam = "keras"

    def __init__(self, workload):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
        import keras

        if keras.backend.backend() != "tensorflow":
            pytest.skip(f"Keras runs on {keras.backend.backend()!r}, not TensorFlow")
        self.version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
        self.workload = workload
        model = keras.Sequential(
            [
                keras.Input((workload.T, workload.D)),
                keras.layers.SimpleRNN(UNITS),
                keras.layers.Dense(CLASSES),
                keras.layers.Activation("softmax"),
            ]
        )
        model.set_weights(_workloads.initial_weights(workload))
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        self.model = model

    def train_step(self, batch):
        return self.model.train_on_batch(batch.x, batch.y)[0]

    def predict(self, x):
        return self.model.predict(
            x, batch_size=self.workload.eval_batch_size, verbose=0
        )

    def evaluate(self, split):
        loss, accuracy = self.model.evaluate(
            split.x, split.y, batch_size=self.workload.eval_batch_size, verbose=0
        )
        return loss, accuracy

    def close(self):
        pass


class Torch:
    """PyTorch: nn.RNN (tanh) -> nn.Linear, CrossEntropyLoss on the logits, Adam.

    The weights are fastrnn's transposed: weight_ih_l0 = W.T, weight_hh_l0 = U.T,
    bias_ih_l0 = b, bias_hh_l0 = 0 and frozen (Keras has one bias where PyTorch
    has two), and the Linear layer's weight = V.T, bias = c.
    """

    name = "torch"
    adam = "pytorch"

    def __init__(self, workload):
        torch = pytest.importorskip("torch", reason="PyTorch is not installed")
        # torch.set_num_threads is deliberately not called: PyTorch keeps its
        # default intra-op thread count, one per physical core, as a user gets.
        self.torch = torch
        self.version = f"torch {torch.__version__}"
        W, U, b, V, c = _workloads.initial_weights(workload)
        self.rnn = torch.nn.RNN(
            workload.D, UNITS, batch_first=True, nonlinearity="tanh"
        )
        self.dense = torch.nn.Linear(UNITS, CLASSES)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(W.T.copy()))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(U.T.copy()))
            self.rnn.bias_ih_l0.copy_(torch.from_numpy(b))
            self.rnn.bias_hh_l0.zero_()
            self.dense.weight.copy_(torch.from_numpy(V.T.copy()))
            self.dense.bias.copy_(torch.from_numpy(c))
        # Trained, bias_hh_l0 would move by its own Adam step on top of
        # bias_ih_l0's, about doubling the step of the one bias Keras has.
        self.rnn.bias_hh_l0.requires_grad_(False)
        parameters = [
            p
            for p in [*self.rnn.parameters(), *self.dense.parameters()]
            if p.requires_grad
        ]
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)

    def _logits(self, x):
        _, h_last = self.rnn(self.torch.from_numpy(x))  # h_last (1, B, H)
        return self.dense(h_last[0])

    def train_step(self, batch):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self._logits(batch.x), self.torch.from_numpy(batch.labels))
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def predict(self, x):
        with self.torch.inference_mode():
            return self.torch.softmax(self._logits(x), dim=1).numpy()

    def evaluate(self, split):
        labels = self.torch.from_numpy(split.labels)
        with self.torch.inference_mode():
            logits = self._logits(split.x)
            loss = self.loss_fn(logits, labels).item()
            accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
        return loss, accuracy

    def close(self):
        pass
