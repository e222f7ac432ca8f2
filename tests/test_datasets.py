"""Tests of fastrnn.datasets: where MNIST is looked for, validation, digits splits."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pooch
import pytest
import requests

from fastrnn.datasets import DatasetUnavailableError, digits, mnist

# No kernel runs here: once is enough, whatever the backends.
BACKEND_INDEPENDENT = True

# Read at import, before any test's monkeypatch clears the variable. CI points it at
# the shared copy; without it, the same copy is expected next to the repository.
# Made absolute so that links to it from temporary folders resolve.
REAL_MNIST = (
    Path(
        os.environ.get("FASTRNN_MNIST")
        or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
    )
    .expanduser()
    .absolute()
)

KERAS_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# SHA-256 of each array's raw bytes, the same in every correct copy whatever its
# zip container looks like.
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


def require_real_mnist():
    """The real mnist.npz; the tests that need it fail, not skip, without it."""
    if not REAL_MNIST.is_file():
        pytest.fail(
            f"the MNIST file is required but {REAL_MNIST} does not exist; set "
            f"FASTRNN_MNIST to a copy of Keras's mnist.npz"
        )
    return REAL_MNIST


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No MNIST anywhere: empty HOME and fastrnn cache, downloads forbidden.

    Returns the fake home directory and the fake fastrnn cache directory.
    """
    home = tmp_path / "home"
    cache = tmp_path / "cache"
    home.mkdir()
    monkeypatch.delenv("FASTRNN_MNIST", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FASTRNN_HOME", str(cache))

    def no_download(*args, **kwargs):
        raise AssertionError("load_data tried to download although a file exists")

    monkeypatch.setattr(mnist.pooch, "retrieve", no_download)
    return home, cache


def write_mnist(path, marker=3, n_train=4, n_test=2, **override):
    """Write a small valid MNIST-layout file whose labels all equal ``marker``."""
    arrays = {
        "x_train": np.full((n_train, 28, 28), marker, dtype=np.uint8),
        "y_train": np.full(n_train, marker, dtype=np.uint8),
        "x_test": np.zeros((n_test, 28, 28), dtype=np.uint8),
        "y_test": np.full(n_test, marker, dtype=np.uint8),
    }
    arrays.update(override)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def marker_of(result):
    """The marker label of a file written by write_mnist."""
    (_, y_train), _ = result
    return int(y_train[0])


# Loading the real file ------------------------------------------------------------


def test_real_file_dtypes_shapes_and_first_labels():
    real_mnist = require_real_mnist()
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=real_mnist)

    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert x_train.shape == (60000, 28, 28)
    assert y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28)
    assert y_test.shape == (10000,)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert x_train.max() == 255


def test_real_file_array_contents():
    real_mnist = require_real_mnist()
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=real_mnist)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test}
    arrays["y_test"] = y_test

    for key, array in arrays.items():
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        assert digest == ARRAY_SHA256[key], key


def test_explicit_path_as_str(isolated):
    real_mnist = require_real_mnist()
    (_, y_train), (_, y_test) = mnist.load_data(str(real_mnist))

    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_environment_variable(isolated, monkeypatch):
    real_mnist = require_real_mnist()
    monkeypatch.setenv("FASTRNN_MNIST", str(real_mnist))

    (x_train, y_train), (x_test, _) = mnist.load_data()

    assert x_train.shape == (60000, 28, 28)
    assert x_test.shape == (10000, 28, 28)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]


def test_keras_cache_under_home(isolated):
    real_mnist = require_real_mnist()
    home, _ = isolated
    keras_file = home / ".keras" / "datasets" / "mnist.npz"
    keras_file.parent.mkdir(parents=True)
    keras_file.symlink_to(real_mnist)

    (x_train, y_train), (_, y_test) = mnist.load_data()

    assert x_train.shape == (60000, 28, 28)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert keras_file.is_symlink()


def test_keras_home_variable_moves_keras_cache(isolated, monkeypatch, tmp_path):
    keras_home = tmp_path / "keras_home"
    write_mnist(keras_home / "datasets" / "mnist.npz", marker=6)
    monkeypatch.setenv("KERAS_HOME", str(keras_home))

    assert mnist.keras_cache_file() == keras_home / "datasets" / "mnist.npz"
    assert marker_of(mnist.load_data()) == 6


def test_fastrnn_cache(isolated):
    _, cache = isolated
    write_mnist(cache / "mnist.npz", marker=8)

    assert mnist.cache_dir() == cache
    assert marker_of(mnist.load_data()) == 8


def test_default_cache_dir_is_platform_cache(monkeypatch):
    monkeypatch.delenv("FASTRNN_HOME", raising=False)

    assert mnist.cache_dir() == Path(pooch.os_cache("fastrnn"))


