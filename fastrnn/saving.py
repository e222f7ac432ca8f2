"""Saving and loading models in Keras 3's file formats.

A ``.keras`` file is a zip archive of three members:

``metadata.json``
    ``{"keras_version": ..., "date_saved": ...}``; informative only.
``config.json``
    The architecture as Keras 3 serializes a ``Sequential`` (an ``InputLayer``
    followed by the layers' configs) and, for a compiled model, the compile
    settings (optimizer config, loss, metrics) under ``compile_config``.
``model.weights.h5``
    Every variable, in HDF5 groups named after the objects that own them.

A ``.weights.h5`` file is that HDF5 file alone.  Its layout::

    layers/<layer>/vars/0, 1, ...     Dense: kernel (F, K), bias (K,)
    layers/<layer>/cell/vars/0, 1, 2  SimpleRNN: kernel (D, H),
                                      recurrent_kernel (H, H), bias (H,)
    optimizer/vars/0                  iterations, int64 scalar
    optimizer/vars/1                  learning rate, float32 scalar
    optimizer/vars/2, 3, ...          slot variables, interleaved per weight:
                                      Adam m_0, v_0, m_1, v_1, ...;
                                      SGD velocity_i (only when momentum != 0);
                                      RMSprop velocity_i

``<layer>`` is the layer's class name in snake case (``simple_rnn``, ``dense``,
``activation``), suffixed ``_1``, ``_2``, ... from the second layer of a class on,
whatever the layers are called.  Each ``vars`` group carries a ``name`` attribute.
The weights are ordered as in ``Sequential.get_weights`` and the slots as the
optimizer's flat state vectors, so Keras 3 can load fastrnn's files (optimizer
state included) and fastrnn can load those Keras 3 writes for the layers it has.

Files are written atomically: into a temporary file in the target's directory,
flushed to disk, then renamed over the target, so a crash never leaves a
half-written file where a good one was.
"""

import datetime
import io
import json
import math
import os
import re
import secrets
import warnings
import zipfile
import zlib

import h5py
import numpy as np

from fastrnn import losses, optimizers
from fastrnn._warnings import FastRNNWarning

_CONFIG_NAME = "config.json"
_METADATA_NAME = "metadata.json"
_WEIGHTS_NAME = "model.weights.h5"

# The Keras release whose format the files follow; Keras 3 readers only need it
# to be present.
_KERAS_FORMAT_VERSION = "3.0.0"

# Keras 3's default optimizer names (the ``name`` in their configs).
_OPTIMIZER_NAMES = {
    optimizers.Adam: "adam",
    optimizers.SGD: "SGD",
    optimizers.RMSprop: "rmsprop",
}

_KERAS_INITIALIZERS = {
    "glorot_uniform": "GlorotUniform",
    "orthogonal": "Orthogonal",
    "zeros": "Zeros",
    "ones": "Ones",
}

_KERAS_LOSSES = {
    "CategoricalCrossentropy": losses.CATEGORICAL,
    "SparseCategoricalCrossentropy": losses.SPARSE,
    "MeanSquaredError": losses.MSE,
}

_KERAS_METRICS = {
    "CategoricalAccuracy": "categorical_accuracy",
    "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
}


# ----------------------------------------------------------------------------------
# public functions


def save_model(model, filepath, overwrite=True):
    """Save architecture, weights, compile settings and optimizer state.

    Parameters
    ----------
    model : Sequential
    filepath : str or os.PathLike
        Must end in ``.keras``.
    overwrite : bool, default True
        If False and ``filepath`` exists, raise ``FileExistsError`` and write
        nothing.

    Notes
    -----
    Keras 3 refuses an optimizer config that sets both ``clipnorm`` and
    ``clipvalue``; fastrnn writes such a file but only fastrnn can load it.
    """
    path = _check_suffix(filepath, ".keras", "save_model")
    config = _model_config(model)
    metadata = {
        "keras_version": _KERAS_FORMAT_VERSION,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }

    def write(fileobj):
        # Keras stores the members uncompressed; so do we, for the same reader
        # fast paths.
        with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(_METADATA_NAME, json.dumps(metadata))
            archive.writestr(_CONFIG_NAME, json.dumps(config))
            # A zip member cannot be seeked while written, which HDF5 needs.
            buffer = io.BytesIO()
            with h5py.File(buffer, "w") as h5:
                _write_variables(h5, model)
            archive.writestr(_WEIGHTS_NAME, buffer.getvalue())

    _write_atomically(path, overwrite, write)


