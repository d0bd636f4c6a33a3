"""Frame sources for the sample clients: an MNIST-style CSV, an image folder, or a generated
sequence. Each yields :class:`SourceFrame` with the pixels as a raw uint8 HWC array."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anogan_inspect.datasets import ImageSet, load_dataset


@dataclass
class SourceFrame:
    frame_id: str
    pixels: np.ndarray  # uint8 (H, W, C)
    is_anomaly: bool | None  # ground truth when known


def from_image_set(images: ImageSet, prefix: str) -> Iterator[SourceFrame]:
    """Frames from a loaded dataset ([0, 1] floats → uint8)."""
    for i in range(len(images)):
        pixels = (images.images[i].transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
        label = None if images.is_anomaly is None else bool(images.is_anomaly[i])
        tag = f"-d{images.labels[i]}" if images.labels[i] >= 0 else ""
        yield SourceFrame(f"{prefix}-{i:05d}{tag}", pixels, label)


def csv_frames(path: Path, normal_labels=None, anomaly_labels=None) -> Iterator[SourceFrame]:
    return from_image_set(load_dataset(path, normal_labels=normal_labels,
                                       anomaly_labels=anomaly_labels), Path(path).stem)


def folder_frames(path: Path, split: str = "test") -> Iterator[SourceFrame]:
    return from_image_set(load_dataset(path, split=split), Path(path).name)


GENERATED_FRAMES = ("gray frames of one bright straight stroke at a random angle on black, "
                    "labelled normal; every 10th also carries a small bright disc, labelled "
                    "anomalous (a load generator: a digit model was not trained on strokes, "
                    "so its AUROC on them says little)")


def generated_frames(count: int, size: int = 28, seed: int = 0) -> Iterator[SourceFrame]:
    """Synthetic frames (see GENERATED_FRAMES): a stroke, every 10th with a disc defect."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        angle = rng.uniform(0, np.pi)
        distance = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle))
        image = np.clip(1.5 - distance, 0, 1) * 255
        defect = i % 10 == 9
        if defect:
            cy, cx = rng.integers(4, size - 4, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 9] = 255
        yield SourceFrame(f"gen-{i:05d}", image.astype(np.uint8)[..., None], defect)
