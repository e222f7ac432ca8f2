"""The ``Sequential`` model: a stack of layers trained with compiled kernels.

All weights live in one flat float32 vector (and the gradients in another of
the same length); layers see views of them, and the optimizer updates the whole
vector in one kernel call.

Input rule: ``x`` and ``y`` may be any real numeric array-like (float16/32/64,
integer, unsigned, bool); they are converted to float32 once per batch by a
compiled kernel that also rejects NaN and infinity.  Shapes are checked before
any compiled code runs.  Values beyond float32's range count as infinite.
"""

import math
import os
import sys
import time
import warnings
import weakref

import numba
import numpy as np

from fastrnn import activations, backends, losses, optimizers
from fastrnn import callbacks as callbacks_module
from fastrnn._warnings import FastRNNWarning
from fastrnn.backends import _threads, convert, kernels
from fastrnn.layers import Activation, Dense, Layer, SimpleRNN
from fastrnn.utils.random import get_rng

# The fused train step cuts a batch into this many parts (fewer for batches of
# under _MIN_ROWS_PER_PART rows a part).  The cut never depends on the machine or
# its thread count, so neither do the results.
_TRAIN_PARTS = 2
_MIN_ROWS_PER_PART = 16


class _ThreadChooser:
    """Runs the parts of the fused train step on one core or on all, by timing.

    On an idle two-core machine two threads make a MNIST-sized step about twice
    as fast; when another process holds a core, the thread that waits for it
    makes the step many times slower.  So both ways are timed as training goes:
    the way in use is timed on every step, and now and then the other way is
    tried for a short burst of steps.  The first step of a burst is not timed,
    since it pays for waking threads that have gone to sleep.  A burst that
    loses makes the next one come later (a busy machine stays busy), one that
    wins is kept.  Both ways give the same numbers, so the choice only affects
    speed.
    """

    SAMPLES = 7
    BURST = 4
    FIRST_PROBE = 64
    MAX_INTERVAL = 4096

    def __init__(self, cores):
        self.options = (1, cores) if cores > 1 else (1,)
        self.times = {threads: [] for threads in self.options}
        self.current = self.options[-1]
        self.interval = self.FIRST_PROBE
        # The first burst follows a warm-up step and a burst's worth of timed
        # steps of the first option.
        self.countdown = self.BURST + 1
        # Steps left in a burst of the other option, and whether this step's
        # time counts.
        self.burst = 0
        self._timed = True
        # Each option's first step is a warm-up too (threads start, caches fill).
        self._warm = set()

    def choose(self):
        """Threads for the next step."""
        if self.burst == 0 and len(self.options) > 1:
            self.countdown -= 1
            if self.countdown <= 0:
                self.burst = self.BURST
                self.times[self._other()] = []
        if self.burst > 0:
            self.burst -= 1
            threads = self._other()
            self._timed = self.burst < self.BURST - 1
        else:
            threads = self.current
            self._timed = threads in self._warm
        self._warm.add(threads)
        return threads

    def record(self, threads, seconds):
        """Time of the step run on ``threads`` (as ``choose`` returned)."""
        if not self._timed:
            return
        times = self.times[threads]
        times.append(seconds)
        if len(times) > self.SAMPLES:
            del times[0]
        if threads != self.current and self.burst == 0:
            self._end_burst()

    def _other(self):
        return self.options[0] if self.current != self.options[0] else self.options[-1]

    def _end_burst(self):
        other = self._other()
        if not self.times[self.current] or _median(self.times[other]) < _median(
            self.times[self.current]
        ):
            self.current = other
            self.interval = self.FIRST_PROBE
        else:
            self.interval = min(2 * self.interval, self.MAX_INTERVAL)
        self.countdown = self.interval


def _median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


_ACCURACY_NAMES = (
    "accuracy",
    "acc",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
)


def _as_numeric(value, argument):
    """``value`` as an ndarray of a real numeric dtype, or a clear error."""
    if isinstance(value, np.ndarray):
        array = value
    elif value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(
            f"{argument} must be an array of numbers, got {type(value).__name__}"
        )
    else:
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise ValueError(
                f"{argument} must be a rectangular array; could not convert it: {error}"
            ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{argument} must hold real numbers (float, int or bool), got dtype "
            f"{array.dtype}"
        )
    # The compiled converters know only native byte order and no float16; both
    # conversions are exact.
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind == "f" and array.dtype.itemsize > 8:
        # Numba knows no extended precision.  float64 holds every value float32
        # can, and one beyond float64's range becomes inf and is refused later.
        with np.errstate(over="ignore"):
            array = array.astype(np.float64)
    return array


def _check_batch_size(batch_size, argument="batch_size"):
    if batch_size is None:
        return 32
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
        batch_size, (int, np.integer)
    ):
        raise TypeError(
            f"{argument} must be a positive integer, got "
            f"{type(batch_size).__name__} {batch_size!r}"
        )
    if batch_size < 1:
        raise ValueError(f"{argument} must be a positive integer, got {batch_size}")
    return int(batch_size)