def save_weights(model, filepath, overwrite=True):
    """Save the weights (and the optimizer state) as Keras 3's ``.weights.h5``.

    Parameters
    ----------
    model : Sequential
        Must be built.
    filepath : str or os.PathLike
        Must end in ``.weights.h5``.
    overwrite : bool, default True
        If False and ``filepath`` exists, raise ``FileExistsError``.
    """
    path = _check_suffix(filepath, ".weights.h5", "save_weights")
    model._require_built("save_weights")

    def write(fileobj):
        with h5py.File(fileobj, "w") as h5:
            _write_variables(h5, model)

    _write_atomically(path, overwrite, write)


def load_weights(model, filepath):
    """Load weights saved by :func:`save_weights`, :func:`save_model` or Keras 3.

    Layers are matched by position and class, as Keras does, not by name.  The
    optimizer state is restored too when the model is compiled and the file
    holds a state of the matching layout.  Nothing changes if any check fails.

    Parameters
    ----------
    model : Sequential
        Must be built.
    filepath : str or os.PathLike
        A ``.weights.h5`` file, or a ``.keras`` archive.
    """
    path = os.fspath(filepath)
    if not isinstance(path, str) or not path.endswith((".weights.h5", ".keras")):
        raise ValueError(
            "load_weights: filepath must end in '.weights.h5' (or '.keras'), got "
            f"{path!r}"
        )
    model._require_built("load_weights")
    if path.endswith(".keras"):
        _, data = _read_archive(path)
    else:
        _require_file(path)
        with open(path, "rb") as handle:
            data = handle.read()
    with _open_h5(data, path) as h5:
        weights = _read_layer_weights(h5, model, path)
        state = _read_optimizer_state(h5, model, path)
    model.set_weights(weights)
    if state is not None:
        _apply_optimizer_state(model.optimizer, state)


def load_model(filepath, compile=True):
    """Load a ``.keras`` file saved by fastrnn or by Keras 3.

    Parameters
    ----------
    filepath : str or os.PathLike
    compile : bool, default True
        Restore the loss, metrics and optimizer (with its state when saved).  An
        uncompiled saved model loads uncompiled either way.

    Returns
    -------
    Sequential

    Raises
    ------
    FileNotFoundError
        If ``filepath`` does not exist.
    ValueError
        If the name does not end in ``.keras``, the file is not a readable
        ``.keras`` archive, it is not a Sequential model, or it uses layers,
        options, losses or optimizers fastrnn lacks.
    """
    path = _check_suffix(filepath, ".keras", "load_model")
    config, data = _read_archive(path)
    model = _model_from_config(config, path)
    compile_config = config.get("compile_config")
    if compile and compile_config:
        _compile_from_config(model, compile_config, path)
    if model.built:
        with _open_h5(data, path) as h5:
            weights = _read_layer_weights(h5, model, path)
            state = _read_optimizer_state(h5, model, path)
        model.set_weights(weights)
        if state is not None:
            _apply_optimizer_state(model.optimizer, state)
    return model


# ----------------------------------------------------------------------------------
# files


def _check_suffix(filepath, suffix, what):
    path = os.fspath(filepath)
    if not isinstance(path, str) or not path.endswith(suffix):
        raise ValueError(f"{what}: filepath must end in {suffix!r}, got {path!r}")
    return path


def _require_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")


def _write_atomically(path, overwrite, write):
    """Call ``write(fileobj)`` on a temporary file, then move it onto ``path``."""
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path!r} exists and overwrite=False")
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot save to {path!r}: the folder {directory!r} does not exist"
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a folder")
    # Same directory, so the final rename stays on one filesystem and is atomic;
    # O_EXCL with mode 0o666 gives the file the permissions the umask allows.
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


