"""Command-line training of the SimpleRNN digit classifiers.

    python -m fastrnn.train mnist     # 28 x 28 MNIST, 4001 steps of batch 50
    python -m fastrnn.train digits    # scikit-learn's 8 x 8 digits, 160 epochs

Each image is read row by row, one row of pixels per time step, by
SimpleRNN(units) -> Dense(10) -> Activation('softmax'), trained with Adam on the
categorical cross-entropy.  The mnist job walks through the training set in
order with ``train_on_batch`` and evaluates on the whole test set every
``--eval-every`` steps; the digits job calls ``fit`` on a 70/30 split.

:func:`main` takes the argument list and returns the final test accuracy, so
the jobs can be run from Python too.
"""

import argparse
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import fastrnn
from fastrnn import plotting
from fastrnn.callbacks import Callback
from fastrnn.datasets import digits, mnist
from fastrnn.layers import Activation, Dense, SimpleRNN
from fastrnn.models import Sequential
from fastrnn.optimizers import Adam
from fastrnn.utils import to_categorical

DATASETS = ("mnist", "digits")
NUM_CLASSES = 10

# Per-dataset defaults; the options that apply to one dataset only have None for
# the other.
DEFAULTS = {
    "mnist": dict(steps=4001, epochs=None, eval_every=500, eval_batch_size=10000),
    "digits": dict(steps=None, epochs=160, eval_every=10, eval_batch_size=None),
}
BATCH_SIZE = 50
UNITS = 50
LEARNING_RATE = 1e-3
SEED = 1337

# The mnist train curve and progress bar average the loss of this many batches:
# single batches of 50 are too noisy to show a trend.
SMOOTHING = 100

_MAX_SEED = 2**32 - 1

# File endings --save understands, each naming one format.
SAVE_FORMATS = (".keras", ".weights.h5", ".npz")


# ----------------------------------------------------------------------------
# arguments


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number, got {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, {_MAX_SEED}], got {text!r}"
        ) from None
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, {_MAX_SEED}], got {value}"
        )
    return value


def build_parser():
    """The argument parser of ``python -m fastrnn.train``.

    Returns
    -------
    argparse.ArgumentParser
    """
    on_mnist, on_digits = DEFAULTS["mnist"], DEFAULTS["digits"]
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn.train",
        description=(
            "Train SimpleRNN(units) -> Dense(10) -> softmax on handwritten digits "
            "read row by row (one row of pixels per time step), with Adam and the "
            "categorical cross-entropy, and report the test accuracy."
        ),
        epilog=(
            "mnist: MNIST scaled to [0, 1]; train_on_batch on consecutive batches "
            "of the training set, wrapping to its start at the end; the whole test "
            "set is evaluated at every step that is a multiple of --eval-every and "
            "after the last step.  digits: scikit-learn's 8 x 8 digits, pixel "
            "values 0..16 as given, split 70/30 with --seed, trained by fit with "
            "shuffling.  The MNIST file is found as fastrnn.datasets.mnist "
            "describes (for example through the FASTRNN_MNIST environment "
            "variable).  Nothing is overwritten unless --overwrite is given."
        ),
    )
    parser.add_argument(
        "dataset", choices=DATASETS, help="which job to run: mnist or digits"
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"mnist only: number of training steps (default {on_mnist['steps']})",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"digits only: number of epochs of fit (default {on_digits['epochs']})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=BATCH_SIZE,
        metavar="N",
        help=f"training batch size (default {BATCH_SIZE})",
    )
    parser.add_argument(
        "--units",
        type=_positive_int,
        default=UNITS,
        metavar="H",
        help=f"hidden units of the SimpleRNN layer (default {UNITS})",
    )
    parser.add_argument(
        "--learning-rate",
        "--lr",
        dest="learning_rate",
        type=_positive_float,
        default=LEARNING_RATE,
        metavar="LR",
        help=f"Adam learning rate (default {LEARNING_RATE:g})",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=SEED,
        help=(
            "seed of the initial weights, of the shuffling and of the digits "
            f"split, via fastrnn.utils.set_random_seed (default {SEED})"
        ),
    )
    parser.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            f"evaluate on the test set every N steps for mnist (default "
            f"{on_mnist['eval_every']}) or every N epochs for digits (default "
            f"{on_digits['eval_every']}); the end of training is always evaluated"
        ),
    )
    parser.add_argument(
        "--eval-batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            f"mnist only: batch size of the test evaluations (default "
            f"{on_mnist['eval_batch_size']}, the whole test set at once); the results "
            "do not depend on it, a smaller value lowers the peak memory"
        ),
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            "save the trained model; the ending of PATH picks the format: .keras "
            "(model.save: architecture, weights and optimizer state, readable by "
            "Keras 3), .weights.h5 (model.save_weights) or .npz (NumPy archive "
            "of model.get_weights() under the keys arr_0, arr_1, ... in order) "
            "(default: not saved)"
        ),
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            "write the learning curves (train and test loss and accuracy) as a "
            "PNG to PATH; needs matplotlib (default: no plot)"
        ),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let --save and --plot replace existing files (default: refuse)",
    )
    parser.add_argument(
        "--backend",
        choices=("numba", "cython"),
        default=None,
        help=(
            "compiled kernels to use, via fastrnn.set_backend (default: the "
            "FASTRNN_BACKEND environment variable, else numba)"
        ),
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only the final summary, no progress (default: show progress)",
    )
    return parser


