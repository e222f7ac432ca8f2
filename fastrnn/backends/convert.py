"""Conversion of user input to the float32, time-major layout of the kernels.

Shared by every backend: it is input handling, not arithmetic.  Numba compiles
one specialisation per input dtype and memory layout, so float64, integer and
strided inputs are converted in one pass without a temporary copy.
"""

import numpy as np

from fastrnn.backends._jit import kernel


@kernel
def sequence_to_time_major(x_tm, x):
    """x_tm[t, b, d] = float32(x[b, t, d]); returns False if any value is not finite.

    x_tm (T, B, D) float32 out; x (B, T, D) any real dtype and layout.
    A float64 value beyond float32's range becomes inf and so counts as not finite.
    """
    B, T, D = x.shape
    finite = True
    for b in range(B):
        for t in range(T):
            for d in range(D):
                value = np.float32(x[b, t, d])
                if not np.isfinite(value):
                    finite = False
                x_tm[t, b, d] = value
    return finite


@kernel
def sequence_to_float32(out, x):
    """out[b, t, d] = float32(x[b, t, d]), unchecked.  out, x (B, T, D).

    x may have any real dtype and layout; the kernels that read out check its
    values themselves.
    """
    B, T, D = x.shape
    for b in range(B):
        for t in range(T):
            for d in range(D):
                out[b, t, d] = np.float32(x[b, t, d])


@kernel
def matrix_to_float32(out, x):
    """out = float32(x); returns False if any value is not finite.  (N, F)."""
    N, F = x.shape
    finite = True
    for i in range(N):
        for j in range(F):
            value = np.float32(x[i, j])
            if not np.isfinite(value):
                finite = False
            out[i, j] = value
    return finite


@kernel
def all_finite(values):
    """True if every element of the 1-D array ``values`` is finite."""
    # No early return: without one the loop is vectorised and reads the array
    # about five times faster than a scalar scan, which has to read all of it
    # anyway whenever it is finite, as the weights are after almost every step.
    finite = True
    for i in range(values.size):
        if not np.isfinite(values[i]):
            finite = False
    return finite


FLOAT32_MAX = float(np.finfo(np.float32).max)


@kernel
def finite_and_in_float32_range(values):
    """(every value finite, every finite value within float32's range).

    values: a float array of any shape and layout, read in place, so checking a
    whole data set costs no temporary array the size of it.
    """
    finite = True
    in_range = True
    for value in values.flat:
        if not np.isfinite(value):
            finite = False
        elif abs(value) > FLOAT32_MAX:
            in_range = False
    return finite, in_range
