"""The client's reject archive (`anogan-client --archive DIR`): every FAIL and ERROR frame, and
every N-th PASS frame (`--archive-pass-every N`), kept on disk as sent, with its overlay and
its result, under a size bound, and indexed in SQLite so that an operator can find them again
by time, model, verdict and score (`anogan-client archive list|show|export`).

Layout of DIR::

    index.sqlite3                      the index (WAL mode: -wal and -shm beside it while open)
    frames/NNNNNNNN-<frame id>.png     the original frame (.jpg when it was sent as JPEG)
    frames/NNNNNNNN-<frame id>.overlay.png  its overlay, when there is one

Schema version 1 (`SCHEMA`)::

    frames  one row per kept frame
      id         INTEGER PRIMARY KEY AUTOINCREMENT; never reused, so an id written down in a
                 report names that frame or, once it has aged out, nothing
      time       REAL, UTC unix seconds: the result's own, else when it was archived
                 (`datetime(time, 'unixepoch')` in the sqlite3 shell)
      model      TEXT, version TEXT: the model that judged it ('' when the result did not say)
      frame_id   TEXT, sequence INTEGER: as the client sent the frame
      verdict    TEXT: 'PASS', 'FAIL' or 'ERROR'
      score      REAL, threshold REAL: NULL for an ERROR frame
      stage      TEXT: the stage that decided ('FAST', 'SEARCH', ...; '' when unknown)
      original   TEXT: the original's path, relative to DIR
      overlay    TEXT: the overlay's path, relative to DIR, or NULL
      bytes      INTEGER: the two files' total size
      result     TEXT: the client's whole result record, as JSON
      indexes on time, (model, time), (verdict, time) and score
    meta    key TEXT PRIMARY KEY, value: 'schema_version' (1), and 'bytes', the sum of
            frames.bytes, which triggers keep in the same transaction as the rows

Size bound: the frame files' total size (file sizes, not disk blocks) stays at or under
`max_bytes`: the transaction that inserts a frame also deletes the oldest rows (by id) until
the sum fits, and their files go once it has committed. The index is not counted: it holds
about a kilobyte a frame, and its WAL file, which SQLite folds back into the index every
1000 pages (about 4 MB).

Crash safety (a kill -9 or a power cut leaves no row naming a missing file and no corrupt
index): a frame's files are written under temporary names, fsynced, renamed into place and
the folder fsynced, and only then is its row inserted, all inside one SQLite write
transaction. Rows go before their files: an eviction deletes the rows, commits, and only then
unlinks. So a crash can leave files that no row names (renamed but not committed, or evicted
but not yet unlinked), never the opposite; opening the archive for writing deletes every file
under frames/ that no row names. The index is SQLite in WAL mode, which survives the crash
of any writer.

Concurrency: one `Archive` may be shared by threads (the client calls it through
`asyncio.to_thread`): a lock serialises them on its one connection. Writers in other
processes wait for SQLite's write lock, which each add and the orphan sweep hold throughout,
so a sweep never takes another writer's files in flight for orphans. Readers
(`anogan-client archive`, `read_only=True`) never block the writer, nor it them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
INDEX = "index.sqlite3"
FRAMES = "frames"
TEMPORARY = ".tmp-"  # prefix of a file being written; never named by a row
VERDICTS = ("PASS", "FAIL", "ERROR")
# One row as `list` and `export` give it (`get` adds bytes, result and absolute paths).
COLUMNS = ("id", "time", "model", "version", "frame_id", "sequence", "verdict", "score",
           "threshold", "stage", "original", "overlay")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    frame_id TEXT NOT NULL,
    sequence INTEGER,
    verdict TEXT NOT NULL CHECK (verdict IN ('PASS', 'FAIL', 'ERROR')),
    score REAL,
    threshold REAL,
    stage TEXT NOT NULL,
    original TEXT NOT NULL,
    overlay TEXT,
    bytes INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_time ON frames (time);
CREATE INDEX IF NOT EXISTS frames_model_time ON frames (model, time);
CREATE INDEX IF NOT EXISTS frames_verdict_time ON frames (verdict, time);
CREATE INDEX IF NOT EXISTS frames_score ON frames (score);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS frames_bytes_in AFTER INSERT ON frames BEGIN
    UPDATE meta SET value = value + NEW.bytes WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS frames_bytes_out AFTER DELETE ON frames BEGIN
    UPDATE meta SET value = value - OLD.bytes WHERE key = 'bytes';
END;
"""


class ArchiveError(ValueError):
    """The folder holds no archive, or one this code cannot read."""


