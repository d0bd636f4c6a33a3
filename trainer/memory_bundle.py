"""Memory bundles in the trainer: build the memory of normal features, calibrate it, and
the parts of `anogan-train train --memory` that are not the GAN.

The GAN (and its encoder) train on tiles as for any tiled bundle; then every training
frame's features (whole frames, through the extractor) are pooled, reduced to
``--memory-size`` rows by the greedy coreset, and the scorer (extractor + memory) is
calibrated: the edges (the spread of map values near a frame's edges, MemoryScorer) on
training frames, then on the held-out normal frames the image threshold at the quantile
1 − ``--target-fpr`` of their frame scores, the pixel threshold at ``--pixel-quantile`` of
their map values (never above the image threshold: a failing frame always has a region).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anogan_inspect.memory import (
    BackboneStages,
    MemoryConfig,
    MemoryScorer,
    augment,
    build_features,
    extract,
    frames_input,
    layer_scales,
    score_frames,
    select_memory,
)
from anogan_inspect.tiling import Tiling

EDGE_FRAMES = 100  # training frames (evenly spaced) the edge table is calibrated on


def load_backbone(path: Path) -> nn.Module:
    """A user's backbone: a torch.export program file (.pt2) mapping an image batch to a
    feature map (or a list of them). Nothing is downloaded: its weights are in the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--backbone {path}: no such file")
    try:
        return torch.export.load(str(path)).module()
    except Exception as err:  # not a torch.export program
        raise ValueError(f"--backbone {path}: not a torch.export program ({err})") from err


def backbone_extractor(program: nn.Module, channels: int, probe: int = 64) -> BackboneStages:
    """The backbone wrapped for the memory: its input channels (the frames' own, or three
    for a gray frame into an RGB network) and its stride found by running it once."""
    for wanted in dict.fromkeys((channels, 3, 1)):
        try:
            with torch.no_grad():
                out = program(torch.zeros(1, wanted, probe, probe))
        except Exception:  # the program takes other channel counts
            continue
        first = out[0] if isinstance(out, list | tuple) else out
        if first.dim() != 4:
            raise ValueError(f"the backbone gives a {first.dim()}-d output; a feature map "
                             "(N, D, h, w) is needed")
        return BackboneStages(program, stride=max(1, probe // first.shape[-1]),
                              in_channels=wanted)
    raise ValueError(f"the backbone takes neither {channels} nor 3 channels at {probe}×{probe}")


@dataclasses.dataclass
class BuiltMemory:
    """A built and calibrated memory: the scorer and what the manifest records."""

    scorer: MemoryScorer
    config: MemoryConfig
    manifest: dict


def build_memory(cfg: MemoryConfig, train_frames: np.ndarray, heldout_frames: np.ndarray,
                 tiling: Tiling, channels: int, target_fpr: float, pixel_quantile: float,
                 trunk: nn.Module | None = None, backbone: nn.Module | None = None,
                 seed: int = 0) -> BuiltMemory:
    """Memory from the training frames (N, C, H, W) in [0, 1], calibrated on the held-out
    ones."""
    started = time.time()
    train = frames_input(train_frames, tiling.scale, channels)
    heldout = frames_input(heldout_frames, tiling.scale, channels)
    extractor = backbone_extractor(backbone, channels) if cfg.extractor == "backbone" else None
    features = build_features(cfg, channels, trunk=trunk, backbone=extractor)
    scales = (1.0,) if cfg.extractor == "pixels" else layer_scales(features, train[:16])
    cfg = dataclasses.replace(cfg, layer_scales=scales)
    features = build_features(cfg, channels, trunk=trunk, backbone=extractor)
    source = torch.cat([train, augment(train, seed)]) if cfg.augment else train
    rows = extract(features, source)
    extracted = time.time()
    memory = select_memory(rows, cfg, seed)
    selected = time.time()
    scorer = MemoryScorer(features, memory, cfg.smoothing, edge_margin=cfg.edge_margin).eval()
    if cfg.edge_margin:  # on training frames: the held-out ones stay unseen for the thresholds
        chosen = np.linspace(0, len(train) - 1, min(len(train), EDGE_FRAMES)).round()
        edge_maps, _ = score_frames(scorer, train[torch.as_tensor(chosen, dtype=torch.long)])
        scorer.calibrate_edges(list(edge_maps))
    maps, scores = score_frames(scorer, heldout)
    quantile = 1.0 - target_fpr
    image_threshold = float(np.quantile(scores, quantile))
    pixel_threshold = min(float(np.quantile(maps, pixel_quantile)), image_threshold)
    manifest = {
        **cfg.to_dict(),
        "rows": int(memory.shape[0]), "dim": int(memory.shape[1]),
        "stride": int(features.stride), "candidates_seen": int(rows.shape[0]),
        "bytes": int(memory.numel() * 4),
        "image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
        "calibration": {
            "frames": int(len(heldout)), "quantile": quantile, "target_fpr": target_fpr,
            "pixel_quantile": pixel_quantile,
            "heldout_fail_share": round(float((scores > image_threshold).mean()), 4),
            "heldout_scores": {"min": float(scores.min()), "median": float(np.median(scores)),
                               "max": float(scores.max())},
        },
        "seconds": {"extract": round(extracted - started, 1),
                    "select": round(selected - extracted, 1),
                    "calibrate": round(time.time() - selected, 1)},
    }
    return BuiltMemory(scorer, cfg, manifest)
