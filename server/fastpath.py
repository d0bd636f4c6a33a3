"""The fast path: ONNX Runtime E → G → f on micro-batches of frames from all streams.

s0 = (1 - λ)·Σ|x - G(E(x))| + λ·Σ|f(x) - f(G(E(x)))|, the search's loss at its starting
point z0 = E(x). Frames wait in one queue; the fast-path thread scores whatever is waiting
(up to ``max_batch``) in one pass per network.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from anogan_inspect.bundle import Bundle
from anogan_inspect.onnxrt import make_session


@dataclass
class FastScore:
    """Fast-path result for one frame."""

    score: float
    residual: float
    feature: float
    z0: np.ndarray
    reconstruction: np.ndarray  # G(E(x)), (C, H, W) in [-1, 1]
    seconds: float  # the batch's compute time


@dataclass
class FastStats:
    batches: int = 0
    frames: int = 0
    max_batch: int = 0


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class FastPath:
    """ONNX Runtime sessions for E, G and f, batching frames across streams on one thread."""

    def __init__(self, bundle: Bundle, lam: float, device: str = "cpu", max_batch: int = 64,
                 intra_op_threads: int = 1):
        if not bundle.has_encoder:
            raise ValueError(f"bundle {bundle.name} has no encoder: no fast path")
        self.lam, self.max_batch = lam, max_batch
        self.sessions = {name: make_session(bundle.file(name, "onnx"), device, intra_op_threads)
                         for name in ("encoder", "generator", "features")}
        self.providers = self.sessions["generator"].get_providers()
        self.stats = FastStats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"fast-{bundle.name}",
                                        daemon=True)

    def start(self) -> FastPath:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue x (C, H, W) float32 in [-1, 1]; the future resolves to a FastScore."""
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), loop)
        with self._cond:
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(scores, residuals, features, z0, reconstructions) for a batch x (N, C, H, W)."""
        run = lambda name, inp, value: self.sessions[name].run(None, {inp: value})[0]  # noqa: E731
        z0 = run("encoder", "image", x)
        reconstruction = run("generator", "z", z0)
        both = run("features", "image", np.concatenate([x, reconstruction]))
        n = x.shape[0]
        residual = np.abs(x - reconstruction).reshape(n, -1).sum(1, dtype=np.float64)
        feature = np.abs(both[:n] - both[n:]).reshape(n, -1).sum(1, dtype=np.float64)
        score = (1.0 - self.lam) * residual + self.lam * feature
        return score, residual, feature, z0, reconstruction

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue:
                    self._cond.wait()
                if self._stopping:
                    return
                items = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
            items = [i for i in items if not i.future.cancelled()]
            if not items:
                continue
            started = time.perf_counter()
            try:
                out = self.score_batch(np.stack([i.x for i in items]).astype(np.float32))
            except Exception as err:
                for item in items:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, err)
                continue
            seconds = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.frames += len(items)
            self.stats.max_batch = max(self.stats.max_batch, len(items))
            for k, item in enumerate(items):
                result = FastScore(float(out[0][k]), float(out[1][k]), float(out[2][k]),
                                   out[3][k], out[4][k], seconds)
                item.loop.call_soon_threadsafe(_set_result, item.future, result)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: Exception) -> None:
    if not future.done():
        future.set_exception(err)
