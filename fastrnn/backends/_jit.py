"""Numba compilation flags, kept in one place for every compiled kernel.

``error_model="numpy"`` drops the zero-division checks that keep LLVM from
vectorising loops with a division.  ``cache=True`` stores the machine code next
to the package so a second process skips compilation.  ``fastmath`` is left
off: the kernels must reproduce the reference arithmetic closely, and the
finiteness checks rely on NaN semantics.

TODO: Numba's cache checks only the source file of the kernel it loads, so a
cached kernel of numba_kernels.py keeps the old code of the numba_tiles.py
kernels it calls after numba_tiles.py alone is edited; delete the *.nbi and
*.nbc files under __pycache__ after such an edit.
"""

import numba

KERNEL_OPTIONS = dict(
    nopython=True, nogil=True, cache=True, fastmath=False, error_model="numpy"
)
PARALLEL_OPTIONS = dict(KERNEL_OPTIONS, parallel=True)


def kernel(func):
    """Compile ``func`` as a serial kernel."""
    return numba.jit(**KERNEL_OPTIONS)(func)


def typed_kernel(signature):
    """Compile the decorated function as a serial kernel of one ``signature``.

    Numba otherwise compiles a kernel again for every combination of literal
    constants it is called with; with a signature it compiles once, at import
    (or loads the cached code), and converts the arguments of every call.
    """
    return numba.jit(signature, **KERNEL_OPTIONS)


def parallel_kernel(func):
    """Compile ``func`` as a kernel whose ``prange`` loops use every core."""
    return numba.jit(**PARALLEL_OPTIONS)(func)
