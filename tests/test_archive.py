"""The client's reject archive on real SQLite and real files: what it keeps, its queries and
CSV, its size bound, a kill -9 in the middle of adds, and `anogan-client archive`."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from anogan_inspect.clients.archive import (
    FRAMES,
    INDEX,
    PNG_SIGNATURE,
    Archive,
    archive_main,
    encode_png,
    iso_time,
)

T0 = 1_700_000_000.0  # frames' times: T0 + their number


def record(i: int, verdict: str, model: str = "digits", score: float | None = None) -> dict:
    """A result record like the client's (an error frame says UNSPECIFIED, with a message)."""
    error = "compute failed" if verdict == "UNSPECIFIED" else None
    return {"frame_id": f"cam-{i:04d}", "sequence": i, "verdict": verdict, "error": error,
            "score": None if error else (float(i) if score is None else score),
            "threshold": None if error else 10.0, "stage": "FAST", "model": model,
            "model_version": "3", "time": T0 + i}


def blob(i: int, size: int) -> bytes:
    """`size` bytes that read as a PNG (the archive looks at the signature only)."""
    return PNG_SIGNATURE + np.random.default_rng(i).bytes(size - len(PNG_SIGNATURE))


def files_on_disk(directory: Path) -> set[str]:
    return {f"{FRAMES}/{path.name}" for path in (directory / FRAMES).iterdir()}


def named_by_rows(index: Path) -> set[str]:
    with sqlite3.connect(index) as db:
        return {name for row in db.execute("SELECT original, overlay FROM frames")
                for name in row if name}


def test_keeps_fail_error_and_every_nth_pass_and_queries_them(tmp_path):
    rng = np.random.default_rng(0)
    verdicts = ["PASS", "PASS", "FAIL", "PASS", "UNSPECIFIED", "PASS", "PASS", "FAIL", "PASS"]
    kept: dict[int, tuple[str, bytes]] = {}
    with Archive(tmp_path / "archive", pass_every=3) as archive:
        for i, verdict in enumerate(verdicts * 2):
            if not archive.should_keep(verdict):
                continue
            original = encode_png(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8))
            overlay = encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            model = "digits" if i % 2 else "texture"
            row_id = archive.add(record(i, verdict, model), original,
                                 None if verdict == "PASS" else overlay)
            kept[row_id] = (verdict, original)
        # 12 PASS frames, every 3rd kept (3, 8, 12, 17); all 4 FAIL and 2 ERROR frames
        assert [row["sequence"] for row in archive.list(verdict="PASS", newest_first=False)] \
            == [3, 8, 12, 17]
        assert len(kept) == 4 + 4 + 2

        fails = archive.list(verdict="FAIL")
        assert [row["frame_id"] for row in fails] == ["cam-0016", "cam-0011", "cam-0007",
                                                      "cam-0002"]  # newest first
        errors = archive.list(verdict="ERROR")
        assert len(errors) == 2 and all(row["score"] is None for row in errors)
        assert {row["model"] for row in archive.list(model="digits")} == {"digits"}
        window = archive.list(since=T0 + 5, until=T0 + 12, newest_first=False)
        assert [row["sequence"] for row in window] == [7, 8, 11]
        assert [row["score"] for row in archive.list(min_score=11)] == [17, 16, 12, 11]
        assert len(archive.list(limit=2)) == 2

        out = io.StringIO()
        assert archive.export_csv(out, verdict="FAIL") == 4
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert [int(row["id"]) for row in rows] == [row["id"] for row in reversed(fails)]
        for exported, listed in zip(rows, reversed(fails)):
            assert exported["time"] == iso_time(listed["time"])
            assert float(exported["score"]) == listed["score"]
            assert exported["original"] == listed["original"]

        for row_id, (verdict, original) in kept.items():
            frame = archive.get(row_id)
            assert Path(frame["original_path"]).read_bytes() == original
            assert (frame["overlay_path"] is None) == (verdict == "PASS")
            if frame["overlay_path"]:
                assert Path(frame["overlay_path"]).is_file()
            assert frame["result"]["verdict"] == verdict
        assert archive.get(999) is None
        assert archive.stats()["rows"] == len(kept)


