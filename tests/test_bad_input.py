"""The contract at the surface: bad input fails early with a message that names the
problem, valid input in any numeric form gives the same result, and the Keras
names, shapes and return values are what Keras users expect."""

import warnings

import numpy as np
import pytest

from fastrnn import FastRNNWarning
from fastrnn.callbacks import History
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.models import Sequential
from fastrnn.optimizers import SGD, Adam, RMSprop
from fastrnn.utils import np_utils, set_random_seed

F32 = np.float32
T, D, H, K = 5, 3, 4, 2
N = 12

CATEGORICAL = "categorical_crossentropy"
SPARSE = "sparse_categorical_crossentropy"


def rnn_model(
    compile=True,
    loss=CATEGORICAL,
    metrics=None,
    optimizer="adam",
    activation="tanh",
    input_shape=(T, D),
):
    model = Sequential(
        [
            SimpleRNN(H, activation=activation, input_shape=input_shape),
            Dense(K, activation="softmax"),
        ]
    )
    if compile:
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, D)).astype(F32)
    labels = rng.integers(0, K, n)
    return x, np_utils.to_categorical(labels, K), labels


@pytest.fixture
def model():
    return rnn_model()


@pytest.fixture
def xy():
    x, y, _ = data()
    return x, y


@pytest.fixture(autouse=True)
def forget_seed():
    """Start and end without an explicit seed, so np.random.seed governs fastrnn."""
    set_random_seed(None)
    yield
    set_random_seed(None)


# Each entry point that takes x (and y), as a callable of (model, x, y).
ENTRY_POINTS = {
    "fit": lambda m, x, y: m.fit(x, y, epochs=1, verbose=0),
    "train_on_batch": lambda m, x, y: m.train_on_batch(x, y),
    "test_on_batch": lambda m, x, y: m.test_on_batch(x, y),
    "evaluate": lambda m, x, y: m.evaluate(x, y),
    "predict": lambda m, x, y: m.predict(x),
    "predict_on_batch": lambda m, x, y: m.predict_on_batch(x),
}
WITH_Y = ["fit", "train_on_batch", "test_on_batch", "evaluate"]


# shapes of x ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_2d_input_to_rnn_model(model, xy, entry):
    x, y = xy
    with pytest.raises(ValueError, match=r"3 dimensions \(batch, time steps, feat"):
        ENTRY_POINTS[entry](model, x[:, :, 0], y)


def test_2d_input_to_unbuilt_rnn_model():
    model = Sequential([SimpleRNN(H), Dense(K, activation="softmax")])
    model.compile(optimizer="adam", loss=CATEGORICAL)
    with pytest.raises(ValueError, match="3 dimensions"):
        model.predict(np.zeros((4, D), dtype=F32))


def test_4d_input_to_rnn_model(model):
    with pytest.raises(ValueError, match="3 dimensions"):
        model.predict(np.zeros((2, T, D, 1), dtype=F32))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_wrong_feature_count(model, xy, entry):
    x, y = xy
    wider = np.concatenate([x, x[:, :, :1]], axis=2)
    with pytest.raises(ValueError, match=f"axis 2 is {D + 1}, expected {D}"):
        ENTRY_POINTS[entry](model, wider, y)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_wrong_fixed_time_step_count(model, xy, entry):
    x, y = xy
    with pytest.raises(ValueError, match=f"axis 1 is {T - 1}, expected {T}"):
        ENTRY_POINTS[entry](model, x[:, : T - 1], y)


def test_any_time_step_count_when_declared_none(xy):
    x, y = xy
    model = rnn_model(input_shape=(None, D))
    for steps in (1, 2, T + 3):
        longer = np.resize(x, (N, steps, D))
        assert model.predict(longer).shape == (N, K)
        assert np.isfinite(model.train_on_batch(longer, y))


def sequence_model(loss, steps):
    model = Sequential(
        [
            SimpleRNN(H, input_shape=(steps, D), return_sequences=True),
            Dense(K, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss=loss)
    return model


def sequence_targets(loss, labels):
    return labels if loss == SPARSE else np.eye(K, dtype=F32)[labels]


@pytest.mark.parametrize("loss", [CATEGORICAL, SPARSE])
@pytest.mark.parametrize("declared", [T, None], ids=["fixed-steps", "free-steps"])
def test_return_sequences_trains_on_declared_steps(loss, declared):
    model = sequence_model(loss, declared)
    rng = np.random.default_rng(2)
    for steps in (T,) if declared else (1, T, T + 2):
        x = rng.standard_normal((N, steps, D)).astype(F32)
        y = sequence_targets(loss, rng.integers(0, K, (N, steps)))

        assert np.isfinite(model.train_on_batch(x, y))
        assert np.isfinite(model.evaluate(x, y))
        assert model.predict(x).shape == (N, steps, K)


@pytest.mark.parametrize("loss", [CATEGORICAL, SPARSE])
@pytest.mark.parametrize("declared", [T, None], ids=["fixed-steps", "free-steps"])
def test_return_sequences_targets_with_other_steps_than_x(loss, declared):
    model = sequence_model(loss, declared)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, T, D)).astype(F32)
    y = sequence_targets(loss, rng.integers(0, K, (N, T + 1)))

    with pytest.raises(
        ValueError,
        match=rf"shape \({N}, {T}(, {K})?\).*got "
        rf"\({N}, {T + 1}",
    ):
        model.train_on_batch(x, y)