def _sync_directory(directory):
    """Make the rename itself durable; not every platform can open a directory."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _read_archive(path):
    """(config dict, bytes of model.weights.h5) of a ``.keras`` file."""
    _require_file(path)
    try:
        with zipfile.ZipFile(path, "r") as archive:
            names = set(archive.namelist())
            if _CONFIG_NAME not in names:
                raise ValueError(
                    f"{path!r} is not a Keras model archive: it has no "
                    f"{_CONFIG_NAME} (members: {sorted(names)[:10]})"
                )
            raw_config = archive.read(_CONFIG_NAME)
            data = archive.read(_WEIGHTS_NAME) if _WEIGHTS_NAME in names else None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise ValueError(
            f"{path!r} is not a readable .keras archive (a zip file); it may be "
            f"truncated or corrupt: {error}"
        ) from None
    try:
        config = json.loads(raw_config)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path!r}: {_CONFIG_NAME} is not valid JSON: {error}"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path!r}: {_CONFIG_NAME} does not hold a model config")
    if data is None:
        # Keras can also store weights as .npz; fastrnn reads only HDF5.
        raise ValueError(f"{path!r} has no {_WEIGHTS_NAME} member")
    return config, data


class _open_h5:
    """Context manager: an HDF5 file read from bytes, with clear errors."""

    def __init__(self, data, path):
        self.data = data
        self.path = path
        self.h5 = None

    def __enter__(self):
        try:
            self.h5 = h5py.File(io.BytesIO(self.data), "r")
        except OSError as error:
            raise ValueError(
                f"{self.path!r}: the weights are not a readable HDF5 file; it may be "
                f"truncated or corrupt: {error}"
            ) from None
        return self.h5

    def __exit__(self, *exc_info):
        self.h5.close()
        return False


# ----------------------------------------------------------------------------------
# writing


def _layer_paths(model):
    """HDF5 group of each layer's variables, named as Keras names them."""
    counts = {}
    paths = []
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        number = counts.get(base, -1) + 1
        counts[base] = number
        group = f"layers/{base}" if number == 0 else f"layers/{base}_{number}"
        # Keras keeps a recurrent layer's variables on its cell.
        paths.append((group, f"{group}/cell" if base == "simple_rnn" else None))
    return paths


def _snake_case(name):
    # SimpleRNN -> simple_rnn, GlorotUniform -> glorot_uniform.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _write_variables(h5, model):
    h5.create_group("vars").attrs["name"] = model.name
    layers_group = h5.create_group("layers")
    for layer, (group, cell) in zip(model.layers, _layer_paths(model), strict=True):
        layer_group = layers_group.create_group(group.split("/", 1)[1])
        layer_group.create_group("vars").attrs["name"] = layer.name
        if cell is not None:
            variables = layer_group.create_group("cell").create_group("vars")
            variables.attrs["name"] = f"{layer.name}_cell"
        else:
            variables = layer_group["vars"]
        for index, weight in enumerate(layer.weights if model.built else []):
            variables.create_dataset(str(index), data=np.asarray(weight, np.float32))

    optimizer = model.optimizer
    if not (model._compiled and model.built and optimizer._size is not None):
        return
    variables = h5.create_group("optimizer").create_group("vars")
    variables.attrs["name"] = _OPTIMIZER_NAMES[type(optimizer)]
    variables.create_dataset("0", data=np.int64(optimizer.iterations))
    variables.create_dataset("1", data=np.float32(optimizer.learning_rate))
    index = 2
    for view_slots in _slot_views(model):
        for slot in view_slots:
            variables.create_dataset(str(index), data=slot)
            index += 1


def _keras_slots(optimizer):
    """The flat state vectors Keras keeps, in its slot order."""
    if isinstance(optimizer, optimizers.SGD) and optimizer.momentum == 0.0:
        # Keras creates no momentum slots then; fastrnn's kernel ignores the
        # velocity too.
        return []
    return list(optimizer.state())


def _weight_slices(model):
    """(offset, shape) of each weight inside the model's flat vector."""
    offset = 0
    slices = []
    for layer in model.layers:
        for weight in layer.weights:
            slices.append((offset, weight.shape))
            offset += weight.size
    return slices


def _slot_views(model):
    """Per weight, the views of every slot vector shaped like that weight."""
    slots = _keras_slots(model.optimizer)
    return [
        [slot[offset : offset + int(np.prod(shape))].reshape(shape) for slot in slots]
        for offset, shape in _weight_slices(model)
    ]


