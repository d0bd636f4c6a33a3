"""The streaming client's memory while it streams 10,000 frames from a folder: flat, since
each file is read when its turn comes and each result is written as it arrives.

    python -m bench.client_memory [--bundle bundles/default] [--frames 10000]

Writes a folder of distinct PNG files (MNIST test digits, cycled, each with its number
drawn in), serves the bundle (`anogan-serve`, fast mode), runs `anogan-client --folder`
with --jsonl and --archive (every 50th PASS and every FAIL kept) in its own process, and
samples the client's resident memory (VmRSS) against the results written so far. Writes
bench/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anogan_inspect.clients.launcher import ServerProcess
from bench.common import ROOT, header, markdown_table

TEST_CSV = ROOT / "data" / "mnist_test.csv.gz"


def write_frames(folder: Path, count: int) -> None:
    with gzip.open(TEST_CSV, "rt") as csv:
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)
    digits = rows[:, 1:].reshape(-1, 28, 28)
    for i in range(count):
        image = digits[i % len(digits)].copy()
        image[0, :] = np.unpackbits(np.array([i >> 8, i & 255], np.uint8))[:28 // 2].repeat(2)
        Image.fromarray(image).save(folder / f"part-{i:06d}.png")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run(bundle: Path, frames: int) -> tuple[list[dict], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "frames"
        folder.mkdir()
        write_frames(folder, frames)
        server = ServerProcess([str(bundle)], tmp / "server.log", cwd=ROOT)
        jsonl = tmp / "results.jsonl"
        try:
            started = time.time()
            client = subprocess.Popen(
                [sys.executable, "-m", "anogan_inspect.clients.stream_client", "--target",
                 server.target, "--folder", str(folder), "--mode", "fast", "--streams", "2",
                 "--quiet", "--jsonl", str(jsonl), "--archive", str(tmp / "archive"),
                 "--archive-pass-every", "50"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            samples = []
            while client.poll() is None:
                rss = rss_kib(client.pid)
                done = sum(1 for _ in open(jsonl)) if jsonl.exists() else 0
                if rss is not None:
                    samples.append({"seconds": round(time.time() - started, 1),
                                    "frames_answered": done, "rss_mib": round(rss / 1024, 1)})
                time.sleep(0.25)
            output = client.stdout.read()
            seconds = time.time() - started
        finally:
            server.stop()
        answered = sum(1 for _ in open(jsonl))
    return samples, {"frames": frames, "answered": answered, "exit": client.returncode,
                     "seconds": round(seconds, 1), "summary": output.strip().splitlines()[-2:]}


def milestones(samples: list[dict], frames: int) -> list[dict]:
    """The client's memory when 10 %, 25 %, 50 %, 75 % and all of the frames were answered."""
    rows = []
    for share in (0.1, 0.25, 0.5, 0.75, 1.0):
        want = int(frames * share)
        sample = next((s for s in samples if s["frames_answered"] >= want), samples[-1])
        rows.append({"frames answered": sample["frames_answered"],
                     "seconds": sample["seconds"], "client RSS MiB": sample["rss_mib"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--name", default="cpu-client-memory")
    args = parser.parse_args(argv)
    meta = header(["python", "-m", "bench.client_memory", *(argv or sys.argv[1:])])
    samples, outcome = run(args.bundle, args.frames)
    rows = milestones(samples, args.frames)
    peak = max(s["rss_mib"] for s in samples)
    after_first = next(r for r in rows if r["frames answered"] >= args.frames // 10)
    out = ROOT / "bench" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(
        {**meta, **outcome, "peak_rss_mib": peak, "milestones": rows, "samples": samples},
        indent=2) + "\n")
    table = markdown_table(rows)
    (out / f"{args.name}.md").write_text(
        f"# The client's memory over {args.frames:,} frames from a folder\n\n"
        f"`{meta['command']}` on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"{meta['date']}, {meta['machine']['git_describe']}; `anogan-client --folder` (fast "
        f"mode, 2 streams, --jsonl, --archive) against `anogan-serve {args.bundle.name}`: "
        f"{outcome['answered']:,} of {outcome['frames']:,} answered in {outcome['seconds']} s, "
        f"exit {outcome['exit']}.\n\n{table}\n"
        f"Peak {peak} MiB; {peak - after_first['client RSS MiB']:+.1f} MiB from "
        f"{after_first['frames answered']:,} frames answered to the end.\n")
    print(table)
    return 0 if outcome["exit"] == 0 and outcome["answered"] == args.frames else 1


if __name__ == "__main__":
    sys.exit(main())
