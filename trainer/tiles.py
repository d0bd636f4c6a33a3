"""Tiled bundles in the trainer: training tiles, frame-level calibration and scoring.

The server tiles a frame the same way (``anogan_inspect.tiling``); here whole datasets are
scored in batches: the calibration searches every tile of the held-out normal frames (the
threshold is then the search's, as for whole frames), evaluation runs the exact cascade
per tile (fast score s0 for every tile, the search for the tiles over the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anogan_inspect.pictures import residual_maps
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels, SearchConfig, fast_score
from anogan_inspect.tiling import (
    Tiling,
    cut_tiles,
    resize_map,
    scale_frame,
    smooth,
    stitch,
    tiles_to_search,
)
from anogan_inspect.trainer.scoring import search_scores


def frame_tiles(frames: np.ndarray, tiling: Tiling, channels: int
                ) -> tuple[torch.Tensor, list[list[tuple[int, int]]], tuple[int, int]]:
    """Frames (N, C, H, W) in [0, 1] of one size → all their tiles as model input
    (N·T, channels, P, P) in [-1, 1], the tile origins, and the scaled frame size."""
    tiles, origins, size = [], [], None
    for frame in frames:
        scaled = scale_frame(torch.as_tensor(frame, dtype=torch.float32), tiling)
        cut, frame_origins = cut_tiles(scaled, tiling)
        tiles.append(cut)
        origins.append(frame_origins)
        size = tuple(scaled.shape[-2:])
    x = to_model_input(torch.cat(tiles), tiling.patch, channels)
    return x, origins, size


@dataclass
class TiledScores:
    """Per-frame results of tiled scoring."""

    score: np.ndarray  # (N,) frame scores (max over tiles, or top-k mean)
    tile_scores: list[np.ndarray]  # per frame, (T,) final tile scores
    searched: np.ndarray  # (N,) tiles searched per frame
    maps: np.ndarray | None  # (N, H, W) anomaly maps at the frames' own size
    z: np.ndarray  # (N·T, latent) each tile's final z, frame by frame


def score_frames(models: ScoringModels, frames: np.ndarray, tiling: Tiling, cfg: SearchConfig,
                 device, threshold: float | None = None, want_maps: bool = True,
                 batch_size: int = 64, desc: str = "tiles") -> TiledScores:
    """Tiled scores of frames (N, C, H, W) in [0, 1].

    threshold None: every tile is searched (calibration, and SEARCH mode). Otherwise the
    cascade: tiles whose fast score clears the threshold keep it; the rest are searched.
    """
    channels = models.generator(torch.zeros(1, models.latent_dim, device=device)).shape[1]
    x, origins, size = frame_tiles(frames, tiling, channels)
    x = x.to(device)
    s0, z0 = fast_score(models, x, cfg.lam) if models.encoder is not None else (None, None)
    final = np.array(s0, dtype=np.float64) if s0 is not None else np.full(len(x), np.inf)
    z = z0.numpy().copy() if z0 is not None else np.zeros((len(x), models.latent_dim),
                                                           dtype=np.float32)
    per_frame = len(origins[0])
    if threshold is None or s0 is None:
        suspect = np.ones(len(x), dtype=bool)
    else:  # the server's rule, frame by frame
        suspect = np.concatenate([tiles_to_search(tiling, frame_s0, threshold)
                                  for frame_s0 in s0.reshape(len(frames), per_frame)])
    if suspect.any():
        index = torch.as_tensor(np.flatnonzero(suspect))
        start = "encoder" if models.encoder is not None else "random"
        result = search_scores(models, x[index.to(device)], cfg, start, device, batch_size,
                               desc=desc)
        final[suspect] = result.score
        z[suspect] = result.z
    tile_scores = [final[i * per_frame:(i + 1) * per_frame] for i in range(len(frames))]
    scores = np.array([tiling.aggregate_scores(t) for t in tile_scores])
    searched = suspect.reshape(len(frames), per_frame).sum(1)
    maps = _frame_maps(models, x, z, origins, size, frames.shape[-2:], tiling, device) \
        if want_maps else None
    return TiledScores(scores, tile_scores, searched, maps, z)


@torch.no_grad()
def _frame_maps(models: ScoringModels, x: torch.Tensor, z: np.ndarray, origins, size,
                frame_size, tiling: Tiling, device, batch_size: int = 256) -> np.ndarray:
    """Residual maps of every tile at its z, stitched, smoothed, at the frames' size."""
    tile_maps = []
    for begin in range(0, len(x), batch_size):
        zb = torch.as_tensor(z[begin:begin + batch_size], device=device)
        xb = x[begin:begin + batch_size]
        tile_maps.append(residual_maps(xb, models.generator(zb))[:, 0].cpu().numpy())
    tile_maps = np.concatenate(tile_maps)
    per_frame = len(origins[0])
    return np.stack([
        resize_map(smooth(stitch(tile_maps[i * per_frame:(i + 1) * per_frame], frame_origins,
                                 size), tiling.smoothing), tuple(frame_size))
        for i, frame_origins in enumerate(origins)])
