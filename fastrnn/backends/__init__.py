"""Choice of compiled backend.

Two backends implement the same kernels with the same names and argument
order: ``numba`` (always present) and ``cython`` (a C extension built by
``setup.py`` when Cython and a C compiler are available).  The backend is read
from the ``FASTRNN_BACKEND`` environment variable at import and can be changed
with :func:`set_backend`.
"""

import importlib
import os
import warnings

from fastrnn._warnings import FastRNNWarning

BACKENDS = ("numba", "cython")

# Every backend module provides these callables.
KERNEL_NAMES = (
    "activation_forward",
    "activation_backward",
    "rnn_forward",
    "rnn_backward",
    "dense_forward",
    "dense_backward",
    "softmax_forward",
    "softmax_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "sparse_to_onehot",
    "adam_update",
    "sgd_update",
    "rmsprop_update",
)

# Kernels a backend may provide.  Models use them when the backend has them
# (``hasattr``) and otherwise run the per-layer kernels of ``KERNEL_NAMES``.
OPTIONAL_KERNEL_NAMES = (
    "rnn_dense_xent_train_step",
    "rnn_dense_predict",
    "rnn_dense_xent_evaluate",
)

_MODULES = {
    "numba": "fastrnn.backends.numba_kernels",
    "cython": "fastrnn.backends.cython_kernels",
}

_active = {"name": None, "module": None}


def available_backends():
    """Names of the backends that import on this installation."""
    names = []
    for name in BACKENDS:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError:
            continue
        names.append(name)
    return names


def set_backend(name):
    """Select the kernels used from now on.

    Parameters
    ----------
    name : {'numba', 'cython'}
        Backend to use, in any case and with surrounding spaces, as
        ``FASTRNN_BACKEND`` takes it.  If ``'cython'`` was not built on this
        installation, a :class:`fastrnn.FastRNNWarning` is issued and
        ``'numba'`` is used.

    Returns
    -------
    str
        The backend actually in use.
    """
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    name = name.strip().lower()
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as error:
        warnings.warn(
            f"the {name!r} backend is not available ({error}); falling back to 'numba'",
            FastRNNWarning,
            stacklevel=2,
        )
        name = "numba"
        module = importlib.import_module(_MODULES[name])
    _active["name"] = name
    _active["module"] = module
    return name


def get_backend():
    """Name of the backend in use."""
    if _active["module"] is None:
        _select_from_environment()
    return _active["name"]


def kernels():
    """The module of the backend in use (see ``KERNEL_NAMES``)."""
    if _active["module"] is None:
        _select_from_environment()
    return _active["module"]


def _select_from_environment():
    # Unset and empty both mean the default.
    requested = os.environ.get("FASTRNN_BACKEND", "").strip().lower() or "numba"
    if requested not in BACKENDS:
        warnings.warn(
            f"FASTRNN_BACKEND must be one of {BACKENDS}, got {requested!r}; "
            "using 'numba'",
            FastRNNWarning,
            stacklevel=3,
        )
        requested = "numba"
    set_backend(requested)


def train_scratch_size(T, rows, D, H, K):
    """Scratch elements per part of ``rnn_dense_xent_train_step`` on any backend.

    Each backend lays out its scratch in its own way; a row of the largest size
    any built backend needs lets the backend change between steps.
    """
    sizes = [
        importlib.import_module(_MODULES[name]).train_scratch_size(T, rows, D, H, K)
        for name in available_backends()
    ]
    return max(sizes)
