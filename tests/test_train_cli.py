"""Tests of ``python -m fastrnn.train``: short runs learn, arguments, outputs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import train
from fastrnn.datasets import digits
from fastrnn.utils import to_categorical

# CI points FASTRNN_MNIST at the shared copy; without it, the same copy is expected
# next to the repository.  Read at import, before any monkeypatch.
MNIST = Path(
    os.environ.get("FASTRNN_MNIST")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
).expanduser()

OPTIONS = (
    "--help",
    "--steps",
    "--epochs",
    "--batch-size",
    "--units",
    "--learning-rate",
    "--lr",
    "--seed",
    "--eval-every",
    "--eval-batch-size",
    "--save",
    "--plot",
    "--overwrite",
    "--backend",
    "--quiet",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TEST_LINE = re.compile(
    r"^(step|epoch) +(\d+)  test loss (\d+\.\d{4})  test accuracy (\d\.\d{4})  "
    r"\(elapsed \d+\.\ds\)$"
)


@pytest.fixture
def mnist_file(monkeypatch):
    """Point the loader at the real MNIST; the tests fail, not skip, without it."""
    if not MNIST.is_file():
        pytest.fail(
            f"the MNIST file is required but {MNIST} does not exist; set "
            "FASTRNN_MNIST to a copy of Keras's mnist.npz"
        )
    monkeypatch.setenv("FASTRNN_MNIST", str(MNIST))
    return MNIST


def evaluation_lines(output):
    """The fixed-format test lines of ``output`` as (unit, index, loss, acc)."""
    found = []
    for line in output.splitlines():
        match = TEST_LINE.match(line)
        if match:
            unit, index, loss, accuracy = match.groups()
            found.append((unit, int(index), float(loss), float(accuracy)))
    return found


# short runs -----------------------------------------------------------------------


def test_mnist_short_run_learns(mnist_file, capsys):
    # 401 steps with seed 1337 reach about 0.80; the margin absorbs rounding
    # differences between backends and library versions.
    accuracy = train.main(["mnist", "--steps", "401", "--eval-every", "100"])

    output = capsys.readouterr().out
    assert accuracy > 0.75
    lines = evaluation_lines(output)
    assert [(unit, index) for unit, index, _, _ in lines] == [
        ("step", 0),
        ("step", 100),
        ("step", 200),
        ("step", 300),
        ("step", 400),
    ]
    assert lines[-1][3] == pytest.approx(accuracy, abs=5e-5)
    # The untrained network guesses: one class in ten.
    assert lines[0][3] < 0.3
    assert f"test accuracy {accuracy:.4f}  after 401 steps" in output
    assert re.search(r"^median train step \d+\.\d\d ms", output, re.M)


def test_mnist_evaluates_after_a_last_step_off_the_grid(mnist_file, capsys):
    train.main(
        ["mnist", "--steps", "12", "--eval-every", "5", "--eval-batch-size", "3000"]
    )

    steps = [index for _, index, _, _ in evaluation_lines(capsys.readouterr().out)]
    assert steps == [0, 5, 10, 11]


def test_mnist_is_reproducible_with_a_seed(mnist_file):
    arguments = ["mnist", "--steps", "30", "--eval-every", "30", "--quiet"]

    first = train.main(arguments + ["--seed", "7"])
    second = train.main(arguments + ["--seed", "7"])

    assert first == second


def test_digits_short_run_learns(capsys):
    # 20 epochs with seed 1337 reach about 0.85.
    accuracy = train.main(["digits", "--epochs", "20", "--eval-every", "5"])

    output = capsys.readouterr().out
    assert accuracy > 0.8
    lines = evaluation_lines(output)
    assert [(unit, index) for unit, index, _, _ in lines] == [
        ("epoch", 5),
        ("epoch", 10),
        ("epoch", 15),
        ("epoch", 20),
    ]
    assert lines[-1][3] == pytest.approx(accuracy, abs=5e-5)
    # fit's own line per epoch (verbose=2).
    assert output.count("Epoch ") == 20


def test_quiet_prints_only_the_summary(capsys):
    train.main(["digits", "--epochs", "2", "--quiet"])

    output = capsys.readouterr().out
    assert evaluation_lines(output) == []
    assert "Epoch " not in output
    assert output.startswith("final test loss ")


# --help and bad arguments ---------------------------------------------------------


def test_help_explains_every_option(tmp_path):
    # The subprocess imports the same fastrnn as these tests, installed or not.
    env = dict(os.environ)
    package_root = str(Path(fastrnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p
    )

    result = subprocess.run(
        [sys.executable, "-m", "fastrnn.train", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option in help_text
    for default in ("4001", "160", "50", "0.001", "1337", "500", "10000"):
        assert f"default {default}" in help_text
    assert "{mnist,digits}" in help_text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "the following arguments are required: dataset"),
        (["cifar10"], "invalid choice: 'cifar10'"),
        (["mnist", "--steps", "0"], "argument --steps: must be a positive integer"),
        (["mnist", "--steps", "ten"], "argument --steps: must be a positive integer"),
        (["mnist", "--batch-size", "-1"], "argument --batch-size: must be a positive"),
        (["mnist", "--units", "0"], "argument --units: must be a positive integer"),
        (["mnist", "--lr", "0"], "argument --learning-rate/--lr: must be a positive"),
        (["mnist", "--lr", "nan"], "argument --learning-rate/--lr: must be a positive"),
        (["mnist", "--seed", "-3"], "argument --seed: must be an integer in"),
        (["mnist", "--eval-every", "0"], "argument --eval-every: must be a positive"),
        (["mnist", "--epochs", "3"], "--epochs applies to digits only"),
        (["digits", "--steps", "3"], "--steps applies to mnist only"),
        (["digits", "--eval-batch-size", "9"], "--eval-batch-size applies to mnist"),
        (["mnist", "--backend", "cuda"], "invalid choice: 'cuda'"),
        (["mnist", "--save", "weights.txt"], "must end in .keras, .weights.h5, .npz"),
        (["mnist", "--save", "no/such/dir/w.npz"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(arguments)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name", ["curves.jpg", "out.npz", "curves"])
def test_plot_must_be_a_png_file(tmp_path, capsys, name):
    # The plot is always PNG data; a name that says otherwise would mislabel it.
    with pytest.raises(SystemExit) as exit_info:
        train.main(["digits", "--plot", str(tmp_path / name)])

    assert exit_info.value.code == 2
    assert "must end in .png" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train.plotting, "matplotlib_available", lambda: False)

    with pytest.raises(SystemExit) as exit_info:
        train.main(["digits", "--plot", str(tmp_path / "curves.png")])

    assert exit_info.value.code == 2
    assert 'pip install "fastrnn[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()


# outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("option, name", [("--save", "w.npz"), ("--plot", "c.png")])
def test_existing_output_is_refused_before_training(option, name, tmp_path, capsys):
    if option == "--plot":
        pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    path = tmp_path / name
    path.write_bytes(b"precious")

    with pytest.raises(SystemExit) as exit_info:
        train.main(["digits", option, str(path)])

    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "already exists; pass --overwrite" in captured.err
    assert "Epoch " not in captured.out
    assert path.read_bytes() == b"precious"


def test_saved_npz_weights_reproduce_the_final_accuracy(tmp_path):
    path = tmp_path / "weights.npz"

    accuracy = train.main(["digits", "--epochs", "3", "--quiet", "--save", str(path)])

    with np.load(path) as archive:
        weights = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    (_, _), (x_test, y_test) = digits.load_data(test_size=0.3, random_state=1337)
    model = train.build_model((8, 8), train.UNITS, train.LEARNING_RATE)
    model.set_weights(weights)
    _, reloaded = model.evaluate(
        x_test, to_categorical(y_test, 10), batch_size=x_test.shape[0]
    )
    assert reloaded == accuracy


def test_overwrite_replaces_an_existing_file(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"old")

    train.main(
        ["digits", "--epochs", "1", "--quiet", "--save", str(path), "--overwrite"]
    )

    with np.load(path) as archive:
        assert len(archive.files) == 5  # kernel, recurrent_kernel, bias; kernel, bias


def test_save_keras_format(tmp_path, capsys):
    if not train._have_keras_saving():
        with pytest.raises(SystemExit) as exit_info:
            train.main(["digits", "--save", str(tmp_path / "model.keras")])
        assert exit_info.value.code == 2
        assert "fastrnn.saving is missing" in capsys.readouterr().err
        return
    path = tmp_path / "model.keras"

    accuracy = train.main(["digits", "--epochs", "2", "--quiet", "--save", str(path)])

    from fastrnn.models import load_model

    (_, _), (x_test, y_test) = digits.load_data(test_size=0.3, random_state=1337)
    _, reloaded = load_model(path).evaluate(
        x_test, to_categorical(y_test, 10), batch_size=x_test.shape[0]
    )
    assert reloaded == accuracy
    assert f"model saved to {path}" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_plot_writes_a_png(dataset, tmp_path, request):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    if dataset == "mnist":
        request.getfixturevalue("mnist_file")
        schedule = ["--steps", "21", "--eval-every", "10"]
    else:
        schedule = ["--epochs", "3", "--eval-every", "1"]
    path = tmp_path / "curves.png"

    train.main([dataset, *schedule, "--quiet", "--plot", str(path)])

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > len(PNG_SIGNATURE)


@pytest.mark.parametrize("name", fastrnn.available_backends())
def test_backend_option_selects_the_kernels(name, capsys):
    previous = fastrnn.get_backend()
    try:
        train.main(["digits", "--epochs", "1", "--backend", name])
    finally:
        fastrnn.set_backend(previous)

    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(f"backend {name}, seed 1337")