def _model_config(model):
    """Keras 3's serialized form of ``model`` (a dict ready for JSON)."""
    layers = []
    input_shape = model.input_shape
    if input_shape is not None:
        layers.append(
            _keras_object(
                "keras.layers",
                "InputLayer",
                {
                    "batch_shape": list(input_shape),
                    "dtype": "float32",
                    "sparse": False,
                    "name": "input_layer",
                },
            )
        )
    for layer in model.layers:
        layers.append(_layer_config(layer, model.built))
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": model.name,
            "trainable": True,
            "dtype": "float32",
            "layers": layers,
        },
        "registered_name": None,
    }
    if input_shape is not None:
        config["config"]["build_input_shape"] = list(input_shape)
        config["build_config"] = {"input_shape": list(input_shape)}
    if model._compiled:
        config["compile_config"] = _compile_config(model)
    return config


def _keras_object(module, class_name, config):
    return {
        "module": module,
        "class_name": class_name,
        "config": config,
        "registered_name": None,
    }


def _initializer_config(name):
    config = {"seed": None}
    if name == "orthogonal":
        config["gain"] = 1.0
    elif name in ("zeros", "ones"):
        config = {}
    return _keras_object("keras.initializers", _KERAS_INITIALIZERS[name], config)


def _layer_config(layer, built):
    kind = type(layer).__name__
    config = {"name": layer.name, "trainable": True, "dtype": "float32"}
    if kind == "SimpleRNN":
        config.update(
            units=layer.units,
            activation=layer.activation,
            use_bias=layer.use_bias,
            kernel_initializer=_initializer_config(layer.kernel_initializer),
            recurrent_initializer=_initializer_config(layer.recurrent_initializer),
            bias_initializer=_initializer_config(layer.bias_initializer),
            return_sequences=layer.return_sequences,
            return_state=False,
            go_backwards=False,
            stateful=False,
            unroll=layer.unroll,
            dropout=0.0,
            recurrent_dropout=0.0,
        )
    elif kind == "Dense":
        config.update(
            units=layer.units,
            activation=layer.activation,
            use_bias=layer.use_bias,
            kernel_initializer=_initializer_config(layer.kernel_initializer),
            bias_initializer=_initializer_config(layer.bias_initializer),
        )
    elif kind == "Activation":
        config.update(activation=layer.activation)
    else:
        raise ValueError(f"cannot save a layer of type {kind}")
    serialized = _keras_object("keras.layers", kind, config)
    if built:
        serialized["build_config"] = {"input_shape": [None, *layer.input_shape]}
    return serialized


def _compile_config(model):
    optimizer = model.optimizer
    kind = type(optimizer)
    if kind not in _OPTIMIZER_NAMES:
        raise ValueError(f"cannot save an optimizer of type {kind.__name__}")
    config = {
        "name": _OPTIMIZER_NAMES[kind],
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
        "weight_decay": None,
        "use_ema": False,
    }
    config.update(optimizer.get_config())
    if kind is optimizers.Adam:
        config["amsgrad"] = False
    elif kind is optimizers.RMSprop:
        config.update(momentum=0.0, centered=False)
    return {
        "optimizer": _keras_object("keras.optimizers", kind.__name__, config),
        "loss": model.loss,
        "loss_weights": None,
        "metrics": model.metrics_names[1:] or None,
        "weighted_metrics": None,
    }


# ----------------------------------------------------------------------------------
# reading: architecture


def _model_from_config(config, path):
    from fastrnn.models import Sequential

    kind = config.get("class_name")
    if kind != "Sequential":
        raise ValueError(
            f"{path!r} holds a {kind or 'unnamed'} model; fastrnn loads only "
            "Sequential models"
        )
    inner = config.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise ValueError(f"{path!r}: the Sequential config has no list of layers")
    name = inner.get("name") or "sequential"
    layer_configs = list(inner["layers"])
    for entry in layer_configs:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"{path!r}: a layer entry is not a serialized layer")

    input_shape = None
    if layer_configs and layer_configs[0].get("class_name") == "InputLayer":
        input_shape = _input_layer_shape(layer_configs.pop(0), path)
    for entry in layer_configs:
        if entry.get("class_name") == "InputLayer":
            raise ValueError(f"{path!r}: an InputLayer may only come first")
    if not layer_configs:
        raise ValueError(f"{path!r}: the model has no layers")
    if input_shape is None:
        input_shape = _declared_shape(config, inner, layer_configs[0])

    model = Sequential(name=name)
    for entry in layer_configs:
        model.add(_layer_from_config(entry, path))
    if input_shape is not None:
        input_shape = _shape_list(input_shape, path, "the input shape")
        try:
            model.build(input_shape)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{path!r}: cannot build the model for input shape {input_shape}: "
                f"{error}"
            ) from None
    return model


