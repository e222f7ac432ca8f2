"""The MNIST handwritten digits, in the layout of Keras's ``mnist.npz``.

:func:`load_data` reads the first of these that is set or exists, and downloads
only when none does:

1. the ``path`` argument;
2. the file named by the ``FASTRNN_MNIST`` environment variable;
3. Keras's cache, ``$KERAS_HOME/datasets/mnist.npz`` if ``KERAS_HOME`` is set, else
   ``~/.keras/datasets/mnist.npz``;
4. fastrnn's cache, ``mnist.npz`` in :func:`cache_dir`;
5. a download into fastrnn's cache from the address Keras uses, checked against the
   SHA-256 Keras pins.

Files found locally are not hash-checked (the same arrays can sit in zip archives
that differ byte for byte); their contents are validated instead. fastrnn never
deletes, moves or overwrites a file it did not download.
"""

import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pooch

URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
FILENAME = "mnist.npz"

ENV_FILE = "FASTRNN_MNIST"
ENV_HOME = "FASTRNN_HOME"

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


class DatasetUnavailableError(OSError):
    """A dataset is neither stored locally nor downloadable."""


def cache_dir():
    """Return the directory where fastrnn keeps the datasets it downloads.

    Returns
    -------
    pathlib.Path
        ``$FASTRNN_HOME`` if that environment variable is set and not empty,
        otherwise the per-user cache directory of the platform
        (``pooch.os_cache("fastrnn")``, for example ``~/.cache/fastrnn`` on
        Linux). It is read on every call and need not exist yet.
    """
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    return Path(pooch.os_cache("fastrnn"))


def keras_cache_file():
    """Return where Keras caches ``mnist.npz``, whether or not the file exists.

    Returns
    -------
    pathlib.Path
        ``$KERAS_HOME/datasets/mnist.npz`` if ``KERAS_HOME`` is set and not empty,
        otherwise ``~/.keras/datasets/mnist.npz``, with ``~`` expanded now.
    """
    keras_home = os.environ.get("KERAS_HOME")
    root = Path(keras_home) if keras_home else Path("~") / ".keras"
    return (root / "datasets" / FILENAME).expanduser()


def load_data(path=None):
    """Load MNIST as ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    path : str, os.PathLike or None, default=None
        An ``.npz`` file holding ``x_train``, ``y_train``, ``x_test`` and
        ``y_test``. When given, it is the only file tried. When None, the locations
        listed in the module docstring are tried in order.

    Returns
    -------
    (x_train, y_train) : tuple of ndarray
        ``x_train`` uint8 of shape (60000, 28, 28), pixel values 0..255;
        ``y_train`` uint8 of shape (60000,), digits 0..9.
    (x_test, y_test) : tuple of ndarray
        ``x_test`` uint8 of shape (10000, 28, 28); ``y_test`` uint8 of shape
        (10000,).

    Raises
    ------
    FileNotFoundError
        If ``path`` is given, or ``FASTRNN_MNIST`` is set, and names no file.
    ValueError
        If the file found is not a readable ``.npz`` archive or its arrays have the
        wrong keys, dtypes, shapes or label values. The message names the file.
    DatasetUnavailableError
        A subclass of OSError: no local file exists and the download failed. The
        message lists every way to provide the file; the download error is chained
        as ``__cause__``.

    Notes
    -----
    Unlike Keras, ``path`` names a file to read rather than a file name inside
    Keras's cache, and a file found locally is used without checking its hash.
    Labels stored as any integer type are accepted and returned as uint8. Arrays
    of any length are accepted as long as images are 28 x 28 and each image array
    has as many rows as its label array.
    """
    if path is not None:
        return _load_file(_existing(path, "the `path` argument"), "`path` argument")

    env_file = os.environ.get(ENV_FILE)
    if env_file:
        where = f"the {ENV_FILE} environment variable"
        return _load_file(_existing(env_file, where), where)

    keras_file = keras_cache_file()
    if keras_file.is_file():
        return _load_file(keras_file, "Keras's dataset cache")

    own_dir = cache_dir()
    own_file = own_dir / FILENAME
    if own_file.is_file():
        # Downloads were hash-checked when written; a file copied here by hand
        # is used as it is.
        try:
            return _load_file(own_file, "fastrnn's dataset cache")
        except ValueError as exc:
            # The file may be the user's own copy, so it is left in place.
            raise ValueError(f"{exc}; delete it to download a fresh copy") from exc

    try:
        downloaded = pooch.retrieve(
            URL,
            known_hash=f"sha256:{SHA256}",
            fname=FILENAME,
            path=own_dir,
            progressbar=_have_tqdm(),
        )
    except OSError as exc:
        # Network failures from requests and an unwritable cache both land here;
        # a hash mismatch is a ValueError and propagates with pooch's message.
        raise DatasetUnavailableError(_unavailable_message(exc, own_file)) from exc
    return _load_file(Path(downloaded), "a download from " + URL)


