"""Helpers around the models: label encoding and random seeding."""

from fastrnn.utils import np_utils, random
from fastrnn.utils.np_utils import to_categorical
from fastrnn.utils.random import set_random_seed

__all__ = ["np_utils", "random", "set_random_seed", "to_categorical"]