def parse_args(argv=None):
    """Parse and check ``argv``; errors exit with status 2 before any training.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    argparse.Namespace
        With the per-dataset defaults filled in.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.dataset]

    for option, name, hint in (
        ("steps", "--steps", "mnist only; digits trains for --epochs"),
        ("epochs", "--epochs", "digits only; mnist trains for --steps"),
        ("eval_batch_size", "--eval-batch-size", "mnist only"),
    ):
        if defaults[option] is None and getattr(args, option) is not None:
            parser.error(f"{name} applies to {hint}")
    for option, value in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, value)

    if args.save is not None:
        _check_output(parser, "--save", args.save, args.overwrite)
        save_format = _save_format(args.save)
        if save_format is None:
            parser.error(
                f"--save {args.save}: the file name must end in "
                f"{', '.join(SAVE_FORMATS)}, which picks the format"
            )
        if save_format != ".npz" and not _have_keras_saving():
            parser.error(
                f"--save {args.save}: this installation cannot write the "
                f"{save_format} format (fastrnn.saving is missing); give a path "
                "ending in .npz"
            )
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            parser.error(
                f"--plot {args.plot}: the plot is a PNG image, so the file name "
                "must end in .png"
            )
        if not plotting.matplotlib_available():
            parser.error(f"--plot needs matplotlib: {plotting.INSTALL_HINT}")
        _check_output(parser, "--plot", args.plot, args.overwrite)
    # --save and --plot cannot name one file: their endings differ.
    return args


def _check_output(parser, option, path, overwrite):
    """Refuse, before hours of training, an output that could not be written."""
    path = path.expanduser()
    if path.is_dir():
        parser.error(f"{option} {path}: is a directory, expected a file name")
    if path.exists() and not overwrite:
        parser.error(
            f"{option} {path}: the file already exists; pass --overwrite to "
            "replace it or choose another name"
        )
    if not path.parent.is_dir():
        parser.error(f"{option} {path}: the directory {path.parent} does not exist")


def _save_format(path):
    """The ending of ``path`` among SAVE_FORMATS, or None."""
    return next((end for end in SAVE_FORMATS if path.name.endswith(end)), None)


def _have_keras_saving():
    return importlib.util.find_spec("fastrnn.saving") is not None


# ----------------------------------------------------------------------------
# the jobs


@dataclass
class Run:
    """What a job measured, for the summary, the plot and the caller."""

    unit: str  # "step" or "epoch": the unit of train_x and test_x
    train_x: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    test_x: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    step_seconds: list = field(default_factory=list)
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    model: object = None


def build_model(input_shape, units, learning_rate):
    """SimpleRNN(units) -> Dense(10) -> softmax, compiled with Adam.

    Parameters
    ----------
    input_shape : tuple (T, D)
        Time steps (image rows) and features (pixels per row).
    units : int
        Hidden units of the SimpleRNN layer.
    learning_rate : float
        Adam's learning rate.

    Returns
    -------
    fastrnn.models.Sequential
    """
    model = Sequential()
    model.add(SimpleRNN(units, input_shape=input_shape))
    model.add(Dense(NUM_CLASSES))
    model.add(Activation("softmax"))
    model.compile(
        optimizer=Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _test_line(unit, index, width, loss, accuracy, elapsed):
    return (
        f"{unit} {index:>{width}d}  test loss {loss:.4f}  test accuracy "
        f"{accuracy:.4f}  (elapsed {elapsed:.1f}s)"
    )


def run_mnist(args, out):
    """Train on MNIST with ``train_on_batch`` as ``args`` says.

    Parameters
    ----------
    args : argparse.Namespace
        As returned by :func:`parse_args` for the mnist dataset.
    out : callable
        Prints one line of progress; does nothing when quiet.

    Returns
    -------
    Run
    """
    (x_train, y_train), (x_test, y_test) = _load_mnist()

    # Memory: the training images stay uint8 (47 MB) and each batch is scaled on
    # the fly; only the test set is held as float32, and it is scaled in place so
    # no float64 temporary of it ever exists.
    x_test = x_test.astype(np.float32)
    x_test /= 255
    y_train = to_categorical(y_train, NUM_CLASSES)
    y_test = to_categorical(y_test, NUM_CLASSES)
    x_batch = np.empty((args.batch_size,) + x_train.shape[1:], dtype=np.float32)

    model = build_model(x_train.shape[1:], args.units, args.learning_rate)
    run = Run(unit="step", model=model)
    width = len(str(args.steps - 1))
    bar = tqdm(
        total=args.steps,
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        # None turns the bar off when stderr is not a terminal (logs, pipes).
        disable=True if args.quiet else None,
    )

    def evaluate(step, started):
        evaluation_started = time.perf_counter()
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=args.eval_batch_size)
        run.evaluation_seconds += time.perf_counter() - evaluation_started
        run.test_x.append(step)
        run.test_loss.append(loss)
        run.test_accuracy.append(accuracy)
        line = _test_line(
            "step", step, width, loss, accuracy, time.perf_counter() - started
        )
        if bar.disable:
            out(line)
        else:
            bar.write(line, file=sys.stdout)

    n = x_train.shape[0]
    start = 0
    started = time.perf_counter()
    for step in range(args.steps):
        stop = min(start + args.batch_size, n)
        batch = x_batch[: stop - start]
        np.divide(x_train[start:stop], np.float32(255), out=batch)

        step_started = time.perf_counter()
        loss, accuracy = model.train_on_batch(batch, y_train[start:stop])
        run.step_seconds.append(time.perf_counter() - step_started)

        run.train_x.append(step)
        run.train_loss.append(loss)
        run.train_accuracy.append(accuracy)
        start = stop if stop < n else 0
        if not bar.disable:
            recent = slice(-SMOOTHING, None)
            bar.set_postfix_str(
                f"loss {statistics.fmean(run.train_loss[recent]):.4f}  "
                f"accuracy {statistics.fmean(run.train_accuracy[recent]):.4f}",
                refresh=False,
            )
            bar.update(1)
        if step % args.eval_every == 0 or step == args.steps - 1:
            evaluate(step, started)
    bar.close()
    run.training_seconds = time.perf_counter() - started
    return run


def _load_mnist():
    """MNIST from wherever fastrnn.datasets.mnist finds it, or exit with status 1."""
    try:
        return mnist.load_data()
    except (OSError, ValueError) as error:
        # Missing, unreadable or damaged file, or no network for the download:
        # the loader's message already lists every way to provide the file.
        print(f"fastrnn.train: cannot load MNIST: {error}", file=sys.stderr)
        raise SystemExit(1) from None


class _EpochMonitor(Callback):
    """Times every batch of ``fit`` and evaluates the test set every few epochs.

    Parameters
    ----------
    run : Run
        Receives the batch times, the epoch means and the test results.
    x_test : ndarray of shape (n_test, T, D)
    y_test : ndarray of shape (n_test, 10), one-hot
    eval_every : int
        Evaluate after every epoch whose number (from 1) is a multiple of this,
        and after the last.
    out : callable
        Prints one line of progress.
    """

    def __init__(self, run, x_test, y_test, eval_every, out):
        super().__init__()
        self.run = run
        self.x_test = x_test
        self.y_test = y_test
        self.eval_every = eval_every
        self.out = out

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.run.step_seconds.append(time.perf_counter() - self.step_started)

    def on_epoch_end(self, epoch, logs=None):
        run, number, epochs = self.run, epoch + 1, self.params["epochs"]
        run.train_x.append(number)
        run.train_loss.append(logs["loss"])
        run.train_accuracy.append(logs["accuracy"])
        if number % self.eval_every and number != epochs:
            return
        evaluation_started = time.perf_counter()
        loss, accuracy = self.model.evaluate(
            self.x_test, self.y_test, batch_size=self.x_test.shape[0]
        )
        run.evaluation_seconds += time.perf_counter() - evaluation_started
        run.test_x.append(number)
        run.test_loss.append(loss)
        run.test_accuracy.append(accuracy)
        elapsed = time.perf_counter() - self.started
        width = len(str(epochs))
        self.out(_test_line("epoch", number, width, loss, accuracy, elapsed))


def run_digits(args, out):
    """Train on scikit-learn's digits with ``fit`` as ``args`` says.

    Parameters
    ----------
    args : argparse.Namespace
        As returned by :func:`parse_args` for the digits dataset.
    out : callable
        Prints one line of progress; does nothing when quiet.

    Returns
    -------
    Run
    """
    (x_train, y_train), (x_test, y_test) = digits.load_data(
        test_size=0.3, random_state=args.seed
    )
    y_train = to_categorical(y_train, NUM_CLASSES)
    y_test = to_categorical(y_test, NUM_CLASSES)

    model = build_model(x_train.shape[1:], args.units, args.learning_rate)
    run = Run(unit="epoch", model=model)

    started = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0 if args.quiet else 2,
        callbacks=[_EpochMonitor(run, x_test, y_test, args.eval_every, out)],
    )
    run.training_seconds = time.perf_counter() - started
    if not run.test_x or run.test_x[-1] != run.train_x[-1]:
        # fit stopped early (NaN loss or Ctrl-C): the last epoch is still reported.
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=x_test.shape[0])
        run.test_x.append(len(run.train_x))
        run.test_loss.append(loss)
        run.test_accuracy.append(accuracy)
    return run


# ----------------------------------------------------------------------------
# outputs


def save_model(model, path, overwrite):
    """Write ``model`` to ``path`` as :func:`parse_args` promised for --save.

    Parameters
    ----------
    model : fastrnn.models.Sequential
    path : pathlib.Path
        Ending in ``.keras`` (``model.save``), ``.weights.h5``
        (``model.save_weights``) or ``.npz`` (``model.get_weights()`` under the
        keys ``arr_0``, ``arr_1``, ... in order).
    overwrite : bool
        Replace an existing file.  When False and the file appeared during
        training, ``FileExistsError`` is raised and nothing is written.
    """
    path = path.expanduser()
    save_format = _save_format(path)
    if save_format == ".keras":
        model.save(path, overwrite=overwrite)
    elif save_format == ".weights.h5":
        model.save_weights(path, overwrite=overwrite)
    else:
        # Mode "xb" refuses a file that appeared since the arguments were checked.
        with open(path, "wb" if overwrite else "xb") as file:
            np.savez(file, *model.get_weights())


def save_plot(run, path, overwrite, title):
    """Draw the learning curves of ``run`` into the PNG file ``path``."""
    train = {"x": run.train_x, "loss": run.train_loss, "accuracy": run.train_accuracy}
    test = {"x": run.test_x, "loss": run.test_loss, "accuracy": run.test_accuracy}
    smooth = SMOOTHING if run.unit == "step" else 1
    with open(path.expanduser(), "wb" if overwrite else "xb") as file:
        plotting.plot_learning_curves(
            file, train, test, xlabel=run.unit, title=title, smooth=smooth
        )


def _peak_rss_mib():
    """Peak resident memory of this process in MiB, or None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def main(argv=None):
    """Run ``python -m fastrnn.train`` with the arguments ``argv``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    float
        The final test accuracy.

    Raises
    ------
    SystemExit
        Status 2 for bad arguments (checked before any data is loaded), 1 when
        the data cannot be loaded or an output cannot be written.
    """
    started = time.perf_counter()
    args = parse_args(argv)

    if args.backend is not None:
        fastrnn.set_backend(args.backend)
    fastrnn.set_random_seed(args.seed)

    def out(line):
        if not args.quiet:
            print(line, flush=True)

    if args.dataset == "mnist":
        schedule = f"{args.steps} steps of batch {args.batch_size}"
    else:
        schedule = f"{args.epochs} epochs of batch {args.batch_size}"
    title = (
        f"{args.dataset}: SimpleRNN({args.units}) -> Dense({NUM_CLASSES}) -> "
        f"softmax, Adam(learning_rate={args.learning_rate:g}), {schedule}"
    )
    out(f"{title}, backend {fastrnn.get_backend()}, seed {args.seed}")

    run = (run_mnist if args.dataset == "mnist" else run_digits)(args, out)

    failed = False
    saved = []
    if args.save is not None:
        try:
            save_model(run.model, args.save, args.overwrite)
            saved.append(f"model saved to {args.save}")
        except OSError as error:
            print(f"fastrnn.train: cannot save the model: {error}", file=sys.stderr)
            failed = True
    if args.plot is not None:
        try:
            save_plot(run, args.plot, args.overwrite, title)
            saved.append(f"learning curves saved to {args.plot}")
        except OSError as error:
            print(f"fastrnn.train: cannot write the plot: {error}", file=sys.stderr)
            failed = True

    accuracy = run.test_accuracy[-1]
    steps = len(run.step_seconds)
    print(
        f"final test loss {run.test_loss[-1]:.4f}  test accuracy {accuracy:.4f}  "
        f"after {len(run.train_x)} {run.unit}s"
    )
    train_seconds = sum(run.step_seconds)
    print(
        f"wall time {time.perf_counter() - started:.1f}s after imports (data "
        "loading and compilation included)"
    )
    print(
        f"training {run.training_seconds:.1f}s: {train_seconds:.1f}s in {steps} "
        f"train steps, {run.evaluation_seconds:.1f}s in {len(run.test_x)} "
        "evaluations"
    )
    print(
        f"median train step {1000 * statistics.median(run.step_seconds):.2f} ms "
        f"(first step {1000 * run.step_seconds[0]:.1f} ms: it loads or compiles the "
        "kernels)"
    )
    peak = _peak_rss_mib()
    if peak is not None:
        print(f"peak memory (max RSS) {peak:.0f} MiB")
    for line in saved:
        print(line)
    sys.stdout.flush()
    if failed:
        raise SystemExit(1)
    return accuracy


if __name__ == "__main__":
    main()
