"""Full-resolution frames as overlapping tiles: cut, score, stitch back, find regions.

A tiled bundle's model sees `patch`×`patch` tiles of the frame at `scale` (1.0: native
pixels), taken every `stride` pixels, the last row and column flush with the frame's edge
so every pixel is covered. Per-tile maps are stitched back into a frame-sized map
(overlaps averaged), smoothed, and thresholded into regions. The frame's score is the
maximum over its tiles: with it, a tile whose fast score s0 is at or under the frame
threshold can never make the frame FAIL (its search score is ≤ s0), so the cascade clears
tiles exactly as it clears whole frames (docs/design.md, "Tiles").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anogan_inspect.configs import AGGREGATES
from anogan_inspect.search import fast_clears


@dataclass(frozen=True)
class Tiling:
    """How a tiled bundle cuts frames; recorded in its manifest as ``tiling``."""

    patch: int  # tile side, pixels of the scaled frame (= the model's image size)
    stride: int  # pixels between tile origins (< patch: tiles overlap)
    scale: float = 1.0  # frames are resized by this factor before tiling
    aggregate: str = "max"  # frame score: max over tiles, or the mean of the top k
    top_k: int = 3
    smoothing: float = 2.0  # Gaussian sigma of the anomaly map, in scaled-frame pixels

    def __post_init__(self) -> None:
        if self.patch <= 0 or not 0 < self.stride <= self.patch:
            raise ValueError(f"tiling needs 0 < stride ≤ patch, got patch {self.patch}, "
                             f"stride {self.stride}")
        if not 0 < self.scale <= 4:
            raise ValueError(f"tiling scale must be in (0, 4], got {self.scale}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Tiling:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """The frame's size after scaling (at least one tile)."""
        h, w = max(1, round(height * self.scale)), max(1, round(width * self.scale))
        if h < self.patch or w < self.patch:
            raise ValueError(f"a {height}×{width} frame at scale {self.scale:g} is {h}×{w}, "
                             f"smaller than one {self.patch}×{self.patch} tile")
        return h, w

    def origins(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of every tile of a scaled frame, row by row."""
        return [(top, left) for top in _starts(height, self.patch, self.stride)
                for left in _starts(width, self.patch, self.stride)]

    def count(self, height: int, width: int) -> int:
        """Tiles a frame of this (unscaled) size is cut into, without cutting it."""
        h, w = self.scaled_size(height, width)
        return len(_starts(h, self.patch, self.stride)) * len(_starts(w, self.patch, self.stride))

    def aggregate_scores(self, scores: np.ndarray) -> float:
        """The frame score from its tiles' scores."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.aggregate == "max":
            return float(scores.max())
        k = min(self.top_k, len(scores))
        return float(np.sort(scores)[-k:].mean())


def tiles_to_search(tiling: Tiling, fast_scores: np.ndarray, threshold: float) -> np.ndarray:
    """The tiles the cascade must search (boolean, per tile), given their fast scores s0.

    With the max over tiles, a tile whose s0 clears the threshold can never make the frame
    FAIL (its search score is ≤ s0), so it is cleared on its own. With a top-k mean that
    does not hold per tile: the frame is cleared at once when the top-k mean of s0 clears,
    otherwise every tile is searched. The server and `evaluate` both decide here."""
    fast_scores = np.asarray(fast_scores)
    if tiling.aggregate == "max":
        return ~fast_clears(fast_scores, threshold)
    everything = not fast_clears(tiling.aggregate_scores(fast_scores), threshold)
    return np.full(len(fast_scores), everything, dtype=bool)


def _starts(length: int, patch: int, stride: int) -> list[int]:
    """Tile starts along one axis: every `stride`, plus one flush with the end."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def scale_frame(frame: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """(C, H, W) in [0, 1] → (C, h, w) at the tiling's scale (bicubic, antialiased)."""
    h, w = tiling.scaled_size(frame.shape[-2], frame.shape[-1])
    if (h, w) == tuple(frame.shape[-2:]):
        return frame
    return F.interpolate(frame[None], size=(h, w), mode="bicubic", align_corners=False,
                         antialias=h < frame.shape[-2]).clamp_(0.0, 1.0)[0]


def cut_tiles(frame: torch.Tensor, tiling: Tiling) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A scaled (C, h, w) frame → its tiles (N, C, P, P) and their origins."""
    origins = tiling.origins(frame.shape[-2], frame.shape[-1])
    p = tiling.patch
    tiles = torch.stack([frame[:, top:top + p, left:left + p] for top, left in origins])
    return tiles, origins


def stitch(tile_maps: np.ndarray, origins: list[tuple[int, int]], size: tuple[int, int]
           ) -> np.ndarray:
    """Per-tile (N, P, P) maps → one (h, w) map, overlapping tiles averaged."""
    total = np.zeros(size, dtype=np.float64)
    count = np.zeros(size, dtype=np.float64)
    p = tile_maps.shape[-1]
    for tile_map, (top, left) in zip(tile_maps, origins):
        total[top:top + p, left:left + p] += tile_map
        count[top:top + p, left:left + p] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation `sigma`, 3σ each side (float32)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return torch.as_tensor(kernel / kernel.sum())


def smooth(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of an (h, w) map (separable, reflect padding)."""
    if sigma <= 0:
        return anomaly_map
    kernel = gaussian_kernel(sigma)
    radius = (kernel.shape[0] - 1) // 2
    x = torch.as_tensor(anomaly_map, dtype=torch.float32)[None, None]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[0, 0].numpy()


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (h, w) map at the scaled frame's size → the frame's own (H, W) (bilinear)."""
    if anomaly_map.shape == tuple(size):
        return anomaly_map
    x = torch.as_tensor(anomaly_map, dtype=torch.float32)[None, None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class Region:
    """A connected area of the map above the pixel threshold: its box and peak."""

    top: int
    left: int
    height: int
    width: int
    peak: float  # largest map value inside
    area: int  # pixels above the threshold


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (h, w) mask: (labels, count), 0 = background."""
    from scipy import ndimage  # imported here: only maps need it

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, int(count)


def find_regions(anomaly_map: np.ndarray, threshold: float, limit: int = 32) -> list[Region]:
    """Connected areas (8-neighbour) of map > threshold, highest peak first."""
    from scipy import ndimage

    labels, count = label_components(anomaly_map > threshold)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    boxes = ndimage.find_objects(labels)  # one (rows, cols) slice pair per label
    regions = []
    for label in np.argsort(-np.asarray(peaks), kind="stable")[:limit]:
        rows, cols = boxes[label]
        regions.append(Region(rows.start, cols.start, rows.stop - rows.start,
                              cols.stop - cols.start, float(peaks[label]), int(areas[label])))
    return regions
