"""NumPy helpers for preparing labels."""

import numbers

import numpy as np


def to_categorical(y, num_classes=None, dtype="float32"):
    """Turn integer class labels into one-hot rows.

    Parameters
    ----------
    y : array-like of int, shape (m,), (m, 1) or any shape S
        Class labels in ``[0, num_classes)``. Floats are accepted when every value is
        a whole number (``3.0``); booleans count as 0 and 1. A trailing axis of size
        1 is dropped, so a column vector of shape (m, 1) gives shape (m, K).
    num_classes : int or None, default=None
        Number of classes K. ``None`` means ``max(y) + 1``.
    dtype : str or numpy.dtype, default="float32"
        Data type of the result.

    Returns
    -------
    ndarray of shape S + (K,)
        ``out[..., k]`` is 1 where ``y == k`` and 0 elsewhere.

    Raises
    ------
    TypeError
        If ``y`` is not numeric (strings, objects, complex numbers).
    ValueError
        If a label is negative, not a whole number, NaN or infinite, or not below
        ``num_classes``; if ``num_classes`` is not an integer of at least 1; or if
        ``y`` is empty and ``num_classes`` is None.

    Examples
    --------
    >>> to_categorical([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(
            f"to_categorical: `y` must hold integer class labels, got an array of "
            f"dtype {y.dtype}"
        )
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])

    if num_classes is not None:
        # bool is an Integral, but num_classes=True is almost surely a mistake.
        if isinstance(num_classes, bool) or not isinstance(
            num_classes, numbers.Integral
        ):
            raise ValueError(
                f"to_categorical: `num_classes` must be an integer >= 1 or None, "
                f"got {num_classes!r}"
            )
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(
                f"to_categorical: `num_classes` must be an integer >= 1 or None, "
                f"got {num_classes}"
            )
    elif y.size == 0:
        raise ValueError(
            "to_categorical: `y` is empty, so `num_classes` cannot be inferred; "
            "pass num_classes explicitly"
        )

    # Check the range while the values still have their own dtype: casting a
    # negative, fractional or huge float to an integer type would silently wrap
    # or truncate it, and a negative index would wrap around in the assignment.
    if y.dtype.kind == "f":
        _check_whole(y)
    if y.size > 0:
        low = y.min()
        if low < 0:
            raise ValueError(
                f"to_categorical: `y` must hold labels >= 0, got "
                f"{_fmt(low)} at index {_first_index(y, y == low)}"
            )
        high = y.max()
        if num_classes is None:
            num_classes = int(high) + 1
        elif high >= num_classes:
            raise ValueError(
                f"to_categorical: `y` must hold labels in [0, {num_classes - 1}] "
                f"for num_classes={num_classes}, got {_fmt(high)} at index "
                f"{_first_index(y, y == high)}"
            )

    labels = y.astype(np.intp).ravel()
    out = np.zeros((labels.size, num_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out.reshape(y.shape + (num_classes,))


def _check_whole(y):
    """Raise ValueError unless every float in ``y`` is a finite whole number."""
    finite = np.isfinite(y)
    if not finite.all():
        raise ValueError(
            f"to_categorical: `y` must hold finite labels, got "
            f"{_fmt(y[~finite].flat[0])} at index {_first_index(y, ~finite)}"
        )
    fractional = y != np.floor(y)
    if fractional.any():
        raise ValueError(
            f"to_categorical: `y` must hold whole-number labels, got "
            f"{_fmt(y[fractional].flat[0])} at index {_first_index(y, fractional)}"
        )


def _first_index(y, mask):
    """Index (a tuple for N-d ``y``) of the first True in ``mask``."""
    index = np.unravel_index(int(np.argmax(mask)), y.shape)
    return tuple(int(i) for i in index) if y.ndim != 1 else int(index[0])


def _fmt(value):
    """A label as plain Python text, without NumPy's type wrapper."""
    return repr(value.item())