def test_precedence_order(isolated, monkeypatch, tmp_path):
    home, cache = isolated
    given = write_mnist(tmp_path / "given.npz", marker=1)
    env_file = write_mnist(tmp_path / "env.npz", marker=2)
    keras_file = write_mnist(home / ".keras" / "datasets" / "mnist.npz", marker=3)
    own_file = write_mnist(cache / "mnist.npz", marker=4)
    monkeypatch.setenv("FASTRNN_MNIST", str(env_file))

    def fake_download(url, known_hash, fname, path, progressbar):
        return str(write_mnist(Path(path) / fname, marker=5))

    monkeypatch.setattr(mnist.pooch, "retrieve", fake_download)

    # Remove the winner of each round to reveal the next location in line.
    assert marker_of(mnist.load_data(path=given)) == 1
    assert marker_of(mnist.load_data()) == 2
    monkeypatch.delenv("FASTRNN_MNIST")
    assert marker_of(mnist.load_data()) == 3
    keras_file.unlink()
    assert marker_of(mnist.load_data()) == 4
    own_file.unlink()
    assert marker_of(mnist.load_data()) == 5


def test_empty_environment_variable_is_ignored(isolated, monkeypatch):
    _, cache = isolated
    write_mnist(cache / "mnist.npz", marker=7)
    monkeypatch.setenv("FASTRNN_MNIST", "")

    assert marker_of(mnist.load_data()) == 7


def test_bad_file_in_fastrnn_cache_is_kept_and_explained(isolated):
    _, cache = isolated
    bad = cache / "mnist.npz"
    cache.mkdir()
    bad.write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(ValueError, match="delete it to download a fresh copy"):
        mnist.load_data()

    assert bad.read_bytes() == b"PK\x03\x04 not really a zip"


# Download and the offline error ---------------------------------------------------


def test_download_uses_keras_address_and_hash(isolated, monkeypatch):
    real_mnist = require_real_mnist()
    _, cache = isolated
    calls = []

    def fake_download(url, known_hash, fname, path, progressbar):
        calls.append(dict(url=url, known_hash=known_hash, fname=fname, path=path))
        calls[-1]["progressbar"] = progressbar
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_mnist, target)
        return str(target)

    monkeypatch.setattr(mnist.pooch, "retrieve", fake_download)
    (_, y_train), _ = mnist.load_data()

    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert calls == [
        {
            "url": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
            "mnist.npz",
            "known_hash": "sha256:" + KERAS_SHA256,
            "fname": "mnist.npz",
            "path": cache,
            "progressbar": True,  # tqdm is installed in the test environment
        }
    ]

    # The second call finds the downloaded file and does not download again.
    mnist.load_data()
    assert len(calls) == 1


def test_offline_error_lists_every_way(isolated, monkeypatch):
    home, cache = isolated
    offline = requests.ConnectionError("Failed to resolve storage.googleapis.com")

    def fail(*args, **kwargs):
        raise offline

    monkeypatch.setattr(mnist.pooch, "retrieve", fail)
    with pytest.raises(DatasetUnavailableError) as info:
        mnist.load_data()

    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert info.value.__cause__ is offline
    assert "Failed to resolve" in message
    assert "load_data(path=" in message
    assert "FASTRNN_MNIST" in message
    assert str(home / ".keras" / "datasets" / "mnist.npz") in message
    assert str(cache / "mnist.npz") in message
    assert "FASTRNN_HOME" in message
    assert "online" in message


# Files that must be rejected ------------------------------------------------------


def test_missing_path_raises_file_not_found(isolated, tmp_path):
    missing = tmp_path / "nowhere" / "mnist.npz"

    with pytest.raises(FileNotFoundError, match="nowhere"):
        mnist.load_data(path=missing)


def test_missing_environment_file_raises_file_not_found(isolated, monkeypatch):
    monkeypatch.setenv("FASTRNN_MNIST", "/nonexistent/mnist.npz")

    with pytest.raises(FileNotFoundError, match="FASTRNN_MNIST"):
        mnist.load_data()


@pytest.mark.parametrize("source", ["path", "environment", "keras cache"])
def test_truncated_file_is_rejected_and_kept(isolated, monkeypatch, source):
    real_mnist = require_real_mnist()
    home, _ = isolated
    head = real_mnist.read_bytes()[:1000]
    if source == "keras cache":
        truncated = home / ".keras" / "datasets" / "mnist.npz"
        truncated.parent.mkdir(parents=True)
    else:
        truncated = home / "truncated.npz"
    truncated.write_bytes(head)
    if source == "environment":
        monkeypatch.setenv("FASTRNN_MNIST", str(truncated))

    with pytest.raises(ValueError, match="not a readable .npz archive") as info:
        mnist.load_data(path=truncated if source == "path" else None)

    assert str(truncated) in str(info.value)
    assert truncated.read_bytes() == head


def test_damaged_member_is_rejected(isolated, tmp_path):
    # Flip bytes inside the compressed data but keep the zip directory intact.
    noise = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    good = write_mnist(tmp_path / "good.npz", x_train=noise)
    raw = bytearray(good.read_bytes())
    raw[200:260] = bytes(60)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(raw))

    with pytest.raises(ValueError, match="damaged.npz"):
        mnist.load_data(path=damaged)


