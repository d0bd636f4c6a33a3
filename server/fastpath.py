"""The fast path: ONNX Runtime E → G → f on micro-batches of frames from all streams.

s0 = (1 - λ)·Σ|x - G(E(x))| + λ·Σ|f(x) - f(G(E(x)))|, the search's loss at its starting
point z0 = E(x). Frames wait in one queue; the fast-path thread scores whatever is waiting
(up to ``max_batch``) in one pass per network.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from anogan_inspect.bundle import Bundle
from anogan_inspect.onnxrt import make_session
from anogan_inspect.server.worker import Job, Worker


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


@dataclass(eq=False)
class _Item(Job):
    x: np.ndarray = field(default=None)


class FastPath(Worker):
    """ONNX Runtime sessions for E, G and f, batching frames across streams on one thread."""

    def __init__(self, bundle: Bundle, lam: float, device: str = "cpu", max_batch: int = 64,
                 intra_op_threads: int = 1):
        if not bundle.has_encoder:
            raise ValueError(f"bundle {bundle.name} has no encoder: no fast path")
        super().__init__(f"fast-{bundle.name}")
        self.lam, self.max_batch = lam, max_batch
        self.sessions = {name: make_session(bundle.file(name, "onnx"), device, intra_op_threads)
                         for name in ("encoder", "generator", "features")}
        self.providers = self.sessions["generator"].get_providers()
        self.stats = FastStats()

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue x (C, H, W) float32 in [-1, 1]; the future resolves to a FastScore."""
        return self._put(_Item(x=x)).future

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

    def _take(self) -> list[_Item]:
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _work(self, items: list[_Item]) -> None:
        items = [i for i in items if not i.future.cancelled()]
        if not items:
            return
        started = time.perf_counter()
        out = self.score_batch(np.stack([i.x for i in items]).astype(np.float32))
        seconds = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.frames += len(items)
        self.stats.max_batch = max(self.stats.max_batch, len(items))
        for k, item in enumerate(items):
            item.resolve(FastScore(float(out[0][k]), float(out[1][k]), float(out[2][k]),
                                   out[3][k], out[4][k], seconds))
