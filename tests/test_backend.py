"""The GPU path's set-up errors and ``backend.device_name()``, without a GPU.

Each way ``MINIVIT_BACKEND=cupy`` can fail is simulated with a stand-in
``cupy`` module in ``sys.modules`` (or none at all), and the RuntimeError must
name the problem and the fix. README.md ("Running on a GPU") quotes these
messages; the last test keeps the quotes and the code in step.
"""

import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import fake_device
from minivit import backend

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def stand_in_cupy(get_device_count, compute_error=None):
    """A ``cupy`` module with the runtime call and the arithmetic _import_cupy uses."""
    fake = fake_device.FakeCuPy()
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count))
    if compute_error is not None:
        def arange(*args, **kwargs):
            raise compute_error
        fake.arange = arange
    return fake


def import_error(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "cupy", module)
    with pytest.raises(RuntimeError) as info:
        backend._import_cupy()
    assert not backend.cupy_available()
    return str(info.value)


def assert_says_how_to_install(message):
    assert 'pip install -e ".[cuda12]"' in message
    assert 'pip install -e ".[cuda13]"' in message
    assert "nvidia-smi" in message and "CUDA Version" in message
    assert "MINIVIT_BACKEND=numpy" in message


def test_cupy_not_installed(monkeypatch):
    message = import_error(monkeypatch, None)        # None in sys.modules: import fails
    assert "MINIVIT_BACKEND=cupy was requested but CuPy is not installed" in message
    assert_says_how_to_install(message)


def test_cupy_that_fails_to_import(monkeypatch, tmp_path):
    # what a CuPy wheel without its CUDA libraries raises at import
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('CuPy is not correctly installed. "
        "(libcudart.so.12: cannot open shared object file)')\n")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        backend._import_cupy()
    message = str(info.value)
    assert "CuPy is installed and fails to import" in message
    assert "libcudart.so.12: cannot open shared object file" in message   # the cause
    assert "pip list | grep -i cupy" in message
    assert_says_how_to_install(message)
    assert "cupy" not in sys.modules or sys.modules["cupy"] is None


def test_no_driver_or_no_device(monkeypatch):
    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    message = import_error(monkeypatch, stand_in_cupy(no_device))
    assert "CuPy is installed, but no usable NVIDIA GPU/driver was found" in message
    assert "cudaErrorNoDevice: no CUDA-capable device is detected" in message   # the cause
    assert "nvidia-smi" in message and "cupy-cuda12x: 12" in message
    assert "MINIVIT_BACKEND=numpy" in message


def test_zero_gpus_visible(monkeypatch):
    message = import_error(monkeypatch, stand_in_cupy(lambda: 0))
    assert "no GPU is visible" in message and "CUDA_VISIBLE_DEVICES" in message
    assert "MINIVIT_BACKEND=numpy" in message


def test_cuda_libraries_missing(monkeypatch):
    cause = RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                         "cannot open shared object file: No such file or directory")
    message = import_error(monkeypatch, stand_in_cupy(lambda: 2, cause))
    assert "CuPy sees 2 GPU(s), but cannot compute on them" in message
    assert "libnvrtc.so.12" in message                              # the cause
    assert 'pip install "cupy-cuda12x[ctk]"' in message and "CUDA Toolkit" in message
    assert "MINIVIT_BACKEND=numpy" in message


def test_a_failed_switch_leaves_the_backend_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    before = (backend.xp, backend.name, backend.default_dtype())
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        backend.use("cupy")
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        with backend.using("cupy"):
            pass
    assert (backend.xp, backend.name, backend.default_dtype()) == before


def test_a_working_cupy_is_accepted(monkeypatch):
    fake = fake_device.FakeCuPy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert backend._import_cupy() is fake and backend.cupy_available()


def test_device_name():
    with backend.using("numpy"):
        assert backend.device_name() == "CPU (NumPy)"
    with fake_device.installed():
        assert backend.device_name() == f"{fake_device.FAKE_GPU_NAME} (GPU 0, CuPy 0.0-fake)"


def test_device_name_decodes_the_cuda_name(monkeypatch):
    runtime = types.SimpleNamespace(
        getDevice=lambda: 1,
        getDeviceProperties=lambda dev: {"name": b"NVIDIA H100 80GB HBM3", "major": 9})
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime),
                                 __version__="13.6.0")
    monkeypatch.setattr(backend, "xp", cupy)
    monkeypatch.setattr(backend, "name", "cupy")
    assert backend.device_name() == "NVIDIA H100 80GB HBM3 (GPU 1, CuPy 13.6.0)"


def _one_liner(env_backend, extra_path=None):
    """The README's check, run as a user would run it."""
    command = re.search(r'MINIVIT_BACKEND=cupy (python -c "[^"]*device_name[^"]*")', README)
    assert command, "README.md lost its device_name() one-liner"
    code = command.group(1)[len('python -c "'):-1]
    env = dict(os.environ, MINIVIT_BACKEND=env_backend)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                          capture_output=True, text=True)


def test_the_readme_one_liner(tmp_path):
    result = _one_liner("numpy")
    assert result.returncode == 0 and result.stdout.strip() == "CPU (NumPy)"
    # with CuPy absent (a stand-in package that is not there), the user gets the error
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'cupy'\", name='cupy')\n")
    result = _one_liner("cupy", str(tmp_path))
    assert result.returncode != 0
    assert "RuntimeError: MINIVIT_BACKEND=cupy was requested but CuPy is not installed" \
        in result.stderr


def test_the_readme_quotes_the_messages(monkeypatch, tmp_path):
    """Every message README.md quotes is what the code says (up to the cause in
    parentheses, which the README writes as ``(...)``)."""
    messages = [import_error(monkeypatch, None)]
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        backend._import_cupy()
    messages.append(str(info.value))
    messages.append(import_error(monkeypatch, stand_in_cupy(lambda: 0)))

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    messages.append(import_error(monkeypatch, stand_in_cupy(no_device)))
    messages.append(import_error(monkeypatch, stand_in_cupy(
        lambda: 1, RuntimeError("CuPy failed to load libnvrtc.so.12"))))
    quoted = [line[len("RuntimeError: "):] for line in README.splitlines()
              if line.startswith("RuntimeError: MINIVIT_BACKEND=cupy")]
    assert len(quoted) >= len(messages)
    cause = r"\((?:CUDARuntimeError|RuntimeError|ImportError): [^)]*\)"
    for message in messages:
        general = re.sub(r"sees \d+ GPU", "sees N GPU", re.sub(cause, "(...)", message))
        pattern = re.escape(general)
        assert any(re.fullmatch(pattern, q) for q in quoted), (
            f"README.md does not quote this message verbatim:\n{message}")