def test_validation_data_with_wrong_feature_count(model, xy):
    x, y = xy
    with pytest.raises(ValueError, match="validation_data x"):
        model.fit(x, y, validation_data=(x[:, :, :2], y), verbose=0)


# samples of x and y ---------------------------------------------------------------


@pytest.mark.parametrize("entry", WITH_Y)
def test_x_and_y_of_different_lengths(model, xy, entry):
    x, y = xy
    with pytest.raises(ValueError, match=f"x has {N}, y has {N - 1} samples"):
        ENTRY_POINTS[entry](model, x, y[:-1])


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_empty_x(model, entry):
    x = np.zeros((0, T, D), dtype=F32)
    y = np.zeros((0, K), dtype=F32)
    with pytest.raises(ValueError, match=r"empty \(0 samples\)"):
        ENTRY_POINTS[entry](model, x, y)


def test_empty_list_x(model):
    with pytest.raises(ValueError, match="3 dimensions"):
        model.predict([])


def test_empty_time_axis(model):
    with pytest.raises(ValueError, match="axis 1 is 0"):
        model.predict(np.zeros((2, 0, D), dtype=F32))


def test_ragged_lists(model):
    ragged = [[[0.0] * D] * T, [[0.0] * D] * (T - 1)]
    with pytest.raises(ValueError, match="rectangular"):
        model.predict(ragged)


def test_ragged_list_y(model, xy):
    x, _ = xy
    with pytest.raises(ValueError, match="rectangular"):
        model.train_on_batch(x[:2], [[0.0, 1.0], [1.0]])


# values of x and y ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_non_finite_x(model, xy, entry, bad):
    x, y = xy
    x = x.copy()
    x[N - 1, T - 1, D - 1] = bad
    before = model.get_weights()

    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        ENTRY_POINTS[entry](model, x, y)

    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_float64_x_beyond_float32_range(model, xy, entry):
    x, y = xy
    x = x.astype(np.float64)
    x[0, 0, 0] = 1e39  # finite in float64, inf in float32

    with pytest.raises(ValueError, match="x has values beyond float32's range"):
        ENTRY_POINTS[entry](model, x, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("entry", WITH_Y)
def test_non_finite_y(model, xy, entry, bad):
    x, y = xy
    y = y.copy()
    y[N - 1, 0] = bad
    with pytest.raises(ValueError, match="y contains NaN or infinite values"):
        ENTRY_POINTS[entry](model, x, y)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    "bad",
    [
        np.full((N, T, D), "a"),
        np.full((N, T, D), None, dtype=object),
        np.ones((N, T, D), dtype=complex),
    ],
    ids=["str", "object", "complex"],
)
def test_non_numeric_x(model, xy, entry, bad):
    _, y = xy
    with pytest.raises(TypeError, match="x must hold real numbers.*got dtype"):
        ENTRY_POINTS[entry](model, bad, y)


@pytest.mark.parametrize("entry", WITH_Y)
def test_non_numeric_y(model, xy, entry):
    x, _ = xy
    with pytest.raises(TypeError, match="y must hold real numbers.*got dtype"):
        ENTRY_POINTS[entry](model, x, np.full((N, K), "1"))


# targets against the loss ---------------------------------------------------------


def test_to_categorical_label_out_of_range():
    with pytest.raises(ValueError, match=r"labels in \[0, 2\].*got 3"):
        np_utils.to_categorical([0, 1, 3], num_classes=3)


def test_to_categorical_negative_label():
    with pytest.raises(ValueError, match=r"labels >= 0.*got -1"):
        np_utils.to_categorical([0, -1, 2])


@pytest.mark.parametrize("entry", WITH_Y)
def test_one_hot_y_with_wrong_class_count(model, xy, entry):
    x, _ = xy
    y = np_utils.to_categorical(np.arange(N) % 3, 3)
    with pytest.raises(
        ValueError,
        match=rf"y must have shape \({N}, {K}\).*got "
        rf"\({N}, 3\)",
    ):
        ENTRY_POINTS[entry](model, x, y)


@pytest.mark.parametrize("shape", ["vector", "column"])
def test_integer_y_with_categorical_loss_gives_a_hint(model, xy, shape):
    x, _ = xy
    labels = np.arange(N) % K
    if shape == "column":
        labels = labels[:, None]
    with pytest.raises(ValueError, match="to_categorical.*sparse_categorical_cross"):
        model.train_on_batch(x, labels)


@pytest.mark.parametrize("labels", [[0, K], [-1, 0]], ids=["too-big", "negative"])
@pytest.mark.parametrize("entry", WITH_Y)
def test_sparse_labels_out_of_range(xy, entry, labels):
    x, _ = xy
    model = rnn_model(loss=SPARSE)
    y = np.resize(np.array(labels), N)
    with pytest.raises(ValueError, match=rf"labels must be in \[0, {K - 1}\]"):
        ENTRY_POINTS[entry](model, x, y)


