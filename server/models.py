"""A served model: a verified bundle, its search engine and fast path, and the per-frame
pipeline (FAST, SEARCH, CASCADE) over them. Knows nothing of gRPC messages."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import (
    Bundle,
    BundleError,
    check_parity,
    load_torch_models,
    read_bundle,
    verify_checksums,
)
from anogan_inspect.pictures import residual_maps
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.server.engine import SearchEngine
from anogan_inspect.server.fastpath import FastPath, FastScore

log = logging.getLogger(__name__)
# The fast path passes a frame at once only when s0 is below the threshold by this relative
# margin, so ONNX-vs-torch rounding can never make the cascade disagree with the search.
CASCADE_MARGIN = 1e-4


def fast_clears(fast_score, threshold: float):
    """Exact cascade: the search from E(x) can only lower s0, so s0 ≤ threshold PASSes.

    Works on floats and arrays alike."""
    return fast_score <= threshold - CASCADE_MARGIN * abs(threshold)


class Mode(enum.Enum):
    FAST = "fast"
    SEARCH = "search"
    CASCADE = "cascade"


class Stage(enum.Enum):
    FAST = "fast"
    SEARCH = "search"


@dataclass
class EngineOptions:
    """Server-side search and batching options (the bundle supplies the defaults)."""

    device: str = "cpu"
    max_batch: int = 64  # slots in the search engine
    fast_max_batch: int = 64
    search_steps: int | None = None
    search_lr: float | None = None
    patience: int | None = None
    ort_threads: int = 1  # 1 beat ORT's automatic pool on 2 cores (docs/performance.md)
    parity_tolerance: float = 1e-3
    seed: int = 0


@dataclass
class Outcome:
    """What a frame's scoring produced (final or provisional)."""

    final: bool
    stage: Stage
    mode: Mode
    score: float
    residual: float
    feature: float
    steps: int
    fail: bool
    queue_seconds: float
    compute_seconds: float
    residual_map: np.ndarray | None = None  # (H, W) float32 in [0, 1]


