"""Tests of fastrnn.saving: the .keras and .weights.h5 formats, with Keras 3 parity."""

import io
import json
import os
import warnings
import zipfile

import h5py
import numpy as np
import pytest

import fastrnn
from fastrnn import optimizers, saving
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.models import Sequential, load_model

B, T, D, H, K = 6, 5, 3, 4, 2


def make_model(
    return_sequences=False,
    optimizer="adam",
    metrics=("accuracy",),
    compile=True,
    use_bias=True,
):
    fastrnn.set_random_seed(1)
    model = Sequential(
        [
            SimpleRNN(
                H,
                input_shape=(T, D),
                return_sequences=return_sequences,
                use_bias=use_bias,
            ),
            Dense(K),
            Activation("softmax"),
        ]
    )
    if compile:
        model.compile(
            optimizer=optimizer, loss="categorical_crossentropy", metrics=list(metrics)
        )
    return model


def make_data(return_sequences=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    labels = rng.integers(0, K, size=(B, T) if return_sequences else (B,))
    return x, np.eye(K, dtype=np.float32)[labels]


def trained_model(optimizer="adam", return_sequences=False, steps=3):
    model = make_model(return_sequences, optimizer)
    x, y = make_data(return_sequences)
    for _ in range(steps):
        model.train_on_batch(x, y)
    return model


def rewrite_config(source, target, edit):
    """Copy the .keras archive ``source`` to ``target`` with ``edit(config)``."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def layer_config(config, class_name):
    return next(
        entry
        for entry in config["config"]["layers"]
        if entry["class_name"] == class_name
    )


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for left, right in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(left, right)


# archive layout ---------------------------------------------------------------------


def test_archive_has_keras_members_and_layout(tmp_path):
    model = trained_model()
    path = tmp_path / "model.keras"

    model.save(path)

    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            "config.json",
            "metadata.json",
            "model.weights.h5",
        ]
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json"))
        data = archive.read("model.weights.h5")
    assert metadata["keras_version"].startswith("3.")
    assert config["class_name"] == "Sequential"
    kinds = [entry["class_name"] for entry in config["config"]["layers"]]
    assert kinds == ["InputLayer", "SimpleRNN", "Dense", "Activation"]
    assert config["config"]["layers"][0]["config"]["batch_shape"] == [None, T, D]
    assert config["compile_config"]["loss"] == "categorical_crossentropy"
    assert config["compile_config"]["metrics"] == ["accuracy"]
    assert config["compile_config"]["optimizer"]["class_name"] == "Adam"

    with h5py.File(io.BytesIO(data), "r") as h5:
        assert h5["layers/simple_rnn/cell/vars/0"].shape == (D, H)
        assert h5["layers/simple_rnn/cell/vars/1"].shape == (H, H)
        assert h5["layers/simple_rnn/cell/vars/2"].shape == (H,)
        assert h5["layers/dense/vars/0"].shape == (H, K)
        assert h5["layers/dense/vars/1"].shape == (K,)
        assert len(h5["layers/activation/vars"]) == 0
        assert h5["optimizer/vars/0"][()] == 3
        assert h5["optimizer/vars/0"].dtype == np.int64
        # iterations, learning rate, then (m, v) for each of the 5 weights.
        assert len(h5["optimizer/vars"]) == 2 + 2 * 5


def test_layers_of_one_class_are_numbered_by_position(tmp_path):
    model = Sequential(
        [
            Dense(3, input_shape=(4,), name="first"),
            Dense(2, name="second"),
            Activation("softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "dense.weights.h5"

    model.save_weights(path)

    with h5py.File(path, "r") as h5:
        assert h5["layers/dense/vars/0"].shape == (4, 3)
        assert h5["layers/dense_1/vars/0"].shape == (3, 2)
        # SGD without momentum keeps no slots, as in Keras.
        assert len(h5["optimizer/vars"]) == 2


# round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [False, True])
def test_round_trip_keeps_architecture_weights_and_compile(tmp_path, return_sequences):
    model = trained_model(return_sequences=return_sequences)
    x, _ = make_data(return_sequences, seed=5)
    path = tmp_path / "model.keras"

    model.save(str(path))
    loaded = load_model(path)

    assert [type(layer) for layer in loaded.layers] == [SimpleRNN, Dense, Activation]
    assert [layer.name for layer in loaded.layers] == [
        layer.name for layer in model.layers
    ]
    assert loaded.name == model.name
    assert loaded.layers[0].return_sequences is return_sequences
    assert loaded.input_shape == model.input_shape
    assert loaded.loss == model.loss
    assert loaded.metrics_names == model.metrics_names
    assert isinstance(loaded.optimizer, optimizers.Adam)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_round_trip_of_options(tmp_path):
    fastrnn.set_random_seed(2)
    model = Sequential(
        [
            SimpleRNN(
                3,
                input_shape=(None, 2),
                activation="relu",
                use_bias=False,
                kernel_initializer="ones",
                recurrent_initializer="zeros",
                return_sequences=True,
            ),
            SimpleRNN(4, activation="sigmoid"),
            Dense(3, activation="tanh", use_bias=False),
            Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=optimizers.SGD(0.05, momentum=0.5, nesterov=True, clipnorm=1.0),
        loss="mse",
    )
    path = tmp_path / "options.keras"

    model.save(path)
    loaded = load_model(path)

    assert loaded.input_shape == (None, None, 2)
    for original, copy in zip(model.layers, loaded.layers, strict=True):
        assert copy.get_config() == original.get_config()
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.loss == "mean_squared_error"
    assert_same_weights(model, loaded)


def test_unbuilt_model_round_trips(tmp_path):
    model = Sequential([SimpleRNN(H), Dense(K)])
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "unbuilt.keras"

    model.save(path)
    loaded = load_model(path)

    assert not loaded.built
    assert loaded.loss == "mean_squared_error"
    x, _ = make_data()
    assert loaded.predict(x).shape == (B, K)


def test_load_with_compile_false_gives_uncompiled_model(tmp_path):
    model = trained_model()
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = load_model(path, compile=False)

    assert loaded.optimizer is None
    assert_same_weights(model, loaded)
    with pytest.raises(ValueError, match="compiled"):
        loaded.predict(make_data()[0])


def test_uncompiled_model_round_trips(tmp_path):
    model = make_model(compile=False)
    path = tmp_path / "plain.keras"

    model.save(path)
    loaded = load_model(path)

    assert loaded.optimizer is None
    assert_same_weights(model, loaded)


@pytest.mark.parametrize(
    "optimizer",
    [
        optimizers.Adam(0.01),
        optimizers.SGD(0.1, momentum=0.9),
        optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        optimizers.SGD(0.1),
        optimizers.RMSprop(0.01),
    ],
    ids=["adam", "sgd-momentum", "sgd-nesterov", "sgd", "rmsprop"],
)
def test_training_resumes_exactly_after_reload(tmp_path, optimizer):
    model = trained_model(optimizer=optimizer, steps=4)
    x, y = make_data(seed=3)
    path = tmp_path / "resume.keras"

    model.save(path)
    loaded = load_model(path)

    assert loaded.optimizer.iterations == model.optimizer.iterations == 4
    for _ in range(2):
        expected = model.train_on_batch(x, y)
        got = loaded.train_on_batch(x, y)
        assert got == expected
        assert_same_weights(model, loaded)
    for left, right in zip(
        model.optimizer.state(), loaded.optimizer.state(), strict=True
    ):
        np.testing.assert_array_equal(left, right)


def test_changed_learning_rate_is_restored(tmp_path):
    model = trained_model(optimizer=optimizers.Adam(0.01))
    model.optimizer.learning_rate = 0.0025
    path = tmp_path / "lr.keras"

    model.save(path)

    assert load_model(path).optimizer.learning_rate == 0.0025


# weights files -------------------------------------------------------------------


def test_weights_round_trip_with_optimizer_state(tmp_path):
    model = trained_model(optimizer=optimizers.RMSprop(0.01))
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    other = make_model(optimizer=optimizers.RMSprop(0.01))
    other.set_weights([np.zeros_like(w) for w in other.get_weights()])

    other.load_weights(path)

    assert_same_weights(model, other)
    assert other.optimizer.iterations == model.optimizer.iterations
    np.testing.assert_array_equal(other.optimizer.velocity, model.optimizer.velocity)


def test_load_weights_reads_a_keras_archive_too(tmp_path):
    model = trained_model()
    path = tmp_path / "model.keras"
    model.save(path)
    other = make_model()

    other.load_weights(path)

    assert_same_weights(model, other)


def test_load_weights_skips_optimizer_state_of_another_layout(tmp_path):
    model = trained_model(optimizer="adam")
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    other = make_model(optimizer=optimizers.SGD(0.1, momentum=0.9))

    with pytest.warns(fastrnn.FastRNNWarning, match="optimizer state"):
        other.load_weights(path)

    assert_same_weights(model, other)
    assert other.optimizer.iterations == 0


def test_load_weights_shape_mismatch_changes_nothing(tmp_path):
    path = tmp_path / "model.weights.h5"
    trained_model().save_weights(path)
    fastrnn.set_random_seed(4)
    other = Sequential(
        [SimpleRNN(H + 1, input_shape=(T, D)), Dense(K), Activation("softmax")]
    )
    before = other.get_weights()

    with pytest.raises(ValueError, match=r"cell/vars/0.*shape \(3, 4\).*\(3, 5\)"):
        other.load_weights(path)

    for left, right in zip(before, other.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_load_weights_refuses_other_architectures(tmp_path):
    path = tmp_path / "model.weights.h5"
    trained_model().save_weights(path)
    fewer = Sequential([SimpleRNN(H, input_shape=(T, D))])
    no_bias = Sequential(
        [
            SimpleRNN(H, input_shape=(T, D), use_bias=False),
            Dense(K),
            Activation("softmax"),
        ]
    )

    with pytest.raises(ValueError, match="does not have.*dense"):
        fewer.load_weights(path)
    with pytest.raises(ValueError, match="needs 2 weight arrays, the file has 3"):
        no_bias.load_weights(path)


def test_weights_need_a_built_model(tmp_path):
    model = Sequential([SimpleRNN(H), Dense(K)])

    with pytest.raises(ValueError, match="not built"):
        model.save_weights(tmp_path / "m.weights.h5")


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, p: m.save(p), "model.h5"),
        (lambda m, p: m.save(p), "model"),
        (lambda m, p: m.save_weights(p), "model.h5"),
        (lambda m, p: m.save_weights(p), "model.keras"),
        (lambda m, p: m.load_weights(p), "model.h5"),
        (lambda m, p: load_model(p), "model.weights.h5"),
    ],
)
def test_wrong_suffix_is_refused(tmp_path, call, name):
    with pytest.raises(ValueError, match=r"\.keras|\.weights\.h5"):
        call(make_model(), tmp_path / name)
    assert os.listdir(tmp_path) == []


# overwriting and atomic writes -------------------------------------------------------


@pytest.mark.parametrize("name", ["model.keras", "model.weights.h5"])
def test_overwrite_false_refuses_an_existing_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"precious")
    model = trained_model()
    save = model.save if name.endswith(".keras") else model.save_weights

    with pytest.raises(FileExistsError, match="overwrite=False"):
        save(path, overwrite=False)

    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == [name]


def test_overwrite_false_writes_a_new_file(tmp_path):
    path = tmp_path / "new.keras"

    trained_model().save(path, overwrite=False)

    assert load_model(path).built


@pytest.mark.parametrize("name", ["model.keras", "model.weights.h5"])
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, name, error):
    path = tmp_path / name
    model = trained_model()
    save = model.save if name.endswith(".keras") else model.save_weights
    save(path)
    good = path.read_bytes()
    model.train_on_batch(*make_data(seed=9))
    written = []

    def failing_create_dataset(group, key, *args, **kwargs):
        # Fail after some data went out, so the temporary file is half written.
        written.append(key)
        if len(written) > 3:
            raise error
        return original(group, key, *args, **kwargs)

    original = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)

    with pytest.raises(type(error)):
        save(path)

    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [name]


def test_failure_to_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"

    def failing_replace(source, target):
        raise PermissionError("read-only target")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(PermissionError):
        trained_model().save(path)

    assert os.listdir(tmp_path) == []


def test_saved_file_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "model.keras"
    umask = os.umask(0o022)
    try:
        trained_model().save(path)
    finally:
        os.umask(umask)

    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_saving_into_a_missing_folder_names_the_folder(tmp_path, method):
    suffix = ".keras" if method == "save" else ".weights.h5"
    target = tmp_path / "absent" / f"model{suffix}"
    with pytest.raises(FileNotFoundError, match="absent' does not exist"):
        getattr(trained_model(), method)(target)
    assert not (tmp_path / "absent").exists()


def test_saving_onto_a_folder_is_refused(tmp_path):
    folder = tmp_path / "taken.keras"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        trained_model().save(folder)
    assert folder.is_dir() and not any(folder.iterdir())


# damaged and foreign files -------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.keras")


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 0.95, 0.999])
def test_truncated_file_gives_a_clear_error(tmp_path, fraction):
    path = tmp_path / "model.keras"
    trained_model().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])

    with pytest.raises(ValueError, match="model.keras.*(truncated|corrupt)"):
        load_model(path)


def test_corrupted_weights_give_a_clear_error(tmp_path):
    path = tmp_path / "model.keras"
    trained_model().save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
    # Flip bytes inside the stored HDF5 member; the zip's CRC catches it.
    start = info.header_offset + 30 + len(info.filename) + 500
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="model.keras.*corrupt"):
        load_model(path)


def test_truncated_weights_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "model.weights.h5"
    model = trained_model()
    model.save_weights(path)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(ValueError, match="model.weights.h5.*(truncated|corrupt)"):
        model.load_weights(path)


def test_random_bytes_are_not_a_model(tmp_path):
    path = tmp_path / "noise.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(ValueError, match="noise.keras.*not a readable .keras"):
        load_model(path)


def test_zip_without_config_is_not_a_model(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")

    with pytest.raises(ValueError, match="other.keras.*no config.json"):
        load_model(path)


@pytest.mark.parametrize(
    "config, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "does not hold a model config"),
        (
            json.dumps({"class_name": "Functional", "config": {}}).encode(),
            "Functional model; fastrnn loads only Sequential",
        ),
        (
            json.dumps({"class_name": "Sequential", "config": {}}).encode(),
            "no list of layers",
        ),
    ],
)
def test_foreign_config_gives_a_clear_error(tmp_path, config, message):
    path = tmp_path / "foreign.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", config)
        archive.writestr("model.weights.h5", b"")

    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_weights_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "text.weights.h5"
    path.write_text("just text")

    with pytest.raises(ValueError, match="text.weights.h5.*not a readable HDF5"):
        make_model().load_weights(path)


def test_hdf5_without_keras_layout(tmp_path):
    path = tmp_path / "other.weights.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = np.zeros(3)

    with pytest.raises(ValueError, match="not a Keras 3 weights file"):
        make_model().load_weights(path)


# unsupported layers and options ----------------------------------------------------


def _as_lstm(config):
    entry = layer_config(config, "SimpleRNN")
    entry["class_name"] = "LSTM"
    entry["config"]["name"] = "lstm"


def _with_option(class_name, key, value):
    def edit(config):
        layer_config(config, class_name)["config"][key] = value

    return edit


def _insert_dropout(config):
    config["config"]["layers"].insert(
        2,
        {
            "module": "keras.layers",
            "class_name": "Dropout",
            "config": {"name": "dropout", "rate": 0.5},
            "registered_name": None,
        },
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (_as_lstm, r"'lstm' \(LSTM\) is not supported"),
        (_insert_dropout, r"'dropout' \(Dropout\) is not supported"),
        (_with_option("SimpleRNN", "dropout", 0.2), "dropout=0.2"),
        (_with_option("SimpleRNN", "recurrent_dropout", 0.1), "recurrent_dropout"),
        (_with_option("SimpleRNN", "stateful", True), "stateful=True"),
        (_with_option("SimpleRNN", "go_backwards", True), "go_backwards=True"),
        (_with_option("SimpleRNN", "return_state", True), "return_state=True"),
        (_with_option("SimpleRNN", "activation", "selu"), "activation.*'selu'"),
        (_with_option("SimpleRNN", "activation", "softmax"), "'softmax'"),
        (_with_option("Dense", "kernel_initializer", "he_normal"), "he_normal"),
        (
            _with_option("Dense", "kernel_regularizer", {"class_name": "L2"}),
            "kernel_regularizer",
        ),
        (_with_option("Dense", "dtype", "float16"), "dtype 'float16'"),
        (_with_option("Dense", "trainable", False), "trainable=False"),
        (_with_option("Activation", "activation", "gelu"), "'gelu'"),
        (
            _with_option(
                "SimpleRNN",
                "recurrent_initializer",
                {"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": None}},
            ),
            "gain=2.0",
        ),
    ],
)
def test_unsupported_layers_and_options_are_named(tmp_path, edit, message):
    source = tmp_path / "good.keras"
    trained_model().save(source)
    target = tmp_path / "edited.keras"
    rewrite_config(source, target, edit)

    with pytest.raises(ValueError, match=message):
        load_model(target)


def test_neutral_unknown_options_are_accepted(tmp_path):
    source = tmp_path / "good.keras"
    model = trained_model()
    model.save(source)
    target = tmp_path / "edited.keras"

    def edit(config):
        layer_config(config, "Dense")["config"]["future_option"] = None
        layer_config(config, "SimpleRNN")["config"]["seed"] = 1234

    rewrite_config(source, target, edit)

    assert_same_weights(load_model(target), model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["compile_config"]["optimizer"].update(class_name="AdamW"),
            "'AdamW' is not supported",
        ),
        (lambda c: c["compile_config"].update(loss="hinge"), "hinge"),
        (lambda c: c["compile_config"].update(metrics=["auc"]), "auc"),
        (
            lambda c: c["compile_config"]["optimizer"]["config"].update(
                weight_decay=0.01
            ),
            "weight_decay",
        ),
        (
            lambda c: c["compile_config"]["optimizer"]["config"].update(
                learning_rate={"class_name": "ExponentialDecay"}
            ),
            "schedules",
        ),
    ],
)
def test_unsupported_compile_settings_suggest_compile_false(tmp_path, edit, message):
    source = tmp_path / "good.keras"
    model = trained_model()
    model.save(source)
    target = tmp_path / "edited.keras"
    rewrite_config(source, target, edit)

    with pytest.raises(ValueError, match=f"{message}.*compile=False"):
        load_model(target)
    assert_same_weights(load_model(target, compile=False), model)


# Keras 3 interoperability -----------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow", reason="Keras interop tests need TensorFlow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if not keras.__version__.startswith("3."):
        pytest.skip("these tests need Keras 3")
    return keras


def keras_model(keras, return_sequences, compile=True):
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((T, D)),
            keras.layers.SimpleRNN(H, return_sequences=return_sequences),
            keras.layers.Dense(K),
            keras.layers.Activation("softmax"),
        ]
    )
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


@pytest.mark.tensorflow
@pytest.mark.parametrize("return_sequences", [False, True])
def test_keras_file_loads_into_fastrnn(tmp_path, keras, return_sequences):
    model = keras_model(keras, return_sequences)
    x, y = make_data(return_sequences)
    for _ in range(3):
        model.train_on_batch(x, y)
    path = tmp_path / "keras.keras"
    model.save(path)

    loaded = load_model(path)

    x_new, _ = make_data(return_sequences, seed=11)
    np.testing.assert_allclose(
        loaded.predict(x_new), model.predict(x_new, verbose=0), atol=1e-5
    )
    assert loaded.loss == "categorical_crossentropy"
    assert loaded.metrics_names == ["loss", "accuracy"]
    assert isinstance(loaded.optimizer, optimizers.Adam)
    assert loaded.optimizer.iterations == 3
    m_vectors = [v.numpy().ravel() for v in model.optimizer._momentums]
    v_vectors = [v.numpy().ravel() for v in model.optimizer._velocities]
    np.testing.assert_array_equal(loaded.optimizer.m, np.concatenate(m_vectors))
    np.testing.assert_array_equal(loaded.optimizer.v, np.concatenate(v_vectors))


@pytest.mark.tensorflow
@pytest.mark.parametrize("return_sequences", [False, True])
def test_fastrnn_file_loads_into_keras(tmp_path, keras, return_sequences):
    model = trained_model(return_sequences=return_sequences)
    path = tmp_path / "fastrnn.keras"
    model.save(path)

    loaded = keras.models.load_model(path)

    x_new, _ = make_data(return_sequences, seed=12)
    np.testing.assert_allclose(
        loaded.predict(x_new, verbose=0), model.predict(x_new), atol=1e-5
    )
    assert [type(layer).__name__ for layer in loaded.layers] == [
        "SimpleRNN",
        "Dense",
        "Activation",
    ]
    assert loaded.loss == "categorical_crossentropy"
    assert int(loaded.optimizer.iterations.numpy()) == 3
    m_vectors = [v.numpy().ravel() for v in loaded.optimizer._momentums]
    np.testing.assert_array_equal(np.concatenate(m_vectors), model.optimizer.m)


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "optimizer, keras_class, keras_kwargs",
    [
        (optimizers.Adam(0.01), "Adam", {"learning_rate": 0.01}),
        (
            optimizers.SGD(0.1, momentum=0.9),
            "SGD",
            {"learning_rate": 0.1, "momentum": 0.9},
        ),
        (optimizers.SGD(0.1), "SGD", {"learning_rate": 0.1}),
        (optimizers.RMSprop(0.01), "RMSprop", {"learning_rate": 0.01}),
    ],
    ids=["adam", "sgd-momentum", "sgd", "rmsprop"],
)
def test_keras_reads_the_optimizer_state(
    tmp_path, keras, optimizer, keras_class, keras_kwargs
):
    model = trained_model(optimizer=optimizer)
    path = tmp_path / "state.keras"
    model.save(path)

    loaded = keras.models.load_model(path)

    assert type(loaded.optimizer).__name__ == keras_class
    config = loaded.optimizer.get_config()
    for key, value in keras_kwargs.items():
        assert config[key] == pytest.approx(value)
    variables = [v.numpy() for v in loaded.optimizer.variables]
    assert int(variables[0]) == model.optimizer.iterations == 3
    assert variables[1] == np.float32(model.optimizer.learning_rate)
    slots = saving._keras_slots(model.optimizer)
    expected = [
        slot[offset : offset + int(np.prod(shape))].reshape(shape)
        for offset, shape in saving._weight_slices(model)
        for slot in slots
    ]
    assert len(variables) == 2 + len(expected)
    for got, want in zip(variables[2:], expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "optimizer",
    [
        optimizers.Adam(0.01),
        optimizers.SGD(0.1, momentum=0.9),
        optimizers.RMSprop(0.01),
    ],
    ids=["adam", "sgd-momentum", "rmsprop"],
)
def test_keras_resumes_training_where_fastrnn_stopped(tmp_path, keras, optimizer):
    model = trained_model(optimizer=optimizer, steps=5)
    path = tmp_path / "resume.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x, y = make_data(seed=21)

    for _ in range(2):
        ours = model.train_on_batch(x, y)
        theirs = loaded.train_on_batch(x, y)

    assert theirs[0] == pytest.approx(ours[0], rel=1e-5)
    for left, right in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(left, right, atol=1e-5)


@pytest.mark.tensorflow
@pytest.mark.filterwarnings("ignore:Skipping variable loading:UserWarning")
def test_weights_files_are_exchanged_with_keras(tmp_path, keras):
    model = keras_model(keras, return_sequences=False)
    ours = trained_model()
    keras_path = tmp_path / "keras.weights.h5"
    ours_path = tmp_path / "ours.weights.h5"
    x, _ = make_data(seed=13)

    model.save_weights(keras_path)
    ours.save_weights(ours_path)
    fresh = make_model()
    with warnings.catch_warnings():
        # The Keras optimizer never stepped, so it saved no slots: not a mismatch.
        warnings.simplefilter("error", fastrnn.FastRNNWarning)
        fresh.load_weights(keras_path)
    model.load_weights(ours_path)

    for left, right in zip(
        fresh.get_weights(),
        keras_model(keras, return_sequences=False).get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(left, right)
    np.testing.assert_allclose(model.predict(x, verbose=0), ours.predict(x), atol=1e-5)


@pytest.mark.tensorflow
def test_uncompiled_keras_model_loads_uncompiled(tmp_path, keras):
    model = keras_model(keras, return_sequences=False, compile=False)
    path = tmp_path / "plain.keras"
    model.save(path)

    loaded = load_model(path)

    assert loaded.optimizer is None
    for left, right in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


@pytest.mark.tensorflow
def test_keras_model_with_unsupported_layer_is_refused(tmp_path, keras):
    model = keras.Sequential(
        [keras.Input((T, D)), keras.layers.LSTM(H), keras.layers.Dense(K)]
    )
    path = tmp_path / "lstm.keras"
    model.save(path)

    with pytest.raises(ValueError, match=r"LSTM.*not supported"):
        load_model(path)


def test_save_model_function_matches_method(tmp_path):
    model = trained_model()

    saving.save_model(model, tmp_path / "a.keras")
    model.save(tmp_path / "b.keras")

    assert_same_weights(
        load_model(tmp_path / "a.keras"), saving.load_model(tmp_path / "b.keras")
    )