def test_sparse_labels_not_whole_numbers(xy):
    x, _ = xy
    model = rnn_model(loss=SPARSE)
    with pytest.raises(ValueError, match="whole-number class labels"):
        model.train_on_batch(x, np.full(N, 0.5))


def test_sparse_labels_one_hot_by_mistake(xy):
    x, y = xy
    model = rnn_model(loss=SPARSE)
    with pytest.raises(ValueError, match="integer labels of shape"):
        model.train_on_batch(x, y)


def test_sparse_labels_as_column_and_as_floats_train_like_vector(xy):
    x, _ = xy
    labels = np.arange(N) % K
    losses = []
    for y in (labels, labels[:, None], labels.astype(np.float64)):
        np.random.seed(3)
        model = rnn_model(loss=SPARSE, optimizer=SGD(learning_rate=0.1))
        losses.append([model.train_on_batch(x, y) for _ in range(2)])
    assert losses[0] == losses[1] == losses[2]


# before compile -------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_use_before_compile(xy, entry):
    x, y = xy
    model = rnn_model(compile=False)
    with pytest.raises(ValueError, match="must be compiled first"):
        ENTRY_POINTS[entry](model, x, y)


def test_compile_without_loss():
    model = rnn_model(compile=False)
    with pytest.raises(ValueError, match="compile needs a loss"):
        model.compile(optimizer="adam")


def test_compile_with_unknown_loss():
    model = rnn_model(compile=False)
    with pytest.raises(ValueError, match="loss must be one of.*'hinge'"):
        model.compile(optimizer="adam", loss="hinge")


def test_compile_with_unknown_metric():
    model = rnn_model(compile=False)
    with pytest.raises(ValueError, match="metrics may only contain.*'mae'"):
        model.compile(optimizer="adam", loss=CATEGORICAL, metrics=["mae"])


# batch_size -----------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["fit", "evaluate", "predict"])
@pytest.mark.parametrize(
    "batch_size, error, message",
    [
        (0, ValueError, "batch_size must be a positive integer, got 0"),
        (-1, ValueError, "batch_size must be a positive integer, got -1"),
        (2.5, TypeError, "batch_size must be a positive integer, got float 2.5"),
        ("8", TypeError, "batch_size must be a positive integer, got str '8'"),
        (True, TypeError, "batch_size must be a positive integer, got bool"),
    ],
    ids=["zero", "negative", "float", "str", "bool"],
)
def test_bad_batch_size(model, xy, entry, batch_size, error, message):
    x, y = xy
    call = {
        "fit": lambda: model.fit(x, y, batch_size=batch_size, verbose=0),
        "evaluate": lambda: model.evaluate(x, y, batch_size=batch_size),
        "predict": lambda: model.predict(x, batch_size=batch_size),
    }[entry]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("batch_size", [1, 5, N, 100, np.int64(7)])
def test_every_batch_size_gives_the_same_predictions(model, xy, batch_size):
    x, _ = xy
    np.testing.assert_allclose(
        model.predict(x, batch_size=batch_size),
        model.predict(x, batch_size=N),
        rtol=1e-6,
        atol=1e-7,
    )


def test_bad_epochs(model, xy):
    x, y = xy
    with pytest.raises(
        ValueError, match="epochs must be a non-negative integer, got -1"
    ):
        model.fit(x, y, epochs=-1, verbose=0)
    with pytest.raises(TypeError, match="epochs must be a non-negative integer"):
        model.fit(x, y, epochs=1.5, verbose=0)
    with pytest.raises(TypeError, match="epochs must be a non-negative integer"):
        model.fit(x, y, epochs=None, verbose=0)
    # No epochs is no training, as in Keras.
    before = model.get_weights()
    assert model.fit(x, y, epochs=0, verbose=0).history == {}
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("split", [1.0, 1.5, -0.1])
def test_bad_validation_split(model, xy, split):
    x, y = xy
    with pytest.raises(ValueError, match=r"validation_split must be in \(0, 1\)"):
        model.fit(x, y, validation_split=split, verbose=0)


def test_validation_split_leaving_nothing_to_train_on(model, xy):
    x, y = xy
    # int(3 * (1 - 0.9)) = 0 training samples
    with pytest.raises(ValueError, match="leaves no samples for training"):
        model.fit(x[:3], y[:3], validation_split=0.9, verbose=0)


def test_validation_data_not_a_pair(model, xy):
    x, y = xy
    with pytest.raises(ValueError, match=r"validation_data must be a tuple"):
        model.fit(x, y, validation_data=x, verbose=0)


# layer and optimizer arguments ----------------------------------------------------


@pytest.mark.parametrize("layer", [SimpleRNN, Dense])
@pytest.mark.parametrize(
    "units, error, message",
    [
        (0, ValueError, "units must be a positive integer, got 0"),
        (-3, ValueError, "units must be a positive integer, got -3"),
        ("a", TypeError, "units must be a positive integer, got str 'a'"),
        (2.0, TypeError, "units must be a positive integer, got float 2.0"),
        (None, TypeError, "missing required argument 'units'"),
    ],
    ids=["zero", "negative", "str", "float", "none"],
)
def test_bad_units(layer, units, error, message):
    with pytest.raises(error, match=message):
        layer(units)


