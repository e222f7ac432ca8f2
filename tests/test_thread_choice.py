"""The choice between one thread and all cores for the fused train step.

The chooser only sees step times, so these tests feed it made-up times for
three kinds of machine: idle (all cores faster), busy (a core held by another
process makes every multi-threaded step slow) and one that turns idle.
"""

from fastrnn.models import _ThreadChooser

BACKEND_INDEPENDENT = True


def run(step_seconds, steps, cores=2):
    """Threads the chooser picked on each step, given step_seconds(step, threads)."""
    chooser = _ThreadChooser(cores)
    picked = []
    for step in range(steps):
        threads = chooser.choose()
        picked.append(threads)
        chooser.record(threads, step_seconds(step, threads))
    return picked


def test_an_idle_machine_runs_nearly_every_step_on_all_cores():
    picked = run(lambda step, threads: 50e-6 if threads == 2 else 90e-6, 2000)
    assert picked.count(2) / len(picked) > 0.97
    # Both ways are tried within the first few steps.
    assert set(picked[:10]) == {1, 2}


def test_a_busy_machine_runs_on_one_core_and_probes_ever_less_often():
    picked = run(lambda step, threads: 5e-3 if threads == 2 else 190e-6, 10_000)
    assert picked.count(2) < 40
    # The probes back off: none in the last few thousand steps but one burst.
    assert picked[-3000:].count(2) <= _ThreadChooser.BURST


def test_a_machine_that_turns_idle_gets_all_cores_back():
    def seconds(step, threads):
        if step < 1000:
            return 5e-3 if threads == 2 else 190e-6
        return 90e-6 if threads == 2 else 180e-6

    picked = run(seconds, 1000 + 2 * _ThreadChooser.MAX_INTERVAL)
    assert picked[-1000:].count(2) > 990


def test_a_slow_first_step_in_every_burst_does_not_keep_one_core():
    # Waking threads that went to sleep makes the first step of every burst of
    # multi-threaded steps slow; an idle machine must still get its cores back.
    def seconds(step, threads):
        seconds.previous, previous = threads, getattr(seconds, "previous", None)
        if threads == 2 and previous != 2:
            return 1e-3
        return 50e-6 if threads == 2 else 90e-6

    picked = run(seconds, 1000)
    assert picked[-500:].count(2) > 490


def test_one_core_never_probes():
    assert set(run(lambda step, threads: 1e-4, 500, cores=1)) == {1}
