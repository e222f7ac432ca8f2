"""Fixtures of the benchmarks: every workload crossed with every implementation.

Plain ``pytest`` runs each benchmark once as a test, so the benchmarks cannot
rot; ``pytest --benchmark-only`` times them.
"""

import _implementations
import _workloads
import pytest


def pytest_configure(config):
    if hasattr(config.option, "benchmark_only") and not config.option.benchmark_only:
        config.option.benchmark_disable = True


# NumPy's BLAS, TensorFlow and PyTorch leave thread pools behind that keep
# polling for work for a while after their last call; a benchmark timed after
# theirs shares the cores with them.  Their benchmarks therefore run after all
# of fastrnn's, one library after the other, in this order.
_RUN_LAST = ("numpy", "tensorflow", "torch")


def pytest_collection_modifyitems(items):
    def library_rank(item):
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("implementation") if callspec else None
        return _RUN_LAST.index(name) + 1 if name in _RUN_LAST else 0

    # sorted() is stable: within a rank the collected order is kept.
    items[:] = sorted(items, key=library_rank)


@pytest.fixture(params=_workloads.NAMES)
def workload(request):
    return _workloads.load(request.param)


@pytest.fixture(params=_implementations.NAMES)
def implementation(request, workload):
    """A fresh model at the shared initial weights; skips when not installed."""
    model = _implementations.build(request.param, workload)
    yield model
    model.close()


@pytest.fixture
def labelled_benchmark(workload, implementation, benchmark, request):
    """Name the benchmark's group "<workload>-<operation>" for the report.

    The operation is the test function's name without ``test_``.
    """
    operation = request.function.__name__.removeprefix("test_")
    benchmark.group = f"{workload.name}-{operation}"
    benchmark.extra_info.update(
        workload=workload.name,
        operation=operation,
        implementation=implementation.name,
        version=implementation.version,
    )
    return benchmark