class Archive:
    """A reject archive in `directory` (see the module docstring).

    For writing (the default) the folder and its index are created when missing, and files
    that no row names are deleted. `read_only=True` is for queries: it never creates or
    changes anything, and raises ArchiveError when the folder holds no index."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 30, pass_every: int = 0, *,
                 read_only: bool = False):
        if max_bytes <= 0 or pass_every < 0:
            raise ValueError("max_bytes must be positive and pass_every at least 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.pass_every = pass_every
        self.read_only = read_only
        self._frames = self.directory / FRAMES
        self._passes = 0
        # Its own lock: the client may call should_keep on its event loop while an add holds
        # the connection's lock through its fsyncs in a worker thread.
        self._passes_lock = threading.Lock()
        self._lock = threading.Lock()
        index = self.directory / INDEX
        if read_only:
            if not index.is_file():
                raise ArchiveError(f"no archive in {self.directory} (no {INDEX})")
            self._db = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False, isolation_level=None)
        else:
            self._frames.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(index, check_same_thread=False, isolation_level=None,
                                       timeout=30)
        self._db.row_factory = sqlite3.Row
        try:
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL, not NORMAL: an eviction unlinks files as soon as its transaction has
                # committed, so that commit must be on disk first; under NORMAL a power cut
                # could undo it and leave rows naming unlinked files. (A kill -9 alone would
                # be safe under NORMAL too; the cost is one more fsync a kept frame.)
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
            self._check_version()
            if not read_only:
                self._sweep()
        except BaseException:
            self._db.close()
            raise

    def _check_version(self) -> None:
        try:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise ArchiveError(f"{self.directory / INDEX} is not an archive index: "
                               f"{err}") from err
        if row is None or row[0] != SCHEMA_VERSION:
            raise ArchiveError(f"{self.directory / INDEX}: schema version "
                               f"{None if row is None else row[0]}, expected {SCHEMA_VERSION}")

    def _sweep(self) -> None:
        """Delete the files under frames/ that no row names: what a crash left behind (see
        the module docstring). Under the write lock, so no other writer is mid-add."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            named = {name for row in self._db.execute("SELECT original, overlay FROM frames")
                     for name in row if name}
            for entry in os.scandir(self._frames):
                if entry.is_file() and f"{FRAMES}/{entry.name}" not in named:
                    Path(entry.path).unlink(missing_ok=True)
        finally:
            self._db.execute("COMMIT")

    def should_keep(self, verdict: str) -> bool:
        """Whether the client should archive a frame with this verdict: every frame that did
        not pass (FAIL, ERROR, or a client's UNSPECIFIED), and every pass_every-th PASS
        (none when pass_every is 0). Counts PASS frames, so call it once a frame."""
        if verdict != "PASS":
            return True
        if not self.pass_every:
            return False
        with self._passes_lock:
            self._passes += 1
            return self._passes % self.pass_every == 0

    def add(self, record: Mapping[str, Any], original: bytes,
            overlay_png: bytes | None = None) -> int | None:
        """Archive one frame; its row id, or None when its files alone exceed max_bytes.

        `record` is the client's result record (a JSON-able mapping, kept whole as `result`);
        the index reads frame_id, sequence, verdict ('PASS'/'FAIL'; 'ERROR', or
        'UNSPECIFIED' or any `error` message, for an ERROR), score, threshold, stage, model,
        model_version and time (UTC unix seconds; default now). `original` is the frame as
        PNG or JPEG bytes (raw pixels: `encode_png`), `overlay_png` its overlay as PNG.
        Evicts the oldest frames as the size bound needs."""
        if self.read_only:
            raise ArchiveError(f"{self.directory} is open read-only")
        verdict = _verdict(record)
        result = json.dumps(dict(record))  # first: a bad record fails before any file is written
        suffix = image_suffix(original)
        if overlay_png is not None and image_suffix(overlay_png) != ".png":
            raise ValueError("the overlay must be PNG bytes")
        size = len(original) + len(overlay_png or b"")
        if size > self.max_bytes:
            return None
        error = verdict == "ERROR"
        written: list[Path] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # waits for any other writer
            try:
                row_id = self._next_id()
                stem = f"{FRAMES}/{row_id:08d}-{_safe(str(record.get('frame_id', '')))}"
                original_name = stem + suffix
                written.append(self._write(original_name, original))
                overlay_name = None
                if overlay_png is not None:
                    overlay_name = stem + ".overlay.png"
                    written.append(self._write(overlay_name, overlay_png))
                _fsync_directory(self._frames)  # the renames are on disk before the row
                self._db.execute(
                    "INSERT INTO frames (id, time, model, version, frame_id, sequence, verdict,"
                    " score, threshold, stage, original, overlay, bytes, result)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row_id, float(record.get("time") or time.time()),
                     str(record.get("model") or ""), str(record.get("model_version") or ""),
                     str(record.get("frame_id", "")), record.get("sequence"), verdict,
                     None if error else _float(record.get("score")),
                     None if error else _float(record.get("threshold")),
                     str(record.get("stage") or ""), original_name, overlay_name, size,
                     result))
                evicted = self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # not when COMMIT itself ended it
                    self._db.execute("ROLLBACK")
                for path in written:  # else orphans until the next open
                    path.unlink(missing_ok=True)
                raise
        for name in evicted:  # rows first (committed above), then their files
            (self.directory / name).unlink(missing_ok=True)
        return row_id

    def _next_id(self) -> int:
        """The id the frame being added will have: files are named after it before its row
        exists. Safe because the caller holds the write lock."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").fetchone()
        return (row[0] if row else 0) + 1

    def _write(self, name: str, data: bytes) -> Path:
        """Write `data` under a temporary name, fsync, rename into place: the file under its
        final name is whole or absent."""
        path = self.directory / name
        temporary = path.with_name(TEMPORARY + path.name)
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        return path

    def _evict(self) -> list[str]:
        """Delete the oldest rows until the total fits the bound; their files' names, to
        unlink once the deletion has committed."""
        total = self._total()
        if total <= self.max_bytes:
            return []
        names, last = [], None
        rows = self._db.execute("SELECT id, bytes, original, overlay FROM frames ORDER BY id")
        for row_id, size, original, overlay in rows:
            if total <= self.max_bytes:
                break
            total -= size
            last = row_id
            names += [name for name in (original, overlay) if name]
        rows.close()
        self._db.execute("DELETE FROM frames WHERE id <= ?", (last,))
        return names

    def _total(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]

    def list(self, since: float | None = None, until: float | None = None,
             model: str | None = None, verdict: str | None = None,
             min_score: float | None = None, max_score: float | None = None,
             limit: int | None = 100, newest_first: bool = True) -> list[dict]:
        """The rows that match, as dicts of COLUMNS (paths relative to the folder), by time.
        since ≤ time < until (unix seconds); a score bound leaves out ERROR frames."""
        where, parameters = _where(since, until, model, verdict, min_score, max_score)
        order = "DESC" if newest_first else "ASC"
        query = (f"SELECT {', '.join(COLUMNS)} FROM frames {where} "
                 f"ORDER BY time {order}, id {order}")
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(limit)
        with self._lock:
            return [dict(row) for row in self._db.execute(query, parameters)]

    def get(self, row_id: int) -> dict | None:
        """One row with everything: COLUMNS, bytes, the result parsed, and the files'
        absolute paths as original_path and overlay_path (None without an overlay)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM frames WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            return None
        frame = dict(row)
        frame["result"] = json.loads(frame["result"])
        root = self.directory.resolve()
        frame["original_path"] = str(root / frame["original"])
        frame["overlay_path"] = str(root / frame["overlay"]) if frame["overlay"] else None
        return frame

    def export_csv(self, out: TextIO, since: float | None = None, until: float | None = None,
                   model: str | None = None, verdict: str | None = None,
                   min_score: float | None = None, max_score: float | None = None,
                   limit: int | None = None) -> int:
        """Write the matching rows as CSV (a header of COLUMNS; time as ISO 8601 UTC, oldest
        first, empty cells for NULL); the number of rows written."""
        rows = self.list(since, until, model, verdict, min_score, max_score, limit,
                         newest_first=False)
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([iso_time(row[c]) if c == "time" else row[c] for c in COLUMNS])
        return len(rows)

    def stats(self) -> dict:
        """rows, bytes (the frame files' total) and the oldest and newest time (or None)."""
        with self._lock:
            rows, oldest, newest = self._db.execute(
                "SELECT COUNT(*), MIN(time), MAX(time) FROM frames").fetchone()
            return {"rows": rows, "bytes": self._total(), "oldest": oldest, "newest": newest}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_png(pixels: np.ndarray) -> bytes:
    """A raw uint8 (H, W, C) frame as PNG bytes, for `Archive.add`: lossless, so the archived
    frame is exactly the one the server judged."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_suffix(data: bytes) -> str:
    """'.png' or '.jpg', from the bytes' signature (a frame's name says what it holds)."""
    if data.startswith(PNG_SIGNATURE):
        return ".png"
    if data.startswith(JPEG_SIGNATURE):
        return ".jpg"
    raise ValueError("an archived frame must be PNG or JPEG bytes (raw pixels: encode_png)")


def iso_time(seconds: float) -> str:
    """UTC unix seconds → '2024-05-01T12:00:00.123Z'."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date or time (UTC unless it says otherwise) → unix
    seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: give unix seconds or ISO 8601, "
                         "e.g. 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _verdict(record: Mapping[str, Any]) -> str:
    """The index's verdict: ERROR for a frame that came back with an error (the client's
    record then says UNSPECIFIED and carries the message), else PASS or FAIL."""
    verdict = str(record.get("verdict", ""))
    if record.get("error") or verdict in ("UNSPECIFIED", "ERROR"):
        return "ERROR"
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    return verdict


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _safe(frame_id: str) -> str:
    """A frame id as part of a file name (as overlay.save_overlay does), kept short."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in frame_id)[:64]


def _fsync_directory(directory: Path) -> None:
    """Make renames in `directory` durable (POSIX; Windows has no directory handle for it)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _where(since, until, model, verdict, min_score, max_score) -> tuple[str, list]:
    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    clauses, parameters = [], []
    for clause, value in (("time >= ?", since), ("time < ?", until), ("model = ?", model),
                          ("verdict = ?", verdict), ("score >= ?", min_score),
                          ("score <= ?", max_score)):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), parameters