def _shape_list(value, path, what):
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError(f"{path!r}: {what} must be a list (batch, ...), got {value!r}")
    for size in value[1:]:
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or size < 1
        ):
            raise ValueError(f"{path!r}: {what} has a bad size in {value!r}")
    return list(value)


def _input_layer_shape(entry, path):
    config = entry["config"]
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if shape is None:
        raise ValueError(f"{path!r}: the InputLayer has no batch_shape")
    if config.get("sparse") or config.get("ragged"):
        raise ValueError(f"{path!r}: sparse or ragged inputs are not supported")
    return _shape_list(shape, path, "the InputLayer's batch_shape")


def _declared_shape(config, inner, first):
    """A model without an InputLayer may still record the shape it was built for."""
    candidates = [
        first["config"].get("batch_input_shape"),
        first["config"].get("batch_shape"),
        inner.get("build_input_shape"),
        (config.get("build_config") or {}).get("input_shape"),
        (first.get("build_config") or {}).get("input_shape"),
    ]
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)) and len(candidate) >= 2:
            return list(candidate)
    return None


# Options fastrnn's layers take, per Keras class; anything else in a config must
# be neutral (None, False, 0, empty) or the layer is refused.
_LAYER_OPTIONS = {
    "SimpleRNN": (
        "units",
        "activation",
        "use_bias",
        "kernel_initializer",
        "recurrent_initializer",
        "bias_initializer",
        "return_sequences",
        "unroll",
    ),
    "Dense": (
        "units",
        "activation",
        "use_bias",
        "kernel_initializer",
        "bias_initializer",
    ),
    "Activation": ("activation",),
}

# Options fastrnn may ignore: they have no effect on what it computes.
_IGNORED_OPTIONS = {
    "name",
    "trainable",
    "dtype",
    "batch_input_shape",
    "batch_shape",
    # Only read when a mask arrives, and fastrnn has no masking layer.
    "zero_output_for_mask",
    # Seeds dropout, which must be zero anyway.
    "seed",
}


def _layer_from_config(entry, path):
    from fastrnn import layers as fastrnn_layers

    kind = entry.get("class_name")
    config = entry["config"]
    name = config.get("name")
    where = f"{path!r}: layer {name!r} ({kind})"
    if kind not in _LAYER_OPTIONS:
        raise ValueError(
            f"{where} is not supported; fastrnn has only SimpleRNN, Dense and "
            "Activation layers"
        )
    if config.get("trainable", True) is not True:
        raise ValueError(f"{where}: trainable=False is not supported")
    _check_dtype(config.get("dtype"), where)

    kwargs = {}
    for key, value in config.items():
        if key in _LAYER_OPTIONS[kind]:
            kwargs[key] = value
        elif key not in _IGNORED_OPTIONS and not _is_neutral(value):
            raise ValueError(f"{where}: {key}={value!r} is not supported by fastrnn")
    try:
        if "activation" in kwargs:
            kwargs["activation"] = _activation_name(kwargs["activation"])
        for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            if key in kwargs:
                kwargs[key] = _initializer_name(kwargs[key])
        layer_class = getattr(fastrnn_layers, kind)
        return layer_class(name=name, **kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None


def _is_neutral(value):
    return (
        value is None
        or value is False
        or (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and value == 0
        )
        or (isinstance(value, (list, dict, str)) and len(value) == 0)
    )


def _check_dtype(dtype, where):
    if isinstance(dtype, dict):  # a serialized DTypePolicy
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in (None, "float32"):
        raise ValueError(f"{where}: dtype {dtype!r} is not supported (only float32)")


def _activation_name(value):
    if isinstance(value, dict):
        # Some Keras versions serialize a built-in activation as a function object.
        inner = value.get("config")
        if value.get("class_name") == "function" and isinstance(inner, str):
            return inner
        raise ValueError(f"activation {value.get('class_name')!r} is not supported")
    return value


def _initializer_name(value):
    if isinstance(value, dict):
        kind = value.get("class_name")
        config = value.get("config") or {}
        if kind == "Orthogonal" and config.get("gain", 1.0) != 1.0:
            raise ValueError(
                f"Orthogonal initializer with gain={config['gain']!r} is not "
                "supported (only gain=1.0)"
            )
        value = kind
    if isinstance(value, str):
        # Accept Keras's class names and aliases; the seed is dropped because the
        # weights come from the file, not from the initializer.
        return _snake_case(value)
    return value


# ----------------------------------------------------------------------------------
# reading: compile settings


def _compile_from_config(model, compile_config, path):
    where = f"{path!r}: compile settings"
    if not isinstance(compile_config, dict):
        raise ValueError(f"{where} are not a dict")
    for key in ("loss_weights", "weighted_metrics"):
        if not _is_neutral(compile_config.get(key)):
            raise ValueError(
                f"{where}: {key} is not supported; load with compile=False and "
                "call compile() yourself"
            )
    try:
        optimizer = _optimizer_from_config(compile_config.get("optimizer", "rmsprop"))
        loss = _loss_name(compile_config.get("loss"))
        metrics = _metric_names(compile_config.get("metrics"))
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{where}: {error}; load with compile=False to skip them and call "
            "compile() yourself"
        ) from None


