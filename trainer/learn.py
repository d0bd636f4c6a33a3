"""A memory bundle learns frames that operators confirmed GOOD, as a new bundle version.

A line drifts (another batch of material, another lamp) and its normal frames start to
fail. A memory of normal features can learn them without retraining: the confirmed
frames' features join the memory, the merged memory is reduced again by the greedy
coreset to the bundle's memory size, and the thresholds are calibrated again on the
held-out normal frames plus a share of the confirmed ones (every CALIBRATION_EVERY-th,
which the memory does not learn, so that the threshold is not set on frames the memory
holds). The result is a new bundle, written beside the parent (never over it): the same
generator, discriminator and encoder files, a new memory scorer (torch and ONNX, checked
as at training), and a manifest whose `lineage` names the parent version (and its
manifest's sha256) and the sha256 of every frame learnt, held out or refused.

Guards: a frame is not learnt (HELD) unless it is confirmed again (`accept_far`) when the
parent scores it beyond FAR_FACTOR times its threshold, or when it lands in the regions of
the DEFECT examples kept (DefectGuard: it fails where a DEFECT example's regions lie, as
a recurring defect would); with DEFECT examples and a recall floor, a version that fails
fewer of them than the floor is not written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import (
    MANIFEST,
    PARITY_TOLERANCE,
    Bundle,
    BundleError,
    load_memory_scorer,
    sha256_file,
)
from anogan_inspect.memory import (
    MemoryConfig,
    MemoryScorer,
    build_features,
    extract,
    frames_input,
    greedy_coreset,
)
from anogan_inspect.networks import Discriminator, ModelConfig
from anogan_inspect.trainer.evaluate_memory import training_frames
from anogan_inspect.trainer.export import ExportError, export_memory_scorer, file_entries

# A confirmed frame the parent scores beyond this many times its threshold is held for a
# second confirmation (a mislabelled defect would teach the memory that defect).
FAR_FACTOR = 2.0
# Every CALIBRATION_EVERY-th usable confirmed frame calibrates the threshold instead of
# joining the memory: the confirmed frames are the line's normal now, and half of them
# calibrating brought a 20 % brighter line's false rejects from 22 % to 4 % (40 confirmed
# frames, the grass benchmark; 6 % calibrated), a fourth did not (bench/learn_bench.py).
CALIBRATION_EVERY = 2


class LearnError(ValueError):
    """The new version was not written: why, in one line."""


@dataclasses.dataclass
class Frame:
    """A confirmed frame: its pixels (C, H, W) in [0, 1] and the sha256 of its bytes."""

    pixels: np.ndarray
    sha256: str

    @classmethod
    def from_bytes(cls, pixels: np.ndarray, data: bytes) -> Frame:
        return cls(pixels, hashlib.sha256(data).hexdigest())


@dataclasses.dataclass
class Learned:
    """What a learning step did."""

    path: Path
    version: str
    learnt: list[str]  # sha256 of the frames whose features joined the memory
    calibrating: list[str]  # ... of the confirmed frames the threshold was calibrated on
    # ... with the parent's score and why, of the frames held: "far" (beyond FAR_FACTOR
    # times the threshold) or "defect" (in the regions of a DEFECT example)
    held: list[tuple[str, float, str]]
    threshold: float
    parent_threshold: float
    heldout_frames: int  # held-out normal frames calibrated on
    heldout_fail_share: float  # of the held-out normal frames, at the new threshold
    defect_recall: float | None  # of the DEFECT examples, at the new threshold
    parent_defect_recall: float | None


def rebuild_scorer(bundle: Bundle) -> tuple[MemoryScorer, MemoryConfig]:
    """The bundle's memory scorer as a module again (its exported program's weights and
    memory in the classes that made it), checked to score as the program does."""
    if bundle.memory is None:
        raise BundleError(f"{bundle.path}: not a memory bundle: only a memory learns "
                          "frames without retraining (whole-frame bundles: anogan-train finetune)")
    cfg = MemoryConfig.from_dict(bundle.manifest["memory"])
    if cfg.extractor == "backbone":
        raise BundleError(f"{bundle.path}: a backbone memory cannot learn here: the bundle "
                          "does not hold the backbone apart from its scorer")
    program = load_memory_scorer(bundle)
    model = ModelConfig.from_dict(bundle.manifest["model"])
    trunk = Discriminator(model).features if cfg.extractor == "disc" else None
    state = program.state_dict()
    scorer = MemoryScorer(build_features(cfg, model.channels, trunk=trunk),
                          state["memory"], cfg.smoothing, edge_margin=cfg.edge_margin)
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BundleError(f"{bundle.path}: the memory scorer is not one this version "
                          f"builds ({err})") from err
    scorer.eval().requires_grad_(False)
    probe = torch.rand(2, model.channels, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = max((a - b).abs().max().item()
                  for a, b in zip(scorer(probe * 2 - 1), program(probe * 2 - 1), strict=True))
    if gap > PARITY_TOLERANCE:
        raise BundleError(f"{bundle.path}: the rebuilt memory scorer differs from the "
                          f"bundle's by {gap:.2e}")
    return scorer, cfg


@torch.no_grad()
def frame_scores(scorer: MemoryScorer, frames: list[np.ndarray], scale: float,
                 channels: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each frame's score and map (frames of any size, one at a time)."""
    scores, maps = [], []
    for pixels in frames:
        anomaly_map, score = scorer(frames_input(pixels[None], scale, channels))
        scores.append(float(score[0]))
        maps.append(anomaly_map[0].numpy())
    return np.array(scores), maps