@pytest.mark.parametrize("layer", [SimpleRNN, Dense, Activation])
def test_unknown_activation(layer):
    make = {
        SimpleRNN: lambda: SimpleRNN(H, activation="bogus"),
        Dense: lambda: Dense(K, activation="bogus"),
        Activation: lambda: Activation("bogus"),
    }[layer]
    with pytest.raises(ValueError, match="activation must be one of.*'bogus'"):
        make()


def test_softmax_is_not_a_recurrent_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        SimpleRNN(H, activation="softmax")


@pytest.mark.parametrize(
    "keyword, value",
    [
        ("dropout", 0.5),
        ("recurrent_dropout", 0.2),
        ("stateful", True),
        ("go_backwards", True),
        ("return_state", True),
    ],
)
def test_unsupported_recurrent_options(keyword, value):
    with pytest.raises(ValueError, match=f"{keyword}={value!r} is not supported"):
        SimpleRNN(H, **{keyword: value})


def test_unsupported_options_at_their_defaults_are_accepted():
    layer = SimpleRNN(H, dropout=0.0, recurrent_dropout=0.0, stateful=False)
    assert layer.units == H


@pytest.mark.parametrize("optimizer", [Adam, SGD, RMSprop])
@pytest.mark.parametrize("learning_rate", [-1, 0, float("nan")])
def test_bad_learning_rate(optimizer, learning_rate):
    with pytest.raises(ValueError, match="learning_rate must be"):
        optimizer(learning_rate=learning_rate)


def test_learning_rate_of_wrong_type():
    with pytest.raises(TypeError, match="learning_rate must be a number, got str"):
        Adam(learning_rate="0.1")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Adam(beta_1=1.0), "beta_1 must be < 1.0"),
        (lambda: Adam(beta_2=-0.1), "beta_2 must be >= 0.0"),
        (lambda: SGD(momentum=-0.5), "momentum must be >= 0.0"),
        (lambda: RMSprop(rho=1.5), "rho must be < 1.0"),
    ],
)
def test_bad_optimizer_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_optimizer_keyword():
    with pytest.raises(TypeError, match="unexpected arguments.*'momentum'"):
        Adam(momentum=0.9)


def test_unknown_optimizer_name():
    model = rnn_model(compile=False)
    with pytest.raises(ValueError, match="optimizer must be an Optimizer.*'bogus'"):
        model.compile(optimizer="bogus", loss=CATEGORICAL)


# set_weights ----------------------------------------------------------------------


def test_set_weights_with_wrong_count(model):
    weights = model.get_weights()
    with pytest.raises(ValueError, match="set_weights expects 5 arrays, got 4"):
        model.set_weights(weights[:-1])


def test_set_weights_with_wrong_shape(model):
    weights = model.get_weights()
    weights[1] = weights[1][:, :-1]
    with pytest.raises(ValueError, match=rf"weights\[1\] must have shape \({H}, {H}\)"):
        model.set_weights(weights)


def test_set_weights_with_transposed_kernel(model):
    weights = model.get_weights()
    weights[0] = weights[0].T
    with pytest.raises(ValueError, match=rf"weights\[0\] must have shape \({D}, {H}\)"):
        model.set_weights(weights)


def test_set_weights_with_nan_leaves_weights_alone(model):
    weights = model.get_weights()
    bad = [w.copy() for w in weights]
    bad[4][0] = np.nan
    with pytest.raises(ValueError, match=r"weights\[4\] contains NaN"):
        model.set_weights(bad)
    for w0, w1 in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


# a loss that overflows ------------------------------------------------------------


def test_overflowing_loss_warns_and_keeps_weights(xy):
    x, y = xy
    model = rnn_model(activation="linear", optimizer=SGD(learning_rate=1.0))
    weights = model.get_weights()
    # Finite weights whose linear recurrence overflows float32 within T steps.
    weights[0][...] = 1e12
    weights[1][...] = 1e12
    model.set_weights(weights)

    with pytest.warns(FastRNNWarning, match="the loss is (nan|inf).*update was skip"):
        loss = model.train_on_batch(x, y)

    assert not np.isfinite(loss)
    for w0, w1 in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_huge_learning_rate_warns_and_keeps_finite_weights(xy):
    x, y = xy
    np.random.seed(0)
    model = rnn_model(activation="linear", optimizer=SGD(learning_rate=1e30))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = []
        for _ in range(6):
            before = model.get_weights()
            losses.append(model.train_on_batch(x, y))
            if not np.isfinite(losses[-1]):
                break

    assert not np.isfinite(losses[-1]), losses
    assert any(
        issubclass(w.category, FastRNNWarning) and "the loss is" in str(w.message)
        for w in caught
    )
    after = model.get_weights()
    for w0, w1 in zip(before, after):
        np.testing.assert_array_equal(w0, w1)
        assert np.all(np.isfinite(w1))