class _InputBuffers:
    """float32 copies of the current batch, reused while batch shapes repeat."""

    def __init__(self):
        self._arrays = {}

    def get(self, key, shape):
        array = self._arrays.get(key)
        if array is None or array.shape != shape:
            array = np.empty(shape, dtype=np.float32)
            self._arrays[key] = array
        return array


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
        Layers to add in order.
    name : str, default 'sequential'
    """

    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers = []
        self.optimizer = None
        self.loss = None
        self.metrics_names = []
        self.stop_training = False
        self._input_shape = None
        self._params = None
        self._grads = None
        self._compiled = False
        self._buffers = _InputBuffers()
        self._row_buffers = {}
        self._fused_cache = {}
        self._thread_chooser = None
        # Shape and dtype of the last x (and of x and y) that passed the checks;
        # see _check_x.
        self._accepted_x = self._accepted_y = None
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------
    # structure

    def add(self, layer):
        """Append a layer.  The first layer should declare its input shape."""
        if not isinstance(layer, Layer):
            raise TypeError(
                "Sequential.add expects a fastrnn layer (SimpleRNN, Dense, "
                f"Activation), got {type(layer).__name__}"
            )
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in this model")
        if self._params is not None:
            # Adding to a built model: rebuild with fresh weights for the new layer
            # while keeping the old ones.
            kept = self.get_weights()
            self.layers.append(layer)
            self._build(self._input_shape)
            self._set_weights_prefix(kept)
        else:
            self.layers.append(layer)
            if len(self.layers) == 1 and layer.declared_input_shape is not None:
                self._build(layer.declared_input_shape)
        if self._compiled and self._params is not None:
            self.optimizer.build(self._params.size)

    def build(self, input_shape=None):
        """Create the weights for inputs of ``input_shape`` = (batch, ...features)."""
        if input_shape is None:
            if self._input_shape is None:
                raise ValueError(
                    "build needs input_shape, e.g. (None, time_steps, features)"
                )
            return
        self._build(tuple(input_shape)[1:])

    def _build(self, sample_shape):
        if not self.layers:
            raise ValueError("the model has no layers; add some with model.add()")
        self._accepted_x = self._accepted_y = None
        self._fused_cache = {}
        shape = tuple(sample_shape)
        specs = []
        for layer in self.layers:
            shape = layer.build(shape)
            specs.append(layer.param_specs())
        self._input_shape = tuple(sample_shape)

        size = sum(int(np.prod(s)) for layer_specs in specs for _, s, _ in layer_specs)
        self._params = np.empty(size, dtype=np.float32)
        self._grads = np.zeros(size, dtype=np.float32)
        offset = 0
        from fastrnn.initializers import initialize

        for layer, layer_specs in zip(self.layers, specs):
            weights, gradients = [], []
            for _, s, initializer in layer_specs:
                n = int(np.prod(s))
                view = self._params[offset : offset + n].reshape(s)
                view[...] = initialize(initializer, s)
                weights.append(view)
                gradients.append(self._grads[offset : offset + n].reshape(s))
                offset += n
            layer.bind(weights, gradients)
        if self._compiled:
            self.optimizer.build(size)

    @property
    def built(self):
        return self._params is not None

    @property
    def input_shape(self):
        return None if self._input_shape is None else (None,) + self._input_shape

    @property
    def output_shape(self):
        if not self.built:
            return None
        return (None,) + self.layers[-1].output_shape

    def count_params(self):
        """Total number of weights."""
        self._require_built("count_params")
        return int(self._params.size)

    def get_weights(self):
        """Copies of all weights, layer by layer in Keras's order and shapes."""
        self._require_built("get_weights")
        return [w.copy() for layer in self.layers for w in layer.weights]

    def set_weights(self, weights):
        """Replace all weights; ``weights`` as returned by ``get_weights``."""
        self._require_built("set_weights")
        targets = [w for layer in self.layers for w in layer.weights]
        weights = list(weights)
        if len(weights) != len(targets):
            raise ValueError(
                f"set_weights expects {len(targets)} arrays, got {len(weights)}"
            )
        converted = []
        for index, (target, value) in enumerate(zip(targets, weights)):
            value = _as_numeric(value, f"weights[{index}]")
            if value.shape != target.shape:
                raise ValueError(
                    f"weights[{index}] must have shape {target.shape}, got "
                    f"{value.shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"weights[{index}] contains NaN or infinite values")
            converted.append(value)
        for target, value in zip(targets, converted):
            target[...] = value

    def _set_weights_prefix(self, weights):
        targets = [w for layer in self.layers for w in layer.weights]
        for target, value in zip(targets, weights):
            target[...] = value

    def summary(self, print_fn=None):
        """Print the layers with their output shapes and parameter counts."""
        print_fn = print_fn or print
        self._require_built("summary")
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            rows.append(
                (
                    f"{layer.name} ({type(layer).__name__})",
                    str((None,) + tuple(layer.output_shape)),
                    f"{layer.count_params():,}",
                )
            )
        widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(rule)
        for i, row in enumerate(rows):
            print_fn(
                row[0].ljust(widths[0])
                + row[1].ljust(widths[1])
                + row[2].rjust(widths[2])
            )
            print_fn("=" * len(rule) if i == 0 else rule)
        total = self.count_params()
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {total:,}")
        print_fn("Non-trainable params: 0")

    # ------------------------------------------------------------------
    # compile

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Choose the optimizer, the loss and the metrics.

        Parameters
        ----------
        optimizer : str or Optimizer, default 'rmsprop'
            'adam', 'sgd', 'rmsprop' or an instance.
        loss : str
            'categorical_crossentropy', 'sparse_categorical_crossentropy' or
            'mean_squared_error' ('mse').
        metrics : list of str, optional
            Only 'accuracy' (or 'acc', 'categorical_accuracy',
            'sparse_categorical_accuracy') is supported.
        """
        for keyword, value in kwargs.items():
            if value is not None:
                raise TypeError(f"compile got an unsupported argument {keyword!r}")
        if loss is None:
            raise ValueError(
                "compile needs a loss, e.g. loss='categorical_crossentropy'"
            )
        optimizer = optimizers.get(optimizer)
        owner = getattr(optimizer, "_model", None)
        # Compiling again with this model's own optimizer keeps its state, as
        # in Keras: only a new optimizer starts from zero.
        keeps_state = owner is not None and owner() is self
        if owner is not None and owner() is not None and owner() is not self:
            raise ValueError(
                "this optimizer instance already trains another model, and its "
                "state belongs to that model's weights; give each model its own "
                f"optimizer, e.g. {type(optimizer).__name__}(...) again"
            )
        optimizer._model = weakref.ref(self)
        self.optimizer = optimizer
        self.loss = losses.canonical_name(loss)
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = list(metrics or [])
        for metric in metrics:
            if metric not in _ACCURACY_NAMES:
                raise ValueError(
                    f"metrics may only contain one of {list(_ACCURACY_NAMES)}, got "
                    f"{metric!r}"
                )
        if len(metrics) > 1:
            raise ValueError(f"metrics may hold one accuracy metric, got {metrics}")
        self.metrics_names = ["loss"] + metrics
        self._accepted_y = None
        self._accuracy_name = metrics[0] if metrics else None
        self._compiled = True
        if self.built and not (keeps_state and optimizer._size == self._params.size):
            self.optimizer.build(self._params.size)

    def _fuses_softmax(self):
        """True when the last layer's softmax can merge with a cross-entropy loss."""
        last = self.layers[-1]
        return losses.is_cross_entropy(self.loss) and getattr(
            last, "produces_softmax", False
        )

    # ------------------------------------------------------------------
    # input checks and conversion

    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"{what}: the model is not built yet; give the first layer an "
                "input_shape or call the model on data first"
            )

    def _require_compiled(self, what):
        if not self._compiled:
            raise ValueError(
                f"{what}: the model must be compiled first; call "
                "model.compile(optimizer=..., loss=...)"
            )

    def _check_x(self, x, argument="x"):
        """Validate ``x``; builds the model from it if needed.  Returns the array."""
        # Every check below depends only on the array's shape and dtype and on the
        # model's layers, and a rebuild forgets what was accepted: a batch like
        # the last accepted one needs no second look.
        if type(x) is np.ndarray and (x.shape, x.dtype) == self._accepted_x:
            return x
        x = _as_numeric(x, argument)
        if not self.layers:
            raise ValueError("the model has no layers; add some with model.add()")
        if not self.built:
            if x.ndim < 2:
                raise ValueError(
                    f"{argument} must have a batch axis and features, got shape "
                    f"{x.shape}"
                )
            self._build(x.shape[1:])
        expected = self._input_shape
        if x.ndim != len(expected) + 1:
            if isinstance(self.layers[0], SimpleRNN):
                what = "(batch, time steps, features)"
            else:
                what = f"(batch, {', '.join(str(s) for s in expected)})"
            raise ValueError(
                f"{argument} must have {len(expected) + 1} dimensions {what}, got "
                f"shape {x.shape}"
            )
        for axis, size in enumerate(expected):
            if size is not None and x.shape[axis + 1] != size:
                raise ValueError(
                    f"{argument} must have shape (batch, "
                    f"{', '.join('any' if s is None else str(s) for s in expected)})"
                    f", got {x.shape}: axis {axis + 1} is {x.shape[axis + 1]}, "
                    f"expected {size}"
                )
        if x.shape[0] == 0:
            raise ValueError(f"{argument} is empty (0 samples)")
        if any(s == 0 for s in x.shape[1:]):
            raise ValueError(f"{argument} has an empty axis: shape {x.shape}")
        self._accepted_x = (x.shape, x.dtype)
        return x

    def _convert_x(self, x, argument="x"):
        """float32 internal layout of a checked batch: (T, B, D) or (B, F)."""
        _threads.use_threads_for_batch(x.shape[0])
        if x.ndim == 3:
            B, T, D = x.shape
            out = self._buffers.get(argument, (T, B, D))
            finite = convert.sequence_to_time_major(out, x)
        else:
            flat = x.reshape(x.shape[0], -1)
            out = self._buffers.get(argument, flat.shape)
            finite = convert.matrix_to_float32(out, flat)
            out = out.reshape(x.shape)
        if not finite:
            _reject_non_finite(x, argument)
            raise ValueError(f"{argument} contains NaN or infinite values")
        return out

    def _check_y(self, y, x):
        """Validate targets against x, the loss and the output shape.

        Returns the array.  A free time axis in the output takes x's step count.
        """
        # As in _check_x; compile forgets accepted targets, as the loss decides
        # what they must look like.  Integer labels have their values checked
        # on every batch, so they are never remembered.
        if type(y) is np.ndarray and (x.shape, y.shape, y.dtype) == self._accepted_y:
            return y
        n_samples = x.shape[0]
        y = _as_numeric(y, "y")
        if y.ndim == 0 or y.shape[0] != n_samples:
            got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} samples"
            raise ValueError(
                f"x and y must have the same number of samples: x has {n_samples}, "
                f"y has {got}"
            )
        output = tuple(
            x.shape[1] if size is None else size
            for size in self.layers[-1].output_shape
        )
        K = output[-1]
        if self.loss == losses.SPARSE:
            expected = tuple(output[:-1])
            shape = y.shape[1:]
            if shape == expected + (1,):
                y = y.reshape(y.shape[:-1])
            elif shape != expected:
                raise ValueError(
                    f"y for sparse_categorical_crossentropy must hold integer labels "
                    f"of shape {(n_samples,) + expected}, got {y.shape}"
                )
            if y.dtype.kind == "f":
                bad = ~np.isfinite(y) | (y != np.round(y))
                if np.any(bad):
                    raise ValueError(
                        "y must hold whole-number class labels, got "
                        f"{y[bad].flat[0]!r} among them"
                    )
            if y.size and (y.min() < 0 or y.max() >= K):
                raise ValueError(
                    f"y labels must be in [0, {K - 1}] for {K} output units, got "
                    f"values from {y.min()} to {y.max()}"
                )
            return y
        if y.ndim == 1 and tuple(output) == (1,):
            # One output unit: targets of shape (n,) are read as (n, 1), as
            # Keras does.
            y = y.reshape(n_samples, 1)
        if y.shape[1:] != tuple(output):
            hint = ""
            if self.loss == losses.CATEGORICAL and y.shape[1:] in ((), (1,)):
                hint = (
                    "; for integer labels use to_categorical(y) or "
                    "loss='sparse_categorical_crossentropy'"
                )
            raise ValueError(
                f"y must have shape {(n_samples,) + tuple(output)} to match the "
                f"model's output, got {y.shape}{hint}"
            )
        self._accepted_y = (x.shape, y.shape, y.dtype)
        return y

    def _convert_y(self, y, n_samples):
        """Targets as (N, K) float32 rows ordered like the model's output rows."""
        K = self.layers[-1].output_shape[-1]
        if self.loss == losses.SPARSE:
            labels = y
            if y.ndim == 2:  # (B, T) -> time-major rows
                labels = y.T
            labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
            rows = self._buffers.get("y", (labels.size, K))
            kernels().sparse_to_onehot(rows, labels)
            return rows
        if y.ndim == 3:
            B, T, _ = y.shape
            rows = self._buffers.get("y", (T, B, K))
            finite = convert.sequence_to_time_major(rows, y)
            rows = rows.reshape(T * B, K)
        else:
            rows = self._buffers.get("y", (n_samples, K))
            finite = convert.matrix_to_float32(rows, y)
        if not finite:
            _reject_non_finite(y, "y")
            raise ValueError("y contains NaN or infinite values")
        return rows

    # ------------------------------------------------------------------
    # one batch

    def _rows(self, N, K):
        """Loss buffers for N rows of K outputs; a few shapes are kept."""
        buffers = self._row_buffers.get((N, K))
        if buffers is None:
            if len(self._row_buffers) > 2:
                self._row_buffers = {}
            buffers = losses.RowBuffers(N, K)
            self._row_buffers[(N, K)] = buffers
        return buffers

    def _inference_layers(self):
        """(SimpleRNN, Dense, Activation or None) when one parallel kernel can run
        inference: SimpleRNN without sequences -> Dense [-> Activation]."""
        layers = self.layers
        if not hasattr(kernels(), "rnn_dense_predict") or len(layers) not in (2, 3):
            return None
        rnn, dense = layers[0], layers[1]
        if not isinstance(rnn, SimpleRNN) or rnn.return_sequences:
            return None
        if not isinstance(dense, Dense):
            return None
        if len(layers) == 3 and not isinstance(layers[2], Activation):
            return None
        return rnn, dense, layers[2] if len(layers) == 3 else None

    def _inference_output(self, x, stop_at_logits):
        """Output (B, K) of a model that ``_inference_layers`` accepts.

        ``x`` is (B, T, D) in any real dtype and layout; it is converted chunk by
        chunk inside the kernel, so no float32 copy of the whole input is made.
        """
        rnn, dense, activation = self._inference_layers()
        out = np.empty((x.shape[0], dense.units), dtype=np.float32)
        # The kernel spreads chunks over the cores; BLAS must not add threads.
        _threads.use_threads_for_batch(1)
        finite = kernels().rnn_dense_predict(
            out, x, *rnn.kernel_arguments(), *dense.kernel_arguments(),
            rnn.activation_code,
        )  # fmt: skip
        if not finite:
            _reject_non_finite(x, "x")
            raise ValueError("x contains NaN or infinite values")
        for layer in (dense, activation):
            if layer is None or layer.activation == "linear":
                continue
            if layer.produces_softmax:
                if stop_at_logits:
                    break
                kernels().softmax_forward(out, out.copy())
            else:
                flat = out.reshape(-1)
                kernels().activation_forward(
                    flat, flat, activations.ELEMENTWISE[layer.activation]
                )
        return out

    def _forward(self, inputs, training, stop_at_logits):
        if not training and self._inference_layers() is not None:
            # inputs is time-major; the kernel reads any layout.
            return self._inference_output(inputs.transpose(1, 0, 2), stop_at_logits)
        out = inputs
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if stop_at_logits and index == last:
                if isinstance(layer, Activation):
                    break
                out = layer.forward(out, training, logits_only=True)
            else:
                out = layer.forward(out, training)
        return out

    def _backward(self, gradient, from_logits):
        last = len(self.layers) - 1
        for index in range(last, -1, -1):
            layer = self.layers[index]
            need_dx = index > 0
            if from_logits and index == last:
                if isinstance(layer, Activation):
                    continue
                gradient = layer.backward(gradient, need_dx, from_logits=True)
            else:
                gradient = layer.backward(gradient, need_dx)

    def _loss_on_batch(self, inputs, targets, need_gradient):
        """Forward pass and loss on converted arrays.

        Returns (loss, accuracy or None, output rows).
        Leaves the gradient of the loss in the layers' gradient views when asked.
        """
        fused = self._fuses_softmax()
        out = self._forward(inputs, need_gradient, stop_at_logits=fused)
        return self._loss_of_output(out, targets, need_gradient)

    def _loss_of_output(self, out, targets, need_gradient):
        """Loss, accuracy and scores of the last layer's output ``out``.

        ``out`` holds logits when the softmax is fused with the loss.
        """
        fused = self._fuses_softmax()
        K = out.shape[-1]
        rows = out.reshape(-1, K)
        if fused:
            loss, scores, gradient = losses.softmax_cross_entropy(
                self._rows(rows.shape[0], K), rows, targets, need_gradient
            )
        elif losses.is_cross_entropy(self.loss):
            scores = rows
            loss, gradient = losses.probability_cross_entropy(
                rows, targets, need_gradient, sparse=self.loss == losses.SPARSE
            )
        else:
            scores = rows
            loss, gradient = losses.mean_squared_error(rows, targets, need_gradient)
        if need_gradient:
            self._backward(gradient.reshape(out.shape), from_logits=fused)
        accuracy = None
        if self._accuracy_name is not None:
            accuracy = losses.accuracy(scores, targets)
        return loss, accuracy, scores

    def _results(self, loss, accuracy, return_dict=False):
        if return_dict:
            logs = {"loss": loss}
            if self._accuracy_name is not None:
                logs[self._accuracy_name] = accuracy
            return logs
        if self._accuracy_name is None:
            return loss
        return [loss, accuracy]

    def train_on_batch(self, x, y, return_dict=False):
        """One gradient step on one batch.

        Returns this batch's loss (before the update), or ``[loss, accuracy]``
        when an accuracy metric was compiled.  If the loss is NaN or infinite the
        weights are left as they were and a ``FastRNNWarning`` is issued.
        """
        self._require_compiled("train_on_batch")
        x = self._check_x(x)
        y = self._check_y(y, x)
        loss, accuracy, _ = self._train_batch(x, self._convert_y(y, x.shape[0]))
        return self._results(loss, accuracy, return_dict)

    def _fused_layers(self):
        """(SimpleRNN, Dense) when one fused kernel can run the whole train step.

        That is SimpleRNN -> Dense -> softmax (in the Dense or an Activation) with
        a cross-entropy loss and no gradient clipping.
        """
        layers = self.layers
        if not hasattr(kernels(), "rnn_dense_xent_train_step"):
            return None
        if not self._fuses_softmax() or self.optimizer.clipnorm is not None:
            return None
        if self.optimizer.clipvalue is not None:
            return None
        if len(layers) == 3 and isinstance(layers[2], Activation):
            if layers[1].activation != "linear":
                return None
            layers = layers[:2]
        if len(layers) != 2:
            return None
        rnn, dense = layers
        if not isinstance(rnn, SimpleRNN) or rnn.return_sequences:
            return None
        if not isinstance(dense, Dense):
            return None
        return rnn, dense

    def _fused_buffers(self, T, B, D, H, K):
        """Scratch, per-part gradients and part bounds of the fused train step."""
        key = (T, B)
        cached = self._fused_cache.get(key)
        if cached is None:
            parts = max(1, min(_TRAIN_PARTS, B // _MIN_ROWS_PER_PART))
            bounds = np.linspace(0, B, parts + 1).round().astype(np.int64)
            rows = int(np.max(np.diff(bounds)))
            size = backends.train_scratch_size(T, rows, D, H, K)
            gradients = D * H + H * H + H + H * K + K
            cached = (
                np.empty((parts, size), dtype=np.float32),
                np.empty((parts, gradients), dtype=np.float32),
                bounds,
            )
            self._fused_cache = {key: cached}
            self._thread_chooser = None
        return cached

    def _fused_input(self, x):
        """x (B, T, D) as the fused train step reads it: float32, C order.

        Such an x is used where it lies; any other is converted into a buffer.
        Its values are checked inside the kernel.
        """
        if x.dtype == np.float32 and x.flags.c_contiguous:
            return x
        out = self._buffers.get("fused x", x.shape)
        convert.sequence_to_float32(out, x)
        return out

    def _train_fused(self, rnn, dense, x, targets):
        inputs = self._fused_input(x)
        B, T, D = inputs.shape
        H, K = rnn.units, dense.units
        scratch, part_grads, bounds = self._fused_buffers(T, B, D, H, K)
        optimizer = self.optimizer
        code, hyper, state_1, state_2 = optimizer.fused_arguments()
        W, U, b = rnn.kernel_arguments()
        dW, dU, db = rnn.gradient_arguments()
        V, c = dense.kernel_arguments()
        dV, dc = dense.gradient_arguments()
        # The parts run on separate cores: BLAS must not add threads of its own.
        _threads.use_threads_for_batch(1)
        if self._thread_chooser is None:
            cores = min(os.cpu_count() or 1, numba.get_num_threads())
            self._thread_chooser = _ThreadChooser(min(cores, len(bounds) - 1))
        threads = self._thread_chooser.choose()
        started = time.perf_counter()
        loss, correct, inputs_finite = kernels().rnn_dense_xent_train_step(
            self._params, self._grads, state_1, state_2, scratch, part_grads,
            inputs, targets, bounds,
            W, U, b, V, c, dW, dU, db, dV, dc,
            rnn.activation_code, code, hyper, threads,
        )  # fmt: skip
        self._thread_chooser.record(threads, time.perf_counter() - started)
        if not inputs_finite:
            _reject_non_finite(x, "x")
            raise ValueError("x contains NaN or infinite values")
        accuracy = correct / B if self._accuracy_name is not None else None
        return loss, accuracy

    def _train_batch(self, x, targets):
        """One step on a checked batch x and converted targets.

        Returns (loss, accuracy, updated).  The step is undone, with a warning,
        if the loss is not finite or if the update leaves a weight that is not
        (an overflow); the weights then keep their last finite values and
        ``updated`` is False.
        """
        optimizer = self.optimizer
        fused = self._fused_layers()
        optimizer.checkpoint(self._params)
        if fused is not None:
            loss, accuracy = self._train_fused(*fused, x, targets)
        else:
            loss, accuracy, _ = self._loss_on_batch(
                self._convert_x(x), targets, need_gradient=True
            )
            if math.isfinite(loss):
                if optimizer.clipnorm is not None or optimizer.clipvalue is not None:
                    gradients = [g for layer in self.layers for g in layer.gradients]
                    optimizer.clip(self._grads, gradients)
                optimizer.apply(self._params, self._grads)
        if not math.isfinite(loss):
            optimizer.rollback(self._params)
            self._warn_not_updated(f"the loss is {loss}")
            return loss, accuracy, False
        # An overflow in the optimizer's state (Adam's squared gradients, say)
        # leaves the weights finite for this step but poisons every later one,
        # so the state is checked as well.
        if not convert.all_finite(self._params) or not all(
            convert.all_finite(vector) for vector in optimizer.state()
        ):
            optimizer.rollback(self._params)
            self._warn_not_updated(
                f"the loss is {loss} but the update overflowed the weights or the "
                "optimizer's state"
            )
            return loss, accuracy, False
        return loss, accuracy, True

    @staticmethod
    def _warn_not_updated(reason):
        warnings.warn(
            f"{reason}; this batch's update was skipped and the weights kept "
            "their last finite values",
            FastRNNWarning,
            stacklevel=4,
        )

    def test_on_batch(self, x, y, return_dict=False):
        """Loss (and accuracy) of one batch, without updating the weights."""
        self._require_compiled("test_on_batch")
        x = self._check_x(x)
        y = self._check_y(y, x)
        loss, accuracy, _ = self._loss_on_batch(
            self._convert_x(x), self._convert_y(y, x.shape[0]), need_gradient=False
        )
        return self._results(loss, accuracy, return_dict)

    def predict_on_batch(self, x):
        """Model output for one batch, shape (B, K) or (B, T, K)."""
        self._require_compiled("predict_on_batch")
        x = self._check_x(x)
        return self._predict_converted(self._convert_x(x))

    def _predict_converted(self, inputs):
        out = self._forward(inputs, training=False, stop_at_logits=False)
        # out is a layer's buffer, reused by the next call: the caller gets a
        # copy of its own (a transposed view of one sample would already be
        # contiguous, and ascontiguousarray would hand out the buffer itself).
        if out.ndim == 3:  # time-major inside, batch-major for the user
            return out.transpose(1, 0, 2).copy()
        return out.copy()

    # ------------------------------------------------------------------
    # whole arrays

    def predict(self, x, batch_size=32, verbose=0, callbacks=None):
        """Model output for every sample of ``x``, computed ``batch_size`` at a time.

        Parameters
        ----------
        x : array-like of shape (n_samples, T, D) (or (n_samples, F))
        batch_size : int, default 32
        verbose : {0, 1, 2, 'auto'}, default 0
            Accepted for compatibility; predict shows no progress.
        callbacks : None
            Accepted for compatibility; predict calls none.

        Returns
        -------
        ndarray of shape (n_samples, K) or (n_samples, T, K), float32
        """
        self._require_compiled("predict")
        batch_size = _check_batch_size(batch_size)
        _check_verbose(verbose)
        _no_inference_callbacks(callbacks, "predict")
        x = self._check_x(x)
        if self._inference_layers() is not None:
            return self._inference_output(x, stop_at_logits=False)
        parts = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            parts.append(self._predict_converted(self._convert_x(chunk)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def evaluate(
        self, x, y, batch_size=32, verbose="auto", return_dict=False, callbacks=None
    ):
        """Loss (and accuracy) over all samples, as sample-weighted batch means.

        Parameters
        ----------
        x : array-like of shape (n_samples, T, D) (or (n_samples, F))
        y : array-like, one-hot (n_samples, K) or labels, as the loss needs
        batch_size : int, default 32
        verbose : {0, 1, 2, 'auto'}, default 'auto'
            Accepted for compatibility; evaluate shows no progress.
        return_dict : bool, default False
        callbacks : None
            Accepted for compatibility; evaluate calls none.

        Returns
        -------
        float, or [loss, accuracy] when an accuracy metric was compiled.
        """
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size)
        _check_verbose(verbose)
        _no_inference_callbacks(callbacks, "evaluate")
        x = self._check_x(x)
        y = self._check_y(y, x)
        loss, accuracy = self._evaluate_checked(x, y, batch_size)
        return self._results(loss, accuracy, return_dict)

    def _evaluate_checked(self, x, y, batch_size):
        n = x.shape[0]
        inference = self._inference_layers()
        if (
            inference is not None
            and self._fuses_softmax()
            and hasattr(kernels(), "rnn_dense_xent_evaluate")
        ):
            # Loss and accuracy are summed chunk by chunk inside the kernel, on
            # every core, without keeping the logits.
            rnn, dense, _ = inference
            _threads.use_threads_for_batch(1)
            loss_sum, correct, finite = kernels().rnn_dense_xent_evaluate(
                x, self._convert_y(y, n), *rnn.kernel_arguments(),
                *dense.kernel_arguments(), rnn.activation_code,
            )  # fmt: skip
            if not finite:
                _reject_non_finite(x, "x")
                raise ValueError("x contains NaN or infinite values")
            accuracy = correct / n if self._accuracy_name is not None else None
            return loss_sum / n, accuracy
        if inference is not None:
            # Rows are independent, so one pass over all samples gives the same
            # sample-weighted mean as batch by batch, with bounded memory.
            out = self._inference_output(x, stop_at_logits=self._fuses_softmax())
            loss, accuracy, _ = self._loss_of_output(
                out, self._convert_y(y, n), need_gradient=False
            )
            return loss, accuracy
        loss_sum = accuracy_sum = 0.0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            loss, accuracy, _ = self._loss_on_batch(
                self._convert_x(x[start:stop]),
                self._convert_y(y[start:stop], stop - start),
                need_gradient=False,
            )
            loss_sum += loss * (stop - start)
            if accuracy is not None:
                accuracy_sum += accuracy * (stop - start)
        accuracy = accuracy_sum / n if self._accuracy_name is not None else None
        return loss_sum / n, accuracy

    def fit(
        self,
        x,
        y,
        batch_size=32,
        epochs=1,
        verbose=1,
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        initial_epoch=0,
    ):
        """Train for ``epochs`` passes over the data.

        Parameters
        ----------
        x, y : array-like
            Inputs (n_samples, T, D) and targets as the loss needs.
        batch_size : int, default 32
        epochs : int, default 1
        verbose : {0, 1, 2, 'auto'}, default 1
            0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        callbacks : list of Callback, optional
        validation_split : float, default 0.0
            Fraction of samples, taken from the end before shuffling, held out
            for validation.
        validation_data : tuple (x_val, y_val), optional
            Overrides ``validation_split``.
        shuffle : bool, default True
            Shuffle the training samples before each epoch.
        initial_epoch : int, default 0

        Returns
        -------
        History
            ``history.history`` holds per-epoch ``loss``, the accuracy metric and
            their ``val_`` twins.

        Notes
        -----
        Training stops early, keeping the last finite weights, if the loss
        becomes NaN or infinite; Ctrl-C stops after the current batch.
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        if isinstance(epochs, (int, np.integer)) and not isinstance(epochs, bool):
            if epochs < 0:
                raise ValueError(f"epochs must be a non-negative integer, got {epochs}")
        else:
            raise TypeError(
                f"epochs must be a non-negative integer, got "
                f"{type(epochs).__name__} {epochs!r}"
            )
        verbose = _check_verbose(verbose)
        callbacks = _callback_list(callbacks)
        x = self._check_x(x)
        y = self._check_y(y, x)
        _reject_non_finite(x, "x")
        _reject_non_finite(y, "y")

        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(
                validation_data
            ) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val)")
            if len(validation_data) == 3 and validation_data[2] is not None:
                # TODO: sample weights are not implemented.
                raise ValueError(
                    "validation_data: sample weights (a third element) are not "
                    "supported; pass (x_val, y_val)"
                )
            x_val = self._check_x(validation_data[0], "validation_data x")
            y_val = self._check_y(validation_data[1], x_val)
            _reject_non_finite(x_val, "validation_data x")
            _reject_non_finite(y_val, "validation_data y")
        elif validation_split:
            if not 0.0 < float(validation_split) < 1.0:
                raise ValueError(
                    f"validation_split must be in (0, 1), got {validation_split}"
                )
            n_train = int(x.shape[0] * (1.0 - float(validation_split)))
            if n_train < 1 or n_train == x.shape[0]:
                raise ValueError(
                    f"validation_split={validation_split} leaves no samples for "
                    f"training or for validation out of {x.shape[0]}"
                )
            x, x_val = x[:n_train], x[n_train:]
            y, y_val = y[:n_train], y[n_train:]
        else:
            x_val = y_val = None

        history = callbacks_module.History()
        n = x.shape[0]
        steps = -(-n // batch_size)
        callback_list = callbacks_module.CallbackList(
            callbacks + [history],
            self,
            {"epochs": epochs, "steps": steps, "verbose": verbose},
        )
        from fastrnn import _progress

        self.stop_training = False
        callback_list.on_train_begin()
        try:
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                order = get_rng().permutation(n) if shuffle else None
                bar = _progress.EpochProgress(epoch, epochs, steps, verbose)
                loss_sum = accuracy_sum = 0.0
                seen = 0
                started = time.perf_counter()
                for step in range(steps):
                    index = slice(step * batch_size, min(n, (step + 1) * batch_size))
                    if order is not None:
                        index = np.sort(order[index])
                    callback_list.on_train_batch_begin(step)
                    xb, yb = x[index], y[index]
                    loss, accuracy, updated = self._train_batch(
                        xb, self._convert_y(yb, xb.shape[0])
                    )
                    size = xb.shape[0]
                    if not updated:
                        self.stop_training = True
                        print(
                            f"Epoch {epoch + 1}, batch {step + 1}: training diverged "
                            f"(loss {loss}); stopping with the last finite weights.",
                            file=sys.stderr,
                        )
                        break
                    seen += size
                    loss_sum += loss * size
                    logs = {"loss": loss_sum / seen}
                    if accuracy is not None:
                        accuracy_sum += accuracy * size
                        logs[self._accuracy_name] = accuracy_sum / seen
                    bar.update(logs)
                    callback_list.on_train_batch_end(step, dict(logs))
                    if self.stop_training:
                        break
                if seen == 0:
                    bar.close({})
                    break
                logs = {"loss": loss_sum / seen}
                if self._accuracy_name is not None:
                    logs[self._accuracy_name] = accuracy_sum / seen
                if x_val is not None:
                    val_loss, val_accuracy = self._evaluate_checked(
                        x_val, y_val, batch_size
                    )
                    logs["val_loss"] = val_loss
                    if self._accuracy_name is not None:
                        logs[f"val_{self._accuracy_name}"] = val_accuracy
                bar.close(logs, time.perf_counter() - started)
                callback_list.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            # The interrupted batch either finished its update or never started
            # it, so the weights are consistent; hand back what was learned.
            print("\nInterrupted: keeping the weights trained so far.", file=sys.stderr)
            self.stop_training = True
        callback_list.on_train_end()
        return history

    # ------------------------------------------------------------------
    # saving (the format lives in fastrnn.saving)

    def save(self, filepath, overwrite=True):
        """Save architecture, weights, compile settings and optimizer state.

        The file is a Keras 3 ``.keras`` archive; see :mod:`fastrnn.saving`.
        """
        from fastrnn import saving

        saving.save_model(self, filepath, overwrite=overwrite)

    def save_weights(self, filepath, overwrite=True):
        """Save the weights alone, as Keras 3's ``.weights.h5`` file."""
        from fastrnn import saving

        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        """Load weights saved by :meth:`save_weights` (or Keras 3)."""
        from fastrnn import saving

        saving.load_weights(self, filepath)


def load_model(filepath, compile=True):
    """Load a model saved by :meth:`Sequential.save` or by Keras 3 (``.keras``)."""
    from fastrnn import saving

    return saving.load_model(filepath, compile=compile)


def _check_verbose(verbose):
    """verbose as 0, 1 or 2 ('auto' is 1, False and True are 0 and 1 as in
    Keras), or a ValueError."""
    if isinstance(verbose, str):
        if verbose != "auto":
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        return 1
    if not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _no_inference_callbacks(callbacks, method):
    # TODO: predict and evaluate take no callbacks yet.
    if _callback_list(callbacks):
        raise ValueError(f"{method}: callbacks are not supported, got {callbacks!r}")


def _callback_list(callbacks):
    """callbacks as a list: None, one Callback, or a list or tuple of them."""
    if callbacks is None:
        return []
    if isinstance(callbacks, callbacks_module.Callback):
        return [callbacks]
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"callbacks must be a list of Callback objects, got "
            f"{type(callbacks).__name__}"
        )
    # CallbackList checks what the list holds.
    return list(callbacks)


def _reject_non_finite(array, argument):
    if array.dtype.kind != "f":
        return
    finite, in_range = convert.finite_and_in_float32_range(array)
    if not finite:
        raise ValueError(f"{argument} contains NaN or infinite values")
    if not in_range:
        raise ValueError(f"{argument} has values beyond float32's range")


__all__ = ["Sequential", "load_model"]
