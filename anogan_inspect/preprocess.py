"""Images at the boundary: explicit [0, 1] floats in, model tensors in [-1, 1] out.

One function serves the trainer (whole datasets) and the server (single frames), so both
see identical pixels: channel conversion, bicubic resize to the model's geometry, scaling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601 luma, as Pillow's RGB→L conversion uses.
LUMA = (0.299, 0.587, 0.114)

NORMALIZATION = {
    "input": "float in [0, 1] (uint8 / 255, uint16 / 65535)",
    "resize": "bicubic, antialiased when shrinking, clamped to [0, 1]",
    "scale": 2.0,
    "offset": -1.0,
}


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) with C in {1, 3} → (N, channels, H, W)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
        return (images * weights[None, :, None, None]).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def to_model_input(images: np.ndarray | torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] → (N, channels, size, size) float32 in [-1, 1]."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
    x = convert_channels(x, channels)
    if x.shape[-2:] != (size, size):
        shrinking = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                          antialias=shrinking).clamp_(0.0, 1.0)
    return x * NORMALIZATION["scale"] + NORMALIZATION["offset"]


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model tensors in [-1, 1] → [0, 1] (for pictures and residual maps)."""
    return ((x - NORMALIZATION["offset"]) / NORMALIZATION["scale"]).clamp(0.0, 1.0)
