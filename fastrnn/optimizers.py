"""Optimizers: Adam, SGD and RMSprop with Keras 3's update rules.

An optimizer updates the model's flat float32 weight vector in one kernel call.
Its state (moments, velocities) is a flat vector of the same length.
"""

import math
import warnings

import numpy as np

from fastrnn._warnings import FastRNNWarning
from fastrnn.backends import kernels


def _check_float(value, argument, low=None, high=None, low_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"{argument} must be a number, got {type(value).__name__} {value!r}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{argument} must be {bound} {low}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"{argument} must be < {high}, got {value}")
    return value


class Optimizer:
    """Base class.

    Every hyperparameter is checked whenever it is set, in the constructor or
    later (``optimizer.learning_rate = 0.01`` between steps works as in Keras),
    so a bad value fails where it is given, not inside a training step.

    Parameters
    ----------
    learning_rate : float
        Step size.  ``lr`` is accepted as an old name, with a warning.
    clipnorm : float, optional
        Rescale each weight's gradient so its L2 norm is at most this.
    clipvalue : float, optional
        Clip every gradient element to [-clipvalue, clipvalue].
    """

    # name -> (low, high, low bound excluded, None allowed), see _check_float
    _RULES = {
        "learning_rate": (0.0, None, True, False),
        "clipnorm": (0.0, None, True, True),
        "clipvalue": (0.0, None, True, True),
    }

    def __setattr__(self, name, value):
        rule = self._RULES.get(name)
        if rule is not None:
            low, high, low_open, optional = rule
            if not (optional and value is None):
                value = _check_float(value, name, low=low, high=high, low_open=low_open)
        super().__setattr__(name, value)

    def __init__(self, learning_rate, clipnorm=None, clipvalue=None, **kwargs):
        if "lr" in kwargs:
            if learning_rate is not None:
                raise TypeError(
                    f"{type(self).__name__}: give learning_rate or its old name lr, "
                    f"not both (got learning_rate={learning_rate!r}, "
                    f"lr={kwargs['lr']!r})"
                )
            warnings.warn(
                f"{type(self).__name__}: 'lr' is an old name; use learning_rate",
                FastRNNWarning,
                stacklevel=3,
            )
            learning_rate = kwargs.pop("lr")
        if "decay" in kwargs:
            if kwargs.pop("decay") not in (0, 0.0, None):
                # TODO: Keras 2's time-based learning-rate decay is not implemented.
                raise ValueError(f"{type(self).__name__}: decay is not supported")
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}"
            )
        if learning_rate is None:
            learning_rate = self.DEFAULT_LEARNING_RATE
        self.learning_rate = learning_rate
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.iterations = 0
        self._size = None
        self._hyper_array = np.zeros(4)

    @property
    def lr(self):
        return self.learning_rate

    @lr.setter
    def lr(self, value):
        self.learning_rate = value

    def build(self, size):
        """Allocate state for a flat weight vector of ``size`` elements."""
        self._size = size
        self.iterations = 0
        self._allocate(size)

    def checkpoint(self, weights):
        """Remember ``weights`` and the state, for :meth:`rollback`."""
        vectors = [weights, *self.state()]
        # The weights and every state vector as they were before a step, end to
        # end, copied by one call: this runs before every training step.
        size = len(vectors) * weights.size
        backup = getattr(self, "_backup", None)
        if backup is None or backup.size != size:
            backup = self._backup = np.empty(size, dtype=np.float32)
        np.concatenate(vectors, out=backup)
        self._backup_iterations = self.iterations

    def rollback(self, weights):
        """Undo the steps since :meth:`checkpoint`."""
        rows = self._backup.reshape(-1, weights.size)
        weights[:] = rows[0]
        for row, vector in zip(rows[1:], self.state()):
            vector[:] = row
        self.iterations = self._backup_iterations

    def _allocate(self, size):
        raise NotImplementedError

    def clip(self, gradient, views):
        """Clip in place; ``views`` are the per-weight views of ``gradient``."""
        if self.clipvalue is not None:
            np.clip(gradient, -self.clipvalue, self.clipvalue, out=gradient)
        if self.clipnorm is not None:
            for view in views:
                # A norm beyond float32's range is inf, which clips to 0 below
                # and is caught as a divergence; NumPy need not warn about it.
                with np.errstate(over="ignore"):
                    norm = float(np.sqrt(np.dot(view.ravel(), view.ravel())))
                if norm > self.clipnorm:
                    view *= np.float32(self.clipnorm / norm)

    def apply(self, weights, gradient):
        """One update of the flat vector ``weights`` with ``gradient``."""
        self.iterations += 1
        self._update(weights, gradient)

    def state(self):
        """The state vectors, in a fixed order (for saving)."""
        return []

    def fused_arguments(self):
        """Count one more step and return (code, hyper, state_1, state_2).

        These are the optimizer arguments of the fused train-step kernel; see
        ``optimizer_update`` in the kernels.
        """
        self.iterations += 1
        state = self.state()
        first = state[0]
        second = state[1] if len(state) > 1 else first
        values = self._hyper()
        self._hyper_array[: len(values)] = values
        return self._code, self._hyper_array, first, second

    def get_config(self):
        config = {"learning_rate": self.learning_rate}
        if self.clipnorm is not None:
            config["clipnorm"] = self.clipnorm
        if self.clipvalue is not None:
            config["clipvalue"] = self.clipvalue
        return config


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization").

    Keras's form: with alpha_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),
    ``w -= alpha_t * m_t / (sqrt(v_t) + epsilon)``.  Here epsilon is the
    "epsilon hat" of the paper's section 2: it is added to sqrt(v_t), not to the
    bias-corrected sqrt(v_hat_t) as in PyTorch, so it weighs more early on.

    Parameters
    ----------
    learning_rate : float, default 0.001
    beta_1 : float, default 0.9
    beta_2 : float, default 0.999
    epsilon : float, default 1e-7
    """

    DEFAULT_LEARNING_RATE = 0.001
    _RULES = {
        **Optimizer._RULES,
        "beta_1": (0.0, 1.0, False, False),
        "beta_2": (0.0, 1.0, False, False),
        "epsilon": (0.0, None, False, False),
    }

    def __init__(
        self,
        learning_rate=None,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        **kwargs,
    ):
        super().__init__(learning_rate, **kwargs)
        if amsgrad:
            # TODO: the AMSGrad variant is not implemented.
            raise ValueError("Adam: amsgrad=True is not supported")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def _allocate(self, size):
        self.m = np.zeros(size, dtype=np.float32)
        self.v = np.zeros(size, dtype=np.float32)

    def _update(self, weights, gradient):
        kernels().adam_update(
            weights,
            gradient,
            self.m,
            self.v,
            self._alpha(),
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )

    def state(self):
        return [self.m, self.v]

    _code = 0

    def _alpha(self):
        t = self.iterations
        return (
            self.learning_rate
            * math.sqrt(1.0 - self.beta_2**t)
            / (1.0 - self.beta_1**t)
        )

    def _hyper(self):
        return (self._alpha(), self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum.

    ``velocity = momentum * velocity - lr * g``; then ``w += velocity``, or with
    Nesterov ``w += momentum * velocity - lr * g`` (Sutskever et al., 2013).

    Parameters
    ----------
    learning_rate : float, default 0.01
    momentum : float, default 0.0
    nesterov : bool, default False
    """

    DEFAULT_LEARNING_RATE = 0.01
    _RULES = {**Optimizer._RULES, "momentum": (0.0, 1.0, False, False)}

    def __init__(self, learning_rate=None, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def _allocate(self, size):
        self.velocity = np.zeros(size, dtype=np.float32)

    def _update(self, weights, gradient):
        kernels().sgd_update(
            weights,
            gradient,
            self.velocity,
            self.learning_rate,
            self.momentum,
            self.nesterov,
        )

    def state(self):
        return [self.velocity]

    _code = 1

    def _hyper(self):
        return (self.learning_rate, self.momentum, 1.0 if self.nesterov else 0.0)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class RMSprop(Optimizer):
    """RMSprop (Tieleman and Hinton, 2012, lecture 6.5).

    ``v = rho * v + (1 - rho) * g^2``; ``w -= lr * g / sqrt(v + epsilon)``.

    As in Keras 3, epsilon sits inside the square root; Keras 2 and PyTorch add
    it to sqrt(v), which takes far longer steps for gradients much below
    sqrt(epsilon).

    Parameters
    ----------
    learning_rate : float, default 0.001
    rho : float, default 0.9
    epsilon : float, default 1e-7
    """

    DEFAULT_LEARNING_RATE = 0.001
    _RULES = {
        **Optimizer._RULES,
        "rho": (0.0, 1.0, False, False),
        "epsilon": (0.0, None, False, False),
    }

    def __init__(self, learning_rate=None, rho=0.9, epsilon=1e-7, **kwargs):
        momentum = kwargs.pop("momentum", 0.0)
        centered = kwargs.pop("centered", False)
        super().__init__(learning_rate, **kwargs)
        if momentum or centered:
            # TODO: RMSprop with momentum or centered=True is not implemented.
            raise ValueError("RMSprop: momentum and centered are not supported")
        self.rho = rho
        self.epsilon = epsilon

    def _allocate(self, size):
        self.velocity = np.zeros(size, dtype=np.float32)

    def _update(self, weights, gradient):
        kernels().rmsprop_update(
            weights,
            gradient,
            self.velocity,
            self.learning_rate,
            self.rho,
            self.epsilon,
        )

    def state(self):
        return [self.velocity]

    _code = 2

    def _hyper(self):
        return (self.learning_rate, self.rho, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, epsilon=self.epsilon)
        return config


_BY_NAME = {"adam": Adam, "sgd": SGD, "rmsprop": RMSprop}


def get(identifier):
    """An optimizer instance from an instance or a name ('adam', 'sgd', 'rmsprop')."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"optimizer must be an Optimizer or one of {sorted(_BY_NAME)}, "
        f"got {identifier!r}"
    )
