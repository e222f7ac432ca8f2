"""Callbacks for ``Sequential.fit``, with Keras's hook names and semantics.

Hooks receive ``logs``, a dict of the numbers so far (``loss``, ``accuracy``,
and at epoch end their ``val_`` twins); it is ``{}`` when there is nothing to
report.  Epochs and batches are numbered from 0, as in Keras.
"""

import math
import os
import warnings

from fastrnn._warnings import FastRNNWarning


class Callback:
    """Base class; override the hooks you need.  ``self.model`` is set by fit.

    ``on_batch_begin`` and ``on_batch_end`` are Keras's older names for the
    training-batch hooks: the default ``on_train_batch_begin`` and
    ``on_train_batch_end`` call them.
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """Records every epoch's logs; ``fit`` returns it.

    Attributes
    ----------
    history : dict of str to list of float
        One list per logged quantity, one entry per epoch.
    epoch : list of int
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class CallbackList:
    """Calls a hook on every callback in order, always with a ``logs`` dict."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    "callbacks must be instances of fastrnn.callbacks.Callback, "
                    f"got {type(callback).__name__}"
                )
            callback.set_model(model)
            callback.set_params(params)

    def __getattr__(self, hook):
        if hook in _PLAIN_HOOKS:

            def call_all(logs=None):
                self._call(hook, (), logs)

        elif hook in _INDEXED_HOOKS:

            def call_all(index, logs=None):
                self._call(hook, (index,), logs)

        else:
            raise AttributeError(hook)
        return call_all

    def _call(self, hook, args, logs):
        # Keras passes the logs positionally; functions given to LambdaCallback
        # are written for that.
        logs = {} if logs is None else logs
        for callback in self.callbacks:
            getattr(callback, hook)(*args, logs)


_PLAIN_HOOKS = frozenset(
    f"on_{stage}_{moment}"
    for stage in ("train", "test", "predict")
    for moment in ("begin", "end")
)
_INDEXED_HOOKS = frozenset(
    f"on_{unit}_{moment}"
    for unit in ("epoch", "batch", "train_batch", "test_batch", "predict_batch")
    for moment in ("begin", "end")
)


# ----------------------------------------------------------------------------------
# callbacks that watch a logged quantity


class _MonitorCallback(Callback):
    """Base of callbacks that compare a logged quantity with its best value.

    ``mode='auto'`` minimizes unless the name (without ``val_``) mentions
    accuracy: fastrnn logs only the loss and accuracy metrics.
    """

    def __init__(self, monitor="val_loss", mode="auto", min_delta=0.0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        if mode == "auto":
            name = monitor[4:] if monitor.startswith("val_") else monitor
            mode = "max" if "acc" in name else "min"
        self._maximize = mode == "max"
        self.min_delta = abs(min_delta)

    def _is_improvement(self, current, reference):
        """True if ``current`` beats ``reference`` by more than ``min_delta``."""
        if reference is None:
            return True
        if self._maximize:
            return current - self.min_delta > reference
        return current + self.min_delta < reference

    def _monitored(self, logs, what):
        """The monitored value in ``logs``, or None with a warning."""
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"{type(self).__name__} {what} on {self.monitor!r}, which is not in "
                f"the logs; available: {', '.join(logs) or 'none'}",
                FastRNNWarning,
                stacklevel=3,
            )
        return value


class EarlyStopping(_MonitorCallback):
    """Stop training when a monitored quantity has stopped improving.

    Each epoch that does not improve on the best value by more than
    ``min_delta`` adds one to a counter; an improvement resets it (when it also
    beats ``baseline``).  Training stops once the counter reaches ``patience``.

    Parameters
    ----------
    monitor : str, default 'val_loss'
    min_delta : float, default 0
        Smallest change that counts as an improvement.
    patience : int, default 0
        Epochs without improvement before stopping.
    verbose : int, default 0
        1 prints a line when stopping and when restoring weights.
    mode : {'auto', 'min', 'max'}, default 'auto'
    baseline : float, optional
        The counter keeps running until the monitored value beats this.
    restore_best_weights : bool, default False
        At the end of training, set the weights of the best epoch seen.
    start_from_epoch : int, default 0
        Epochs to wait before watching for improvement.

    Attributes
    ----------
    stopped_epoch : int
        The epoch training stopped at, 0 if it ran to the end.
    best : float
    best_epoch : int
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
    ):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs=None):
        # Reset so that one instance can serve several fit calls.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "conditions early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Whatever happens next, these weights are the best seen so far.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_MonitorCallback):
    """Save the model (or its weights) after every epoch or every few batches.

    Parameters
    ----------
    filepath : str or os.PathLike
        Ends in ``.keras`` (``model.save``) or, with ``save_weights_only``, in
        ``.weights.h5`` (``model.save_weights``).  It may hold ``str.format``
        fields: ``{epoch}`` (counted from 1), ``{batch}`` (from 1, when saving
        by batches) and any logged quantity, e.g.
        ``'ckpt-{epoch:02d}-{val_loss:.2f}.keras'``.  Missing directories are
        created.
    monitor : str, default 'val_loss'
    verbose : int, default 0
        1 prints a line whenever the callback saves or decides not to.
    save_best_only : bool, default False
        Save only when the monitored quantity improves on the best so far.
    save_weights_only : bool, default False
    mode : {'auto', 'min', 'max'}, default 'auto'
    save_freq : 'epoch' or int, default 'epoch'
        Save at the end of every epoch, or after every this many batches (the
        batch logs then hold the epoch's running averages).
    initial_value_threshold : float, optional
        With ``save_best_only``, the value the first save must beat.

    Raises
    ------
    KeyError
        At save time, if ``filepath`` names a field the logs do not hold.
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
    ):
        super().__init__(monitor, mode)
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.best = initial_value_threshold
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                f"save_freq must be 'epoch' or a positive integer, got {save_freq!r}"
            )
        suffix = ".weights.h5" if save_weights_only else ".keras"
        if not self.filepath.endswith(suffix):
            raise ValueError(
                f"ModelCheckpoint with save_weights_only={save_weights_only} needs "
                f"a filepath ending in {suffix!r}, got {self.filepath!r}"
            )
        self._current_epoch = 0
        self._batches_since_save = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _filepath(self, epoch, batch, logs):
        fields = dict(logs or {})
        fields["epoch"] = epoch + 1
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as error:
            raise KeyError(
                f"ModelCheckpoint cannot fill in filepath {self.filepath!r}: "
                f"{error} is not among {sorted(fields)}"
            ) from None

    def _save(self, epoch, batch, logs):
        filepath = self._filepath(epoch, batch, logs)
        if self.save_best_only:
            current = self._monitored(logs, "saves the best model")
            if current is not None:
                if not self._is_improvement(current, self.best):
                    if self.verbose > 0:
                        print(
                            f"Epoch {epoch + 1}: {self.monitor} did not improve "
                            f"from {self.best:.5f}"
                        )
                    return
                if self.verbose > 0:
                    if self.best is None:
                        previous = "-inf" if self._maximize else "inf"
                    else:
                        previous = f"{self.best:.5f}"
                    print(
                        f"Epoch {epoch + 1}: {self.monitor} improved from "
                        f"{previous} to {current:.5f}, saving model to {filepath}"
                    )
                self.best = current
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {filepath}")
        directory = os.path.dirname(filepath)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)


# ----------------------------------------------------------------------------------
# other callbacks


class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or infinite.

    ``fit`` already stops on such a loss before the callbacks see it; this
    callback also catches a non-finite loss that another callback reports.

    Parameters
    ----------
    raise_error : bool, default False
        Raise ``RuntimeError`` instead of asking fit to stop.
    """

    def __init__(self, raise_error=False):
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss):
            return
        if self.raise_error:
            raise RuntimeError(f"batch {batch}: the loss is {loss}; stopping")
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback made of plain functions.

    Each function gets the hook's arguments: ``(epoch, logs)`` for the epoch
    hooks, ``(batch, logs)`` for the batch hooks, ``(logs)`` for
    ``on_train_begin`` and ``on_train_end``.  Hooks not given do nothing.

    Parameters
    ----------
    on_epoch_begin, on_epoch_end : callable, optional
    on_batch_begin, on_batch_end : callable, optional
        Called for every training batch (unless ``on_train_batch_begin`` /
        ``on_train_batch_end`` are given, which take their place).
    on_train_begin, on_train_end : callable, optional
    on_train_batch_begin, on_train_batch_end : callable, optional
    **kwargs
        Any other hook, by its name.
    """

    def __init__(
        self,
        on_epoch_begin=None,
        on_epoch_end=None,
        on_batch_begin=None,
        on_batch_end=None,
        on_train_begin=None,
        on_train_end=None,
        on_train_batch_begin=None,
        on_train_batch_end=None,
        **kwargs,
    ):
        super().__init__()
        hooks = dict(
            on_epoch_begin=on_epoch_begin,
            on_epoch_end=on_epoch_end,
            on_batch_begin=on_batch_begin,
            on_batch_end=on_batch_end,
            on_train_begin=on_train_begin,
            on_train_end=on_train_end,
            on_train_batch_begin=on_train_batch_begin,
            on_train_batch_end=on_train_batch_end,
        )
        for name, function in kwargs.items():
            if not (name.startswith("on_") and callable(getattr(self, name, None))):
                raise TypeError(f"LambdaCallback got an unknown hook {name!r}")
            hooks[name] = function
        for name, function in hooks.items():
            if function is None:
                continue
            if not callable(function):
                raise TypeError(
                    f"LambdaCallback: {name} must be callable, got "
                    f"{type(function).__name__}"
                )
            setattr(self, name, function)
