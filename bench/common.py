"""Shared pieces of the benchmarks: the context, the machine's description, timing, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import Bundle, load_torch_models, read_bundle
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels

ROOT = Path(__file__).resolve().parent.parent
TEST_CSV = ROOT / "data" / "mnist_test.csv.gz"
TRAIN_CSV = ROOT / "data" / "mnist_train.csv.gz"


@dataclass
class Context:
    """What every section gets: the bundle, the device, the budget (quick or full)."""

    bundle_path: Path
    device: str
    quick: bool
    out_dir: Path
    seed_run: Path
    tiled_bundle_path: Path | None = None  # the tiles section's bundle
    _cache: dict = field(default_factory=dict)

    @property
    def bundle(self) -> Bundle:
        if "bundle" not in self._cache:
            self._cache["bundle"] = read_bundle(self.bundle_path)
        return self._cache["bundle"]

    def models(self) -> ScoringModels:
        if "models" not in self._cache:
            self._cache["models"] = load_torch_models(self.bundle, self.device)
        return self._cache["models"]

    def test_set(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The 300 labelled test digits at the bundle's geometry: (x, is_anomaly, labels)."""
        if "test" not in self._cache:
            from anogan_inspect.datasets import load_dataset

            data = load_dataset(TEST_CSV, normal_labels=[7, 8], anomaly_labels=[2])
            x = to_model_input(data.images, self.bundle.image_size, self.bundle.channels)
            self._cache["test"] = (x, data.is_anomaly, data.labels, data.images)
        return self._cache["test"][:3]

    def raw_test_images(self) -> np.ndarray:
        """The test digits as loaded, (N, 1, 28, 28) in [0, 1] (what clients send)."""
        self.test_set()
        return self._cache["test"][3]


def machine() -> dict:
    """CPU model, cores, library versions and the device: recorded with every result."""
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info.update(git_version())
    return info


def git_version() -> dict:
    """The commit and `git describe --always --dirty`: a result made from uncommitted code
    says so ("...-dirty"); empty strings outside a git checkout."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    return {"git_commit": git("rev-parse", "--short", "HEAD"),
            "git_describe": git("describe", "--always", "--dirty")}


def header(command: list[str] | None = None) -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(command or sys.argv), "machine": machine()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], device: str, min_seconds: float, warmup: int = 2,
         max_iterations: int = 10_000) -> float:
    """Units per second of fn (which returns how many units one call did), after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    done, started = 0, time.perf_counter()
    for _ in range(max_iterations):
        done += fn()
        if time.perf_counter() - started >= min_seconds:
            break
    sync(device)
    return done / (time.perf_counter() - started)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub table of dict rows (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, ctx: Context, name: str) -> Path:
    """Save a matplotlib figure as ctx.out_dir/<name>.png and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
