"""A memory bundle's scorer in the server: frames from all streams, batched by size.

The scorer (anogan_inspect/memory.py) maps a frame to its anomaly map and frame score in
one program. ONNX Runtime runs its ONNX export (the memory an initializer) on the CPU, or
with its CUDA provider where installed; on a GPU without that provider the torch program
runs on the model's device. Frames wait in one queue; the thread takes what is waiting (up
to ``max_batch``) and scores the frames of each size in one pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from anogan_inspect.bundle import Bundle, load_memory_scorer
from anogan_inspect.onnxrt import make_session
from anogan_inspect.server.fastpath import FastStats, choose_backend
from anogan_inspect.server.worker import Job, Worker, resolve_all

log = logging.getLogger(__name__)


@dataclass
class MemoryScore:
    """One frame's memory score: the frame score and its map (at the scorer's input size)."""

    score: float
    anomaly_map: np.ndarray  # (h, w) float32
    seconds: float  # the batch's compute time


@dataclass(eq=False)
class _Item(Job):
    x: np.ndarray = field(default=None)


class MemoryPath(Worker):
    """Scores frames (C, h, w) in [-1, 1] with a memory bundle's scorer."""

    def __init__(self, bundle: Bundle, device: torch.device, max_batch: int = 8,
                 backend: str = "auto", intra_op_threads: int = 1):
        super().__init__(f"memory-{bundle.name}")
        self.max_batch, self.stats = max_batch, FastStats()
        self.device = torch.device(device)
        if choose_backend(backend, self.device) == "torch":
            self.program = load_memory_scorer(bundle, self.device)
            self.session = None
            self.backend = f"torch {self.device}"
        else:
            self.program = None
            self.session = make_session(bundle.memory_file("onnx"), str(self.device),
                                        intra_op_threads)
            self.backend = f"onnxruntime {self.session.get_providers()[0]}"

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue x (C, h, w) float32 in [-1, 1]; the future resolves to a MemoryScore."""
        return self._put(_Item(x=x)).future

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps (N, h, w), scores (N,)) for frames x (N, C, h, w) of one size."""
        if self.session is not None:
            anomaly_map, score = self.session.run(None, {"image": x})
            return anomaly_map, score
        with torch.no_grad():
            anomaly_map, score = self.program(torch.from_numpy(x).to(self.device))
        return anomaly_map.cpu().numpy(), score.cpu().numpy()

    def _take(self) -> list[_Item]:
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _work(self, items: list[_Item]) -> None:
        items = [i for i in items if not i.future.cancelled()]
        by_size: dict[tuple, list[_Item]] = {}
        for item in items:
            by_size.setdefault(item.x.shape, []).append(item)
        for group in by_size.values():
            started = time.perf_counter()
            try:
                maps, scores = self.score_batch(
                    np.stack([i.x for i in group]).astype(np.float32, copy=False))
            except Exception as err:  # this size's frames only: the other groups go on
                log.exception("%s: scoring %d frame(s) of %s failed", self.name, len(group),
                              group[0].x.shape)
                for item in group:
                    item.fail(err)
                continue
            seconds = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.frames += len(group)
            self.stats.max_batch = max(self.stats.max_batch, len(group))
            resolve_all(group, [MemoryScore(float(scores[k]), maps[k], seconds)
                                for k in range(len(group))])
