"""Time one training step (``train_on_batch`` on B = 50 samples) per implementation.

Before timing, the first training steps from the shared initial weights must give
the reference losses; the second step's loss shows the first update agreed too.
"""

import itertools

import numpy as np
from _workloads import CHECKED_STEPS, TOLERANCE, step_losses

ROUNDS = 200
WARMUP_ROUNDS = 10


def test_train_step(labelled_benchmark, workload, implementation):
    expected = step_losses(workload.name, implementation.adam)
    losses = [implementation.train_step(b) for b in workload.batches[:CHECKED_STEPS]]
    np.testing.assert_allclose(losses, expected, rtol=0, atol=TOLERANCE)

    # The timed steps cycle over the training batches; the next batch is picked
    # outside the timed call.
    batches = itertools.cycle(workload.batches)
    loss = labelled_benchmark.pedantic(
        implementation.train_step,
        setup=lambda: ((next(batches),), {}),
        rounds=ROUNDS,
        warmup_rounds=WARMUP_ROUNDS,
    )
    assert np.isfinite(loss)
