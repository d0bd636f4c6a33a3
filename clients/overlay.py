"""Overlays of a model's answer: the frame, its map as a heat tint (a tiled or memory
model's anomaly map with its regions as boxes, or a whole-frame model's residual map
|x − G(z)|, upsampled to the frame), the score and verdict (Pillow only: works from the
base install)."""

from __future__ import annotations

import io

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


# A whole-frame model's residual map has no pixel threshold: its tint grows from nothing
# at this residual (on the map's [0, 1] scale: |x − G(z)| / 2) to full at three times it.
RESIDUAL_TINT = 0.1
MIN_SIDE = 128  # a smaller frame is drawn this large at least, each pixel a square


def residual_values(residual_map: pb.ResidualMap, size: tuple[int, int]) -> np.ndarray:
    """A whole-frame model's (model-sized) residual map, upsampled to (width, height)."""
    values = np.frombuffer(residual_map.data, dtype="<f4").reshape(
        residual_map.height, residual_map.width)
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR))


def overlay(pixels: np.ndarray, result: pb.InspectionResult) -> Image.Image:
    """uint8 (H, W, C) frame + the result's map, regions, score and verdict → RGB image.

    The tint grows from nothing at half the pixel threshold to full at twice it, so what
    lies above the threshold stands out and the texture's own noise does not; a frame
    without a map (an error, or none asked for) gets the caption only."""
    frame = pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)
    image = frame.astype(np.float32)
    regions = []
    if result.HasField("anomaly_map"):
        anomaly_map = result.anomaly_map
        values = map_values(anomaly_map)
        threshold = max(anomaly_map.pixel_threshold, 1e-6)
        regions = anomaly_map.regions
    elif result.HasField("residual_map"):
        values = residual_values(result.residual_map, (frame.shape[1], frame.shape[0]))
        threshold = 2 * RESIDUAL_TINT
    else:
        values, threshold = None, 1.0
    zoom = -(-MIN_SIDE // max(frame.shape[:2]))  # small frames, drawn larger (whole pixels)
    if zoom > 1:
        image = image.repeat(zoom, 0).repeat(zoom, 1)
        values = values.repeat(zoom, 0).repeat(zoom, 1) if values is not None else None
    if values is not None:
        alpha = np.clip((values / threshold - 0.5) / 1.5, 0, 1)[..., None] * 0.7
        heat = np.stack([np.full_like(values, 255),
                         np.clip(values / threshold - 1, 0, 1) * 200, np.zeros_like(values)], -1)
        image = image * (1 - alpha) + heat * alpha
    image = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for region in regions:
        draw.rectangle([zoom * region.left - 1, zoom * region.top - 1,
                        zoom * (region.left + region.width), zoom * (region.top + region.height)],
                       outline=(255, 40, 40), width=2)
    verdict = pb.Verdict.Name(result.verdict).removeprefix("VERDICT_")
    if result.HasField("error"):
        lines = [result.frame_id, f"error: {result.error.message[:60]}"]
    else:
        lines = [result.frame_id, f"score {result.score:.3g} | {verdict}"
                 + (f" | {len(regions)} regions" if result.HasField("anomaly_map") else "")]
    return _with_caption(image, lines, (255, 80, 80) if verdict != "PASS" else (120, 220, 120))


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


def safe_name(frame_id: str) -> str:
    """A frame id as a file name (no path separators)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in frame_id)
