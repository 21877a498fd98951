"""PyTorch's side of a benchmark, in a process of its own.

``import minivit`` makes glibc keep freed memory for reuse
(``minivit.memory``). That setting belongs to the whole process: run in the
same one, PyTorch would get it too (under glibc's defaults its training
steps page-fault thousands of times each: ``docs/performance.md``), and the
comparison would no longer
be with PyTorch as its users run it. So the twin lives in a fresh (spawned)
process with glibc's defaults, gets minivit's weights and batch over a pipe,
and times its own repetitions when asked, so the pipe's latency is never
timed. ``TorchProcess(threads).load(model, x, y)`` then ``.time("train", n,
warmup)``, ``.time("infer", ...)``, ``.logits()``; ``close()`` ends it.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_available() -> bool:
    """Whether ``import torch`` would find PyTorch, without importing it here."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


class TorchProcess:
    """A spawned process that holds the PyTorch twin and times it on request."""

    def __init__(self, threads: int):
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        # The child imports no minivit (the twin is built from plain arrays);
        # should anything import it there, it leaves malloc alone and the GPU free.
        child_env = {"MINIVIT_KEEP_FREED_MEMORY": "0", "MINIVIT_BACKEND": "numpy"}
        saved = {k: os.environ.get(k) for k in child_env}
        os.environ.update(child_env)
        try:
            self._proc = context.Process(target=_serve, args=(theirs, threads), daemon=True)
            self._proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        theirs.close()
        self.info = self._call("info")

    def _call(self, *message):
        self._conn.send(message)
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise RuntimeError("the PyTorch process ended unexpectedly") from None
        if not ok:
            raise RuntimeError(f"in the PyTorch process: {value}")
        return value

    def matmul_gflops(self, size: int, device: str) -> float:
        """GFLOP/s of a (size, size) float32 matmul, the median of 5."""
        return self._call("matmul", size, device)

    def load(self, model, x_host, y_host=None, device: str = "cpu", train: bool = True):
        """Build the twin from ``model``'s config and weights; with ``train``,
        an AdamW with minivit's decay groups too (see ``torch_steps``)."""
        from minivit import backend  # noqa: PLC0415
        state = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
        self._call("load", dict(model.config), state, x_host, y_host, device, train)

    def mode(self, train: bool):
        self._call("mode", train)

    def time(self, what: str, reps: int, warmup: int) -> list:
        """Seconds of each of ``reps`` runs of ``"train"`` (a step) or ``"infer"``."""
        return self._call("time", what, reps, warmup)

    def logits(self):
        """The twin's inference logits on the loaded batch, as NumPy."""
        return self._call("logits")

    def close(self):
        if self._proc.is_alive():
            try:
                self._conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()


def torch_steps(torch, twin, x, y, device, train=True):
    """The twin's (train_step or None, infer, sync): AdamW with minivit's
    decay groups (0.05 on matrices, none on biases, norms and embeddings)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def infer():
        with torch.no_grad():
            return twin(x)

    if not train:
        return None, infer, sync
    decay = [p for n, p in twin.named_parameters()
             if p.requires_grad and p.ndim > 1 and n not in ("cls_token", "pos_embed")]
    no_decay = [p for n, p in twin.named_parameters()
                if p.requires_grad and not (p.ndim > 1 and n not in ("cls_token", "pos_embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        opt.step()

    return train_step, infer, sync


def _serve(conn, threads):
    """The child: answer (command, *args) messages until "close"."""
    sys.path.insert(0, HERE)
    try:
        import numpy as np
        import torch
        torch.set_num_threads(threads)
        from common import time_it
        from torch_vit import from_state_dict
    except Exception as e:                                  # noqa: BLE001
        conn.send((False, f"{type(e).__name__}: {e}"))
        return
    twin = steps = None
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            return
        if command == "close":
            return
        try:
            if command == "info":
                try:
                    capability = torch.backends.cpu.get_cpu_capability()
                except AttributeError:
                    capability = None
                result = dict(version=torch.__version__, cpu_capability=capability,
                              cuda=torch.cuda.is_available())
            elif command == "matmul":
                size, device = args
                a = torch.from_numpy(np.random.default_rng(0).standard_normal(
                    (size, size)).astype(np.float32)).to(device)
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                times = time_it(lambda: a @ a, reps=5, warmup=2, sync=sync)
                result = 2 * size ** 3 / statistics.median(times) / 1e9
            elif command == "load":
                config, state, x_host, y_host, device, train = args
                twin = from_state_dict(config, state).to(device)
                x = torch.from_numpy(x_host).to(device)
                y = torch.from_numpy(y_host).to(device) if y_host is not None else None
                steps = torch_steps(torch, twin, x, y, device, train)
                result = None
            elif command == "mode":
                twin.train(args[0])
                result = None
            elif command == "time":
                what, reps, warmup = args
                fn = steps[0] if what == "train" else steps[1]
                result = time_it(fn, reps, warmup, steps[2])
            elif command == "logits":
                result = steps[1]().float().cpu().numpy()
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as e:                              # noqa: BLE001
            conn.send((False, f"{type(e).__name__}: {e}"))
            continue
        conn.send((True, result))
