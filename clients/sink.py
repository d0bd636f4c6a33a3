"""What the client does with each final result besides its table: the JSONL line, the
overlay, the reject archive, the operator's page, and a hot folder's bookkeeping (the log of
answered files, and moving each file by its verdict).

Each is written as the result arrives, nothing is gathered for the end, so a client that
streams for days holds no more than its last results.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan_inspect.clients.archive import encode_png
from anogan_inspect.clients.overlay import overlay, safe_name
from anogan_inspect.clients.sources import SentLog, SourceFrame

THUMBNAIL = 256  # the page's thumbnails: at most this many pixels a side


def record_fields(record) -> dict:
    """A Record as written to JSONL and the archive."""
    fields = asdict(record)
    del fields["received"]
    return fields


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def original_bytes(frame: SourceFrame) -> bytes:
    """The frame as a file: the bytes it came as, or its raw pixels as a PNG."""
    return frame.data if frame.data is not None else encode_png(frame.pixels)


class ResultSink:
    """Called with each final result (run_stream's on_result)."""

    def __init__(self, jsonl: Path | None = None, overlays: Path | None = None,
                 archive=None, page=None, sent_log: SentLog | None = None,
                 move_by_verdict: Path | None = None):
        self.overlays, self.archive, self.page = overlays, archive, page
        self.sent_log, self.move_by_verdict = sent_log, move_by_verdict
        self.jsonl = None
        if jsonl:
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(jsonl, "w")  # noqa: SIM115 (closed by close())
        self.problems: list[str] = []

    async def __call__(self, record, result: pb.InspectionResult, frame: SourceFrame) -> None:
        """Everything for one result; a failure (a full disk, a locked archive) is a
        problem reported at the end, and the stream goes on."""
        try:
            fields = record_fields(record)
            if self.jsonl:
                self.jsonl.write(json.dumps(fields) + "\n")
                self.jsonl.flush()
            keep = self.archive is not None and self.archive.should_keep(record.verdict)
            if self.overlays or keep or self.page:
                await asyncio.to_thread(self._pictures, record, fields, result, frame, keep)
            if frame.key is not None:
                await asyncio.to_thread(self._file_done, record, frame)
        except (OSError, sqlite3.Error, ValueError) as err:
            self.problems.append(f"{record.frame_id}: {type(err).__name__}: {err}")

    def _pictures(self, record, fields: dict, result: pb.InspectionResult,
                  frame: SourceFrame, keep: bool) -> None:
        try:
            pixels = frame.image()
        except ValueError:  # a file the server could not decode either: no picture
            pixels = None
        picture = overlay(pixels, result) if pixels is not None else None
        if self.overlays and picture is not None:
            self.overlays.mkdir(parents=True, exist_ok=True)
            picture.save(self.overlays / f"{result.sequence:06d}-{safe_name(result.frame_id)}"
                         f".png")
        archived = None
        if keep:
            row = {**fields, "model": result.model, "model_version": result.model_version}
            overlay_png = png_bytes(picture) if picture is not None else None
            try:
                archived = self.archive.add(row, original_bytes(frame), overlay_png)
            except ValueError:  # a file neither PNG nor JPEG (BMP): kept as a PNG
                if pixels is None:
                    self.problems.append(f"{record.frame_id}: not archived: neither PNG nor "
                                         "JPEG, and it cannot be decoded")
                else:
                    archived = self.archive.add(row, encode_png(pixels), overlay_png)
        if self.page is not None:
            thumb = None
            if picture is not None:
                small = picture.copy()
                small.thumbnail((THUMBNAIL, THUMBNAIL))
                thumb = png_bytes(small)
            self.page.add(fields, result.model_version, thumb, archived)

    def _file_done(self, record, frame: SourceFrame) -> None:
        """A hot folder's file answered: logged, and moved to done/ or failed/ if asked."""
        verdict = record.verdict if record.error is None else "ERROR"
        if self.move_by_verdict is not None and frame.path is not None:
            target = self.move_by_verdict / ("done" if verdict == "PASS" else "failed")
            target.mkdir(parents=True, exist_ok=True)
            destination, n = target / frame.path.name, 1
            while destination.exists():  # a file of that name answered before
                destination = target / f"{frame.path.stem}-{n}{frame.path.suffix}"
                n += 1
            try:
                shutil.move(frame.path, destination)
            except OSError as err:
                self.problems.append(f"{frame.path}: not moved to {target}: {err}")
        if self.sent_log is not None:
            self.sent_log.add(frame.key, verdict)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
