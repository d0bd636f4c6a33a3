"""Frame sources for the sample clients, each read as frames arrive, never all at once:
an MNIST-style CSV, an image folder, a hot folder a line PC's acquisition software drops
images into, a video file or stream, a local camera, or a generated sequence.

Each yields :class:`SourceFrame`: raw uint8 pixels, or a file's encoded bytes as they are
(the server decodes PNG and JPEG of any size), with a frame id that traces the result back
to its file (its name) or its place in a video (its frame number).
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anogan_inspect.datasets import (
    ANOMALOUS,
    IMAGE_SUFFIXES,
    UNKNOWN,
    DatasetError,
    ImageSet,
    list_folder,
    load_dataset,
)


@dataclass
class SourceFrame:
    frame_id: str
    pixels: np.ndarray | None  # uint8 (H, W, C); None when the encoded file is sent
    is_anomaly: bool | None  # ground truth when known
    data: bytes | None = None  # the file's bytes (PNG/JPEG), sent as they are
    path: Path | None = None  # the file it came from
    key: tuple[str, int, int] | None = None  # a hot folder's file: SentLog.key

    def image(self) -> np.ndarray:
        """uint8 (H, W, C) pixels: the raw ones, or the file decoded (overlays, archive);
        ValueError when the file cannot be decoded."""
        if self.pixels is not None:
            return self.pixels
        try:
            with Image.open(io.BytesIO(self.data)) as img:
                img.load()
                array = np.asarray(img.convert("RGB" if img.mode not in ("L", "I;16", "I")
                                               else "L"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{self.frame_id}: cannot decode: {err}") from err
        return array[..., None] if array.ndim == 2 else array


def resized(frame: SourceFrame, size: tuple[int, int] | None) -> SourceFrame:
    """The frame as raw pixels of (width, height) `size`, or as it is when None."""
    if size is None:
        return frame
    try:
        pixels = frame.image()
    except ValueError:  # a file cut short: sent as it is, for the server's per-frame error
        return frame
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    array = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    return SourceFrame(frame.frame_id, array[..., None] if array.ndim == 2 else array,
                       frame.is_anomaly, None, frame.path, frame.key)


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
    """An image folder's files in order (MVTec layout: the split's class folders, `good`
    normal), each read when its turn comes and sent as it is, any size; the frame id is
    its path in the split folder ("scratch/003.png")."""
    listing = list_folder(path, split)  # the listing errors come before anything is sent
    for file, name, label in zip(listing.files, listing.names, listing.labels, strict=True):
        yield SourceFrame(name, None, None if label == UNKNOWN else label == ANOMALOUS,
                          file.read_bytes(), file)


# -- A hot folder ------------------------------------------------------------------------------

# How a file that is still being written is told from a whole one: PNG ends with its IEND
# chunk and JPEG with its EOI marker, so a file of either with its end in place is complete
# at once; any other file (or a truncated one) is complete when it has not changed for
# `settle` seconds, and a truncated one then gets the server's per-frame error.
_ENDS = {b"\x89PNG": b"IEND\xaeB`\x82", b"\xff\xd8\xff": b"\xff\xd9"}


def looks_complete(path: Path) -> bool:
    """A PNG or JPEG file whose format's end marker is in place."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
            file.seek(-8, os.SEEK_END)
            tail = file.read()
    except OSError:
        return False
    return any(head.startswith(magic) and tail.endswith(end) for magic, end in _ENDS.items())


class SentLog:
    """The hot folder's files already answered, so that a restarted client sends none of
    them again: one JSON line per answered file (name, size, mtime), appended and flushed
    as its result arrives. A file replaced under the same name is a new file. At start the
    log is compacted to the files still in the folder (those moved away by verdict, or
    deleted, cannot come again), so it does not grow over days of a line."""

    def __init__(self, path: Path, folder: Path | None = None):
        self.path = path
        self.done: set[tuple[str, int, int]] = set()
        entries = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    key = (entry["name"], entry["size"], entry["mtime_ns"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill: that file is sent again
                entries[key] = line
        if folder is not None and entries:
            present = set()
            for key in entries:
                try:
                    present.add(SentLog.key(Path(key[0]), (folder / key[0]).stat()))
                except OSError:
                    continue
            entries = {key: line for key, line in entries.items() if key in present}
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in entries.values()))
            os.replace(tmp, path)
        self.done = set(entries)
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path, stat: os.stat_result) -> tuple[str, int, int]:
        return path.name, stat.st_size, stat.st_mtime_ns

    def add(self, key: tuple[str, int, int], verdict: str) -> None:
        with self._lock:
            self.done.add(key)
            with open(self.path, "a") as log:
                log.write(json.dumps({"name": key[0], "size": key[1], "mtime_ns": key[2],
                                      "verdict": verdict}) + "\n")


def watch_frames(folder: Path, sent: SentLog | None, settle: float = 1.0,
                 idle_exit: float | None = None, poll: float = 0.05,
                 stop: threading.Event | None = None) -> Iterator[SourceFrame]:
    """Each new image file in `folder` once it is completely written (oldest first), with
    its file name as the frame id; files `sent` already answered are skipped. Runs until
    `stop` is set, or until no file has arrived for `idle_exit` seconds."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory (--watch needs the hot folder)")
    seen: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, unchanged since)
    given: set[tuple[str, int, int]] = set()  # yielded, and still in the folder
    last_new = time.monotonic()
    while not (stop and stop.is_set()):
        now = time.monotonic()
        ready, present = [], set()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES or \
                        not entry.is_file():
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # moved away between the listing and here
                    continue
                key = SentLog.key(Path(name), stat)
                present.add(key)
                if key in given or (sent and key in sent.done):
                    continue
                size, mtime, since = seen.get(name, (-1, -1, now))
                if (size, mtime) != (stat.st_size, stat.st_mtime_ns):
                    seen[name] = (stat.st_size, stat.st_mtime_ns, now)
                    last_new = now
                    since = now
                path = folder / name
                if (stat.st_size and looks_complete(path)) or now - since >= settle:
                    ready.append((stat.st_mtime_ns, name, path, key))
        given &= present  # files moved away (by verdict) are forgotten: memory stays flat
        names = {key[0] for key in present}
        for gone in [name for name in seen if name not in names]:  # renamed or deleted
            del seen[gone]
        for _, name, path, key in sorted(ready):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            given.add(key)
            seen.pop(name, None)
            yield SourceFrame(name, None, None, data, path, key)
        if idle_exit is not None and not seen and now - last_new >= idle_exit:
            return
        time.sleep(poll)


# -- Video and cameras (OpenCV: the `video` extra) ---------------------------------------------


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise DatasetError("--video and --camera read through OpenCV: pip install "
                           "'anogan-inspect[video]' (opencv-python-headless)") from err
    return cv2


def video_frames(source: str | int, stop: threading.Event | None = None
                 ) -> Iterator[SourceFrame]:
    """Frames of a video file, an RTSP/HTTP stream (a URL) or a local camera (an index),
    as OpenCV decodes them, RGB; the frame id is the frame's number ("frame-000042")."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source}" if isinstance(source, int) else str(source)
        raise DatasetError(f"{what}: OpenCV cannot open it")
    try:
        number = 0
        while not (stop and stop.is_set()):
            ok, bgr = capture.read()
            if not ok:
                return
            rgb = np.ascontiguousarray(bgr[..., ::-1]) if bgr.ndim == 3 else bgr[..., None]
            yield SourceFrame(f"frame-{number:06d}", rgb, None)
            number += 1
    finally:
        capture.release()


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
