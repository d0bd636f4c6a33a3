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
    MAX_BATCH,
    Bundle,
    BundleError,
    check_memory_parity,
    check_parity,
    check_program_shapes,
    check_shapes,
    load_memory_scorer,
    load_torch_models,
    read_bundle,
    verify_checksums,
)
from anogan_inspect.memory import CHUNK, frames_input
from anogan_inspect.pictures import residual_maps
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import (
    CASCADE_MARGIN,
    GraphCaptureError,
    ScoringModels,
    fast_clears,
    fast_score,
)
from anogan_inspect.server.engine import PRECISIONS, SearchEngine, size_slots
from anogan_inspect.server.fastpath import (
    FastPath,
    FastScore,
    OrtFastPath,
    TorchFastPath,
    choose_backend,
)
from anogan_inspect.server.memorypath import MemoryPath
from anogan_inspect.server.monitoring import Drift
from anogan_inspect.server.options import EngineOptions  # noqa: F401 (re-exported)
from anogan_inspect.tiling import (
    Region,
    cut_tiles,
    find_regions,
    resize_map,
    scale_frame,
    smooth,
    stitch,
    tiles_to_search,
)

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    FAST = "fast"
    SEARCH = "search"
    CASCADE = "cascade"


class Stage(enum.Enum):
    FAST = "fast"
    SEARCH = "search"


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
    threshold: float = 0.0  # the threshold that judged it: the fast path's in MODE_FAST
    threshold_steps: int = 0  # the search budget it was calibrated for (0: the fast path's)
    # Tiled models: the frame-sized anomaly map and its regions, and tile counts.
    anomaly_map: np.ndarray | None = None
    regions: list[Region] | None = None
    tiles: int = 0
    tiles_searched: int = 0
    # Memory models in MODE_SEARCH: the frame with the tiles under its regions replaced by
    # G(z) from the latent search, (H, W) or (H, W, C) in [0, 1].
    reconstruction: np.ndarray | None = None


# Memory models in MODE_SEARCH: the most tiles under a failing frame's regions searched.
MAX_EXPLAINED_TILES = 64


