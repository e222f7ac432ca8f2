"""Datasets ready for training: MNIST and scikit-learn's 8 x 8 digits."""

from fastrnn.datasets import digits, mnist
from fastrnn.datasets.mnist import DatasetUnavailableError

__all__ = ["DatasetUnavailableError", "digits", "mnist"]