def build_archive_parser() -> argparse.ArgumentParser:
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters")
    group.add_argument("--since", metavar="TIME",
                       help="from this time on: unix seconds or ISO 8601 (UTC unless it says)")
    group.add_argument("--until", metavar="TIME", help="before this time")
    group.add_argument("--model", help="this model's frames only")
    group.add_argument("--verdict", choices=VERDICTS)
    group.add_argument("--min-score", type=float, help="score at least this (no ERROR frames)")
    group.add_argument("--max-score", type=float, help="score at most this (no ERROR frames)")
    parser = argparse.ArgumentParser(
        prog="anogan-client archive",
        description="Query a reject archive written by `anogan-client --archive DIR`.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[filters],
                                  help="the newest matching frames, one line each")
    listing.add_argument("dir", type=Path, metavar="DIR")
    listing.add_argument("--limit", type=int, default=100, help="at most N frames")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    show = commands.add_parser("show", help="one frame: its row and result as JSON, with the "
                                            "absolute paths of its files")
    show.add_argument("dir", type=Path, metavar="DIR")
    show.add_argument("id", type=int, metavar="ID")
    export = commands.add_parser("export", parents=[filters],
                                 help="the matching frames as CSV, oldest first")
    export.add_argument("dir", type=Path, metavar="DIR")
    export.add_argument("--csv", required=True, metavar="FILE", help="output file, - for stdout")
    return parser