@pytest.mark.parametrize("loss", [CATEGORICAL, "mse"])
def test_skipped_batch_leaves_no_trace_in_the_optimizer(xy, loss):
    x, y = xy
    rng = np.random.default_rng(5)
    weights = [
        np.ones((D, H), dtype=F32),
        (0.1 * np.eye(H)).astype(F32),
        np.zeros(H, dtype=F32),
        rng.standard_normal((H, K)).astype(F32),
        np.zeros(K, dtype=F32),
    ]
    # Finite input whose first product x W already overflows float32.
    overflowing = np.full_like(x, np.finfo(F32).max)
    results = []
    for with_bad_batch in (False, True):
        model = rnn_model(activation="linear", optimizer=Adam(0.01), loss=loss)
        model.set_weights(weights)
        model.train_on_batch(x, y)
        if with_bad_batch:
            with pytest.warns(FastRNNWarning, match="the loss is"):
                model.train_on_batch(overflowing, y)
        model.train_on_batch(x[::-1], y[::-1])
        results.append((model.optimizer.iterations, model.get_weights()))

    (steps, clean), (steps_with_bad, after_bad) = results
    assert steps == steps_with_bad == 2
    for w0, w1 in zip(clean, after_bad):
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("optimizer", [Adam, RMSprop])
@pytest.mark.parametrize("loss", [CATEGORICAL, "mse"])
def test_an_update_that_overflows_the_optimizer_state_is_skipped(xy, optimizer, loss):
    # Targets of 1e30 are finite, but their gradient squared is not: the
    # weights stay finite while Adam's or RMSprop's second moment becomes inf,
    # which would stop every later update.  That step must be undone, loudly.
    x, y = xy
    model = rnn_model(optimizer=optimizer(1e-3), loss=loss)
    model.train_on_batch(x, y)
    before = model.get_weights()
    state = [vector.copy() for vector in model.optimizer.state()]

    with pytest.warns(FastRNNWarning, match="overflowed the weights or the optim"):
        model.train_on_batch(x, y * F32(1e30))

    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    for kept, vector in zip(state, model.optimizer.state()):
        np.testing.assert_array_equal(kept, vector)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastRNNWarning)
        model.train_on_batch(x, y)
    assert any(
        not np.array_equal(w0, w1) for w0, w1 in zip(before, model.get_weights())
    )


def test_fit_stops_on_overflowing_loss(xy, capsys):
    x, y = xy
    np.random.seed(0)
    model = rnn_model(activation="linear", optimizer=SGD(learning_rate=1e30))

    with pytest.warns(FastRNNWarning, match="the loss is"):
        history = model.fit(x, y, batch_size=4, epochs=20, verbose=0)

    assert model.stop_training
    assert len(history.history.get("loss", [])) < 20
    assert "stopping with the last finite weights" in capsys.readouterr().err
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# valid input in other forms -------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [np.float64, np.longdouble, np.float16, np.int64, np.int8, np.uint8, np.bool_],
)
def test_other_dtypes_give_the_float32_result(model, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((N, T, D)) * 3).astype(dtype)
    expected = model.predict(x.astype(F32))

    np.testing.assert_array_equal(model.predict(x), expected)


@pytest.mark.parametrize(
    "dtype", [np.float64, np.longdouble, np.int64, np.uint8, np.bool_]
)
def test_other_dtypes_train_like_float32(xy, dtype):
    x, y = xy
    x = (x * 3).astype(dtype)
    results = []
    for x_in, y_in in ((x.astype(F32), y), (x, y.astype(dtype))):
        np.random.seed(4)
        model = rnn_model(optimizer=SGD(learning_rate=0.1))
        loss = model.train_on_batch(x_in, y_in)
        results.append((loss, model.get_weights()))
    assert results[0][0] == results[1][0]
    for w0, w1 in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(w0, w1)


def test_big_endian_input_gives_the_native_result(model, xy):
    x, _ = xy
    np.testing.assert_array_equal(model.predict(x.astype(">f8")), model.predict(x))


def test_lists_give_the_array_result(model, xy):
    x, y = xy
    np.testing.assert_array_equal(model.predict(x.tolist()), model.predict(x))
    assert model.evaluate(x.tolist(), y.tolist()) == model.evaluate(x, y)


@pytest.mark.parametrize(
    "layout",
    ["fortran", "time-major-view", "strided-steps", "strided-samples", "reversed"],
)
def test_non_contiguous_input_gives_identical_predictions(model, xy, layout):
    x, y = xy
    if layout == "fortran":
        odd = np.asfortranarray(x)
    elif layout == "time-major-view":
        odd = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    elif layout == "strided-steps":
        wide = np.zeros((N, 2 * T, 2 * D), dtype=F32)
        wide[:, ::2, ::2] = x
        odd = wide[:, ::2, ::2]
    elif layout == "strided-samples":
        wide = np.zeros((2 * N, T, D), dtype=F32)
        wide[::2] = x
        odd = wide[::2]
    else:
        odd = np.ascontiguousarray(x[::-1])[::-1]
    assert not odd.flags.c_contiguous
    np.testing.assert_array_equal(odd, x)

    np.testing.assert_array_equal(model.predict(odd), model.predict(x))
    assert model.test_on_batch(odd, y) == model.test_on_batch(x, y)