# Keras optimizer options that must stay at their neutral values, and those that
# do nothing while the others are neutral.
_OPTIMIZER_NEUTRAL = (
    "weight_decay",
    "global_clipnorm",
    "use_ema",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    "is_legacy_optimizer",
)
_OPTIMIZER_IGNORED = ("name", "ema_momentum", "jit_compile")


def _optimizer_from_config(value):
    if isinstance(value, str):
        return optimizers.get(value)
    if not isinstance(value, dict):
        raise ValueError(f"optimizer {value!r} is not supported")
    kind = value.get("class_name")
    classes = {cls.__name__: cls for cls in _OPTIMIZER_NAMES}
    if kind not in classes:
        raise ValueError(
            f"optimizer {kind!r} is not supported (only {sorted(classes)})"
        )
    kwargs = dict(value.get("config") or {})
    for key in _OPTIMIZER_NEUTRAL:
        option = kwargs.pop(key, None)
        if not _is_neutral(option):
            raise ValueError(f"optimizer option {key}={option!r} is not supported")
    for key in _OPTIMIZER_IGNORED:
        kwargs.pop(key, None)
    if isinstance(kwargs.get("learning_rate"), dict):
        raise ValueError("learning-rate schedules are not supported")
    return classes[kind](**kwargs)


def _loss_name(value):
    if isinstance(value, dict):
        kind = value.get("class_name")
        config = value.get("config")
        if kind == "function" and isinstance(config, str):
            return losses.canonical_name(config)
        if kind not in _KERAS_LOSSES:
            raise ValueError(f"loss {kind!r} is not supported")
        config = config or {}
        if config.get("from_logits") or config.get("label_smoothing"):
            raise ValueError(
                f"loss {kind} with from_logits or label_smoothing is not supported"
            )
        if config.get("axis", -1) != -1 or config.get("ignore_class") is not None:
            raise ValueError(f"loss {kind} with axis or ignore_class is not supported")
        return _KERAS_LOSSES[kind]
    return losses.canonical_name(value)


def _metric_names(value):
    if value is None:
        return None
    names = []
    pending = [value] if isinstance(value, (str, dict)) else list(value)
    while pending:
        metric = pending.pop(0)
        if isinstance(metric, (list, tuple)):
            pending[:0] = list(metric)
        elif isinstance(metric, dict):
            kind = metric.get("class_name")
            if kind == "function" and isinstance(metric.get("config"), str):
                names.append(metric["config"])
            elif kind in _KERAS_METRICS:
                names.append(_KERAS_METRICS[kind])
            else:
                raise ValueError(f"metric {kind!r} is not supported")
        elif metric is not None:
            names.append(metric)
    return names


# ----------------------------------------------------------------------------------
# reading: variables


def _vars_group(h5, group):
    """The ``vars`` group under ``group``, or None."""
    if group in h5 and isinstance(h5[group], h5py.Group):
        variables = h5[group].get("vars")
        if isinstance(variables, h5py.Group):
            return variables
    return None


def _read_dataset(variables, key, shape, where, path):
    dataset = variables.get(key)
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{path!r}: {where} is missing")
    try:
        value = dataset[()]
    except OSError as error:
        raise ValueError(f"{path!r}: cannot read {where}: {error}") from None
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise ValueError(f"{path!r}: {where} has dtype {value.dtype}, not a number")
    if value.shape != tuple(shape):
        raise ValueError(
            f"{path!r}: {where} has shape {value.shape}, but the model expects "
            f"{tuple(shape)}"
        )
    return value


