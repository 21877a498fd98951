"""Shared fixtures: every backend-aware test runs on NumPy and, where a GPU
and CuPy are present, again on CuPy (skipped with a reason otherwise)."""

import pytest

from minivit import backend

BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[
        pytest.mark.cupy,
        pytest.mark.skipif(not backend.cupy_available(),
                           reason="CuPy is not installed or no GPU is visible"),
    ]),
]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Name of the backend under test ("numpy" or "cupy")."""
    return request.param


@pytest.fixture
def f64(backend_name):
    """Run the test on ``backend_name`` with float64 as the default dtype."""
    with backend.using(backend_name, dtype="float64") as xp:
        backend.seed(0)
        yield xp


@pytest.fixture
def f32(backend_name):
    """Run the test on ``backend_name`` with the default float32."""
    with backend.using(backend_name, dtype="float32") as xp:
        backend.seed(0)
        yield xp


