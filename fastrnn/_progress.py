"""Progress display for ``fit``: a tqdm bar per epoch, or one line per epoch."""

import sys

from tqdm.auto import tqdm


def format_logs(logs):
    """'loss: 0.1234 - accuracy: 0.9876' in the order of ``logs``."""
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


class EpochProgress:
    """Shows one epoch of ``steps`` batches at the given verbosity (0, 1 or 2)."""

    def __init__(self, epoch, epochs, steps, verbose):
        self.verbose = verbose
        self.title = f"Epoch {epoch + 1}/{epochs}"
        self.steps = steps
        self.bar = None
        if verbose == 1:
            self.bar = tqdm(
                total=steps,
                desc=self.title,
                unit="step",
                file=sys.stdout,
                leave=True,
                dynamic_ncols=True,
            )

    def update(self, logs):
        if self.bar is not None:
            self.bar.set_postfix_str(format_logs(logs), refresh=False)
            self.bar.update(1)

    def close(self, logs, seconds=None):
        if self.bar is not None:
            if logs:
                self.bar.set_postfix_str(format_logs(logs), refresh=False)
            self.bar.close()
        elif self.verbose == 2 and seconds is not None:
            per_step = 1000.0 * seconds / max(self.steps, 1)
            print(
                f"{self.title} - {seconds:.1f}s - {per_step:.2f}ms/step - "
                f"{format_logs(logs)}",
                flush=True,
            )
