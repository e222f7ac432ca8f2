"""Tests of fastrnn.callbacks and of how fit drives them, stops and clips."""

import math
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import callbacks, optimizers
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.models import Sequential, load_model

N, T, D, H, K = 24, 5, 3, 4, 2
BATCH = 8
STEPS = N // BATCH


def make_model(
    optimizer="adam",
    loss="categorical_crossentropy",
    softmax=True,
    metrics=("accuracy",),
):
    fastrnn.set_random_seed(3)
    layers = [SimpleRNN(H, input_shape=(T, D)), Dense(K)]
    if softmax:
        layers.append(Activation("softmax"))
    model = Sequential(layers)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    return model


def make_data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, D)).astype(np.float32)
    y = np.eye(K, dtype=np.float32)[rng.integers(0, K, size=n)]
    return x, y


def scripted(key, values):
    """A callback that overwrites ``logs[key]`` at each epoch end with values[epoch].

    Listed before the callback under test, it decides what that callback sees:
    fit hands one logs dict to the callbacks in order.
    """
    return callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logs.update({key: values[epoch]})
    )


class FakeModel:
    """Just what the monitoring callbacks touch."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(2)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def drive(callback, values, key="val_loss"):
    """Run ``callback`` through epochs whose logs hold ``values``; returns epochs run.

    The fake model's weights are the epoch number, so a restore is visible.
    """
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin({})
    epochs = 0
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch, {})
        model.weights = [np.full(2, float(epoch))]
        callback.on_epoch_end(epoch, {key: value} if value is not None else {})
        epochs += 1
        if model.stop_training:
            break
    callback.on_train_end({})
    return epochs, model


# History -----------------------------------------------------------------------------


def test_history_records_every_epoch():
    model = make_model()
    x, y = make_data()
    x_val, y_val = make_data(seed=1, n=10)

    history = model.fit(
        x, y, batch_size=BATCH, epochs=3, verbose=0, validation_data=(x_val, y_val)
    )

    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 3 for values in history.history.values())
    assert all(math.isfinite(v) for values in history.history.values() for v in values)
    val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=BATCH)
    assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_accuracy)


def test_history_of_a_second_fit_starts_afresh():
    model = make_model()
    x, y = make_data()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)

    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)

    assert history.epoch == [0]
    assert len(history.history["loss"]) == 1


# EarlyStopping ---------------------------------------------------------------------


def test_early_stopping_waits_patience_epochs():
    stopper = callbacks.EarlyStopping(patience=2)

    epochs, model = drive(stopper, [1.0, 0.9, 0.95, 0.92, 0.5, 0.4])

    # Best at epoch 1; epochs 2 and 3 do not improve, so it stops after epoch 3.
    assert epochs == 4
    assert model.stop_training
    assert stopper.stopped_epoch == 3
    assert stopper.best == 0.9
    assert stopper.best_epoch == 1


def test_early_stopping_min_delta_and_max_mode():
    stopper = callbacks.EarlyStopping(monitor="val_accuracy", min_delta=0.05)

    epochs, _ = drive(stopper, [0.5, 0.6, 0.62, 0.9], key="val_accuracy")

    # 0.62 beats 0.6 by less than min_delta: no improvement, patience 0 stops.
    assert epochs == 3
    assert stopper.best == 0.6


@pytest.mark.parametrize(
    "mode, values, epochs",
    [
        ("min", [0.5, 0.6], 2),
        ("max", [0.5, 0.4], 2),
        ("max", [0.5, 0.6, 0.7], 3),
        ("auto", [0.5, 0.6], 2),
    ],
)
def test_early_stopping_modes(mode, values, epochs):
    assert drive(callbacks.EarlyStopping(mode=mode), values)[0] == epochs


def test_early_stopping_baseline_keeps_counting_until_beaten():
    values = [0.9, 0.8, 0.85, 0.84, 0.83]

    with_baseline, _ = drive(callbacks.EarlyStopping(patience=2, baseline=0.5), values)
    without, _ = drive(callbacks.EarlyStopping(patience=2), values)

    # Improvements that miss the baseline do not reset the count, so the first
    # epoch without improvement already exhausts the patience.
    assert with_baseline == 3
    assert without == 4


def test_early_stopping_start_from_epoch():
    stopper = callbacks.EarlyStopping(start_from_epoch=2)

    epochs, _ = drive(stopper, [0.1, 0.9, 0.8, 0.9, 0.7])

    assert epochs == 4


def test_early_stopping_restores_best_weights_on_a_fake_model():
    stopper = callbacks.EarlyStopping(patience=1, restore_best_weights=True)

    epochs, model = drive(stopper, [1.0, 0.5, 0.7, 0.8, 0.1])

    assert epochs == 3
    np.testing.assert_array_equal(model.weights[0], [1.0, 1.0])


def test_early_stopping_without_monitored_quantity_warns_and_continues():
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=0)
    model = make_model()
    x, y = make_data()

    with pytest.warns(fastrnn.FastRNNWarning, match="'val_loss'.*loss, accuracy"):
        history = model.fit(
            x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[stopper]
        )

    assert history.epoch == [0, 1, 2]


def test_early_stopping_in_fit_stops_and_restores_best_weights(capsys):
    model = make_model()
    x, y = make_data()
    snapshots = []
    recorder = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights())
    )
    stopper = callbacks.EarlyStopping(patience=2, restore_best_weights=True, verbose=1)

    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=10,
        verbose=0,
        callbacks=[scripted("val_loss", [0.9, 0.5, 0.6, 0.7, 0.1]), recorder, stopper],
    )

    assert history.epoch == [0, 1, 2, 3]
    assert history.history["val_loss"] == [0.9, 0.5, 0.6, 0.7]
    for restored, best in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    assert not np.array_equal(snapshots[1][0], snapshots[3][0])
    out = capsys.readouterr().out
    assert "Epoch 4: early stopping" in out
    assert "best epoch: 2" in out


def test_early_stopping_is_reusable_across_fits():
    model = make_model()
    x, y = make_data()
    stopper = callbacks.EarlyStopping(patience=0)
    values = [0.5, 0.6, 0.7]

    first = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[scripted("val_loss", values), stopper],
    )
    second = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[scripted("val_loss", values), stopper],
    )

    assert first.epoch == second.epoch == [0, 1]


def test_monitor_mode_must_be_known():
    with pytest.raises(ValueError, match="mode"):
        callbacks.EarlyStopping(mode="lowest")


# ModelCheckpoint -------------------------------------------------------------------


def test_checkpoint_saves_every_epoch_with_formatted_names(tmp_path):
    model = make_model()
    x, y = make_data()
    pattern = str(tmp_path / "sub" / "ckpt-{epoch:02d}-{loss:.2f}.keras")

    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[callbacks.ModelCheckpoint(pattern)],
    )

    expected = sorted(
        f"ckpt-{epoch + 1:02d}-{loss:.2f}.keras"
        for epoch, loss in enumerate(history.history["loss"])
    )
    assert sorted(os.listdir(tmp_path / "sub")) == expected
    last = load_model(tmp_path / "sub" / expected[-1])
    for left, right in zip(last.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_checkpoint_save_best_only_writes_on_improvement(tmp_path):
    model = make_model()
    x, y = make_data()
    snapshots = []
    recorder = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights())
    )
    pattern = str(tmp_path / "best-{epoch:02d}.keras")
    single = str(tmp_path / "best.keras")

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=5,
        verbose=0,
        callbacks=[
            scripted("val_loss", [1.0, 0.8, 0.9, 0.7, 0.75]),
            recorder,
            callbacks.ModelCheckpoint(pattern, save_best_only=True),
            callbacks.ModelCheckpoint(single, save_best_only=True),
        ],
    )

    assert sorted(os.listdir(tmp_path)) == [
        "best-01.keras",
        "best-02.keras",
        "best-04.keras",
        "best.keras",
    ]
    best = load_model(single)
    for left, right in zip(best.get_weights(), snapshots[3], strict=True):
        np.testing.assert_array_equal(left, right)


def test_checkpoint_weights_only_and_max_mode(tmp_path):
    model = make_model()
    x, y = make_data()
    path = str(tmp_path / "w-{epoch}.weights.h5")
    checkpoint = callbacks.ModelCheckpoint(
        path, monitor="val_accuracy", save_best_only=True, save_weights_only=True
    )

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=4,
        verbose=0,
        callbacks=[scripted("val_accuracy", [0.5, 0.7, 0.6, 0.8]), checkpoint],
    )

    assert sorted(os.listdir(tmp_path)) == [
        "w-1.weights.h5",
        "w-2.weights.h5",
        "w-4.weights.h5",
    ]
    restored = make_model()
    restored.load_weights(tmp_path / "w-4.weights.h5")
    for left, right in zip(restored.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_checkpoint_initial_value_threshold(tmp_path):
    checkpoint = callbacks.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"),
        save_best_only=True,
        initial_value_threshold=0.6,
    )
    model = make_model()
    x, y = make_data()

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[scripted("val_loss", [0.7, 0.5, 0.55]), checkpoint],
    )

    assert os.listdir(tmp_path) == ["m-2.keras"]


def test_checkpoint_without_monitored_quantity_warns_and_saves(tmp_path):
    model = make_model()
    x, y = make_data()
    checkpoint = callbacks.ModelCheckpoint(
        str(tmp_path / "m.keras"), save_best_only=True
    )

    with pytest.warns(fastrnn.FastRNNWarning, match="'val_loss'"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[checkpoint])

    assert os.listdir(tmp_path) == ["m.keras"]


def test_checkpoint_every_few_batches(tmp_path):
    model = make_model()
    x, y = make_data()
    checkpoint = callbacks.ModelCheckpoint(
        str(tmp_path / "e{epoch}-b{batch}.keras"), save_freq=2
    )

    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[checkpoint])

    # Six batches in all, saved after the 2nd, 4th and 6th.
    assert sorted(os.listdir(tmp_path)) == ["e1-b2.keras", "e2-b1.keras", "e2-b3.keras"]


def test_checkpoint_missing_format_field_is_a_clear_key_error(tmp_path):
    model = make_model()
    x, y = make_data()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "{val_loss:.2f}.keras"))

    with pytest.raises(KeyError, match="val_loss"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[checkpoint])


@pytest.mark.parametrize(
    "name, weights_only",
    [("m.h5", False), ("m.weights.h5", False), ("m.keras", True), ("m", True)],
)
def test_checkpoint_checks_the_suffix(tmp_path, name, weights_only):
    with pytest.raises(ValueError, match=r"\.keras|\.weights\.h5"):
        callbacks.ModelCheckpoint(str(tmp_path / name), save_weights_only=weights_only)


@pytest.mark.parametrize("save_freq", [0, -1, "batch", 1.5, True])
def test_checkpoint_checks_save_freq(tmp_path, save_freq):
    with pytest.raises(ValueError, match="save_freq"):
        callbacks.ModelCheckpoint(str(tmp_path / "m.keras"), save_freq=save_freq)


# TerminateOnNaN ----------------------------------------------------------------------


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_terminate_on_nan_stops(capsys, loss):
    callback = callbacks.TerminateOnNaN()
    model = FakeModel()
    callback.set_model(model)

    callback.on_train_batch_end(0, {"loss": 1.0})
    assert not model.stop_training
    callback.on_train_batch_end(4, {"loss": loss})

    assert model.stop_training
    assert "Batch 4: Invalid loss" in capsys.readouterr().out


def test_terminate_on_nan_can_raise():
    callback = callbacks.TerminateOnNaN(raise_error=True)
    callback.set_model(FakeModel())

    with pytest.raises(RuntimeError, match="nan"):
        callback.on_train_batch_end(1, {"loss": math.nan})


def test_terminate_on_nan_in_fit_stops_after_that_batch():
    model = make_model()
    x, y = make_data()
    seen = []

    def poison(batch, logs):
        seen.append(batch)
        if len(seen) == 2:
            logs["loss"] = math.nan

    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[
            callbacks.LambdaCallback(on_train_batch_end=poison),
            callbacks.TerminateOnNaN(),
        ],
    )

    assert seen == [0, 1]
    assert history.epoch == [0]


# LambdaCallback ---------------------------------------------------------------------


def test_lambda_callback_hooks_are_called_in_order():
    model = make_model()
    x, y = make_data()
    events = []
    callback = callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append(("train_begin", dict(logs))),
        on_epoch_begin=lambda epoch, logs: events.append(("epoch_begin", epoch)),
        on_batch_begin=lambda batch, logs: events.append(("batch_begin", batch)),
        on_batch_end=lambda batch, logs: events.append(("batch_end", batch)),
        on_epoch_end=lambda epoch, logs: events.append(("epoch_end", epoch)),
        on_train_end=lambda logs: events.append(("train_end", dict(logs))),
    )

    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])

    expected = [("train_begin", {})]
    for epoch in range(2):
        expected.append(("epoch_begin", epoch))
        for batch in range(STEPS):
            expected += [("batch_begin", batch), ("batch_end", batch)]
        expected.append(("epoch_end", epoch))
    expected.append(("train_end", {}))
    assert events == expected


def test_lambda_callback_receives_logs():
    model = make_model()
    x, y = make_data()
    batch_logs, epoch_logs = [], []
    callback = callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)),
        on_epoch_end=lambda epoch, logs: epoch_logs.append(dict(logs)),
    )

    history = model.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback]
    )

    assert len(batch_logs) == STEPS
    assert set(batch_logs[0]) == {"loss", "accuracy"}
    assert epoch_logs == [
        {"loss": history.history["loss"][0], "accuracy": history.history["accuracy"][0]}
    ]


def test_train_batch_hook_takes_the_place_of_batch_hook():
    events = []
    callback = callbacks.LambdaCallback(
        on_batch_end=lambda batch, logs: events.append("old"),
        on_train_batch_end=lambda batch, logs: events.append("new"),
    )

    callback.on_train_batch_end(0, {})

    assert events == ["new"]


def test_lambda_callback_refuses_unknown_hooks_and_non_callables():
    with pytest.raises(TypeError, match="on_epoch_finish"):
        callbacks.LambdaCallback(on_epoch_finish=print)
    with pytest.raises(TypeError, match="callable"):
        callbacks.LambdaCallback(on_epoch_end=3)


def test_callbacks_must_be_callback_instances():
    model = make_model()
    x, y = make_data()

    with pytest.raises(TypeError, match="Callback"):
        model.fit(x, y, verbose=0, callbacks=[print])


# stopping on a bad loss or on Ctrl-C ----------------------------------------------


def diverging_fit():
    """fit with a learning rate so large that the loss overflows within an epoch."""
    model = make_model(
        optimizer=optimizers.SGD(1e12), loss="mse", softmax=False, metrics=()
    )
    x, _ = make_data(n=64)
    y = np.random.default_rng(1).standard_normal((64, K)).astype(np.float32) * 10
    with pytest.warns(fastrnn.FastRNNWarning, match="loss is"):
        history = model.fit(x, y, batch_size=BATCH, epochs=5, verbose=0)
    return model, history


def test_fit_stops_when_the_loss_turns_nan(capsys):
    _, history = diverging_fit()

    assert "stopping with the last finite weights" in capsys.readouterr().err
    assert len(history.epoch) < 5


def test_fit_keeps_finite_weights_when_the_loss_turns_nan():
    model, _ = diverging_fit()

    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_keyboard_interrupt_mid_epoch_returns_history(capsys):
    model = make_model()
    x, y = make_data()
    before = model.get_weights()
    ended = []

    def interrupt(batch, logs):
        if batch == 1:
            raise KeyboardInterrupt

    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[
            callbacks.LambdaCallback(
                on_train_batch_end=interrupt, on_train_end=ended.append
            )
        ],
    )

    assert isinstance(history, callbacks.History)
    assert history.epoch == []
    assert ended == [{}]
    assert model.optimizer.iterations == 2
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert "Interrupted" in capsys.readouterr().err


def test_keyboard_interrupt_in_a_later_epoch_keeps_earlier_history():
    model = make_model()
    x, y = make_data()

    def interrupt(epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=5,
        verbose=0,
        callbacks=[callbacks.LambdaCallback(on_epoch_begin=interrupt)],
    )

    assert history.epoch == [0]
    assert model.optimizer.iterations == STEPS


# gradient clipping ------------------------------------------------------------------


def one_sgd_step(**clip):
    """Weight changes of one SGD(lr=1) step on a loss with a huge gradient."""
    model = make_model(
        optimizer=optimizers.SGD(1.0, **clip), loss="mse", softmax=False, metrics=()
    )
    x, _ = make_data(n=BATCH)
    y = np.full((BATCH, K), 1e4, dtype=np.float32)
    before = [w.astype(np.float64) for w in model.get_weights()]
    model.train_on_batch(x, y)
    return [
        w.astype(np.float64) - b
        for w, b in zip(model.get_weights(), before, strict=True)
    ]


def test_unclipped_gradient_is_huge():
    changes = one_sgd_step()

    assert max(np.linalg.norm(change) for change in changes) > 100.0


@pytest.mark.parametrize("clipnorm", [0.5, 2.0])
def test_clipnorm_bounds_each_weight_change(clipnorm):
    changes = one_sgd_step(clipnorm=clipnorm)

    norms = [np.linalg.norm(change) for change in changes]
    assert all(norm <= clipnorm * (1 + 1e-5) for norm in norms)
    # The huge gradient is rescaled, not zeroed: some weight moves the full norm.
    assert max(norms) == pytest.approx(clipnorm, rel=1e-4)


@pytest.mark.parametrize("clipvalue", [0.01, 0.3])
def test_clipvalue_bounds_every_element(clipvalue):
    changes = one_sgd_step(clipvalue=clipvalue)

    largest = max(np.abs(change).max() for change in changes)
    assert largest <= clipvalue * (1 + 1e-5)
    assert largest == pytest.approx(clipvalue, rel=1e-4)


@pytest.mark.parametrize("argument", ["clipnorm", "clipvalue"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_clip_arguments_are_checked(argument, value):
    with pytest.raises(ValueError, match=argument):
        optimizers.Adam(**{argument: value})