class DefectGuard:
    """Where on the frame the kept DEFECT examples' regions lie (a line's parts are
    registered: a defect recurs in its place). A frame confirmed GOOD lands in them when
    it fails there: its map beyond the image threshold overlaps a DEFECT example's map
    beyond the pixel threshold (the served regions), on a GRID×GRID grid of frame
    coordinates, so frames of any size compare."""

    GRID = 64

    def __init__(self, scorer: MemoryScorer, image_threshold: float, pixel_threshold: float,
                 scale: float, channels: int):
        self.scorer, self.scale, self.channels = scorer, scale, channels
        self.image_threshold, self.pixel_threshold = image_threshold, pixel_threshold
        self.regions = torch.zeros(self.GRID, self.GRID, dtype=torch.bool)

    def map(self, pixels: np.ndarray) -> torch.Tensor:
        """The frame's map on the grid (the largest value in each cell)."""
        with torch.no_grad():
            anomaly_map, _ = self.scorer(frames_input(pixels[None], self.scale,
                                                      self.channels))
        return torch.nn.functional.adaptive_max_pool2d(anomaly_map[None], self.GRID)[0, 0]

    def add(self, pixels: np.ndarray) -> int:
        """Keep a DEFECT example's regions; how many grid cells they cover."""
        cells = self.map(pixels) > self.pixel_threshold
        self.regions |= cells
        return int(cells.sum())

    def covers(self, pixels: np.ndarray) -> bool:
        """Whether a frame fails in the regions of the DEFECT examples."""
        if not self.regions.any():
            return False
        return bool(((self.map(pixels) > self.image_threshold) & self.regions).any())


def merge_memory(memory: torch.Tensor, new_rows: torch.Tensor, cfg: MemoryConfig,
                 seed: int) -> torch.Tensor:
    """The memory and the new rows reduced to cfg.size rows by the greedy coreset; every
    memory row competes, the new rows up to cfg.candidates in all (drawn at random)."""
    room = max(0, cfg.candidates - memory.shape[0])
    if new_rows.shape[0] > room:
        gen = torch.Generator().manual_seed(seed)
        new_rows = new_rows[torch.randperm(new_rows.shape[0], generator=gen)[:room]]
    pool = torch.cat([memory, new_rows])
    return pool[greedy_coreset(pool, cfg.size, cfg.projection, seed)].clone()