def test_non_contiguous_input_trains_identically(xy):
    x, y = xy
    results = []
    for x_in in (x, np.asfortranarray(x)):
        np.random.seed(5)
        model = rnn_model(optimizer=SGD(learning_rate=0.1))
        results.append((model.train_on_batch(x_in, y), model.get_weights()))
    assert results[0][0] == results[1][0]
    for w0, w1 in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(w0, w1)


def test_predict_on_one_sample(model, xy):
    x, _ = xy
    one = model.predict(x[:1])

    assert one.shape == (1, K)
    assert one.dtype == F32
    np.testing.assert_allclose(one, model.predict(x)[:1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(one.sum(axis=1), 1.0, rtol=1e-6)


def test_predict_on_batch_matches_predict(model, xy):
    x, _ = xy
    np.testing.assert_allclose(
        model.predict_on_batch(x), model.predict(x, batch_size=N), rtol=1e-6
    )


def test_predict_returns_a_copy(model, xy):
    x, _ = xy
    first = model.predict(x)
    kept = first.copy()
    model.predict(x[::-1])
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("call", ["predict", "predict_on_batch"])
def test_sequence_predictions_of_one_sample_are_copies(xy, call):
    # One sample's (T, 1, K) output transposed to (1, T, K) is already
    # contiguous: it must still be copied out of the layer's buffer.
    x, _ = xy
    model = sequence_model("mse", T)
    predict = getattr(model, call)
    first = predict(x[:1])
    kept = first.copy()
    predict(x[1:2])
    np.testing.assert_array_equal(first, kept)


def test_sequence_predictions_do_not_depend_on_batch_size(xy):
    x, _ = xy
    model = sequence_model("mse", T)
    whole = model.predict(x, batch_size=len(x))
    np.testing.assert_allclose(model.predict(x, batch_size=1), whole, atol=1e-6)


# return values --------------------------------------------------------------------


def test_evaluate_returns_loss_and_accuracy_with_metrics(xy):
    x, y = xy
    model = rnn_model(metrics=["accuracy"])

    result = model.evaluate(x, y, batch_size=5)

    assert isinstance(result, list) and len(result) == 2
    loss, accuracy = result
    probabilities = model.predict(x)
    expected_accuracy = np.mean(probabilities.argmax(1) == y.argmax(1))
    expected_loss = -np.mean(np.log(probabilities[y.astype(bool)]))
    assert accuracy == pytest.approx(expected_accuracy)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert model.metrics_names == ["loss", "accuracy"]


def test_evaluate_returns_a_float_without_metrics(model, xy):
    x, y = xy
    result = model.evaluate(x, y)
    assert isinstance(result, float)


def test_train_on_batch_returns_loss_and_accuracy_with_metrics(xy):
    x, y = xy
    model = rnn_model(metrics=["acc"])
    result = model.train_on_batch(x, y)
    assert isinstance(result, list) and len(result) == 2
    assert 0.0 <= result[1] <= 1.0


def test_get_weights_order_and_shapes_match_keras(model):
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(D, H), (H, H), (H,), (H, K), (K,)]
    assert all(w.dtype == F32 for w in model.get_weights())


def test_get_weights_returns_copies(model):
    weights = model.get_weights()
    weights[0][...] = 7.0
    assert not np.any(model.get_weights()[0] == 7.0)


def test_set_weights_round_trip(model, xy):
    x, _ = xy
    other = rnn_model()
    other.set_weights(model.get_weights())
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_count_params(model):
    assert model.count_params() == D * H + H * H + H + H * K + K
    assert model.count_params() == sum(w.size for w in model.get_weights())


def test_model_shapes(model):
    assert model.input_shape == (None, T, D)
    assert model.output_shape == (None, K)


# Keras names, old and new ---------------------------------------------------------


def test_output_dim_warns_and_means_units():
    with pytest.warns(FastRNNWarning, match="output_dim.*units=4"):
        layer = SimpleRNN(output_dim=4, input_shape=(T, D))
    assert layer.units == 4
    with pytest.warns(FastRNNWarning, match="output_dim"):
        dense = Dense(output_dim=3)
    assert dense.units == 3


def test_units_and_output_dim_together():
    with pytest.raises(TypeError, match="units or output_dim, not both"):
        SimpleRNN(4, output_dim=4)


def input_shape_of(first_layer):
    model = Sequential([first_layer, Dense(K, activation="softmax")])
    return model.input_shape


def test_input_dim_and_input_length():
    assert input_shape_of(SimpleRNN(H, input_dim=D, input_length=T)) == (None, T, D)


def test_input_dim_alone_leaves_time_steps_free():
    assert input_shape_of(SimpleRNN(H, input_dim=D)) == (None, None, D)


@pytest.mark.parametrize("batch", [None, 16])
def test_batch_input_shape(xy, batch):
    x, y = xy
    model = Sequential(
        [
            SimpleRNN(H, batch_input_shape=(batch, T, D)),
            Dense(K, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss=CATEGORICAL)

    assert model.input_shape == (None, T, D)
    # A fixed batch size in the declaration does not restrict later calls.
    assert model.predict(x[:3]).shape == (3, K)
    assert np.isfinite(model.train_on_batch(x, y))


def test_unroll_true_is_accepted_and_changes_nothing(xy):
    x, _ = xy
    rolled = rnn_model()
    unrolled = Sequential(
        [
            SimpleRNN(H, unroll=True, input_shape=(T, D)),
            Dense(K, activation="softmax"),
        ]
    )
    unrolled.compile(optimizer="adam", loss=CATEGORICAL)
    unrolled.set_weights(rolled.get_weights())
    np.testing.assert_array_equal(unrolled.predict(x), rolled.predict(x))


def test_adam_learning_rate_positional():
    assert Adam(0.002).learning_rate == 0.002


def test_adam_lr_warns_and_means_learning_rate():
    with pytest.warns(FastRNNWarning, match="'lr' is an old name"):
        optimizer = Adam(lr=0.002)
    assert optimizer.learning_rate == 0.002
    assert optimizer.lr == 0.002


@pytest.mark.parametrize(
    "name, kind", [("adam", Adam), ("sgd", SGD), ("rmsprop", RMSprop), ("Adam", Adam)]
)
def test_compile_with_optimizer_name(xy, name, kind):
    x, y = xy
    model = rnn_model(compile=False)
    model.compile(optimizer=name, loss=CATEGORICAL)
    assert type(model.optimizer) is kind
    before = model.get_weights()
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_compile_with_mse_alias(xy):
    x, y = xy
    model = rnn_model(loss="mse")
    loss = model.test_on_batch(x, y)
    assert loss == pytest.approx(np.mean((model.predict(x) - y) ** 2), rel=1e-5)


# fit and History ------------------------------------------------------------------


def check_history(history, epochs):
    assert isinstance(history, History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in history.history.items():
        assert len(values) == epochs, key
        assert all(np.isfinite(values)), key
    assert history.epoch == list(range(epochs))


def test_fit_with_validation_split_records_every_epoch():
    x, y, _ = data(n=20)
    model = rnn_model(metrics=["accuracy"])

    history = model.fit(x, y, batch_size=4, epochs=3, validation_split=0.25, verbose=0)

    check_history(history, 3)
    # The last 25% of the samples, unshuffled, are held out.
    loss, accuracy = model.evaluate(x[15:], y[15:], batch_size=4)
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)


def test_fit_with_validation_data_records_every_epoch():
    x, y, _ = data(n=16)
    x_val, y_val, _ = data(n=6, seed=1)
    model = rnn_model(metrics=["accuracy"])

    history = model.fit(
        x, y, batch_size=5, epochs=2, validation_data=(x_val, y_val), verbose=0
    )

    check_history(history, 2)
    loss, accuracy = model.evaluate(x_val, y_val, batch_size=5)
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)


def test_fit_without_metrics_or_validation_records_loss_only(model, xy):
    x, y = xy
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert set(history.history) == {"loss"}
    assert len(history.history["loss"]) == 2


def test_fit_lowers_the_loss_on_a_learnable_task():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, T, D)).astype(F32)
    labels = (x[:, :, 0].sum(axis=1) > 0).astype(int)
    y = np_utils.to_categorical(labels, K)
    np.random.seed(6)
    model = rnn_model(optimizer=Adam(0.01), metrics=["accuracy"])

    history = model.fit(x, y, batch_size=16, epochs=30, verbose=0)

    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9


