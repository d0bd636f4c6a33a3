"""PNG grids of images (samples, reconstructions, residual maps) with Pillow only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anogan_inspect.preprocess import to_unit_range


def grid_array(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → one uint8 (rows·H, cols·W, C) mosaic."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    cols = min(nrow, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    canvas = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                     dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top:top + h, left:left + w] = images[i].permute(1, 2, 0).numpy()
    return (canvas * 255 + 0.5).astype(np.uint8)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, unit_range: bool = False) -> Path:
    """Save images (model range [-1, 1] unless unit_range) as a PNG grid; returns the path."""
    pictures = images if unit_range else to_unit_range(images)
    mosaic = grid_array(pictures, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic).save(path)
    return path


def residual_maps(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """|x - G(z)| per pixel, averaged over channels and scaled to [0, 1]: (N, 1, H, W)."""
    return ((x - reconstruction).abs().mean(1, keepdim=True) / 2.0).clamp(0, 1)
