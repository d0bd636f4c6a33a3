"""A hot folder filling at 20 files/s for a minute, streamed by `anogan-client --watch`.

    python -m bench.hot_folder [--bundle bundles/default] [--seconds 60] [--rate 20]

An acquisition thread writes MNIST test digits as PNG files of mixed sizes (28, 40 and 64
pixels) into a folder at --rate files/s for --seconds: most renamed into place whole, every
10th written in two halves 0.3 s apart, every 15th cut short for good (half its bytes). The
client (its own process, fast mode, 2 streams) watches the folder against `anogan-serve`
and stops 3 s after the last file settles; then it is started again on the same folder,
with one more file, and must send only that one. Writes bench/results/<name>.md and .json:
files written, answered, answered twice, missing, truncated files with an error, and what
the restart sent.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from anogan_inspect.clients.launcher import ServerProcess
from bench.common import ROOT, header, markdown_table

TEST_CSV = ROOT / "data" / "mnist_test.csv.gz"


def png(image: np.ndarray, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def acquisition(folder: Path, seconds: float, rate: float) -> dict[str, str]:
    """Write the files on the schedule; name → "whole" or "cut"."""
    with gzip.open(TEST_CSV, "rt") as csv:
        digits = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)[:, 1:] \
            .reshape(-1, 28, 28)
    kinds: dict[str, str] = {}
    started = time.monotonic()
    for i in range(int(seconds * rate)):
        time.sleep(max(0.0, started + i / rate - time.monotonic()))
        data, name = png(digits[i % len(digits)], (28, 40, 64)[i % 3]), f"part-{i:05d}.png"
        if i % 15 == 7:
            (folder / name).write_bytes(data[:len(data) // 2])
            kinds[name] = "cut"
            continue
        if i % 10 == 3:
            def halves(path=folder / name, data=data):
                with open(path, "wb") as file:
                    file.write(data[:len(data) // 2])
                    file.flush()
                    time.sleep(0.3)
                    file.write(data[len(data) // 2:])
            threading.Thread(target=halves).start()
        else:
            (folder / f".{name}.tmp").write_bytes(data)
            os.replace(folder / f".{name}.tmp", folder / name)
        kinds[name] = "whole"
    return kinds


def watch(target: str, folder: Path, jsonl: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "anogan_inspect.clients.stream_client", "--target", target,
         "--watch", str(folder), "--mode", "fast", "--streams", "2", "--settle", "1",
         "--idle-exit", "3", "--quiet", "--jsonl", str(jsonl)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def run(bundle: Path, seconds: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "hot"
        folder.mkdir()
        server = ServerProcess([str(bundle)], tmp / "server.log", cwd=ROOT)
        try:
            kinds: dict[str, str] = {}
            writer = threading.Thread(target=lambda: kinds.update(
                acquisition(folder, seconds, rate)))
            writer.start()
            first = watch(server.target, folder, tmp / "first.jsonl")
            writer.join()
            (folder / "late.png").write_bytes((folder / "part-00000.png").read_bytes())
            second = watch(server.target, folder, tmp / "second.jsonl")
        finally:
            server.stop()
        answered = [json.loads(line) for line in (tmp / "first.jsonl").read_text().splitlines()]
        again = [json.loads(line)["frame_id"]
                 for line in (tmp / "second.jsonl").read_text().splitlines()]
    counts = Counter(r["frame_id"] for r in answered)
    by_name = {r["frame_id"]: r for r in answered}
    whole = [n for n, k in kinds.items() if k == "whole"]
    cut = [n for n, k in kinds.items() if k == "cut"]
    return {
        "files written": len(kinds), "whole": len(whole), "cut short": len(cut),
        "answered": len(answered), "answered twice": sum(c > 1 for c in counts.values()),
        "missing": len(set(kinds) - set(counts)),
        "whole, scored": sum(by_name.get(n, {}).get("error") is None and n in by_name
                             for n in whole),
        "cut short, error": sum(bool(by_name.get(n, {}).get("error")) for n in cut),
        "restart sent": ", ".join(again) or "nothing",
        "client exits": f"{first.returncode}, {second.returncode}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_folder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="files/s")
    parser.add_argument("--name", default="cpu-hot-folder")
    args = parser.parse_args(argv)
    meta = header(["python", "-m", "bench.hot_folder", *(argv or sys.argv[1:])])
    row = run(args.bundle, args.seconds, args.rate)
    out = ROOT / "bench" / "results"
    (out / f"{args.name}.json").write_text(json.dumps({**meta, **row}, indent=2) + "\n")
    table = markdown_table([row])
    (out / f"{args.name}.md").write_text(
        f"# A hot folder at {args.rate:g} files/s for {args.seconds:g} s\n\n"
        f"`{meta['command']}` on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"{meta['date']}, {meta['machine']['git_describe']}: `anogan-client --watch` (fast "
        f"mode, 2 streams) against `anogan-serve {args.bundle.name}`, then restarted on the "
        f"same folder with one file more.\n\n{table}")
    print(table)
    ok = row["answered twice"] == 0 and row["missing"] == 0 and \
        row["restart sent"] == "late.png" and row["whole, scored"] == row["whole"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