# reproducibility ------------------------------------------------------------------


def train_briefly(seed_with, seed):
    seed_with(seed)
    x, y, _ = data(n=20, seed=7)
    model = rnn_model(optimizer=Adam(0.01))
    initial = model.get_weights()
    history = model.fit(x, y, batch_size=6, epochs=2, verbose=0, shuffle=True)
    return initial, model.get_weights(), history.history["loss"]


@pytest.mark.parametrize(
    "seed_with",
    [np.random.seed, set_random_seed],
    ids=["np.random.seed", "set_random_seed"],
)
def test_same_seed_same_weights_and_training(seed_with):
    first = train_briefly(seed_with, 11)
    second = train_briefly(seed_with, 11)
    other = train_briefly(seed_with, 12)

    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        np.testing.assert_array_equal(a, b)
    assert first[2] == second[2]
    assert not np.array_equal(first[0][0], other[0][0])


def test_shuffling_follows_the_seed():
    # Same initial weights, different shuffles: only the seed before fit differs.
    x, y, _ = data(n=20, seed=8)
    results = []
    for seed in (1, 1, 2):
        set_random_seed(0)
        model = rnn_model(optimizer=SGD(learning_rate=0.1))
        set_random_seed(seed)
        model.fit(x, y, batch_size=3, epochs=1, verbose=0, shuffle=True)
        results.append(model.get_weights()[0])
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_one_optimizer_cannot_train_two_models():
    shared = Adam()
    first = Sequential([SimpleRNN(4, input_shape=(3, 2)), Dense(2, "softmax")])
    first.compile(shared, "categorical_crossentropy")
    second = Sequential([SimpleRNN(5, input_shape=(3, 2)), Dense(2, "softmax")])
    with pytest.raises(ValueError, match="already trains another model"):
        second.compile(shared, "categorical_crossentropy")
    # The same model may be compiled again with its own optimizer.
    first.compile(shared, "categorical_crossentropy")


