"""Overlays of a tiled model's answer: the frame, its anomaly map as a heat tint, the
regions as boxes, the score and verdict (Pillow only: works from the base install)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anogan.v1 import inspection_pb2 as pb


def map_values(anomaly_map: pb.AnomalyMap) -> np.ndarray:
    """The map's (H, W) float32 values, from whichever encoding the server sent."""
    shape = (anomaly_map.height, anomaly_map.width)
    if anomaly_map.float16_data:
        return np.frombuffer(anomaly_map.float16_data, dtype="<f2").reshape(shape) \
            .astype(np.float32)
    png = np.asarray(Image.open(io.BytesIO(anomaly_map.png)), dtype=np.float32)
    return png.reshape(shape) / 255.0 * anomaly_map.png_scale


def overlay(pixels: np.ndarray, result: pb.InspectionResult) -> Image.Image:
    """uint8 (H, W, C) frame + the result's map, regions, score and verdict → RGB image.

    The tint grows from nothing at half the pixel threshold to full at twice it, so what
    lies above the threshold stands out and the texture's own noise does not."""
    frame = pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)
    image = frame.astype(np.float32)
    anomaly_map = result.anomaly_map
    values = map_values(anomaly_map)
    threshold = max(anomaly_map.pixel_threshold, 1e-6)
    alpha = np.clip((values / threshold - 0.5) / 1.5, 0, 1)[..., None] * 0.7
    heat = np.stack([np.full_like(values, 255), np.clip(values / threshold - 1, 0, 1) * 200,
                     np.zeros_like(values)], -1)
    image = Image.fromarray((image * (1 - alpha) + heat * alpha).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for region in anomaly_map.regions:
        draw.rectangle([region.left - 1, region.top - 1, region.left + region.width,
                        region.top + region.height], outline=(255, 40, 40), width=2)
    verdict = pb.Verdict.Name(result.verdict).removeprefix("VERDICT_")
    lines = [result.frame_id,
             f"score {result.score:.1f} | {verdict} | {len(anomaly_map.regions)} regions"]
    return _with_caption(image, lines, (255, 80, 80) if verdict == "FAIL" else (120, 220, 120))


def _with_caption(image: Image.Image, lines: list[str], color) -> Image.Image:
    """The image under a black strip holding the caption lines (never over the frame)."""
    font = ImageFont.load_default(size=11)
    height = 4 + 14 * len(lines)
    width = max(image.width, max(int(font.getlength(line)) for line in lines) + 8)
    canvas = Image.new("RGB", (width, image.height + height))
    canvas.paste(image, (0, height))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, 2 + 14 * k), line, fill=color if k else (230, 230, 230), font=font)
    return canvas


def save_overlay(directory: Path, pixels: np.ndarray, result: pb.InspectionResult) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in result.frame_id)
    path = directory / f"{result.sequence:06d}-{safe}.png"
    overlay(pixels, result).save(path)
    return path