def _read_layer_weights(h5, model, path):
    """The model's weights from ``h5``, in ``get_weights`` order, all checked."""
    if "layers" not in h5:
        raise ValueError(
            f"{path!r} is not a Keras 3 weights file: it has no 'layers' group"
        )
    weights = []
    used = set()
    for layer, (group, cell) in zip(model.layers, _layer_paths(model), strict=True):
        used.add(group)
        expected = [w.shape for w in layer.weights]
        variables = _vars_group(h5, cell or group)
        found = 0 if variables is None else len(variables)
        if found != len(expected):
            raise ValueError(
                f"{path!r}: layer {layer.name!r} ({type(layer).__name__}) needs "
                f"{len(expected)} weight arrays, the file has {found} at "
                f"'{cell or group}/vars'; the architectures differ"
            )
        for index, shape in enumerate(expected):
            where = f"'{cell or group}/vars/{index}' (layer {layer.name!r})"
            weights.append(_read_dataset(variables, str(index), shape, where, path))

    extra = []
    for key in h5["layers"]:
        group = f"layers/{key}"
        if group in used:
            continue
        held = sum(
            len(v)
            for v in (_vars_group(h5, group), _vars_group(h5, f"{group}/cell"))
            if v is not None
        )
        if held:
            extra.append(key)
    if extra:
        raise ValueError(
            f"{path!r} holds weights for layers the model does not have: {extra}"
        )
    for index, value in enumerate(weights):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path!r}: weight array {index} has NaN or inf values")
    return weights


def _read_optimizer_state(h5, model, path):
    """(iterations, learning rate, flat slot vectors) or None.

    None when the model is not compiled or the file holds no optimizer state;
    a state of another layout (another optimizer) is skipped with a warning, as
    Keras does.
    """
    if not model._compiled or model.optimizer._size is None:
        return None
    variables = _vars_group(h5, "optimizer")
    if variables is None or len(variables) == 0:
        return None
    shapes = [shape for _, shape in _weight_slices(model)]
    n_slots = len(_keras_slots(model.optimizer))
    expected = 2 + n_slots * len(shapes)
    if len(variables) == 2 and expected > 2:
        # Keras creates the slots at the first step, so an optimizer that never
        # stepped saves only its counter and rate; its slots are all zeros.
        iterations = _read_dataset(variables, "0", (), "optimizer iterations", path)
        if int(iterations) == 0:
            learning_rate = _read_dataset(variables, "1", (), "learning rate", path)
            zeros = [np.zeros_like(v) for v in _keras_slots(model.optimizer)]
            return _checked_state(iterations, learning_rate, zeros, path)
    if len(variables) != expected:
        warnings.warn(
            f"{path!r}: the saved optimizer state has {len(variables)} variables "
            f"where {type(model.optimizer).__name__} needs {expected}; it was not "
            "loaded and the optimizer starts afresh",
            FastRNNWarning,
            stacklevel=4,
        )
        return None
    iterations = _read_dataset(variables, "0", (), "optimizer iterations", path)
    learning_rate = _read_dataset(variables, "1", (), "optimizer learning rate", path)
    # Keras interleaves the slots by weight; fastrnn keeps one flat vector each.
    per_slot = [[] for _ in range(n_slots)]
    index = 2
    for shape in shapes:
        for slot in per_slot:
            where = f"'optimizer/vars/{index}'"
            value = _read_dataset(variables, str(index), shape, where, path)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{path!r}: {where} has NaN or inf values")
            slot.append(value.ravel())
            index += 1
    slots = [
        np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        for parts in per_slot
    ]
    return _checked_state(iterations, learning_rate, slots, path)


def _checked_state(iterations, learning_rate, slots, path):
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"{path!r}: negative optimizer iterations {iterations}")
    learning_rate = float(learning_rate)
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"{path!r}: bad optimizer learning rate {learning_rate}")
    return iterations, learning_rate, slots


def _apply_optimizer_state(optimizer, state):
    iterations, learning_rate, slots = state
    optimizer.iterations = iterations
    # The config keeps the exact float; the variable is its float32 rounding
    # unless the rate was changed during training (Keras then saves the new one).
    if np.float32(optimizer.learning_rate) != np.float32(learning_rate):
        optimizer.learning_rate = learning_rate
    for vector, value in zip(_keras_slots(optimizer), slots, strict=True):
        vector[...] = value
