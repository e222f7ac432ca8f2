"""Build script for fastrnn.

The Numba kernels need no build step.  The optional C backend (``csrc/`` wrapped
by a Cython extension) is compiled when Cython, SciPy and a C compiler are
available; otherwise the package installs without it and says so.  Either way
the install succeeds: ``fastrnn.backends.set_backend('cython')`` then warns and
falls back to Numba.
"""

import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# -O3 so that the element-wise loops vectorise; -fno-math-errno so that the ones
# calling sqrtf do too, and -fno-trapping-math so that GCC turns the selects of
# tanh and exp into blends (nothing here reads errno or the floating-point
# exception flags; NaN and inf semantics are kept).  -march=native is safe for
# `pip install .`, which compiles on the machine that runs the code; set
# FASTRNN_PORTABLE=1 when building a wheel for other machines.  OpenMP runs the
# parts of the fused train step and the chunks of predict on every core; without
# it (Apple's clang, for one) the same loops run on one thread.  A compiler that
# rejects a flag gets the next set, down to the portable flags alone.
PORTABLE_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
NATIVE_FLAGS = ["-march=native"]
OPENMP_FLAGS = ["-fopenmp"]
MSVC_FLAGS = ["/O2"]
MSVC_OPENMP_FLAGS = ["/openmp"]


def _say(message):
    print(f"fastrnn: {message}", file=sys.stderr, flush=True)


def _compile_flag_sets(compiler_type):
    """(compile flags, link flags) to try in order, best first."""
    if compiler_type == "msvc":
        return [(MSVC_FLAGS + MSVC_OPENMP_FLAGS, []), (MSVC_FLAGS, [])]
    if os.environ.get("FASTRNN_PORTABLE", "") not in ("", "0"):
        bases = [PORTABLE_FLAGS]
    else:
        bases = [PORTABLE_FLAGS + NATIVE_FLAGS, PORTABLE_FLAGS]
    with_openmp = [(base + OPENMP_FLAGS, OPENMP_FLAGS) for base in bases]
    return with_openmp + [(base, []) for base in bases]


class OptionalBuildExt(build_ext):
    """Build the C backend when possible, and never fail the install over it."""

    def run(self):
        try:
            # Imported here, not at the top, so that a missing Cython (or a
            # SciPy without its .pxd files) only costs the extension.
            from Cython.Build import cythonize

            # Only the sources are taken from cythonize's copies: setuptools has
            # already prepared the Extension objects themselves.
            for ext in self.extensions:
                (translated,) = cythonize(
                    [ext], language_level=3, quiet=True, force=self.force
                )
                ext.sources = translated.sources
            super().run()
        except Exception as error:
            _say(f"building without the C backend: {_reason(error)}")

    def build_extension(self, ext):
        error = None
        for flags, link_flags in _compile_flag_sets(self.compiler.compiler_type):
            ext.extra_compile_args = flags
            ext.extra_link_args = link_flags
            try:
                super().build_extension(ext)
            except Exception as caught:
                error = caught
                continue
            _say(f"built the C backend ({' '.join(flags)})")
            return
        raise error


def _reason(error):
    # The last line names the failure; a compiler's full command line can run
    # to hundreds of characters, so it is cut.
    text = str(error).strip()
    line = text.splitlines()[-1] if text else type(error).__name__
    return line if len(line) <= 240 else line[:237] + "..."


C_BACKEND = Extension(
    "fastrnn.backends.cython_kernels",
    sources=["fastrnn/backends/cython_kernels.pyx", "csrc/fastrnn_kernels.c"],
    include_dirs=["csrc"],
    depends=["csrc/fastrnn_kernels.h", "fastrnn/backends/cython_kernels.pxd"],
)

setup(
    name="fastrnn",
    version="0.1.0",
    description="Fast SimpleRNN training on the CPU with a Keras-like API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        # fastrnn.backends._threads sets the BLAS thread count through it.
        "threadpoolctl>=3.1",
        "pooch>=1.8",
        "tqdm>=4.66",
        "h5py>=3.9",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.5"],
        "plot": ["matplotlib>=3.7"],
        "tf": ["tensorflow-cpu>=2.16"],
    },
    ext_modules=[C_BACKEND],
    cmdclass={"build_ext": OptionalBuildExt},
)
