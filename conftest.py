"""Repository-wide pytest set-up.

Plain ``pytest`` runs each benchmark once as a test, so the benchmarks cannot
rot; ``pytest --benchmark-only`` times them.
"""


def pytest_configure(config):
    if hasattr(config.option, "benchmark_only") and not config.option.benchmark_only:
        config.option.benchmark_disable = True
