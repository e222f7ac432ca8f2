"""Layers: SimpleRNN, Dense and Activation, with Keras's names and arguments.

Inside a model, sequences travel time-major, (T, B, F), and vectors as (B, F);
the model converts its input and output at the edges.  Layers own no weights:
the model packs every weight into one flat float32 vector and hands each layer
views of it (and of the matching gradient vector), so an optimizer step is a
single kernel call over all parameters.

The Keras names map to the kernel names as: ``kernel`` = W, ``recurrent_kernel``
= U, ``bias`` = b for SimpleRNN (see ``fastrnn.backends.numba_kernels``), and
``kernel`` = V, ``bias`` = c for Dense.
"""

import warnings

import numpy as np

from fastrnn import activations, initializers
from fastrnn._warnings import FastRNNWarning
from fastrnn.backends import kernels

_EMPTY_2D = np.zeros((0, 0), dtype=np.float32)
_EMPTY_3D = np.zeros((0, 0, 0), dtype=np.float32)

# Buffers kept per layer for this many distinct batch shapes (a training batch
# and an evaluation batch alternate in a typical script).
_BUFFER_SHAPES_KEPT = 3


def _check_positive_int(value, argument):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{argument} must be a positive integer, got {type(value).__name__} "
            f"{value!r}"
        )
    if value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value}")
    return int(value)


def _as_shape(name, argument, value):
    """value as a tuple, or a TypeError naming the argument."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"{name}: {argument} must be a tuple of sizes such as (28, 28), got "
            f"{type(value).__name__} {value!r}"
        )
    return tuple(value)


def _shape_from_keywords(name, input_shape, batch_input_shape, input_dim, input_length):
    """The per-sample input shape declared by Keras's various keywords, or None."""
    declared = None
    if batch_input_shape is not None:
        batch_input_shape = _as_shape(name, "batch_input_shape", batch_input_shape)
        if len(batch_input_shape) < 2:
            raise ValueError(
                f"{name}: batch_input_shape must be (batch, ...features), got "
                f"{batch_input_shape!r}"
            )
        # The batch size is not needed: every call adapts to its batch.
        declared = batch_input_shape[1:]
    if input_shape is not None:
        declared = _as_shape(name, "input_shape", input_shape)
    if declared is None and input_dim is not None:
        declared = (input_length, input_dim) if input_length is not None else None
        if declared is None:
            declared = ("any", input_dim)
    if declared is None:
        return None
    cleaned = []
    for position, size in enumerate(declared):
        if size is None or size == "any":
            cleaned.append(None)
        else:
            cleaned.append(
                _check_positive_int(size, f"{name}: input shape[{position}]")
            )
    return tuple(cleaned)


class _BufferCache:
    """Work arrays keyed by shape, reused while shapes repeat."""

    def __init__(self, allocate):
        self._allocate = allocate
        self._entries = {}

    def get(self, key):
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = self._allocate(*key)
            while len(self._entries) >= _BUFFER_SHAPES_KEPT:
                self._entries.pop(next(iter(self._entries)))
        self._entries[key] = entry  # most recently used last
        return entry

    def clear(self):
        self._entries.clear()


class Layer:
    """Base class: a named block with weights (possibly none) and a shape rule.

    Subclasses set ``self._param_specs`` in :meth:`build` to a list of
    ``(keras_name, shape, initializer_name)`` and implement ``forward`` and
    ``backward`` on the model's internal layouts.
    """

    _counts = {}

    def __init__(
        self,
        name=None,
        input_shape=None,
        batch_input_shape=None,
        input_dim=None,
        input_length=None,
        trainable=True,
        dtype=None,
    ):
        prefix = type(self).__name__.lower()
        if prefix == "simplernn":
            prefix = "simple_rnn"
        if name is None:
            number = Layer._counts.get(prefix, 0)
            Layer._counts[prefix] = number + 1
            name = prefix if number == 0 else f"{prefix}_{number}"
        self.name = name
        if dtype not in (None, "float32", np.float32):
            raise ValueError(
                f"{name}: only dtype 'float32' is supported, got {dtype!r}"
            )
        if trainable is not True:
            # TODO: freezing layers (trainable=False) is not implemented.
            raise ValueError(f"{name}: trainable=False is not supported")
        self.declared_input_shape = _shape_from_keywords(
            name, input_shape, batch_input_shape, input_dim, input_length
        )
        self.input_shape = None
        self.output_shape = None
        self._param_specs = []
        self.weights = []
        self.gradients = []

    @property
    def built(self):
        return self.output_shape is not None

    @property
    def trainable(self):
        """Always True: every layer's weights train."""
        return True

    @trainable.setter
    def trainable(self, value):
        if value is not True:
            # TODO: freezing layers (trainable=False) is not implemented.
            raise ValueError(f"{self.name}: trainable=False is not supported")

    def build(self, input_shape):
        """Fix the per-sample input shape; returns the per-sample output shape."""
        raise NotImplementedError

    def param_specs(self):
        return list(self._param_specs)

    def count_params(self):
        return int(sum(np.prod(shape) for _, shape, _ in self._param_specs))

    def bind(self, weights, gradients):
        """Attach views of the model's flat weight and gradient vectors."""
        self.weights = list(weights)
        self.gradients = list(gradients)

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def get_config(self):
        return {"name": self.name}


