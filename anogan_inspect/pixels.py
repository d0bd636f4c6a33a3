"""Decoded images to [0, 1] floats, scaled by storage type (numpy only: no torch import)."""

from __future__ import annotations

import numpy as np


def image_pixels(image) -> np.ndarray:
    """A decoded Pillow image → float32 (H, W, C) in [0, 1], C = 1 (gray) or 3 (RGB).

    Scaled by storage type, never guessed: 8-bit by 255, 16-bit gray ("I;16*", or "I" as
    Pillow decodes 16-bit PNGs) by 65535, float ("F") as is. ValueError when the values
    lie outside that type's range. The trainer's image folders and the server's encoded
    frames both decode through here.
    """
    mode = image.mode
    if mode in ("1", "LA", "La"):
        image, mode = image.convert("L"), "L"
    elif mode not in ("L", "I", "F") and not mode.startswith("I;16"):
        image, mode = image.convert("RGB"), "RGB"
    array = np.asarray(image)
    if mode in ("L", "RGB"):
        scaled = array.astype(np.float32) / np.float32(255)
    elif mode == "F":
        scaled = array.astype(np.float32)
        if not (np.isfinite(scaled).all() and scaled.min() >= 0 and scaled.max() <= 1):
            raise ValueError("float image values must lie in [0, 1]")
    else:
        if array.min() < 0 or array.max() > 65535:
            raise ValueError("integer image values outside the 16-bit range")
        scaled = array.astype(np.float32) / np.float32(65535)
    return scaled if scaled.ndim == 3 else scaled[:, :, None]