def test_size_bound_keeps_the_newest_frames_and_their_files_only(tmp_path):
    directory, bound = tmp_path / "archive", 50_000
    with Archive(directory, max_bytes=bound) as archive:
        ids = [archive.add(record(i, "FAIL"), blob(i, 1500), blob(i + 1000, 500))
               for i in range(100)]
        assert archive.add(record(100, "FAIL"), blob(100, bound + 1)) is None  # never fits
        stats = archive.stats()
        kept = archive.list(limit=None, newest_first=False)
    assert [row["id"] for row in kept] == ids[-len(kept):]  # the newest, and no gap
    assert len(kept) == bound // 2000 == stats["rows"]
    on_disk = files_on_disk(directory)
    assert on_disk == named_by_rows(directory / INDEX)  # no row without files, nor the reverse
    assert sum((directory / name).stat().st_size for name in on_disk) == stats["bytes"] <= bound


WRITER = """
import sys
from pathlib import Path
import numpy as np
from anogan_inspect.clients.archive import PNG_SIGNATURE, Archive

archive = Archive(Path(sys.argv[1]), max_bytes=40_000)
rng = np.random.default_rng()
i = 0
while True:
    archive.add({"frame_id": f"f{i}", "sequence": i, "verdict": "FAIL", "score": 1.0},
                PNG_SIGNATURE + rng.bytes(2000), PNG_SIGNATURE + rng.bytes(400))
    i += 1
    if i == 50:
        print("added 50", flush=True)
"""


def test_kill_9_mid_adds_leaves_a_sound_index_and_no_stray_files(tmp_path):
    """SIGKILL a writer adding (and evicting) in a tight loop, at a few moments: the index
    passes SQLite's integrity check, every row's files exist even before the next open, the
    next open sweeps the files no row names, the bound holds and adds go on."""
    directory = tmp_path / "archive"
    for wait in (0.0, 0.03, 0.15):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline() == "added 50\n"
            time.sleep(wait)
        finally:
            writer.kill()
            writer.wait()
            writer.stdout.close()
        with sqlite3.connect(directory / INDEX) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0]
            assert db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0] == total
        assert total <= 40_000
        named = named_by_rows(directory / INDEX)
        assert named <= files_on_disk(directory)
        with Archive(directory, max_bytes=40_000) as archive:
            assert files_on_disk(directory) == named
            row_id = archive.add(record(0, "FAIL"), blob(0, 1000))
            assert Path(archive.get(row_id)["original_path"]).is_file()


def test_cli_list_show_export_and_errors(tmp_path, capsys):
    directory = tmp_path / "archive"
    with Archive(directory) as archive:
        for i, verdict in enumerate(["FAIL", "PASS", "FAIL", "UNSPECIFIED"]):
            archive.add(record(i, verdict), blob(i, 300))

    assert archive_main(["list", str(directory), "--verdict", "FAIL"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["id", "time", "(UTC)"]
    assert [line.split()[4] for line in lines[1:]] == ["cam-0002", "cam-0000"]
    assert lines[1].split()[1] == iso_time(T0 + 2)

    assert archive_main(["list", str(directory), "--json", "--since",
                         "2023-11-14T22:13:21Z"]) == 0  # T0 + 1
    assert [json.loads(line)["sequence"] for line in capsys.readouterr().out.splitlines()] \
        == [3, 2, 1]

    assert archive_main(["show", str(directory), "3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verdict"] == "FAIL" and Path(shown["original_path"]).read_bytes() == blob(2, 300)

    assert archive_main(["show", str(directory), "99"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"anogan-client archive: error: no frame 99 in {directory}\n"

    assert archive_main(["list", str(directory), "--until", "last week"]) == 2
    assert capsys.readouterr().err.startswith("anogan-client archive: error: bad time")

    out = tmp_path / "fails.csv"
    assert archive_main(["export", str(directory), "--csv", str(out), "--min-score", "1"]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(row["frame_id"], row["verdict"]) for row in rows] == [("cam-0001", "PASS"),
                                                                   ("cam-0002", "FAIL")]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert archive_main(["list", str(empty)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(empty.iterdir()) == []