class SimpleRNN(Layer):
    """Fully connected recurrent layer, h_t = act(x_t W + h_{t-1} U + b).

    Parameters
    ----------
    units : int
        Number of hidden units H.  ``output_dim`` is accepted as an old name.
    activation : {'tanh', 'relu', 'sigmoid', 'linear'} or None, default 'tanh'
    use_bias : bool, default True
    kernel_initializer : str, default 'glorot_uniform'
        For W, shape (D, H).
    recurrent_initializer : str, default 'orthogonal'
        For U, shape (H, H).
    bias_initializer : str, default 'zeros'
        For b, shape (H,).
    return_sequences : bool, default False
        Return h_t of every step, shape (B, T, H), rather than the last, (B, H).
    input_shape : tuple (T, D), optional
        T may be None.  ``batch_input_shape`` (batch, T, D) with any batch size,
        or ``input_dim`` with ``input_length`` are accepted too.
    unroll : bool, default False
        Accepted for compatibility; the time loop is always compiled.

    Notes
    -----
    Dropout, recurrent dropout, ``stateful``, ``go_backwards`` and
    ``return_state`` are not supported and raise ``ValueError`` when asked for.
    """

    def __init__(
        self,
        units=None,
        activation="tanh",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        return_sequences=False,
        unroll=False,
        **kwargs,
    ):
        units = _take_old_units_name(self, units, kwargs)
        _refuse_unsupported(
            "SimpleRNN",
            kwargs,
            {
                "dropout": 0.0,
                "recurrent_dropout": 0.0,
                "stateful": False,
                "go_backwards": False,
                "return_state": False,
            },
        )
        super().__init__(**kwargs)
        self.units = _check_positive_int(units, "units")
        self.activation = activations.canonical_name(
            activation, "activation", allow_softmax=False
        )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(
            kernel_initializer, "kernel_initializer"
        )
        self.recurrent_initializer = initializers.get(
            recurrent_initializer, "recurrent_initializer"
        )
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.return_sequences = bool(return_sequences)
        self.unroll = bool(unroll)
        self._code = activations.ELEMENTWISE[self.activation]
        self._zero_bias = None
        self._buffers = _BufferCache(self._allocate)
        self._saved = None

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                f"{self.name}: SimpleRNN expects input of shape (batch, time steps, "
                f"features), i.e. 3 dimensions, got a per-sample shape "
                f"{tuple(input_shape)}"
            )
        steps, features = input_shape
        if features is None:
            raise ValueError(f"{self.name}: the number of input features must be known")
        H = self.units
        self.input_shape = (steps, features)
        self._param_specs = [
            ("kernel", (features, H), self.kernel_initializer),
            ("recurrent_kernel", (H, H), self.recurrent_initializer),
        ]
        if self.use_bias:
            self._param_specs.append(("bias", (H,), self.bias_initializer))
        else:
            self._zero_bias = np.zeros(H, dtype=np.float32)
            self._scratch_bias_gradient = np.zeros(H, dtype=np.float32)
        self.output_shape = (steps, H) if self.return_sequences else (H,)
        return self.output_shape

    def bind(self, weights, gradients):
        super().bind(weights, gradients)
        self._buffers.clear()

    def _allocate(self, T, B):
        D, H = self.input_shape[1], self.units
        return {
            "hs": np.empty((T, B, H), dtype=np.float32),
            "work": np.empty((2, B, H), dtype=np.float32),
            "dz": np.empty((T, B, H), dtype=np.float32),
            "dx": np.empty((T, B, D), dtype=np.float32),
        }

    @property
    def activation_code(self):
        return self._code

    def kernel_arguments(self):
        """(W, U, b) for the kernels; b is zeros without a bias."""
        bias = self.weights[2] if self.use_bias else self._zero_bias
        return self.weights[0], self.weights[1], bias

    def gradient_arguments(self):
        """(dW, dU, db) for the kernels; db is scratch without a bias."""
        db = self.gradients[2] if self.use_bias else self._scratch_bias_gradient
        return self.gradients[0], self.gradients[1], db

    def forward(self, x_tm, training):
        """x_tm (T, B, D) -> (T, B, H) if return_sequences else (B, H)."""
        T, B = x_tm.shape[0], x_tm.shape[1]
        buffers = self._buffers.get((T, B))
        W, U, b = self.kernel_arguments()
        kernels().rnn_forward(buffers["hs"], buffers["work"], x_tm, W, U, b, self._code)
        self._saved = (x_tm, buffers)
        if self.return_sequences:
            return buffers["hs"]
        return buffers["hs"][T - 1]

    def backward(self, dout, need_dx):
        """dout (T, B, H) or (B, H) -> dx (T, B, D) if need_dx, else None."""
        x_tm, buffers = self._saved
        if dout.ndim == 2:
            dout = dout.reshape(1, dout.shape[0], dout.shape[1])
        dx = buffers["dx"] if need_dx else _EMPTY_3D
        dW, dU, db = self.gradient_arguments()
        W, U, _ = self.kernel_arguments()
        kernels().rnn_backward(
            dW, dU, db, dx, buffers["dz"], buffers["work"], dout, buffers["hs"],
            x_tm, W, U, self._code,
        )  # fmt: skip
        return dx if need_dx else None

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            recurrent_initializer=self.recurrent_initializer,
            bias_initializer=self.bias_initializer,
            return_sequences=self.return_sequences,
            unroll=self.unroll,
        )
        return config


