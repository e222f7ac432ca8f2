"""Test set-up: every test that touches the kernels runs on every built backend.

A test module whose tests never reach a kernel sets ``BACKEND_INDEPENDENT = True``
and runs once.
"""

import pytest

from fastrnn import backends


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    if getattr(metafunc.module, "BACKEND_INDEPENDENT", False):
        params = ["numba"]
    else:
        built = backends.available_backends()
        params = [
            pytest.param(
                name,
                marks=pytest.mark.skipif(
                    name not in built, reason=f"the {name} backend is not built"
                ),
            )
            for name in backends.BACKENDS
        ]
    metafunc.parametrize("backend", params, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def backend(request):
    """Select the backend named by the parameter for the test, then restore."""
    previous = backends.get_backend()
    name = getattr(request, "param", previous)
    backends.set_backend(name)
    yield name
    backends.set_backend(previous)
