"""Build script for fastrnn.

The Numba kernels need no build step.  The optional C backend (``csrc/`` wrapped
by a Cython extension) is compiled when Cython, NumPy and a C compiler are
available; otherwise the package installs without it and says so.
"""

from setuptools import find_packages, setup

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
        "pooch>=1.8",
        "tqdm>=4.66",
        "h5py>=3.9",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.5"],
        "plot": ["matplotlib>=3.7"],
        "tf": ["tensorflow-cpu>=2.16"],
    },
)
