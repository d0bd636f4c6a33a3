"""`anogan-train score`: score image files offline, as the server would.

    anogan-train score --bundle bundles/default [--mode cascade|search|fast] FILE_OR_FOLDER...

The same decoding, preprocessing, search and threshold as the server; one JSON line per
image (file, score, verdict, stage, and for tiled bundles tiles and tiles searched), so
any figure the server gives can be reproduced without it (to the cascade's margin: the
server's fast path runs on ONNX Runtime, this on the torch programs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import Bundle, load_checked_models, read_bundle
from anogan_inspect.datasets import IMAGE_SUFFIXES, DatasetError, decode_image_file
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels, SearchConfig, fast_clears, fast_score
from anogan_inspect.trainer.scoring import search_scores
from anogan_inspect.trainer.tiles import score_frames


def read_frame(file: Path) -> np.ndarray:
    """One image file's pixels, (C, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(decode_image_file(file).transpose(2, 0, 1))


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and the images directly in the folders named, in order."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    if not files:
        raise DatasetError(f"no images in {', '.join(map(str, paths))}")
    return files


def score_images(bundle: Bundle, models: ScoringModels, cfg: SearchConfig,
                 images: list[np.ndarray], mode: str, device) -> list[dict]:
    """One record per image ((C, H, W) in [0, 1]), scored by `mode` as the server does."""
    threshold = bundle.threshold
    if bundle.tiling is not None:
        return [_tiled(bundle, models, cfg, image, mode, device) for image in images]
    x = torch.cat([to_model_input(image[None], bundle.image_size, bundle.channels)
                   for image in images]).to(device)
    start = "encoder" if models.encoder is not None else "random"
    if mode == "search" or models.encoder is None:
        scores = search_scores(models, x, cfg, start, device, desc="score").score
        stages = ["search"] * len(images)
    else:
        scores, _ = fast_score(models, x, cfg.lam)
        stages = ["fast"] * len(images)
        suspect = np.flatnonzero(~fast_clears(scores, threshold)) if mode == "cascade" else []
        if len(suspect):
            searched = search_scores(models, x[torch.as_tensor(suspect)], cfg, start, device,
                                     desc="score").score
            scores = np.array(scores, dtype=np.float64)
            scores[suspect] = searched
            for i in suspect:
                stages[i] = "search"
    return [{"score": float(s), "verdict": "FAIL" if s > threshold else "PASS", "stage": st}
            for s, st in zip(scores, stages)]


def _tiled(bundle: Bundle, models, cfg, image: np.ndarray, mode: str, device) -> dict:
    threshold = {"cascade": bundle.threshold, "search": None, "fast": float("inf")}[mode]
    result = score_frames(models, image[None], bundle.tiling, cfg, device,
                          threshold=threshold, want_maps=False)
    score, searched = float(result.score[0]), int(result.searched[0])
    return {"score": score, "verdict": "FAIL" if score > bundle.threshold else "PASS",
            "stage": "search" if searched else "fast", "tiles": len(result.tile_scores[0]),
            "tiles_searched": searched}


def run_score(args) -> int:
    bundle = read_bundle(args.bundle)
    device = torch.device(args.device)
    models = load_checked_models(bundle, device)
    if args.mode != "search" and models.encoder is None:
        raise ValueError(f"bundle {bundle.name} has no encoder: only --mode search")
    cfg = bundle.search_config
    files = image_files(args.images)
    images = [read_frame(file) for file in files]
    records = score_images(bundle, models, cfg, images, args.mode, device)
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        for file, record in zip(files, records):
            out.write(json.dumps({"file": str(file), "model": bundle.name,
                                  "threshold": bundle.threshold, "mode": args.mode,
                                  **record}) + "\n")
    finally:
        if args.out:
            out.close()
    if args.out:
        fails = sum(r["verdict"] == "FAIL" for r in records)
        print(f"{len(records)} images scored ({fails} FAIL) → {args.out}")
    return 0
