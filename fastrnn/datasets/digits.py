"""The 8 x 8 handwritten digits bundled with scikit-learn, split for training.

A small stand-in for MNIST that needs no download: 1797 images, 10 classes, pixel
values 0..16. Read row by row, each image is a sequence of 8 steps of 8 features.
"""

import numbers

import numpy as np


def load_data(test_size=0.3, random_state=None):
    """Load the scikit-learn digits as ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    test_size : float or int, default=0.3
        A float in (0, 1) is the fraction of images held out for testing (rounded
        up, as scikit-learn does); an int in [1, 1796] is their number.
    random_state : int, numpy.random.RandomState or None, default=None
        Seeds the shuffle before the split. None draws from NumPy's global state,
        so ``np.random.seed`` or :func:`fastrnn.utils.set_random_seed` makes the
        split reproducible too.

    Returns
    -------
    (x_train, y_train) : tuple of ndarray
        ``x_train`` float32 of shape (n_train, 8, 8) with pixel values 0..16 as
        scikit-learn gives them (not rescaled); ``y_train`` int64 of shape
        (n_train,) with digits 0..9.
    (x_test, y_test) : tuple of ndarray
        The same for the n_test held-out images; ``n_train + n_test == 1797``.

    Raises
    ------
    ValueError
        If ``test_size`` is not a float in (0, 1) or an int in [1, 1796].
    """
    # scikit-learn is imported here, not at module level: it costs about 80 MB
    # of memory that an MNIST-only program does not need.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.int64)
    _check_test_size(test_size, len(labels))

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=random_state
    )
    return (x_train, y_train), (x_test, y_test)


def _check_test_size(test_size, n):
    """Raise ValueError unless ``test_size`` leaves both splits non-empty."""
    # bool is an Integral, but test_size=True is almost surely a mistake.
    if isinstance(test_size, bool):
        pass
    elif isinstance(test_size, numbers.Integral):
        if 1 <= test_size < n:
            return
    elif isinstance(test_size, numbers.Real):
        if 0.0 < test_size < 1.0:
            return
    raise ValueError(
        f"digits.load_data: `test_size` must be a float in (0, 1) or an int in "
        f"[1, {n - 1}], got {test_size!r}"
    )