def _existing(path, where):
    """``path`` as an expanded Path, or FileNotFoundError naming ``where``."""
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST file {str(path)!r} given by {where} does not exist or is not a file"
        )
    return path


def _have_tqdm():
    """Whether pooch can draw a progress bar (it needs tqdm)."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _unavailable_message(exc, own_file):
    """The text of DatasetUnavailableError: what failed and every way out."""
    return (
        f"MNIST could not be downloaded from {URL} ({type(exc).__name__}: {exc}) "
        f"and no local copy was found. Provide the file ({FILENAME}, the layout "
        f"Keras uses) in any one of these ways:\n"
        f"  - pass it: fastrnn.datasets.mnist.load_data(path='/path/to/mnist.npz')\n"
        f"  - set the environment variable {ENV_FILE}=/path/to/mnist.npz\n"
        f"  - put it in Keras's cache: {keras_cache_file()}\n"
        f"  - put it in fastrnn's cache: {own_file} (set {ENV_HOME} to use another "
        f"directory)\n"
        f"  - go online and call load_data() again to download it there"
    )


# Exceptions np.load and NpzFile raise for a file that is not a valid archive:
# a truncated or damaged zip (BadZipFile, zlib.error, EOFError, OSError), a
# member that is not a valid .npy or holds objects (ValueError), or a plain
# pickle (UnpicklingError).
_FORMAT_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    pickle.UnpicklingError,
)


def _load_file(path, source):
    """Read and validate the MNIST arrays in ``path``, found through ``source``."""
    name = f"MNIST file {str(path)!r} (from {source})"
    try:
        data = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError):
        raise
    except _FORMAT_ERRORS as exc:
        raise ValueError(
            f"{name} is not a readable .npz archive: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{name} holds a single array, expected an .npz archive with keys "
            f"{', '.join(KEYS)}"
        )

    with data:
        missing = [key for key in KEYS if key not in data.files]
        if missing:
            raise ValueError(
                f"{name} lacks the arrays {', '.join(missing)}; expected keys "
                f"{', '.join(KEYS)}, got {', '.join(data.files) or 'none'}"
            )
        arrays = {}
        for key in KEYS:
            try:
                arrays[key] = data[key]
            except _FORMAT_ERRORS as exc:
                raise ValueError(
                    f"{name}: array {key} cannot be read, the file is damaged or "
                    f"not in .npy format: {type(exc).__name__}: {exc}"
                ) from exc

    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        arrays[f"y_{split}"] = _check_split(name, split, x, y)
    return (
        (arrays["x_train"], arrays["y_train"]),
        (arrays["x_test"], arrays["y_test"]),
    )


def _check_split(name, split, x, y):
    """Validate one split's images and labels; return the labels as uint8."""
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: x_{split} must be uint8, got {x.dtype}")
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{name}: x_{split} must have shape (n, 28, 28), got {x.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: y_{split} must hold integers, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"{name}: y_{split} must have shape ({x.shape[0]},) to match x_{split} "
            f"of shape {x.shape}, got {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(
            f"{name}: y_{split} must hold digits 0..{NUM_CLASSES - 1}, got values "
            f"from {y.min()} to {y.max()}"
        )
    return y.astype(np.uint8, copy=False)