@dataclass
class MemoryFrame:
    """A frame for a memory model: the scorer's input, and the tiles the latent search
    may run on under its regions."""

    image: torch.Tensor  # (C, h, w) in [-1, 1], at the tiling's scale
    frame_size: tuple[int, int]
    stride: int = 1  # the scorer's pixels between feature locations

    @property
    def scaled_size(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])

    @property
    def held_bytes(self) -> int:
        """What scoring it holds: its input, and the scorer's distances to one chunk of
        the memory for every feature location (counted by --max-bytes-in-flight)."""
        h, w = self.scaled_size
        locations = -(-h // self.stride) * -(-w // self.stride)
        return self.image.nelement() * self.image.element_size() + locations * CHUNK * 4


@dataclass
class TiledFrame:
    """A frame cut into a tiled model's tiles."""

    tiles: torch.Tensor  # (T, C, P, P) in [-1, 1]
    origins: list[tuple[int, int]]
    scaled_size: tuple[int, int]
    frame_size: tuple[int, int]


@dataclass
class Lane:
    """One device's share of a served model: its torch programs, search engine and fast
    path. Frames go to the least loaded lane."""

    device: torch.device
    models: ScoringModels
    engine: SearchEngine
    fast: FastPath | None

    @property
    def load(self) -> int:
        """Frames queued or in progress on this lane."""
        return (self.engine.queued + self.engine.table.n + self.engine.table.waiting
                + (self.fast.queued if self.fast else 0))


def parse_devices(text: str) -> list[torch.device]:
    """'cpu', 'cuda', 'cuda:1' or several, comma-separated ('cuda:0,cuda:1'), or 'auto'
    (cuda when present, else cpu); ValueError for a GPU this machine does not have."""
    if text.strip() == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    devices = [torch.device(part.strip()) for part in text.split(",") if part.strip()]
    if not devices:
        raise ValueError(f"no device in {text!r}")
    for device in devices:
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if (device.index or 0) >= count:
                raise ValueError(f"device {device}: this machine has {count} CUDA device(s)")
    return devices


class ServedModel:
    """One bundle, resident: torch programs for the search, ONNX Runtime (or the torch
    programs) for the fast path; one lane of them per device."""

    def __init__(self, bundle: Bundle, options: EngineOptions):
        self.bundle, self.options = bundle, options
        self.devices = parse_devices(options.device)
        self.name, self.device = bundle.name, self.devices[0]
        self.threshold = bundle.threshold  # the search's: SEARCH and CASCADE decide with it
        self.thresholds = bundle.thresholds_by_steps  # search budget → its threshold
        self.fast_threshold = bundle.fast_threshold  # MODE_FAST's own
        self.target_fpr = float(bundle.manifest["threshold"].get("target_fpr", 0.0))
        self.tiling, self.pixel_threshold = bundle.tiling, bundle.pixel_threshold
        # A memory model: its scorer decides every verdict (docs/textures.md); the search,
        # which only shows G(z) under a failing frame's regions, has no budget to judge.
        self.memory = bundle.memory
        base = bundle.search_config
        overrides = {"steps": options.search_steps, "lr": options.search_lr,
                     "patience": options.patience}
        self.search_config = dataclasses.replace(
            base, **{k: v for k, v in overrides.items() if v is not None})
        self.search_overridden = self.search_config != base
        if self.search_config.steps > options.max_search_steps:
            raise ValueError(f"--steps {self.search_config.steps} is above --max-search-steps "
                             f"{options.max_search_steps}")
        self.search_threshold(self.search_config.steps)  # the server's own budget: or refuse
        if self.search_overridden and self.memory is None:
            log.warning("model %s: this server searches with %s, but its threshold %.2f was "
                        "calibrated with %s: SEARCH and CASCADE verdicts use a threshold "
                        "calibrated for another search", bundle.name,
                        _search_text(self.search_config), bundle.threshold, _search_text(base))
        if any(device.type == "cuda" for device in self.devices):
            # TF32 convolutions (cuDNN's default) round to ~1e-3: the search's scores would
            # no longer match the fast path's within CASCADE_MARGIN, and the cascade would not
            # be exact. fp32 it is (TF32 would be 3.5x faster on an H200: docs/performance.md).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if options.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, "
                             f"got {options.precision!r}")
        self.precision = options.precision
        self.lanes = [self._lane(device, i) for i, device in enumerate(self.devices)]
        self._next_lane = 0
        self.modes = [Mode.FAST, Mode.SEARCH, Mode.CASCADE] if self.fast else [Mode.SEARCH]
        self.default_mode = Mode.CASCADE if self.fast else Mode.SEARCH
        self.memory_path: MemoryPath | None = None
        if self.memory is not None:
            _within_programs("--memory-max-batch", options.memory_max_batch)
            self.memory_path = MemoryPath(bundle, self.device, options.memory_max_batch,
                                          options.fast_backend, options.memory_threads)
            self.threshold = self.fast_threshold = float(self.memory["image_threshold"])
            self.pixel_threshold = float(self.memory["pixel_threshold"])
            self.thresholds = {self.search_config.steps: self.threshold}
            self.modes, self.default_mode = [Mode.FAST, Mode.SEARCH, Mode.CASCADE], Mode.CASCADE
        self._random = torch.Generator().manual_seed(options.seed)
        self.score_gap = 0.0  # measured by check_exactness() at load
        self.drift = self._drift_monitors()
        self.streams = 0  # calls holding this version (a replaced one stops at 0)
        self.fingerprint: str | None = None  # its manifest's sha256, from --models-dir

    def _drift_monitors(self) -> dict[str, Drift]:
        """Live scores against the bundle's held-out ones (server/monitoring.py): "fast"
        (every fast-path score of a whole frame) and "search_B" (SEARCH-mode scores at each
        calibrated budget B). Tiled models have none yet: their held-out scores are whole
        frames', their fast path scores tiles."""
        if self.tiling is not None:
            return {}
        manifest = self.bundle.manifest
        entries = {f"search_{steps}": entry
                   for steps, entry in (manifest.get("thresholds") or {}).items()}
        entries[f"search_{self.bundle.search_config.steps}"] = manifest["threshold"]
        fast = manifest.get("fast_threshold")
        if self.fast and fast and not fast.get("shared_with_search"):
            entries["fast"] = fast
        monitors = {kind: Drift.from_calibration(entry) for kind, entry in entries.items()}
        return {kind: drift for kind, drift in sorted(monitors.items()) if drift is not None}

    def _lane(self, device: torch.device, index: int) -> Lane:
        """The torch programs on `device`, an engine with slots sized for it, a fast path."""
        bundle, options = self.bundle, self.options
        models = load_torch_models(bundle, device)
        autocast = PRECISIONS[options.precision]
        slots = options.max_batch
        _within_programs("--max-batch", slots)
        if slots is None and device.type == "cuda":
            slots, _ = size_slots(models, self.search_config, bundle.image_shape, device,
                                  autocast, cuda_graphs=options.cuda_graphs)
        name = bundle.name if len(self.devices) == 1 else f"{bundle.name}-{index}"
        try:
            engine = SearchEngine(models, self.search_config, bundle.image_shape, slots or 64,
                                  device, name, autocast, options.cuda_graphs)
        except GraphCaptureError as err:
            raise ValueError(f"{err}; serve without --cuda-graphs") from err
        fast = self._fast_path(device, models, name) if bundle.has_encoder else None
        return Lane(device, models, engine, fast)

    def _fast_path(self, device: torch.device, models: ScoringModels, name: str) -> FastPath:
        options, lam = self.options, self.search_config.lam
        fast_batch = options.fast_max_batch or (1024 if device.type == "cuda" else 64)
        if choose_backend(options.fast_backend, device) == "torch":
            _within_programs("--fast-max-batch", fast_batch)  # ONNX Runtime has no bound
            return TorchFastPath(name, models, lam, device, fast_batch)
        return OrtFastPath(self.bundle, lam, str(device), fast_batch, options.ort_threads)

    def _pick_lane(self) -> Lane:
        """The least loaded lane (ties taken in turn)."""
        if len(self.lanes) == 1:
            return self.lanes[0]
        self._next_lane = (self._next_lane + 1) % len(self.lanes)
        order = self.lanes[self._next_lane:] + self.lanes[:self._next_lane]
        return min(order, key=lambda lane: lane.load)

    # The first lane's, for the load-time checks and what GetModel reports.
    @property
    def models(self) -> ScoringModels:
        return self.lanes[0].models

    @property
    def engine(self) -> SearchEngine:
        return self.lanes[0].engine

    @property
    def fast(self) -> FastPath | None:
        return self.lanes[0].fast

    @property
    def slots(self) -> int:
        """Search slots over every device."""
        return sum(lane.engine.table.capacity for lane in self.lanes)

    @property
    def cuda_graphs(self) -> bool:
        """Whether every lane's search steps replay captured CUDA graphs."""
        return all(lane.engine.table.graph_buckets for lane in self.lanes)

    @property
    def device_text(self) -> str:
        """The devices, comma-separated ("cuda:0,cuda:1")."""
        return ",".join(str(lane.device) for lane in self.lanes)

    def check_exactness(self, samples: int = 64) -> float:
        """The worst relative gap between the fast path's scores, as served (this session,
        provider and options), and the torch scores the search starts from, on sample
        images; the cascade is exact only while it stays under CASCADE_MARGIN. Without it,
        CASCADE is not served (or, with require_exact_cascade, the model is refused)."""
        self.score_gap = 0.0
        if self.fast is None or self.memory is not None:  # a memory model: no cascade gap
            return self.score_gap
        gen = torch.Generator().manual_seed(self.options.seed)
        x = torch.rand(samples, *self.bundle.image_shape, generator=gen) * 2 - 1
        for lane in self.lanes:  # each device's fast path against its own search
            served = lane.fast.score_batch(x.numpy())[0]
            with torch.no_grad():
                reference, _ = fast_score(lane.models, x.to(lane.device),
                                          self.search_config.lam)
            gap = float(np.max(np.abs(served - reference) / np.abs(reference)))
            self.score_gap = max(self.score_gap, gap)
        if self.score_gap >= CASCADE_MARGIN:
            message = (f"model {self.name}: the fast path's scores as served differ from the "
                       f"torch scores by up to {self.score_gap:.1e} (relative), not under the "
                       f"cascade's margin {CASCADE_MARGIN:.0e}")
            if self.options.require_exact_cascade:
                raise BundleError(f"{message} (--require-exact-cascade)")
            log.warning("%s: CASCADE is not served (FAST and SEARCH are)", message)
            self.modes = [m for m in self.modes if m is not Mode.CASCADE]
            self.default_mode = Mode.SEARCH
        return self.score_gap

    def start(self) -> ServedModel:
        for lane in self.lanes:
            lane.engine.start()
            if lane.fast:
                lane.fast.start()
        if self.memory_path:
            self.memory_path.start()
        return self

    def stop(self) -> None:
        for lane in self.lanes:
            lane.engine.stop()
            if lane.fast:
                lane.fast.stop()
        if self.memory_path:
            self.memory_path.stop()

    def preprocess(self, image: np.ndarray) -> torch.Tensor | TiledFrame:
        """(C, H, W) in [0, 1], any size → the model's (C, S, S) in [-1, 1], or, for a
        tiled model, the frame's tiles (ValueError when it is smaller than one tile)."""
        if self.tiling is None:
            return to_model_input(image[None], self.bundle.image_size, self.bundle.channels)[0]
        tiles = self.tiling.count(image.shape[-2], image.shape[-1])
        if tiles > self.options.max_tiles:
            raise ValueError(f"a {image.shape[-2]}×{image.shape[-1]} frame is {tiles} tiles of "
                             f"{self.tiling.patch}×{self.tiling.patch}; the limit is "
                             f"{self.options.max_tiles} (--max-tiles)")
        if self.memory is not None:
            return MemoryFrame(frames_input(image[None], self.tiling.scale,
                                            self.bundle.channels)[0],
                               tuple(image.shape[-2:]), int(self.memory["stride"]))
        scaled = scale_frame(torch.as_tensor(image, dtype=torch.float32), self.tiling)
        tiles, origins = cut_tiles(scaled, self.tiling)
        return TiledFrame(to_model_input(tiles, self.tiling.patch, self.bundle.channels),
                          origins, tuple(scaled.shape[-2:]), tuple(image.shape[-2:]))

    def preprocess_many(self, images: list) -> list:
        """:meth:`preprocess` for several frames: whole-frame models resize the frames of
        one size in one call (the same pixels as one by one). An item that is an exception
        (a frame that could not be decoded) stays one, as does a frame's own ValueError."""
        out: list = list(images)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if isinstance(image, Exception):
                continue
            if self.tiling is not None:
                out[i] = _or_error(self.preprocess, image)
            else:
                groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            try:
                x = to_model_input(np.stack([images[i] for i in indices]),
                                   self.bundle.image_size, self.bundle.channels)
            except ValueError:  # one at a time, so each frame gets its own error
                for i in indices:
                    out[i] = _or_error(self.preprocess, images[i])
                continue
            for i, frame in zip(indices, x):
                out[i] = frame
        return out

    async def inspect(self, x: torch.Tensor | TiledFrame, mode: Mode, steps: int | None = None,
                      want_reconstruction: bool = False,
                      on_provisional: Callable[[Outcome], None] | None = None,
                      owner=None) -> Outcome:
        """Score one preprocessed frame; cancelling the caller frees its slot. `owner` (the
        stream): search slots are shared out among owners in turn."""
        if mode not in self.modes:
            raise ValueError(f"model {self.name} does not serve {mode.name} "
                             f"(it has no encoder; modes: {[m.name for m in self.modes]})")
        steps = steps or self.search_config.steps
        if isinstance(x, MemoryFrame):
            return await self._inspect_memory(x, mode, steps, want_reconstruction, owner)
        # The calibrated budget whose threshold judges this frame (0: the fast path's own).
        judged_steps = self._budget(steps) if mode is not Mode.FAST else 0
        threshold = self.thresholds[judged_steps] if judged_steps else self.threshold
        if isinstance(x, TiledFrame):
            return await self._inspect_tiles(x, mode, steps, threshold, judged_steps,
                                             want_reconstruction, on_provisional, owner)
        arrived = time.perf_counter()
        lane = self._pick_lane()
        fast: FastScore | None = None
        z0: torch.Tensor | None = None  # None: the engine starts from E(x) (torch, batched)
        if mode is not Mode.SEARCH:
            fast = await lane.fast.submit(x.numpy())
            if "fast" in self.drift:
                self.drift["fast"].add(fast.score)
            outcome = dataclasses.replace(self._fast_outcome(fast, mode, arrived, threshold),
                                          threshold_steps=judged_steps)
            if mode is Mode.FAST or fast_clears(fast.score, threshold):
                return _with_residual_map(
                    outcome, x, fast.reconstruction if want_reconstruction else None)
            if on_provisional is not None:
                on_provisional(dataclasses.replace(outcome, final=False))
            z0 = torch.as_tensor(fast.z0)
        elif lane.models.encoder is None:
            z0 = torch.randn(self.bundle.latent_dim, generator=self._random)
        request = lane.engine.submit(x, z0, steps, want_reconstruction, owner)
        try:
            searched = await request.future
        except asyncio.CancelledError:
            lane.engine.cancel(request)
            raise
        result = searched.result
        fast_seconds = fast.seconds if fast else 0.0
        if mode is Mode.SEARCH and (drift := self.drift.get(f"search_{judged_steps}")) \
                and steps == judged_steps:
            drift.add(result.score)
        outcome = Outcome(True, Stage.SEARCH, mode, result.score, result.residual,
                          result.feature, result.steps, result.score > threshold,
                          request.enqueued - arrived - fast_seconds + searched.queue_seconds,
                          fast_seconds + searched.compute_seconds, threshold=threshold,
                          threshold_steps=judged_steps)
        return _with_residual_map(outcome, x, searched.reconstruction)

    async def _inspect_tiles(self, frame: TiledFrame, mode: Mode, steps: int, threshold: float,
                             judged_steps: int, want_map: bool,
                             on_provisional: Callable[[Outcome], None] | None,
                             owner=None) -> Outcome:
        """Every tile through the fast path (batched with all other frames' tiles), the
        suspect ones through the engine; the frame's score aggregates the tiles'."""
        arrived = time.perf_counter()
        lane = self._pick_lane()  # a frame's tiles stay on one device
        n = len(frame.tiles)
        score, residual, feature = np.zeros(n), np.zeros(n), np.zeros(n)
        reconstruction: list[np.ndarray | None] = [None] * n
        z0: list[torch.Tensor | None] = [None] * n
        fast_seconds = 0.0
        if mode is Mode.SEARCH:
            suspect = np.ones(n, dtype=bool)
            if lane.models.encoder is None:
                z0 = [torch.randn(self.bundle.latent_dim, generator=self._random)
                      for _ in range(n)]
        else:
            fast = await asyncio.gather(*(lane.fast.submit(t.numpy()) for t in frame.tiles))
            for i, tile in enumerate(fast):
                score[i], residual[i], feature[i] = tile.score, tile.residual, tile.feature
                reconstruction[i], z0[i] = tile.reconstruction, torch.as_tensor(tile.z0)
            fast_seconds = sum({t.seconds for t in fast})  # one value per fast-path batch
            suspect = (np.zeros(n, dtype=bool) if mode is Mode.FAST
                       else tiles_to_search(self.tiling, score, threshold))
            if suspect.any() and on_provisional is not None:
                on_provisional(await self._tiled_outcome(
                    frame, Stage.FAST, mode, score, residual, feature, 0, 0, reconstruction,
                    False, arrived, fast_seconds, final=False, threshold=threshold,
                    judged_steps=judged_steps))
        searched = np.flatnonzero(suspect)
        if not len(searched):
            return await self._tiled_outcome(frame, Stage.FAST, mode, score, residual, feature,
                                             0, 0, reconstruction, want_map, arrived,
                                             fast_seconds, threshold=threshold,
                                             judged_steps=judged_steps)
        requests = [lane.engine.submit(frame.tiles[i], z0[i], steps, want_map, owner)
                    for i in searched]
        try:
            outcomes = await asyncio.gather(*(r.future for r in requests))
        except BaseException:  # cancelled, or the engine failed: free every slot
            for request in requests:
                lane.engine.cancel(request)
            raise
        for i, done in zip(searched, outcomes):
            result = done.result
            score[i], residual[i], feature[i] = result.score, result.residual, result.feature
            reconstruction[i] = done.reconstruction
        steps_run = max(done.result.steps for done in outcomes)
        return await self._tiled_outcome(frame, Stage.SEARCH, mode, score, residual, feature,
                                         steps_run, len(searched), reconstruction, want_map,
                                         arrived, fast_seconds, threshold=threshold,
                                         judged_steps=judged_steps)

    async def _inspect_memory(self, frame: MemoryFrame, mode: Mode, steps: int, want_map: bool,
                              owner=None) -> Outcome:
        """The memory scorer decides the verdict in every mode: FAIL when the frame score
        (the maximum of its map) is above the image threshold. With the map asked for, the
        map at the frame's size and its regions come back; in MODE_SEARCH a failing frame's
        regions also get the latent search on the tiles under them, and the result carries
        G(z) pasted into the frame there: what the part should look like."""
        arrived = time.perf_counter()
        scored = await self.memory_path.submit(frame.image.numpy())
        threshold = self.threshold
        fail = scored.score > threshold
        outcome = Outcome(True, Stage.FAST, mode, scored.score, 0.0, 0.0, 0, fail,
                          max(0.0, time.perf_counter() - arrived - scored.seconds),
                          scored.seconds, threshold=threshold)
        if not want_map:
            return outcome
        anomaly_map, regions = await asyncio.to_thread(self._memory_regions, frame,
                                                       scored.anomaly_map)
        outcome = dataclasses.replace(outcome, anomaly_map=anomaly_map, regions=regions)
        if mode is not Mode.SEARCH or not fail or not regions:
            return outcome
        try:
            return await self._explain_regions(frame, outcome, steps, owner)
        except asyncio.CancelledError:
            raise
        except Exception:  # the verdict stands without its picture
            log.exception("model %s: the latent search under a frame's regions failed",
                          self.name)
            return outcome

    def _memory_regions(self, frame: MemoryFrame, anomaly_map: np.ndarray
                        ) -> tuple[np.ndarray, list[Region]]:
        """The map at the frame's size and its regions. Resizing can lower a failing
        frame's peak under the pixel threshold: its peak still makes a region."""
        peak = float(anomaly_map.max())
        anomaly_map = resize_map(anomaly_map, frame.frame_size)
        threshold = self.pixel_threshold
        if peak > self.threshold:
            threshold = min(threshold, float(anomaly_map.max()) * (1 - 1e-6))
        return anomaly_map, find_regions(anomaly_map, threshold)

    def _tiles_under(self, frame: MemoryFrame, regions: list[Region]
                     ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The tiles (at most MAX_EXPLAINED_TILES, the highest peaks' regions first) that
        overlap the regions, cut from the scaled frame, and their origins."""
        (h, w), (height, width) = frame.scaled_size, frame.frame_size
        p = self.tiling.patch
        origins = self.tiling.origins(h, w)
        chosen: dict[tuple[int, int], None] = {}
        for region in regions:
            top, left = region.top * h / height, region.left * w / width
            bottom = (region.top + region.height) * h / height
            right = (region.left + region.width) * w / width
            for row, col in origins:
                if row < bottom and row + p > top and col < right and col + p > left:
                    chosen[(row, col)] = None
                    if len(chosen) == MAX_EXPLAINED_TILES:
                        break
            if len(chosen) == MAX_EXPLAINED_TILES:
                break
        picked = list(chosen)
        tiles = torch.stack([frame.image[:, row:row + p, col:col + p] for row, col in picked])
        return tiles, picked

    async def _explain_regions(self, frame: MemoryFrame, outcome: Outcome, steps: int,
                               owner) -> Outcome:
        """The latent search on the tiles under the regions (at most MAX_EXPLAINED_TILES,
        the highest peaks' first), from E(tile); G(z) pasted over the frame there."""
        started = time.perf_counter()
        lane = self._pick_lane()
        tiles, origins = await asyncio.to_thread(self._tiles_under, frame, outcome.regions)
        if lane.fast is not None:
            fast = await asyncio.gather(*(lane.fast.submit(tile.numpy()) for tile in tiles))
            z0 = [torch.as_tensor(f.z0) for f in fast]
        else:  # no encoder: the search starts at random, as SEARCH mode's does
            z0 = [torch.randn(self.bundle.latent_dim, generator=self._random) for _ in tiles]
        requests = [lane.engine.submit(tile, z, steps, True, owner)
                    for tile, z in zip(tiles, z0)]
        try:
            searched = await asyncio.gather(*(r.future for r in requests))
        except BaseException:
            for request in requests:
                lane.engine.cancel(request)
            raise
        reconstruction = await asyncio.to_thread(
            self._paste, frame, origins, [done.reconstruction for done in searched])
        return dataclasses.replace(
            outcome, stage=Stage.SEARCH, reconstruction=reconstruction,
            steps=max(done.result.steps for done in searched),
            tiles=self.tiling.count(*frame.frame_size), tiles_searched=len(origins),
            compute_seconds=outcome.compute_seconds + time.perf_counter() - started)

    def _paste(self, frame: MemoryFrame, origins: list[tuple[int, int]],
               reconstructions: list[np.ndarray]) -> np.ndarray:
        """The frame in [0, 1] with the searched tiles' G(z) pasted (overlaps averaged), at
        the frame's own size: (H, W), or (H, W, C) for colour."""
        image = ((frame.image.numpy() + 1) / 2).astype(np.float64)
        total, count = np.zeros_like(image), np.zeros(image.shape[-2:])
        p = self.tiling.patch
        for (top, left), tile in zip(origins, reconstructions):
            total[:, top:top + p, left:left + p] += (np.asarray(tile) + 1) / 2
            count[top:top + p, left:left + p] += 1
        pasted = np.where(count > 0, total / np.maximum(count, 1), image).clip(0, 1)
        channels = [resize_map(c.astype(np.float32), frame.frame_size) for c in pasted]
        out = np.stack(channels, -1).clip(0, 1)
        return out[..., 0] if out.shape[-1] == 1 else out

    def search_threshold(self, steps: int) -> float:
        """The threshold calibrated for this search budget (see _budget); a memory
        model's image threshold, whatever the budget."""
        if self.memory is not None:
            return float(self.memory["image_threshold"])
        return self.thresholds[self._budget(steps)]

    def _budget(self, steps: int) -> int:
        """The calibrated budget judging a search of `steps`: itself, or the nearest when
        uncalibrated_steps is "nearest"; ValueError for one the bundle has no threshold for."""
        if steps in self.thresholds or self.memory is not None:
            return steps
        budgets = sorted(self.thresholds)
        if self.options.uncalibrated_steps == "nearest":
            return min(budgets, key=lambda b: (abs(b - steps), b))
        raise ValueError(f"model {self.name} has no threshold calibrated for {steps} search "
                         f"steps (calibrated: {', '.join(map(str, budgets))}); ask for one of "
                         "those, or start the server with --uncalibrated-steps nearest")

    async def _tiled_outcome(self, frame: TiledFrame, stage: Stage, mode: Mode,
                             score: np.ndarray, residual: np.ndarray, feature: np.ndarray,
                             steps: int, searched: int, reconstruction: list, want_map: bool,
                             arrived: float, fast_seconds: float, final: bool = True,
                             threshold: float | None = None, judged_steps: int = 0
                             ) -> Outcome:
        frame_score = self.tiling.aggregate_scores(score)
        worst = int(np.argmax(score))  # the parts of the tile that decides a max
        total = time.perf_counter() - arrived
        threshold = self._judging_threshold(mode, threshold)
        outcome = Outcome(final, stage, mode, frame_score, float(residual[worst]),
                          float(feature[worst]), steps, frame_score > threshold,
                          max(0.0, total - fast_seconds), fast_seconds, tiles=len(score),
                          tiles_searched=searched, threshold=threshold,
                          threshold_steps=judged_steps)
        if not want_map or any(r is None for r in reconstruction):
            return outcome
        anomaly_map, regions = await asyncio.to_thread(self._anomaly_map, frame, reconstruction)
        return dataclasses.replace(outcome, anomaly_map=anomaly_map, regions=regions)

    def _anomaly_map(self, frame: TiledFrame, reconstruction: list[np.ndarray]
                     ) -> tuple[np.ndarray, list[Region]]:
        """Tile residuals stitched (overlaps averaged), smoothed, at the frame's size, and
        the regions above the pixel threshold (a worker thread's work: it grows with the
        frame)."""
        tile_maps = residual_maps(frame.tiles, torch.as_tensor(np.stack(reconstruction)))
        stitched = stitch(tile_maps[:, 0].numpy(), frame.origins, frame.scaled_size)
        anomaly_map = resize_map(smooth(stitched, self.tiling.smoothing), frame.frame_size)
        return anomaly_map, find_regions(anomaly_map, self.pixel_threshold)

    def _judging_threshold(self, mode: Mode, search_threshold: float | None = None) -> float:
        """MODE_FAST is judged with the fast path's own calibrated threshold; CASCADE and
        SEARCH with the search's for the frame's budget (the cascade's exactness rests on
        s0 ≤ that one)."""
        if mode is Mode.FAST:
            return self.fast_threshold
        return self.threshold if search_threshold is None else search_threshold

    def _fast_outcome(self, fast: FastScore, mode: Mode, arrived: float,
                      search_threshold: float | None = None) -> Outcome:
        total = time.perf_counter() - arrived
        threshold = self._judging_threshold(mode, search_threshold)
        return Outcome(True, Stage.FAST, mode, fast.score, fast.residual, fast.feature, 0,
                       fast.score > threshold, max(0.0, total - fast.seconds), fast.seconds,
                       threshold=threshold)

    def stats(self) -> dict:
        """Counters summed over the lanes (maxima: the largest lane's)."""
        engines = [lane.engine for lane in self.lanes]
        fasts = [lane.fast.stats for lane in self.lanes if lane.fast]
        return {
            "search_batches": sum(e.stats.batches for e in engines),
            "search_slot_steps": sum(e.stats.slot_steps for e in engines),
            "max_search_batch": max(e.stats.max_batch for e in engines),
            "active_slots": sum(e.table.n for e in engines),
            "slot_capacity": sum(e.table.capacity for e in engines),
            "queued_searches": sum(e.queued for e in engines),
            "searches_completed": sum(e.stats.completed for e in engines),
            "searches_cancelled": sum(e.stats.cancelled for e in engines),
            "fast_batches": sum(f.batches for f in fasts),
            "fast_frames": sum(f.frames for f in fasts),
            "max_fast_batch": max((f.max_batch for f in fasts), default=0),
            "memory_batches": self.memory_path.stats.batches if self.memory_path else 0,
            "memory_frames": self.memory_path.stats.frames if self.memory_path else 0,
        }


def _within_programs(flag: str, value: int | None) -> None:
    """Refuse a batch the bundle's exported torch programs would refuse at run time."""
    if value is not None and value > MAX_BATCH:
        raise ValueError(f"{flag} {value}: above {MAX_BATCH}, the largest batch the bundle's "
                         "exported torch programs accept")


def _or_error(fn, *args):
    """fn(*args), or the ValueError it raised."""
    try:
        return fn(*args)
    except ValueError as err:
        return err


def _search_text(cfg) -> str:
    return f"{cfg.steps} steps, lr {cfg.lr:g}, patience {cfg.patience}"


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
    check_shapes(bundle)  # before anything is built on the networks
    model = ServedModel(bundle, options)
    check_program_shapes(bundle, model.models)
    errors = check_parity(bundle, model.models, options.parity_tolerance)
    if model.memory_path is not None:
        program = model.memory_path.program or load_memory_scorer(bundle)
        errors["memory"] = check_memory_parity(bundle, program, options.parity_tolerance)
    model.check_exactness()
    log.info("loaded model %s version %s from %s on %s (modes %s; parity %s; fast path %s; "
             "search %s, %d slots%s)", model.name, bundle.version, path, model.device_text,
             ",".join(m.name for m in model.modes),
             ", ".join(f"{k} {v:.1e}" for k, v in errors.items()),
             model.fast.backend if model.fast else "none: no encoder", model.precision,
             model.slots, ", CUDA graphs" if model.cuda_graphs else "")
    return model


__all__ = ["BundleError", "EngineOptions", "Mode", "Outcome", "ServedModel", "Stage",
           "load_model"]
