"""Texture-grade detection: memory bundles on three texture benchmarks, beside the pixels
baseline and the tiled AnoGAN, an ablation, and the memory's speed.

    python -m bench --sections memory [--quick]

For each benchmark (``grass``: clean frames; ``grass-varied``: normal frames that vary as a
line's do, subtler defects; ``weave``: clean frames of a generated woven fabric, a regular
texture; all from bench/texture_data.py), the data is generated and a
memory bundle trained with the Makefile's recipe (TEXTURE_TRAIN_ARGS, here RECIPE) when
missing, then:

- **methods**: ``anogan-train evaluate`` of the bundle, the memory beside ``pixels`` (raw
  8×8 patches every 2 px, the same frames and calibration) and the AnoGAN on the same tiles
  (``latent-fast``: z = E(tile)), overall and per defect type;
- **ablation**: the memory rebuilt from the bundle's own discriminator (its run's checkpoint)
  with one choice changed at a time: edge calibration, layers, neighbourhood, augmentation,
  patch standardisation, coreset against random, memory size;
- **speed**: 512×512 frames through a real `anogan-serve` (gRPC on loopback, CASCADE, map
  and regions asked for), the memory's build seconds and bytes, and the kNN stage's FLOP
  rate against this machine's matmul rate, measured in the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shlex
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.bundle import load_checked_models, load_memory_scorer, read_bundle
from anogan_inspect.clients.launcher import ServerProcess
from anogan_inspect.clients.sources import SourceFrame
from anogan_inspect.clients.stream_client import run_stream
from anogan_inspect.datasets import load_dataset
from anogan_inspect.memory import MemoryConfig, nearest_squared
from anogan_inspect.networks import Discriminator, ModelConfig
from anogan_inspect.trainer.cli import main as train_main
from anogan_inspect.trainer.evaluate_memory import (
    evaluate_memory,
    memory_scores,
    metrics_of,
    training_frames,
)
from anogan_inspect.trainer.evaluate_tiles import read_masks
from anogan_inspect.trainer.memory_bundle import build_memory
from bench import tiles_bench
from bench.common import ROOT, Context, markdown_table
from bench.texture_data import write_benchmark

# The texture recipe (the Makefile's TEXTURE_TRAIN_ARGS): a 16×16-tile GAN for 4 epochs of
# 20,000 sampled tiles, then a memory of 2,000 rows of its discriminator's two blocks joined
# on the second's grid (a location every 4 px).
RECIPE = ("--patch-size 16 --stride 8 --latent-dim 32 --epochs 4 --encoder-epochs 2 "
          "--samples-per-epoch 20000 --steps 30 --memory disc --layers 0,1 "
          "--memory-grid coarse --memory-size 2000 --holdout 0.15")
# name: (folder, normal variation, texture); weave is a regular texture beside the grass
BENCHMARKS = {"grass": (ROOT / "data" / "texture", False, "grass"),
              "grass-varied": (ROOT / "data" / "texture-varied", True, "grass"),
              "weave": (ROOT / "data" / "texture-weave", False, "weave")}
BUNDLES = ROOT / "bundles"
FRAME = 512
# One change at a time from the bundle's own configuration (None: the bundle as built).
ABLATION = [
    ("as built", {}),
    ("edges not calibrated", {"edge_margin": 0}),
    ("layers 0 (first block only)", {"layers": (0,)}),
    ("layers 1 (second block only)", {"layers": (1,)}),
    ("no neighbourhood average", {"aggregate": 1}),
    ("neighbourhood 5×5", {"aggregate": 5}),
    ("augmented memory", {"augment": True}),
    ("fine grid (stride 2)", {"grid": "fine"}),
    ("random subsample, not coreset", {"sampler": "random"}),
    ("memory 500", {"size": 500}),
    ("memory 8,000", {"size": 8000}),
    ("pixels", {"extractor": "pixels", "aggregate": 1}),
    ("pixels, standardised patches", {"extractor": "pixels", "aggregate": 1,
                                      "standardize": True}),
]
QUICK_ABLATION = [entry for entry in ABLATION if entry[0] in (
    "as built", "edges not calibrated", "random subsample, not coreset", "pixels")]


def ensure_benchmark(path: Path, variation: bool, texture: str = "grass") -> Path:
    if not (path / "train").is_dir():
        write_benchmark(path, variation=variation, texture=texture)
    return path


def ensure_bundle(data: Path, out: Path) -> Path:
    """The benchmark's memory bundle, trained with RECIPE when missing."""
    if not (out / "manifest.json").is_file():
        code = train_main(["train", "--data", str(data), *shlex.split(RECIPE), "--out",
                           str(out), "--run-dir", str(ROOT / "runs" / out.name),
                           "--device", "cpu"])
        if code != 0:
            raise RuntimeError(f"training {out} failed ({code})")
    return out


