"""Users' Keras scripts run on fastrnn after changing only ``keras`` to ``fastrnn``.

The scripts are read from the shared ``seeds`` folder beside the repository (each
file holds its Python in fenced blocks).  Only two edits are made besides the
import rename, both to shorten the schedule so the test stays quick: the number
of ``train_on_batch`` steps and the number of ``fit`` epochs.  The scripts must
then run and learn.
"""

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"

# Shortened schedules: these still reach the accuracies asserted below.
MNIST_STEPS = 1001
DIGITS_EPOCHS = 40


def seed_scripts():
    """(name, source) of every Python block in the seed files."""
    scripts = []
    for path in sorted(SEEDS.glob("*.txt")):
        blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
        for number, block in enumerate(blocks, start=1):
            scripts.append((f"{path.stem}#{number}", block))
    return scripts


def to_fastrnn(source):
    """Replace the word keras by fastrnn in import lines, and nothing else."""
    return re.sub(
        r"^(\s*(?:from|import)\s+)keras\b",
        r"\1fastrnn",
        source,
        flags=re.M,
    )


def shorten(source):
    source, steps = re.subn(r"range\(4001\)", f"range({MNIST_STEPS})", source)
    source, epochs = re.subn(r"epochs=160", f"epochs={DIGITS_EPOCHS}", source)
    return source, steps + epochs


def run_script(source, monkeypatch):
    """Execute ``source`` and return its printed output and its globals."""
    mnist_file = os.environ.get("FASTRNN_MNIST") or str(
        SEEDS.parent / "data" / "mnist.npz"
    )
    monkeypatch.setenv("FASTRNN_MNIST", mnist_file)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(source, "<seed script>", "exec"), namespace)
    return output.getvalue(), namespace


def test_the_seed_scripts_are_there():
    # A missing seeds folder must fail, not skip: these are the users' scripts.
    assert len(seed_scripts()) >= 2, f"no seed scripts found under {SEEDS}"


def test_renaming_touches_only_imports():
    source = "from keras.models import Sequential\nx = 'keras'\nimport keras\n"
    assert to_fastrnn(source) == (
        "from fastrnn.models import Sequential\nx = 'keras'\nimport fastrnn\n"
    )


SCRIPTS = seed_scripts()


@pytest.mark.parametrize("name, source", SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_seed_script_runs_and_learns(name, source, monkeypatch):
    renamed, shortened = shorten(to_fastrnn(source))
    assert shortened >= 1, "the schedule of the script was not found to shorten"
    assert "import keras" not in renamed and "from keras" not in renamed

    output, namespace = run_script(renamed, monkeypatch)

    model = namespace["model"]
    accuracy = model.evaluate(
        namespace["X_test"], namespace["y_test"], batch_size=1000, verbose=False
    )[1]
    if "range(" in renamed and "train_on_batch" in renamed.split("'''")[0]:
        # The MNIST script: printed test accuracies climb past 80 %.
        printed = [
            float(value) for value in re.findall(r"test accuracy:\s+([0-9.]+)", output)
        ]
        assert len(printed) == MNIST_STEPS // 500 + 1
        assert printed[-1] > 0.8 and printed[-1] > printed[0]
        assert accuracy > 0.8
    else:
        # The digits script trains with fit on the 8x8 images.
        assert accuracy > 0.85
    assert np.isfinite(model.get_weights()[0]).all()