class ServedModel:
    """One bundle, resident: torch programs for the search, ONNX Runtime for the fast path."""

    def __init__(self, bundle: Bundle, options: EngineOptions):
        self.bundle, self.options = bundle, options
        self.name, self.device = bundle.name, torch.device(options.device)
        self.threshold = bundle.threshold
        base = bundle.search_config
        overrides = {"steps": options.search_steps, "lr": options.search_lr,
                     "patience": options.patience}
        self.search_config = dataclasses.replace(
            base, **{k: v for k, v in overrides.items() if v is not None})
        if self.device.type == "cuda":
            # TF32 convolutions (cuDNN's default) round to ~1e-3: the search's scores would
            # no longer match the fast path's within CASCADE_MARGIN, and the cascade would not
            # be exact. fp32 it is (TF32 would be 3.5x faster on an H200: docs/performance.md).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.models = load_torch_models(bundle, self.device)
        self.engine = SearchEngine(self.models, self.search_config, bundle.image_shape,
                                   options.max_batch, self.device, bundle.name)
        self.fast = (FastPath(bundle, self.search_config.lam, options.device,
                              options.fast_max_batch, options.ort_threads)
                     if bundle.has_encoder else None)
        self.modes = [Mode.FAST, Mode.SEARCH, Mode.CASCADE] if self.fast else [Mode.SEARCH]
        self.default_mode = Mode.CASCADE if self.fast else Mode.SEARCH
        self._random = torch.Generator().manual_seed(options.seed)

    def start(self) -> ServedModel:
        self.engine.start()
        if self.fast:
            self.fast.start()
        return self

    def stop(self) -> None:
        self.engine.stop()
        if self.fast:
            self.fast.stop()

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(C, H, W) in [0, 1], any size → the model's (C, S, S) in [-1, 1]."""
        return to_model_input(image[None], self.bundle.image_size, self.bundle.channels)[0]

    async def inspect(self, x: torch.Tensor, mode: Mode, steps: int | None = None,
                      want_reconstruction: bool = False,
                      on_provisional: Callable[[Outcome], None] | None = None) -> Outcome:
        """Score one preprocessed frame; cancelling the caller frees its slot."""
        if mode not in self.modes:
            raise ValueError(f"model {self.name} does not serve {mode.name} "
                             f"(it has no encoder; modes: {[m.name for m in self.modes]})")
        steps = steps or self.search_config.steps
        arrived = time.perf_counter()
        fast: FastScore | None = None
        z0: torch.Tensor | None = None  # None: the engine starts from E(x) (torch, batched)
        if mode is not Mode.SEARCH:
            fast = await self.fast.submit(x.numpy())
            outcome = self._fast_outcome(fast, mode, arrived)
            if mode is Mode.FAST or fast_clears(fast.score, self.threshold):
                return _with_residual_map(
                    outcome, x, fast.reconstruction if want_reconstruction else None)
            if on_provisional is not None:
                on_provisional(dataclasses.replace(outcome, final=False))
            z0 = torch.as_tensor(fast.z0)
        elif self.models.encoder is None:
            z0 = torch.randn(self.bundle.latent_dim, generator=self._random)
        request = self.engine.submit(x, z0, steps, want_reconstruction)
        try:
            searched = await request.future
        except asyncio.CancelledError:
            self.engine.cancel(request)
            raise
        result = searched.result
        fast_seconds = fast.seconds if fast else 0.0
        outcome = Outcome(True, Stage.SEARCH, mode, result.score, result.residual,
                          result.feature, result.steps, result.score > self.threshold,
                          request.enqueued - arrived - fast_seconds + searched.queue_seconds,
                          fast_seconds + searched.compute_seconds)
        return _with_residual_map(outcome, x, searched.reconstruction)

    def _fast_outcome(self, fast: FastScore, mode: Mode, arrived: float) -> Outcome:
        total = time.perf_counter() - arrived
        return Outcome(True, Stage.FAST, mode, fast.score, fast.residual, fast.feature, 0,
                       fast.score > self.threshold, max(0.0, total - fast.seconds), fast.seconds)

    def stats(self) -> dict:
        engine, fast = self.engine.stats, self.fast.stats if self.fast else None
        return {
            "search_batches": engine.batches, "search_slot_steps": engine.slot_steps,
            "max_search_batch": engine.max_batch, "active_slots": self.engine.table.n,
            "slot_capacity": self.engine.table.capacity, "queued_searches": self.engine.queued,
            "searches_completed": engine.completed, "searches_cancelled": engine.cancelled,
            "fast_batches": fast.batches if fast else 0, "fast_frames": fast.frames if fast else 0,
            "max_fast_batch": fast.max_batch if fast else 0,
        }


def _with_residual_map(outcome: Outcome, x: torch.Tensor,
                       reconstruction: np.ndarray | None) -> Outcome:
    """The outcome with the (H, W) map of |x - G(z)|, if asked for (model-sized: computed
    inline, cheaper than a hop to a worker thread)."""
    if reconstruction is None:
        return outcome
    residual_map = residual_maps(x[None], torch.as_tensor(reconstruction)[None])[0, 0].numpy()
    return dataclasses.replace(outcome, residual_map=residual_map)


def load_model(path: Path, options: EngineOptions, name: str | None = None) -> ServedModel:
    """Read and verify a bundle (checksums, ONNX-vs-torch parity), then make it resident."""
    bundle = read_bundle(path)
    if name:
        bundle.manifest["name"] = name
    verify_checksums(bundle)
    model = ServedModel(bundle, options)
    errors = check_parity(bundle, model.models, options.parity_tolerance)
    log.info("loaded model %s version %s from %s on %s (modes %s; parity %s; fast path %s)",
             model.name, bundle.version, path, model.device,
             ",".join(m.name for m in model.modes),
             ", ".join(f"{k} {v:.1e}" for k, v in errors.items()),
             model.fast.providers if model.fast else "none: no encoder")
    return model


__all__ = ["BundleError", "EngineOptions", "Mode", "Outcome", "ServedModel", "Stage",
           "load_model"]