def discriminator_trunk(bundle_path: Path) -> torch.nn.Module:
    """The bundle's discriminator trunk as modules, from its training run's checkpoint."""
    bundle = read_bundle(bundle_path)
    checkpoint = ROOT / "runs" / bundle_path.name / "checkpoint.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = ModelConfig.from_dict(bundle.manifest["model"])
    discriminator = Discriminator(model)
    discriminator.load_state_dict(state["discriminator"])
    return discriminator.features.eval()


def ablation(bundle_path: Path, data_path: Path, quick: bool) -> list[dict]:
    """The memory rebuilt with one choice changed at a time; metrics on the test frames."""
    bundle = read_bundle(bundle_path)
    memory = bundle.memory
    base = MemoryConfig.from_dict({**memory, "layer_scales": ()})
    trunk = discriminator_trunk(bundle_path)
    train, heldout = training_frames(bundle, None)
    data = load_dataset(data_path, split="test")
    masks = read_masks(data_path, data)
    rows = []
    for name, change in (QUICK_ABLATION if quick else ABLATION):
        cfg = dataclasses.replace(base, **change)
        started = time.perf_counter()
        built = build_memory(cfg, train, heldout, bundle.tiling, bundle.channels,
                             memory["calibration"]["target_fpr"],
                             memory["calibration"]["pixel_quantile"], trunk=trunk)
        build_seconds = time.perf_counter() - started
        scored = dataclasses.replace(memory_scores(built.scorer, data.images,
                                                   bundle.tiling.scale, bundle.channels),
                                     threshold=built.manifest["image_threshold"])
        entry = metrics_of(scored, data, masks)
        rows.append({"variant": name, "dim": built.manifest["dim"],
                     "rows": built.manifest["rows"], "build_s": build_seconds,
                     **{k: entry.get(k) for k in ("image_auroc", "pixel_auroc", "pro_30",
                                                  "defective_failed_share",
                                                  "normal_failed_share")}})
        print(f"memory ablation, {data_path.name}: {rows[-1]}", flush=True)
    return rows


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate (GFLOP/s), as torch runs it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def knn_rate(bundle_path: Path, repeats: int = 3) -> dict:
    """The kNN stage on one 512×512 frame's features against the bundle's memory: GFLOP/s,
    beside the matmul rate measured just before."""
    bundle = read_bundle(bundle_path)
    scorer = load_memory_scorer(bundle)
    memory = next(b for name, b in scorer.named_buffers() if name.endswith("memory"))
    memory_sq = memory.pow(2).sum(1)
    stride = bundle.memory["stride"]
    locations = (FRAME // stride) ** 2
    features = torch.randn(locations, memory.shape[1])
    nearest_squared(features[:64], memory, memory_sq)
    matmul = matmul_rate()
    started = time.perf_counter()
    for _ in range(repeats):
        nearest_squared(features, memory, memory_sq)
    seconds = (time.perf_counter() - started) / repeats
    flops = 2 * locations * memory.shape[0] * memory.shape[1]
    return {"locations": locations, "memory_rows": int(memory.shape[0]),
            "dim": int(memory.shape[1]), "knn_seconds": seconds,
            "knn_gflop_per_s": flops / seconds / 1e9, "matmul_gflop_per_s": matmul,
            "share_of_matmul": flops / seconds / 1e9 / matmul}


def texture_frames(count: int, seed: int = 0) -> list[SourceFrame]:
    """The tiles section's 512×512 grass frames (every third with a bright bar), as sent."""
    return [SourceFrame(f"grass-{i:03d}", (frame[0, ..., None] * 255 + 0.5).astype(np.uint8),
                        i % 3 == 2) for i, frame in enumerate(tiles_bench.frames(count, seed))]


async def _stream(target: str, frames: list[SourceFrame], streams: int) -> tuple[list, float]:
    config = pb.InspectionConfig(mode=pb.MODE_CASCADE, return_residual_map=True)
    parts: list[list] = [[] for _ in range(streams)]
    for sequence, frame in enumerate(frames):
        parts[sequence % streams].append((sequence, frame))
    async with grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 120)
        stub = pb_grpc.InspectionServiceStub(channel)
        started = time.perf_counter()
        reports = await asyncio.gather(*(run_stream(stub, i, part, config, None, lambda r: None)
                                         for i, part in enumerate(parts)))
        seconds = time.perf_counter() - started
    return [r for report in reports for r in report.records], seconds


