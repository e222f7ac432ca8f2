"""Learning-curve figures: loss and accuracy against training progress, as PNG.

matplotlib is an optional dependency (``pip install "fastrnn[plot]"``); it is
imported only when a figure is drawn, so the rest of fastrnn never needs it.
"""

import numpy as np

INSTALL_HINT = 'pip install "fastrnn[plot]" (or pip install matplotlib)'


def matplotlib_available():
    """Whether matplotlib can be imported, without importing it.

    Returns
    -------
    bool
    """
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def trailing_mean(values, window):
    """Mean of each value and the ``window - 1`` values before it.

    Parameters
    ----------
    values : array-like of shape (n,)
    window : int
        Number of values averaged; the first ``window - 1`` outputs average
        only the values seen so far.

    Returns
    -------
    ndarray of shape (n,), float64
    """
    values = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    totals = np.cumsum(values)
    counts = np.minimum(np.arange(1, values.size + 1), window)
    totals[window:] -= totals[:-window].copy()
    return totals / counts


def plot_learning_curves(file, train, test, xlabel="step", title=None, smooth=1):
    """Draw train and test loss and accuracy side by side and write a PNG.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        Where the PNG goes.  A path is overwritten if it exists; open the file
        yourself (for example with mode ``"xb"``) to refuse that.
    train : mapping
        ``"x"``, ``"loss"`` and ``"accuracy"``: sequences of equal length, one
        entry per training step or epoch.
    test : mapping
        The same keys for the evaluations on the test set.
    xlabel : str, default "step"
        Label of the horizontal axis, the unit of ``train["x"]`` and ``test["x"]``.
    title : str, optional
        Title above both panels.
    smooth : int, default 1
        When above 1, the training curves are also drawn as trailing means over
        this many entries, over the raw values drawn faintly, since the loss of
        single small batches is too noisy to read.

    Raises
    ------
    ImportError
        If matplotlib is not installed, with the command that installs it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError(
            f"drawing learning curves needs matplotlib: {INSTALL_HINT}"
        ) from error

    # A Figure on an Agg canvas, not pyplot: no global state, no window, and it
    # works on machines without a display.
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)

    for axes, key, name in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        train_x = np.asarray(train["x"])
        train_y = np.asarray(train[key], dtype=np.float64)
        if smooth > 1:
            axes.plot(
                train_x,
                train_y,
                color="tab:blue",
                alpha=0.25,
                linewidth=0.6,
                label="train (batch)",
            )
            axes.plot(
                train_x,
                trailing_mean(train_y, smooth),
                color="tab:blue",
                label=f"train (mean of last {smooth})",
            )
        else:
            axes.plot(train_x, train_y, color="tab:blue", label="train")
        axes.plot(
            np.asarray(test["x"]),
            np.asarray(test[key], dtype=np.float64),
            color="tab:orange",
            marker="o",
            markersize=3.5,
            label="test",
        )
        # Steps and epochs are whole numbers; a tick at 2.5 epochs means nothing.
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(xlabel)
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_ylim(bottom=0.0)
    accuracy_axes.set_ylim(top=1.0)
    if title:
        figure.suptitle(title)

    figure.savefig(file, format="png", dpi=100)
