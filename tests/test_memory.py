"""minivit.memory: glibc keeps freed memory, so a forward reuses it without page faults."""

import os
import subprocess
import sys

import pytest

from minivit import memory

glibc = pytest.mark.skipif(memory.glibc_version() is None, reason="needs glibc (Linux)")

# a fresh process: the setting is made at import, and belongs to the process
FAULTS_PER_FORWARD = """
import resource, numpy as np, minivit
from minivit.vit import ViT
model = ViT(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=6,
            heads=4, mlp_dim=128, seed=0)
model.eval()
x = np.random.default_rng(0).standard_normal((256, 1, 28, 28)).astype(np.float32)
with minivit.no_grad():
    for _ in range(3):
        model.forward(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model.forward(x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(minivit.memory.is_kept(), (after - before) / 10)
"""


def _run(code, **env):
    # the NumPy kernels: the fused lane kernels' buffers make the heap grow to a
    # new peak now and then over some fifteen forwards while its layout
    # settles (docs/performance.md), which would blur what this measures
    full = dict(os.environ, MINIVIT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                MINIVIT_KERNELS="numpy")
    full.pop("MINIVIT_KEEP_FREED_MEMORY", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full)


@glibc
def test_import_keeps_freed_memory_and_a_forward_no_longer_faults():
    kept = _run(FAULTS_PER_FORWARD)
    assert kept.returncode == 0, kept.stderr
    is_kept, faults = kept.stdout.split()
    assert is_kept == "True"
    # all of a forward's memory comes back from the heap: a few faults at most
    assert float(faults) < 50
    default = _run(FAULTS_PER_FORWARD, MINIVIT_KEEP_FREED_MEMORY="0")
    assert default.returncode == 0, default.stderr
    is_kept, default_faults = default.stdout.split()
    assert is_kept == "False"
    # the control: with glibc's defaults the same forward faults on every array
    # larger than its dynamic mmap threshold (which the import's BLAS warm-up
    # raises to about a megabyte, hence a batch with arrays larger than that)
    assert float(default_faults) >= 50


@glibc
def test_keep_freed_memory_is_idempotent():
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True
    assert memory.is_kept()


def test_a_bad_setting_is_a_clear_error():
    out = _run("import minivit", MINIVIT_KEEP_FREED_MEMORY="maybe")
    assert out.returncode != 0
    assert "MINIVIT_KEEP_FREED_MEMORY must be 1" in out.stderr and "'maybe'" in out.stderr


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(memory, "_kept", False)
    monkeypatch.setattr(memory, "glibc_version", lambda: None)
    assert memory.keep_freed_memory() is False
    assert not memory.is_kept()


RSS_AFTER_RELEASE = """
import numpy as np, minivit
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
blocks = [np.ones(5 << 20, np.float32) for _ in range(10)]   # 10 x 20 MB, from the heap
del blocks
kept = rss_mb()
minivit.memory.release_freed_memory()
print(kept, rss_mb())
"""


@glibc
def test_release_gives_kept_memory_back():
    out = _run(RSS_AFTER_RELEASE)
    assert out.returncode == 0, out.stderr
    kept, released = map(float, out.stdout.split())
    assert kept - released > 150           # of the 200 MB freed and kept