def serving_rate(bundle_path: Path, count: int, log_dir: Path) -> list[dict]:
    """512×512 frames through a real server in CASCADE with maps: frames/s, 1 and 2 streams."""
    frames = texture_frames(count)
    server = ServerProcess([str(bundle_path)], log_dir / "memory-server.log")
    rows = []
    try:
        asyncio.run(_stream(server.target, frames[:2], 1))  # warm-up
        for streams in (1, 2):
            records, seconds = asyncio.run(_stream(server.target, frames, streams))
            latencies = np.array([r.latency_ms for r in records])
            rows.append({"streams": streams, "frames": len(records),
                         "frames_per_s": len(records) / seconds,
                         "p50_ms": float(np.percentile(latencies, 50)),
                         "errors": sum(r.error is not None for r in records),
                         "fail": sum(r.verdict == "FAIL" for r in records)})
    finally:
        server.stop()
    return rows


def run(ctx: Context) -> dict:
    method_rows, per_defect_rows, ablation_rows, build_rows = [], [], [], []
    speed, knn = [], None
    for name, (data_path, variation, texture) in BENCHMARKS.items():
        data_path = ensure_benchmark(data_path, variation, texture)
        bundle_path = ensure_bundle(data_path, BUNDLES / f"memory-{name}")
        bundle = read_bundle(bundle_path)
        models = load_checked_models(bundle)
        data = load_dataset(data_path, split="test")
        baselines = ["pixels", "latent-fast"]
        report = evaluate_memory(bundle, models, bundle.search_config, data, data_path,
                                 ctx.out_dir / f"memory-{name}", "cpu", 256, baselines)
        print(f"memory methods, {name}: {json.dumps(report['methods'])}", flush=True)
        memory = bundle.manifest["memory"]
        build_rows.append({"benchmark": name,
                           "training_s": bundle.manifest["training"]["seconds"],
                           "memory_build_s": sum(memory["seconds"].values()),
                           "memory_rows": memory["rows"], "dim": memory["dim"],
                           "memory_bytes": memory["bytes"],
                           "heldout_fail_share": memory["calibration"]["heldout_fail_share"]})
        for method, entry in report["methods"].items():
            method_rows.append({"benchmark": name, "method": method,
                                **{k: entry.get(k) for k in (
                                    "image_auroc", "pixel_auroc", "pro_30",
                                    "defective_failed_share", "normal_failed_share")}})
            for defect, item in entry.get("per_defect", {}).items():
                per_defect_rows.append({"benchmark": name, "method": method, "defect": defect,
                                        **item})
        for row in ablation(bundle_path, data_path, ctx.quick):
            ablation_rows.append({"benchmark": name, **row})
        if knn is None:
            knn = knn_rate(bundle_path)
            speed = serving_rate(bundle_path, 6 if ctx.quick else 30, ctx.out_dir)
    notes = (f"Recipe: `anogan-train train --data DATA {RECIPE}`. Methods from `anogan-train "
             "evaluate` (memory, pixels baseline, AnoGAN at z = E(tile)); the ablation "
             "rebuilds the memory from the bundle's discriminator with one change; speed: "
             f"{FRAME}×{FRAME} frames through `anogan-serve` (CASCADE, maps and regions), the "
             "grass bundle.")
    tables = [
        "### Methods\n\n" + markdown_table(method_rows),
        "### Per defect type (image AUROC, share of frames failing, pixel AUROC)\n\n"
        + markdown_table(per_defect_rows),
        "### Ablation\n\n" + markdown_table(ablation_rows),
        "### Training and memory\n\n" + markdown_table(build_rows),
        f"### Speed ({FRAME}×{FRAME} frames)\n\n" + markdown_table(speed)
        + "\n\n" + markdown_table([knn]),
    ]
    return {"rows": {"methods": method_rows, "per_defect": per_defect_rows,
                     "ablation": ablation_rows, "build": build_rows, "speed": speed,
                     "knn": knn},
            "table": "\n\n".join(tables), "notes": notes}