def learn(bundle: Bundle, good: list[Frame], heldout: list[np.ndarray] | None, out: Path,
          defects: list[np.ndarray] | None = None, recall_floor: float | None = None,
          accept_far: bool = False, seed: int = 0) -> Learned:
    """Write `out`, a new version of the memory bundle that has learnt the GOOD frames
    (pixels (C, H, W) in [0, 1]); LearnError when none can be learnt or the version
    misses the recall floor on the DEFECT examples (nothing written then). `heldout`: the
    normal frames to calibrate on (None: the bundle's own held-out frames, or the held-out
    split of its training data when it keeps none)."""
    out = Path(out)
    if out.exists():
        raise LearnError(f"{out} exists: a version is written once, into a new folder")
    scorer, cfg = rebuild_scorer(bundle)
    if heldout is None:
        frames = bundle.heldout_frames()
        # A bundle written before bundles kept them: the held-out split of the training
        # data its manifest names (DatasetError when it names none or it is gone).
        heldout = list(frames if frames is not None else training_frames(bundle, None)[1])
    tiling, channels = bundle.tiling, bundle.channels
    parent_threshold = float(bundle.manifest["memory"]["image_threshold"])
    parent_scores, _ = frame_scores(scorer, [f.pixels for f in good], tiling.scale, channels)
    guard = DefectGuard(scorer, parent_threshold, bundle.manifest["memory"]["pixel_threshold"],
                        tiling.scale, channels)
    for pixels in defects or []:
        guard.add(pixels)
    held, usable = [], []
    for frame, score in zip(good, parent_scores, strict=True):
        why = "far" if score > FAR_FACTOR * parent_threshold else \
            "defect" if score > parent_threshold and guard.covers(frame.pixels) else None
        if why and not accept_far:
            held.append((frame.sha256, float(score), why))
        else:
            usable.append(frame)
    calibrating = usable[CALIBRATION_EVERY - 1::CALIBRATION_EVERY]
    learnt = [f for i, f in enumerate(usable) if (i + 1) % CALIBRATION_EVERY]
    if not learnt:
        raise LearnError(f"nothing to learn: {len(good)} frame(s) confirmed, {len(held)} "
                         f"held (scored beyond {FAR_FACTOR:g}× the threshold, or in the "
                         "regions of a DEFECT example: confirm them again to learn them)")
    started = time.time()
    rows = torch.cat([extract(scorer.features, frames_input(f.pixels[None], tiling.scale,
                                                            channels)) for f in learnt])
    memory = merge_memory(scorer.memory, rows, cfg, seed)
    new = MemoryScorer(scorer.features, memory, cfg.smoothing,
                       edge_margin=cfg.edge_margin).eval()
    if cfg.edge_margin:  # the parent's edge table (calibrated on its training frames)
        new.edge_mean.copy_(scorer.edge_mean)
        new.edge_std.copy_(scorer.edge_std)

    # The thresholds, as at training: the same quantiles, of the held-out normal frames
    # and the confirmed frames kept for calibration.
    memory_entry = bundle.manifest["memory"]
    calibration = memory_entry["calibration"]
    quantile, pixel_quantile = calibration["quantile"], calibration["pixel_quantile"]
    scores, maps = frame_scores(new, [*heldout, *(f.pixels for f in calibrating)],
                                tiling.scale, channels)
    threshold = float(np.quantile(scores, quantile))
    pixel_threshold = min(float(np.quantile(np.concatenate([m.ravel() for m in maps]),
                                            pixel_quantile)), threshold)
    heldout_share = float(np.mean(scores[:len(heldout)] > threshold))
    recall = parent_recall = None
    if defects:
        defect_scores, _ = frame_scores(new, defects, tiling.scale, channels)
        recall = float(np.mean(defect_scores > threshold))
        parent_defect, _ = frame_scores(scorer, defects, tiling.scale, channels)
        parent_recall = float(np.mean(parent_defect > parent_threshold))
        if recall_floor is not None and recall < recall_floor:
            raise LearnError(f"not promoted: the new version fails {recall:.3f} of the "
                             f"{len(defects)} DEFECT examples, under the floor "
                             f"{recall_floor:.3f} (the parent: {parent_recall:.3f})")

    created = datetime.now(timezone.utc)
    parent = bundle.manifest
    generation = int((parent.get("lineage") or {}).get("generation", 0)) + 1
    version = f"{created:%Y%m%dT%H%M%SZ}-g{generation}"
    manifest = copy.deepcopy(parent)
    manifest.update(version=version, created=created.isoformat())
    manifest["threshold"].update(value=threshold, heldout_fpr=heldout_share,
                                 frames=len(scores))
    manifest["tiling"]["pixel_threshold"] = pixel_threshold
    manifest["memory"].update(
        rows=int(memory.shape[0]), bytes=int(memory.numel() * 4),
        image_threshold=threshold, pixel_threshold=pixel_threshold,
        calibration={**calibration, "frames": len(scores),
                     "heldout_fail_share": round(heldout_share, 4),
                     "heldout_scores": {"min": float(scores.min()),
                                        "median": float(np.median(scores)),
                                        "max": float(scores.max())}})
    manifest["lineage"] = {
        "generation": generation,
        "parent": {"version": parent["version"],
                   "manifest_sha256": sha256_file(bundle.path / MANIFEST)},
        "learnt": [f.sha256 for f in learnt],
        "calibrating": [f.sha256 for f in calibrating],
        "held": [sha for sha, _, _ in held],
        "rows_offered": int(rows.shape[0]),
        "parent_threshold": parent_threshold,
        "defect_recall": recall, "parent_defect_recall": parent_recall,
        "seconds": round(time.time() - started, 1),
    }
    _write_version(bundle, out, new, manifest)
    return Learned(out, version, manifest["lineage"]["learnt"],
                   manifest["lineage"]["calibrating"], held, threshold, parent_threshold,
                   len(heldout), heldout_share, recall, parent_recall)


def _write_version(parent: Bundle, out: Path, scorer: MemoryScorer, manifest: dict) -> None:
    """The parent's files but the memory scorer's, the new scorer exported and checked,
    and the manifest, in a temporary sibling renamed into place at the end."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        scorer_files = {parent.memory["scorer"]["torch"], parent.memory["scorer"]["onnx"]}
        for name in parent.manifest["files"]:
            if name not in scorer_files:
                shutil.copy2(parent.path / name, tmp / name)
        try:
            manifest["memory"]["scorer"] = export_memory_scorer(
                tmp, scorer, parent.channels, PARITY_TOLERANCE)
        except ExportError as err:
            raise LearnError(str(err)) from err
        manifest["parity"]["max_error"]["memory"] = manifest["memory"]["scorer"]["parity_error"]
        manifest["files"] = file_entries(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
