"""Time ``predict`` and ``evaluate`` on a workload's whole test split in one batch.

Before timing, each implementation's output from the shared initial weights must
match the reference: every probability, and the loss and accuracy.
"""

import numpy as np
from _workloads import TOLERANCE, reference

WARMUP_ROUNDS = 2


def test_predict(labelled_benchmark, workload, implementation):
    x = workload.test.x
    probabilities = implementation.predict(x)
    np.testing.assert_allclose(
        probabilities, reference(workload.name).probabilities, rtol=0, atol=TOLERANCE
    )

    out = labelled_benchmark.pedantic(
        implementation.predict,
        args=(x,),
        rounds=workload.eval_rounds,
        warmup_rounds=WARMUP_ROUNDS,
    )
    assert out.shape == probabilities.shape


def test_evaluate(labelled_benchmark, workload, implementation):
    expected = reference(workload.name)
    loss, accuracy = implementation.evaluate(workload.test)
    assert abs(loss - expected.loss) <= TOLERANCE
    # A probability within rounding of the largest may win the argmax instead:
    # allow one sample's difference.
    assert abs(accuracy - expected.accuracy) <= 1.5 / len(workload.test)

    loss, _ = labelled_benchmark.pedantic(
        implementation.evaluate,
        args=(workload.test,),
        rounds=workload.eval_rounds,
        warmup_rounds=WARMUP_ROUNDS,
    )
    assert np.isfinite(loss)
