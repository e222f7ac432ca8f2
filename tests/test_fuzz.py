"""Robustness: steady memory over many calls, and fuzzed inputs at every entry point.

The fuzz test throws malformed shapes, every kind of dtype, non-finite values and
odd batch sizes at a small compiled model.  Each call must either return a
correct result (right shape, finite values) or raise ValueError or TypeError; it
decides which from a plain statement of the input rule, so fastrnn may neither
refuse good input nor accept bad input.
"""

import gc
import math
import os
import resource
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzz tests need hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import FastRNNWarning, callbacks  # noqa: E402
from fastrnn.layers import Activation, Dense, SimpleRNN  # noqa: E402
from fastrnn.models import Sequential  # noqa: E402

T, D, H, K = 5, 3, 4, 2
FLOAT32_MAX = float(np.finfo(np.float32).max)


def make_model():
    fastrnn.set_random_seed(0)
    model = Sequential(
        [SimpleRNN(H, input_shape=(T, D)), Dense(K), Activation("softmax")]
    )
    model.compile(
        optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"]
    )
    return model


# memory ----------------------------------------------------------------------------


def resident_bytes():
    """Current resident set size; the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        # ru_maxrss is in kilobytes on Linux and bytes on macOS; a peak can only
        # grow, so it still bounds any leak.
        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def test_repeated_predict_keeps_memory_flat():
    model = make_model()
    x = np.random.default_rng(0).standard_normal((1, T, D)).astype(np.float32)
    for _ in range(100):  # compile and fill the buffer caches first
        model.predict(x)
    gc.collect()
    before = resident_bytes()

    for _ in range(1000):
        out = model.predict(x)

    gc.collect()
    growth = resident_bytes() - before
    assert out.shape == (1, K)
    assert growth < 20 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB"


# fuzzing ---------------------------------------------------------------------------

DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.complex64,
    np.object_,
    np.str_,
]
SPECIAL = [math.nan, math.inf, -math.inf]
GOOD_BATCHES = [1, 2, 7, 257]
BATCH_SIZES = [None, 1, 7, 32, 257, 0, -3, 2.5, True, "8"]


def fill(draw, shape, dtype):
    """An array of ``shape`` and ``dtype`` with fuzzed values."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size).astype(bool).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(
            info.min, info.max, size, endpoint=True, dtype=dtype
        ).reshape(shape)
    scale = draw(st.sampled_from([1.0, 1e-30, 1e4, 1e30]))
    values = rng.standard_normal(size) * scale
    if size and draw(st.booleans()):
        for index in draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3)):
            values[index] = draw(st.sampled_from(SPECIAL))
    if dtype.kind == "c":
        return (values + 1j).astype(dtype).reshape(shape)
    if dtype.kind == "O":
        return np.array(list(values), dtype=object).reshape(shape)
    if dtype.kind == "U":
        return values.astype(str).reshape(shape)
    with np.errstate(over="ignore"):
        return values.astype(dtype).reshape(shape)