class Dense(Layer):
    """Fully connected layer, y = act(x V + c).

    Parameters
    ----------
    units : int
        Output size K.  ``output_dim`` is accepted as an old name.
    activation : str or None, default None (linear)
        One of 'linear', 'tanh', 'relu', 'sigmoid', 'softmax'.
    use_bias : bool, default True
    kernel_initializer : str, default 'glorot_uniform'
    bias_initializer : str, default 'zeros'
    input_shape : tuple, optional
        (F,) for vectors or (T, F) for sequences; on a sequence the layer is
        applied to every time step with the same weights.  ``input_dim`` works too.
    """

    def __init__(
        self,
        units=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        units = _take_old_units_name(self, units, kwargs)
        super().__init__(**kwargs)
        self.units = _check_positive_int(units, "units")
        self.activation = activations.canonical_name(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(
            kernel_initializer, "kernel_initializer"
        )
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._zero_bias = None
        self._buffers = _BufferCache(self._allocate)
        self._saved = None

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None or len(input_shape) > 2:
            raise ValueError(
                f"{self.name}: Dense expects input of shape (batch, features) or "
                f"(batch, time steps, features), got a per-sample shape "
                f"{tuple(input_shape)}"
            )
        K = self.units
        self.input_shape = tuple(input_shape)
        self._param_specs = [("kernel", (features, K), self.kernel_initializer)]
        if self.use_bias:
            self._param_specs.append(("bias", (K,), self.bias_initializer))
        else:
            self._zero_bias = np.zeros(K, dtype=np.float32)
            self._scratch_bias_gradient = np.zeros(K, dtype=np.float32)
        self.output_shape = tuple(input_shape[:-1]) + (K,)
        return self.output_shape

    def bind(self, weights, gradients):
        super().bind(weights, gradients)
        self._buffers.clear()

    def _allocate(self, N):
        H, K = self.input_shape[-1], self.units
        return {
            "z": np.empty((N, K), dtype=np.float32),
            "y": np.empty((N, K), dtype=np.float32),
            "dz": np.empty((N, K), dtype=np.float32),
            "dx": np.empty((N, H), dtype=np.float32),
        }

    @property
    def produces_softmax(self):
        return self.activation == activations.SOFTMAX

    def kernel_arguments(self):
        """(V, c) for the kernels; c is zeros without a bias."""
        bias = self.weights[1] if self.use_bias else self._zero_bias
        return self.weights[0], bias

    def gradient_arguments(self):
        """(dV, dc) for the kernels; dc is scratch without a bias."""
        dc = self.gradients[1] if self.use_bias else self._scratch_bias_gradient
        return self.gradients[0], dc

    def forward(self, x, training, logits_only=False):
        """x (B, H) or (T, B, H) -> same leading axes with K features.

        With ``logits_only`` a softmax activation is left out, for a loss that
        fuses it.
        """
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        buffers = self._buffers.get((x2.shape[0],))
        k = kernels()
        k.dense_forward(buffers["z"], x2, *self.kernel_arguments())
        if self.activation == "linear" or (logits_only and self.produces_softmax):
            y = buffers["z"]
        elif self.produces_softmax:
            y = buffers["y"]
            k.softmax_forward(y, buffers["z"])
        else:
            y = buffers["y"]
            k.activation_forward(
                y.reshape(-1),
                buffers["z"].reshape(-1),
                activations.ELEMENTWISE[self.activation],
            )
        self._saved = (x2, buffers, y)
        return y.reshape(lead + (self.units,))

    def backward(self, dout, need_dx, from_logits=False):
        """Gradient w.r.t. the input; ``from_logits`` if dout is w.r.t. the logits."""
        x2, buffers, y = self._saved
        dy = dout.reshape(-1, self.units)
        k = kernels()
        if self.activation == "linear" or from_logits:
            dz = dy
        elif self.produces_softmax:
            dz = buffers["dz"]
            k.softmax_backward(dz, dy, y)
        else:
            dz = buffers["dz"]
            k.activation_backward(
                dz.reshape(-1),
                dy.reshape(-1),
                y.reshape(-1),
                activations.ELEMENTWISE[self.activation],
            )
        dx = buffers["dx"] if need_dx else _EMPTY_2D
        dV, dc = self.gradient_arguments()
        k.dense_backward(dV, dc, dx, dz, x2, self.weights[0])
        if not need_dx:
            return None
        return dx.reshape(dout.shape[:-1] + (x2.shape[1],))

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
        )
        return config


class Activation(Layer):
    """Applies an activation to its input.

    Parameters
    ----------
    activation : {'softmax', 'tanh', 'relu', 'sigmoid', 'linear'}
        softmax normalises over the last axis.
    """

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.canonical_name(activation)
        self._buffers = _BufferCache(self._allocate)
        self._saved = None

    @property
    def produces_softmax(self):
        return self.activation == activations.SOFTMAX

    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(input_shape)
        return self.output_shape

    def _allocate(self, N, F):
        return {
            "y": np.empty((N, F), dtype=np.float32),
            "dx": np.empty((N, F), dtype=np.float32),
        }

    def forward(self, x, training):
        x2 = x.reshape(-1, x.shape[-1])
        buffers = self._buffers.get(x2.shape)
        y = buffers["y"]
        k = kernels()
        if self.produces_softmax:
            k.softmax_forward(y, x2)
        else:
            k.activation_forward(
                y.reshape(-1), x2.reshape(-1), activations.ELEMENTWISE[self.activation]
            )
        self._saved = (buffers, y)
        return y.reshape(x.shape)

    def backward(self, dout, need_dx):
        buffers, y = self._saved
        dy = dout.reshape(y.shape)
        dx = buffers["dx"]
        k = kernels()
        if self.produces_softmax:
            k.softmax_backward(dx, dy, y)
        else:
            k.activation_backward(
                dx.reshape(-1),
                dy.reshape(-1),
                y.reshape(-1),
                activations.ELEMENTWISE[self.activation],
            )
        return dx.reshape(dout.shape)

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.activation)
        return config


def _take_old_units_name(layer, units, kwargs):
    """Accept Keras 1's ``output_dim`` for ``units``, with a warning as Keras 2 gave."""
    if "output_dim" in kwargs:
        old = kwargs.pop("output_dim")
        if units is not None:
            raise TypeError(
                f"{type(layer).__name__}: give units or output_dim, not both"
            )
        warnings.warn(
            f"{type(layer).__name__}: 'output_dim' is an old name; use units={old!r}",
            FastRNNWarning,
            stacklevel=3,
        )
        units = old
    if units is None:
        raise TypeError(f"{type(layer).__name__}: missing required argument 'units'")
    return units


def _refuse_unsupported(layer_name, kwargs, defaults):
    """Drop keywords left at their default; refuse those set to anything else."""
    for keyword, default in defaults.items():
        if keyword in kwargs:
            value = kwargs.pop(keyword)
            if value != default:
                raise ValueError(
                    f"{layer_name}: {keyword}={value!r} is not supported by fastrnn "
                    f"(only {keyword}={default!r})"
                )
