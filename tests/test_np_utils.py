"""Tests of fastrnn.utils: to_categorical and the random seeding rule."""

import random

import numpy as np
import pytest

import fastrnn.utils.random as fastrnn_random
from fastrnn.utils import np_utils, set_random_seed, to_categorical
from fastrnn.utils.random import get_rng

# No kernel runs here: once is enough, whatever the backends.
BACKEND_INDEPENDENT = True


def one_hot_twin(labels, num_classes):
    """Plain NumPy reference: rows of the identity matrix."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


# to_categorical: results ----------------------------------------------------------


def test_vector_labels_match_identity_rows():
    labels = [0, 2, 1, 2, 0]

    out = to_categorical(labels)

    assert out.dtype == np.float32
    assert out.shape == (5, 3)
    np.testing.assert_array_equal(out, one_hot_twin(labels, 3))


def test_submodule_access_gives_same_function():
    assert np_utils.to_categorical is to_categorical


def test_column_labels_drop_trailing_axis():
    labels = np.array([[1], [0], [3]])

    out = to_categorical(labels, num_classes=4)

    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, one_hot_twin([1, 0, 3], 4))


def test_single_label_vector_keeps_its_axis():
    assert to_categorical(np.array([2]), 3).shape == (1, 3)


def test_scalar_label():
    np.testing.assert_array_equal(to_categorical(1, 3), [0.0, 1.0, 0.0])


def test_any_shape_gains_a_class_axis():
    labels = np.array([[0, 1, 2], [2, 1, 0]])

    out = to_categorical(labels)

    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, one_hot_twin(labels, 3))


def test_trailing_unit_axis_of_3d_labels_dropped():
    labels = np.array([[[1], [0]], [[0], [1]]])

    assert to_categorical(labels).shape == (2, 2, 2)


def test_num_classes_larger_than_max_label():
    out = to_categorical([0, 1], num_classes=5)

    assert out.shape == (2, 5)
    assert out[:, 2:].sum() == 0


def test_num_classes_as_numpy_integer():
    assert to_categorical([0, 1], num_classes=np.int64(3)).shape == (2, 3)


def test_dtype_argument():
    assert to_categorical([0, 1], dtype="float64").dtype == np.float64
    assert to_categorical([0, 1], dtype=np.uint8).dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint64])
def test_integer_dtypes(dtype):
    labels = np.array([3, 0, 1], dtype=dtype)

    np.testing.assert_array_equal(to_categorical(labels), one_hot_twin(labels, 4))


def test_whole_floats_are_accepted():
    out = to_categorical(np.array([3.0, 0.0, 1.0]))

    np.testing.assert_array_equal(out, one_hot_twin([3, 0, 1], 4))


def test_boolean_labels_count_as_zero_and_one():
    np.testing.assert_array_equal(to_categorical([True, False]), [[0, 1], [1, 0]])


def test_empty_labels_with_num_classes():
    out = to_categorical(np.array([], dtype=np.int64), num_classes=4)

    assert out.shape == (0, 4)
    assert out.dtype == np.float32


def test_input_is_not_modified():
    labels = np.array([[2.0], [1.0]])
    before = labels.copy()

    to_categorical(labels)

    np.testing.assert_array_equal(labels, before)


# to_categorical: errors -----------------------------------------------------------


def test_label_equal_to_num_classes_is_rejected():
    with pytest.raises(ValueError, match=r"`y` .*\[0, 2\].*num_classes=3.*got 3"):
        to_categorical([0, 3, 1], num_classes=3)


@pytest.mark.parametrize("num_classes", [None, 5])
def test_negative_label_is_rejected_not_wrapped(num_classes):
    with pytest.raises(
        ValueError, match=r"`y` must hold labels >= 0, got -1 at index 2"
    ):
        to_categorical([0, 1, -1], num_classes=num_classes)


def test_negative_whole_float_is_rejected():
    with pytest.raises(ValueError, match="labels >= 0, got -2.0"):
        to_categorical([1.0, -2.0], num_classes=3)


def test_error_index_of_multidimensional_labels():
    with pytest.raises(ValueError, match=r"got 7 at index \(1, 0\)"):
        to_categorical([[0, 1], [7, 2]], num_classes=4)


def test_fractional_label_is_rejected():
    with pytest.raises(ValueError, match="`y` must hold whole-number labels, got 1.5"):
        to_categorical([0.0, 1.5, 2.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_label_is_rejected(bad):
    with pytest.raises(ValueError, match="`y` must hold finite labels"):
        to_categorical([0.0, bad], num_classes=3)


def test_empty_labels_without_num_classes():
    with pytest.raises(ValueError, match="`y` is empty.*num_classes"):
        to_categorical([])


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, 3.0, "3", True])
def test_invalid_num_classes(num_classes):
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 1"):
        to_categorical([0, 1], num_classes=num_classes)


@pytest.mark.parametrize(
    "labels",
    [["a", "b"], np.array([0, 1], dtype=object), np.array([1 + 0j]), [None]],
)
def test_non_numeric_labels_raise_type_error(labels):
    with pytest.raises(TypeError, match="`y` must hold integer class labels"):
        to_categorical(labels)


# Random seeding -------------------------------------------------------------------


@pytest.fixture
def restore_random_state(monkeypatch):
    """Leave Python's, NumPy's and fastrnn's random state as the test found it."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    monkeypatch.setattr(fastrnn_random, "_rng", fastrnn_random._rng)
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def draws():
    """One draw from each of the three sources set_random_seed seeds."""
    return random.random(), np.random.rand(), get_rng().random()


def test_set_random_seed_makes_every_source_reproducible(restore_random_state):
    set_random_seed(123)
    first = draws()
    set_random_seed(123)
    second = draws()
    set_random_seed(124)
    third = draws()

    assert first == second
    assert all(a != b for a, b in zip(first, third, strict=True))


def test_seeded_generator_is_one_advancing_stream(restore_random_state):
    set_random_seed(7)
    rng = get_rng()

    assert get_rng() is rng
    np.testing.assert_array_equal(
        [get_rng().random(), get_rng().random()],
        np.random.default_rng(7).random(2),
    )


def test_legacy_seed_alone_makes_get_rng_reproducible(restore_random_state):
    set_random_seed(None)
    np.random.seed(11)
    first = [get_rng().random() for _ in range(3)]
    np.random.seed(11)
    second = [get_rng().random() for _ in range(3)]

    assert first == second
    # Each unseeded call draws a fresh seed, so the generators differ.
    assert len(set(first)) == 3


def test_seed_none_returns_to_legacy_derived_generators(restore_random_state):
    set_random_seed(3)
    set_random_seed(None)

    assert get_rng() is not get_rng()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_out_of_range_seed(seed, restore_random_state):
    with pytest.raises(ValueError, match=r"`seed` must be in \[0, 4294967295\]"):
        set_random_seed(seed)


@pytest.mark.parametrize("seed", [1.0, "1", True])
def test_non_integer_seed(seed, restore_random_state):
    with pytest.raises(TypeError, match="`seed` must be an integer or None"):
        set_random_seed(seed)
