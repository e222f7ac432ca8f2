"""The random generator that fastrnn draws initial weights and shuffles from.

Every random draw inside fastrnn goes through :func:`get_rng`, which follows one
rule:

- After ``set_random_seed(seed)``, it returns a single module-level
  ``numpy.random.Generator`` created by ``np.random.default_rng(seed)``. Successive
  calls return the same object, so its stream advances from draw to draw.
- Before any ``set_random_seed`` call, it returns a new Generator on every call,
  seeded with one integer drawn from NumPy's legacy global state
  (``np.random.randint``). That draw consumes the legacy stream deterministically,
  so a program that calls only ``np.random.seed(n)`` is reproducible too, and a
  program that seeds nothing gets fresh randomness on every run.

``set_random_seed`` also seeds Python's :mod:`random` and NumPy's legacy global
state, so code outside fastrnn that relies on either is reproducible with the same
call.
"""

import numbers
import random as _pyrandom

import numpy as np

# None means "not explicitly seeded": derive each generator from the legacy state.
_rng = None

# Exclusive upper bound of the seed drawn from the legacy state. 2**63 - 1 is the
# largest bound np.random.randint accepts for int64 on every platform.
_DERIVED_SEED_BOUND = 2**63 - 1

# np.random.seed accepts only seeds that fit in 32 bits unsigned.
_MAX_SEED = 2**32 - 1


def get_rng():
    """Return the generator fastrnn draws its random numbers from.

    Returns
    -------
    numpy.random.Generator
        The generator set by :func:`set_random_seed`, or, if it was never called,
        a new generator seeded from NumPy's legacy global state (see the module
        docstring for why).
    """
    if _rng is not None:
        return _rng
    derived = np.random.randint(0, _DERIVED_SEED_BOUND, dtype=np.int64)
    return np.random.default_rng(int(derived))


def set_random_seed(seed):
    """Seed Python's ``random``, NumPy's global state and fastrnn's generator.

    Parameters
    ----------
    seed : int or None
        Non-negative integer below ``2**32``. ``None`` forgets a previous seed:
        Python's ``random`` and NumPy's global state are reseeded from the operating
        system and :func:`get_rng` goes back to deriving its generators from NumPy's
        global state.

    Raises
    ------
    TypeError
        If ``seed`` is not an integer or None.
    ValueError
        If ``seed`` is negative or not below ``2**32``.
    """
    global _rng
    if seed is None:
        _pyrandom.seed(None)
        np.random.seed(None)
        _rng = None
        return
    # bool is an Integral, but set_random_seed(True) is almost surely a mistake.
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"set_random_seed: `seed` must be an integer or None, "
            f"got {seed!r} of type {type(seed).__name__}"
        )
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(
            f"set_random_seed: `seed` must be in [0, {_MAX_SEED}], got {seed}"
        )
    _pyrandom.seed(seed)
    np.random.seed(seed)
    _rng = np.random.default_rng(seed)