def archive_main(argv: list[str]) -> int:
    """`anogan-client archive ...`: 0, or 2 (one error line) when the folder holds no
    archive, the id is unknown or a time cannot be read. Never creates an index."""
    try:
        args = build_archive_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has already printed
        return int(stop.code or 0)
    try:
        with Archive(args.dir, read_only=True) as archive:
            if args.command == "show":
                frame = archive.get(args.id)
                if frame is None:
                    raise ArchiveError(f"no frame {args.id} in {args.dir}")
                print(json.dumps(frame, indent=2))
                return 0
            filters = {"since": None if args.since is None else parse_time(args.since),
                       "until": None if args.until is None else parse_time(args.until),
                       "model": args.model, "verdict": args.verdict,
                       "min_score": args.min_score, "max_score": args.max_score}
            if args.command == "list":
                _print_list(archive.list(**filters, limit=args.limit), args.json)
            elif args.csv == "-":
                archive.export_csv(sys.stdout, **filters)
            else:
                with open(args.csv, "w", newline="") as out:
                    archive.export_csv(out, **filters)
    except (ArchiveError, ValueError, OSError, sqlite3.Error) as err:
        print(f"anogan-client archive: error: {err}", file=sys.stderr)
        return 2
    return 0


def _print_list(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'id':>8} {'time (UTC)':<24} {'model':<16} {'version':<10} {'frame':<24} "
          f"{'verdict':<7} {'score':>10}")
    for row in rows:
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        print(f"{row['id']:>8} {iso_time(row['time']):<24} {row['model']:<16} "
              f"{row['version']:<10} {row['frame_id']:<24} {row['verdict']:<7} {score:>10}")
