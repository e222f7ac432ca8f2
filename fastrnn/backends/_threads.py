"""Thread count of the BLAS library behind the kernels' matrix products.

The products of a training batch (B = 50, H = 50) are too small to split: on
two cores OpenBLAS's threads spend longer waking and spinning than computing,
and under load a step becomes several times slower.  Large inference batches do
gain from every core.  The kernels therefore switch BLAS threading by batch size.

Only the BLAS that SciPy ships is touched where it is separate from NumPy's:
both backends call it (through ``scipy.linalg.cython_blas``), and the user's own
NumPy products keep their threads.
"""

import os

from threadpoolctl import ThreadpoolController

# Batches of at least this many rows use every core for their products.
PARALLEL_MIN_ROWS = 512

# os.cpu_count reads a file on Linux, which takes longer than a small batch's
# Python overhead; the count is read once.
_CORES = os.cpu_count() or 1

_state = {"libraries": None, "threads": None}


def _libraries():
    if _state["libraries"] is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)

        libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        scipy_own = [lib for lib in libraries if "scipy.libs" in lib.filepath]
        _state["libraries"] = scipy_own or list(libraries)
    return _state["libraries"]


def use_threads_for_batch(rows):
    """Set BLAS threading for products over ``rows`` batch rows (cheap if unchanged)."""
    threads = _CORES if rows >= PARALLEL_MIN_ROWS else 1
    if threads == _state["threads"]:
        return
    for library in _libraries():
        library.set_num_threads(threads)
    _state["threads"] = threads
