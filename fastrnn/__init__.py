"""fastrnn: SimpleRNN training and inference on the CPU with compiled kernels.

The API follows Keras: ``fastrnn.models.Sequential``, ``fastrnn.layers``
(``SimpleRNN``, ``Dense``, ``Activation``), ``fastrnn.optimizers`` (``Adam``,
``SGD``, ``RMSprop``), ``fastrnn.datasets`` and ``fastrnn.utils``.
"""

from fastrnn import (
    callbacks,
    datasets,
    layers,
    losses,
    models,
    optimizers,
    utils,
)
from fastrnn._warnings import FastRNNWarning
from fastrnn.backends import available_backends, get_backend, set_backend
from fastrnn.models import Sequential
from fastrnn.utils import set_random_seed

__version__ = "0.1.0"

__all__ = [
    "FastRNNWarning",
    "Sequential",
    "available_backends",
    "callbacks",
    "datasets",
    "get_backend",
    "layers",
    "losses",
    "models",
    "optimizers",
    "set_backend",
    "set_random_seed",
    "utils",
]