@st.composite
def inputs(draw):
    """(x, B): an input array and its batch size when its shape is right."""
    if draw(st.integers(0, 3)):
        batch = draw(st.sampled_from(GOOD_BATCHES))
        shape = (batch, T, D)
    else:
        dims = st.sampled_from([0, 1, 2, 3, 4, 5, 6])
        shape = tuple(draw(st.lists(dims, min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES)) if draw(st.booleans()) else np.float32
    return relayout(draw, fill(draw, shape, dtype))


def relayout(draw, array):
    """The same values in another memory layout or byte order."""
    layout = draw(st.sampled_from(["c", "c", "fortran", "reversed", "swapped"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "reversed" and array.ndim:
        return array[::-1]
    if layout == "swapped" and array.dtype.kind in "biufc":
        return array.astype(array.dtype.newbyteorder("S"))
    return array


@st.composite
def targets(draw, n):
    """One-hot targets for ``n`` samples, or something malformed."""
    choice = draw(st.integers(0, 7))
    labels = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    y = np.eye(K, dtype=np.float32)[np.array(labels, dtype=int)].reshape(n, K)
    if choice == 1:
        y = y[:-1] if n else np.zeros((1, K), np.float32)
    elif choice == 2:
        y = np.zeros((n, K + 1), np.float32)
    elif choice == 3:
        y = np.array(labels, dtype=np.int64)
    elif choice == 4 and n:
        y = y.astype(np.float64)
        y[0, 0] = draw(st.sampled_from(SPECIAL))
    elif choice == 5:
        y = y.astype(draw(st.sampled_from(DTYPES)))
    return y


def is_valid_x(x):
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        return False
    if x.ndim != 3 or x.shape[1:] != (T, D) or x.shape[0] < 1:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        as_float = x.astype(np.float64)
    return bool(np.all(np.abs(as_float) <= FLOAT32_MAX))


def is_valid_y(y, n):
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "biuf":
        return False
    if y.shape != (n, K):
        return False
    return bool(np.all(np.isfinite(y.astype(np.float64))))


def is_valid_batch_size(batch_size):
    if batch_size is None:
        return True
    return (
        isinstance(batch_size, int)
        and not isinstance(batch_size, bool)
        and batch_size >= 1
    )


def check_scores(result):
    loss, accuracy = result
    assert math.isfinite(loss) and loss >= 0.0
    assert 0.0 <= accuracy <= 1.0


def run(model, operation, x, y, batch_size):
    """Call ``operation``; returns its result, checked, for valid input."""
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim else 0
    if operation == "predict":
        out = model.predict(x, batch_size=batch_size)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (n, K)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        # Conversion happens inside; it must agree with NumPy's.
        np.testing.assert_array_equal(
            out, model.predict(x.astype(np.float32), batch_size=batch_size)
        )
    elif operation == "evaluate":
        check_scores(model.evaluate(x, y, batch_size=batch_size))
    elif operation == "train_on_batch":
        check_scores(model.train_on_batch(x, y))
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=2,
                verbose=0,
                callbacks=[callbacks.TerminateOnNaN()],
            )
        if history.epoch != [0, 1]:
            # Inputs near float32's range can make Adam's second moment
            # overflow; training then stops, saying so, with the last finite
            # weights (checked below).
            assert model.stop_training
            assert any(issubclass(w.category, FastRNNWarning) for w in caught)
        assert all(math.isfinite(v) for v in history.history["loss"])
    for weight in model.get_weights():
        assert np.all(np.isfinite(weight))


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    operation=st.sampled_from(["predict", "evaluate", "train_on_batch", "fit"]),
    x=inputs(),
    data=st.data(),
)
def test_fuzzed_calls_succeed_or_raise_value_or_type_error(operation, x, data):
    model = make_model()
    n = x.shape[0] if x.ndim else 0
    y = data.draw(targets(n)) if operation != "predict" else None
    batch_size = None
    if operation in ("predict", "evaluate", "fit"):
        batch_size = data.draw(st.sampled_from(BATCH_SIZES))
    valid = is_valid_x(x) and is_valid_batch_size(batch_size)
    if y is not None:
        valid = valid and is_valid_y(y, n)

    if valid:
        run(model, operation, x, y, batch_size)
    else:
        with pytest.raises((ValueError, TypeError)):
            run(model, operation, x, y, batch_size)


@pytest.mark.parametrize(
    "x",
    [
        None,
        "abc",
        3.0,
        [],
        [[1.0, 2.0], [3.0]],
        {"x": 1},
    ],
)
def test_non_arrays_raise_value_or_type_error(x):
    model = make_model()

    with pytest.raises((ValueError, TypeError)):
        model.predict(x)


def test_nested_lists_of_the_right_shape_are_accepted():
    model = make_model()
    x = np.random.default_rng(1).standard_normal((2, T, D))

    np.testing.assert_array_equal(
        model.predict(x.tolist()), model.predict(x.astype(np.float32))
    )
