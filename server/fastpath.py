"""The fast path: E → G → f on micro-batches of frames from all streams.

s0 = (1 - λ)·Σ|x - G(E(x))| + λ·Σ|f(x) - f(G(E(x)))|, the search's loss at its starting
point z0 = E(x). Frames wait in one queue; the fast-path thread scores whatever is waiting
(up to ``max_batch``) in one pass per network. Two backends do the scoring:

- :class:`OrtFastPath`: ONNX Runtime sessions (the CPU path; the CUDA provider where the
  installed onnxruntime has it);
- :class:`TorchFastPath`: the bundle's torch programs on the model's device, on a CUDA
  stream of its own (the GPU path where onnxruntime has no CUDA provider).

Either way the server measures, at load, how far the served scores stray from the torch
scores the search starts from (the cascade's exactness check).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from anogan_inspect.bundle import MAX_BATCH, Bundle
from anogan_inspect.onnxrt import make_session
from anogan_inspect.search import ScoringModels
from anogan_inspect.server.options import BACKENDS
from anogan_inspect.server.worker import Job, Worker, resolve_all


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
    """Batches frames across streams on one thread; subclasses score a batch."""

    backend = ""  # what scores, e.g. "onnxruntime CPUExecutionProvider", "torch cuda:0"

    def __init__(self, name: str, lam: float, max_batch: int):
        super().__init__(f"fast-{name}")
        self.lam, self.max_batch = lam, max_batch
        self.stats = FastStats()

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue x (C, H, W) float32 in [-1, 1]; the future resolves to a FastScore."""
        return self._put(_Item(x=x)).future

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(scores, residuals, features, z0, reconstructions) for a batch x (N, C, H, W)."""
        raise NotImplementedError

    def _scores(self, residual, feature, z0, reconstruction) -> tuple[np.ndarray, ...]:
        """score_batch's tuple: s0 = (1 - λ)·residual + λ·feature, with its parts."""
        score = (1.0 - self.lam) * residual + self.lam * feature
        return score, residual, feature, z0, reconstruction

    def _take(self) -> list[_Item]:
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _work(self, items: list[_Item]) -> None:
        items = [i for i in items if not i.future.cancelled()]
        if not items:
            return
        started = time.perf_counter()
        out = self.score_batch(np.stack([i.x for i in items]).astype(np.float32, copy=False))
        seconds = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.frames += len(items)
        self.stats.max_batch = max(self.stats.max_batch, len(items))
        scores, residuals, features = (out[i].tolist() for i in range(3))
        resolve_all(items, [FastScore(scores[k], residuals[k], features[k], out[3][k],
                                      out[4][k], seconds) for k in range(len(items))])


class OrtFastPath(FastPath):
    """ONNX Runtime sessions for E, G and f."""

    def __init__(self, bundle: Bundle, lam: float, device: str = "cpu", max_batch: int = 64,
                 intra_op_threads: int = 1):
        if not bundle.has_encoder:
            raise ValueError(f"bundle {bundle.name} has no encoder: no fast path")
        super().__init__(bundle.name, lam, max_batch)
        self.sessions = {name: make_session(bundle.file(name, "onnx"), device, intra_op_threads)
                         for name in ("encoder", "generator", "features")}
        self.providers = self.sessions["generator"].get_providers()
        self.backend = f"onnxruntime {self.providers[0]}"

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        run = lambda name, inp, value: self.sessions[name].run(None, {inp: value})[0]  # noqa: E731
        z0 = run("encoder", "image", x)
        reconstruction = run("generator", "z", z0)
        both = run("features", "image", np.concatenate([x, reconstruction]))
        n = x.shape[0]
        residual = np.abs(x - reconstruction).reshape(n, -1).sum(1, dtype=np.float64)
        feature = np.abs(both[:n] - both[n:]).reshape(n, -1).sum(1, dtype=np.float64)
        return self._scores(residual, feature, z0, reconstruction)


class TorchFastPath(FastPath):
    """The bundle's torch programs (shared with the search engine) on the model's device,
    in float32; on CUDA on a stream of its own, so fast-path batches and search steps
    overlap on the card."""

    def __init__(self, name: str, models: ScoringModels, lam: float, device: torch.device,
                 max_batch: int = 64):
        if models.encoder is None:
            raise ValueError(f"model {name} has no encoder: no fast path")
        super().__init__(name, lam, max_batch)
        self.models, self.device = models, torch.device(device)
        self.backend = f"torch {self.device}"
        self._stream = (torch.cuda.Stream(self.device) if self.device.type == "cuda"
                        else None)

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        stream = (torch.cuda.stream(self._stream) if self._stream is not None
                  else contextlib.nullcontext())
        models, n = self.models, x.shape[0]
        with torch.no_grad(), stream:
            xt = torch.from_numpy(x).to(self.device, non_blocking=True)
            z0 = models.encoder(xt)
            reconstruction = models.generator(z0)
            if 2 * n <= MAX_BATCH:  # one pass over both
                both = models.features(torch.cat([xt, reconstruction])).flatten(1)
                real, fake = both[:n], both[n:]
            else:  # within the exported programs' batch bound
                real = models.features(xt).flatten(1)
                fake = models.features(reconstruction).flatten(1)
            residual = (xt - reconstruction).abs().flatten(1).sum(1)
            feature = (real - fake).abs().sum(1)
            out = torch.stack([residual, feature], 1).double().cpu().numpy()
            z0, reconstruction = z0.cpu().numpy(), reconstruction.cpu().numpy()
        return self._scores(out[:, 0], out[:, 1], z0, reconstruction)


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(requested: str, device: torch.device) -> str:
    """"onnx" or "torch" for a requested backend: auto is ONNX Runtime on the CPU and
    where its CUDA provider is installed, else the torch programs on the GPU."""
    if requested not in BACKENDS:
        raise ValueError(f"fast-path backend must be one of {BACKENDS}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda" and not cuda_provider_available():
        return "torch"
    return "onnx"