def test_lr_and_learning_rate_together_are_refused():
    with pytest.raises(TypeError, match="learning_rate or its old name lr, not both"):
        Adam(learning_rate=0.2, lr=0.1)
    assert SGD().learning_rate == 0.01
    assert RMSprop(0.5).learning_rate == 0.5


def test_metrics_may_be_one_string(model, xy):
    x, y = xy
    model.compile("adam", "categorical_crossentropy", metrics="accuracy")
    assert len(model.evaluate(x, y, verbose=0)) == 2


@pytest.mark.parametrize("value", [None, "abc", {"a": 1}])
def test_x_that_is_no_array_names_its_type(model, xy, value):
    _, y = xy
    with pytest.raises(TypeError, match="x must be an array of numbers, got"):
        model.predict(value)


# Keras habits ---------------------------------------------------------------------


def test_freezing_a_layer_afterwards_is_refused_not_ignored(model):
    with pytest.raises(ValueError, match="trainable=False is not supported"):
        model.layers[0].trainable = False
    assert model.layers[0].trainable is True


@pytest.mark.parametrize("shape", [28, "28x28", 28.0])
def test_input_shape_that_is_not_a_tuple_names_the_argument(shape):
    with pytest.raises(TypeError, match="input_shape must be a tuple of sizes"):
        SimpleRNN(H, input_shape=shape)


def test_validation_data_with_sample_weights_is_refused(model, xy):
    x, y = xy
    with pytest.raises(ValueError, match="sample weights .* are not supported"):
        model.fit(x, y, validation_data=(x, y, np.zeros(len(x))), verbose=0)


def test_one_callback_need_not_be_in_a_list(model, xy):
    x, y = xy
    history = History()
    model.fit(x, y, epochs=2, verbose=0, callbacks=history)
    assert history.epoch == [0, 1]


def test_callbacks_must_be_callbacks(model, xy):
    x, y = xy
    with pytest.raises(TypeError, match="callbacks must be a list of Callback"):
        model.fit(x, y, verbose=0, callbacks="history")


@pytest.mark.parametrize("method", ["predict", "evaluate"])
@pytest.mark.parametrize("verbose", [7, -1, "yes", 1.5, None])
def test_predict_and_evaluate_check_verbose(model, xy, method, verbose):
    x, y = xy
    arguments = (x,) if method == "predict" else (x, y)
    with pytest.raises(ValueError, match="verbose must be 0, 1, 2 or 'auto'"):
        getattr(model, method)(*arguments, verbose=verbose)


@pytest.mark.parametrize("method", ["predict", "evaluate", "fit"])
@pytest.mark.parametrize("verbose", [False, True, 0, 2, "auto", np.int64(1)])
def test_verbose_takes_what_keras_takes(model, xy, method, verbose, capsys):
    x, y = xy
    arguments = (x,) if method == "predict" else (x, y)
    getattr(model, method)(*arguments, verbose=verbose)


@pytest.mark.parametrize("method", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_callbacks_rather_than_ignore_them(
    model, xy, method
):
    x, y = xy
    arguments = (x,) if method == "predict" else (x, y)
    with pytest.raises(ValueError, match="callbacks are not supported"):
        getattr(model, method)(*arguments, callbacks=[History()])
    assert getattr(model, method)(*arguments, callbacks=[]) is not None


def test_one_output_unit_takes_targets_without_the_last_axis(xy):
    x, _ = xy
    targets = np.random.default_rng(3).standard_normal(len(x)).astype(F32)
    results = []
    for y in (targets, targets[:, None]):
        np.random.seed(7)
        model = Sequential([SimpleRNN(H, input_shape=(T, D)), Dense(1)])
        model.compile(optimizer=SGD(0.1), loss="mse")
        results.append((model.train_on_batch(x, y), model.evaluate(x, y)))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("learning_rate", "fast", TypeError),
        ("learning_rate", -0.1, ValueError),
        ("learning_rate", float("nan"), ValueError),
        ("beta_1", 5.0, ValueError),
        ("epsilon", -1.0, ValueError),
        ("clipnorm", 0.0, ValueError),
    ],
)
def test_hyperparameters_set_after_compile_are_checked(model, name, value, error):
    before = getattr(model.optimizer, name)
    with pytest.raises(error, match=name):
        setattr(model.optimizer, name, value)
    assert getattr(model.optimizer, name) == before


def test_a_learning_rate_changed_between_steps_is_used(xy):
    x, y = xy
    results = []
    for rate in (0.1, 0.0001):
        np.random.seed(2)
        model = rnn_model(optimizer=SGD(0.1))
        model.optimizer.learning_rate = rate
        model.train_on_batch(x, y)
        results.append(model.get_weights()[0])
    assert not np.allclose(results[0], results[1])


def test_compiling_again_with_the_same_optimizer_keeps_its_state(xy):
    x, y = xy
    model = rnn_model(optimizer=Adam(0.01))
    model.train_on_batch(x, y)
    state = [vector.copy() for vector in model.optimizer.state()]
    model.compile(optimizer=model.optimizer, loss="mse")
    assert model.optimizer.iterations == 1
    for kept, vector in zip(state, model.optimizer.state()):
        np.testing.assert_array_equal(kept, vector)
    model.compile(optimizer=Adam(0.01), loss="mse")
    assert model.optimizer.iterations == 0
