"""Shared fixtures: every backend-aware test runs on NumPy and, where a GPU
and CuPy are present, again on CuPy (skipped with a reason otherwise).

``MINIVIT_FAKE_DEVICE=1``: where CuPy or a GPU is missing, the CuPy cases run
instead on the fake device of ``tests/fake_device.py`` (NumPy that refuses
what CuPy refuses), which finds host/device mixing without a GPU.
"""

import os
import sys

import pytest

from minivit import backend

if os.environ.get("MINIVIT_FAKE_DEVICE", "").strip() not in ("", "0") \
        and not backend.cupy_available():
    import fake_device

    sys.modules["cupy"] = fake_device.FakeCuPy()

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


