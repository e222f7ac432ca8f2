"""Weight initializers with the definitions Keras uses.

All draw from :func:`fastrnn.utils.random.get_rng`, so ``set_random_seed`` (or a
prior ``np.random.seed``) makes them reproducible.
"""

import numpy as np

from fastrnn.utils.random import get_rng


def glorot_uniform(shape, rng):
    """Uniform on [-limit, limit] with limit = sqrt(6 / (fan_in + fan_out)).

    Glorot and Bengio (2010).  For a (fan_in, fan_out) matrix.
    """
    fan_in, fan_out = shape[0], shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(shape, rng, gain=1.0):
    """A random orthogonal matrix (Saxe et al., 2014), times ``gain``.

    Q of the QR decomposition of a standard normal matrix, with each column's
    sign set by the sign of R's diagonal so that Q is uniformly distributed.
    """
    rows, cols = shape
    tall = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(tall)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q


def zeros(shape, rng):
    """All zeros."""
    return np.zeros(shape)


def ones(shape, rng):
    """All ones."""
    return np.ones(shape)


_BY_NAME = {
    "glorot_uniform": glorot_uniform,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
}


def get(name, argument):
    """The initializer called ``name``; ``argument`` names it in errors."""
    if not isinstance(name, str) or name.lower() not in _BY_NAME:
        raise ValueError(f"{argument} must be one of {sorted(_BY_NAME)}, got {name!r}")
    return name.lower()


def initialize(name, shape):
    """A float32 array of ``shape`` drawn by the initializer ``name``."""
    return _BY_NAME[name](shape, get_rng()).astype(np.float32)