def test_single_array_file_is_rejected(isolated, tmp_path):
    npy = tmp_path / "mnist.npy"
    np.save(npy, np.zeros((2, 28, 28), dtype=np.uint8))

    with pytest.raises(ValueError, match="single array"):
        mnist.load_data(path=npy)


BAD_CONTENTS = {
    "missing key": (dict(y_test=None), "lacks the arrays y_test"),
    "wrong image shape": (
        dict(x_train=np.zeros((4, 28, 27), dtype=np.uint8)),
        r"x_train must have shape \(n, 28, 28\), got \(4, 28, 27\)",
    ),
    "flat images": (
        dict(x_test=np.zeros((2, 784), dtype=np.uint8)),
        r"x_test must have shape \(n, 28, 28\), got \(2, 784\)",
    ),
    "float images": (
        dict(x_train=np.zeros((4, 28, 28), dtype=np.float32)),
        "x_train must be uint8, got float32",
    ),
    "float labels": (
        dict(y_train=np.zeros(4, dtype=np.float64)),
        "y_train must hold integers, got dtype float64",
    ),
    "label count": (
        dict(y_test=np.zeros(3, dtype=np.uint8)),
        r"y_test must have shape \(2,\) to match x_test .* got \(3,\)",
    ),
    "label column": (
        dict(y_train=np.zeros((4, 1), dtype=np.uint8)),
        r"y_train must have shape \(4,\) .* got \(4, 1\)",
    ),
    "label range": (
        dict(y_train=np.array([0, 1, 10, 2], dtype=np.int64)),
        "y_train must hold digits 0..9, got values from 0 to 10",
    ),
    "object labels": (
        dict(y_test=np.array([0, "a"], dtype=object)),
        "y_test cannot be read",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_bad_contents_are_rejected(isolated, tmp_path, case):
    override, expected = BAD_CONTENTS[case]
    bad = write_mnist(tmp_path / "bad.npz", **override)
    before = bad.read_bytes()

    with pytest.raises(ValueError, match=expected) as info:
        mnist.load_data(path=bad)

    assert str(bad) in str(info.value)
    assert bad.read_bytes() == before


def test_integer_labels_are_returned_as_uint8(isolated, tmp_path):
    labels = np.array([3, 1, 4, 1], dtype=np.int64)
    path = write_mnist(tmp_path / "wide.npz", y_train=labels)

    (_, y_train), (_, y_test) = mnist.load_data(path=path)

    assert y_train.dtype == y_test.dtype == np.uint8
    assert y_train.tolist() == [3, 1, 4, 1]


# scikit-learn digits ---------------------------------------------------------------


def test_digits_shapes_dtypes_and_split_sizes():
    (x_train, y_train), (x_test, y_test) = digits.load_data(random_state=0)

    assert x_train.shape == (1257, 8, 8)
    assert x_test.shape == (540, 8, 8)
    assert y_train.shape == (1257,)
    assert y_test.shape == (540,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 16.0
    assert set(np.concatenate([y_train, y_test]).tolist()) == set(range(10))


def test_digits_keep_scikit_learn_values():
    from sklearn.datasets import load_digits

    reference = load_digits()
    (x_train, y_train), (x_test, y_test) = digits.load_data(random_state=1)
    images = np.concatenate([x_train, x_test]).reshape(len(reference.target), -1)
    labels = np.concatenate([y_train, y_test])

    # Same multiset of (image, label) rows as scikit-learn, only reordered.
    ours = np.column_stack([images, labels])
    theirs = np.column_stack([reference.data, reference.target])
    np.testing.assert_array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))


def test_digits_integer_test_size():
    (x_train, _), (x_test, _) = digits.load_data(test_size=100, random_state=0)

    assert len(x_test) == 100
    assert len(x_train) == 1697


def test_digits_random_state_reproducible():
    (a_train, a_labels), (a_test, _) = digits.load_data(random_state=42)
    (b_train, b_labels), (b_test, _) = digits.load_data(random_state=42)
    (_, c_labels), _ = digits.load_data(random_state=43)

    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(a_labels, c_labels)


def test_digits_global_seed_reproducible():
    state = np.random.get_state()
    try:
        np.random.seed(5)
        (_, first), _ = digits.load_data()
        np.random.seed(5)
        (_, second), _ = digits.load_data()
    finally:
        np.random.set_state(state)

    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("test_size", [0, 0.0, 1.0, -0.1, 1.5, 1797, 5000, -3, True])
def test_digits_invalid_test_size(test_size):
    with pytest.raises(ValueError, match="`test_size` must be a float in"):
        digits.load_data(test_size=test_size)


@pytest.mark.parametrize("test_size", ["0.3", None])
def test_digits_non_numeric_test_size(test_size):
    with pytest.raises(ValueError, match=r"got .*"):
        digits.load_data(test_size=test_size)
