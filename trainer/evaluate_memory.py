"""`anogan-train evaluate` for memory bundles: the bundle's memory scorer as MVTec AD
evaluates (image AUROC, pixel AUROC, PRO, per defect type), side by side with baselines on
the same frames:

- ``pixels``: a memory of raw 8×8 pixel patches every 2 px, built from the bundle's own
  training frames (the same split) and calibrated on its held-out frames, the baseline
  every texture figure is held against;
- ``latent-fast``: the bundle's AnoGAN on tiles at z = E(tile) (the fast path's score,
  frame = max over tiles), threshold-free (AUROC only);
- ``latent-search``: the same after the latent search on every tile (slow: minutes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from anogan_inspect.bundle import Bundle, load_memory_scorer
from anogan_inspect.datasets import (
    DatasetError,
    ImageSet,
    heldout_split,
    load_dataset,
    normal_subset,
)
from anogan_inspect.memory import MemoryConfig, frames_input, score_frames
from anogan_inspect.metrics import auroc, confusion, pixel_auroc, pro_score, save_roc_plot
from anogan_inspect.search import ScoringModels, SearchConfig
from anogan_inspect.tiling import resize_map
from anogan_inspect.trainer.evaluate_tiles import defect_of, read_masks, save_map_grid
from anogan_inspect.trainer.memory_bundle import build_memory
from anogan_inspect.trainer.tiles import score_frames as score_tiles


@dataclasses.dataclass
class Scored:
    """One method's frame scores and maps (at the frames' own size)."""

    score: np.ndarray
    maps: np.ndarray | None
    threshold: float | None  # None: not calibrated (AUROC only)


def memory_scores(scorer, frames: np.ndarray, scale: float, channels: int) -> Scored:
    x = frames_input(frames, scale, channels)
    maps, scores = score_frames(scorer, x)
    if maps.shape[-2:] != frames.shape[-2:]:
        maps = np.stack([resize_map(m, tuple(frames.shape[-2:])) for m in maps])
    return Scored(scores, maps, None)


def training_frames(bundle: Bundle, train_data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's training and held-out frames, split as its trainer split them."""
    training = bundle.manifest.get("training", {})
    path = train_data or training.get("data")
    if not path:
        raise DatasetError(f"{bundle.path}: its manifest names no training data; pass "
                           "the frames (evaluate: --train-data, learn: --heldout-data)")
    data = normal_subset(load_dataset(Path(path), split="train",
                                      normal_labels=training.get("normal_labels")))
    train_idx, holdout_idx = heldout_split(len(data), training.get("holdout", 0.15),
                                           training.get("seed", 0))
    return data.images[train_idx], data.images[holdout_idx]


def evaluate_memory(bundle: Bundle, models: ScoringModels, cfg: SearchConfig, data: ImageSet,
                    data_path: Path, out: Path, device, batch_size: int,
                    baselines: list[str], train_data: Path | None = None) -> dict:
    """Score the labelled frames with the memory (and the baselines); write the report."""
    memory, tiling = bundle.memory, bundle.tiling
    truth = data.is_anomaly
    masks = read_masks(Path(data_path), data)
    started = time.time()
    scorer = load_memory_scorer(bundle, device)
    methods = {f"memory ({memory['extractor']})":
               dataclasses.replace(memory_scores(scorer, data.images, tiling.scale,
                                                 bundle.channels), threshold=bundle.threshold)}
    seconds = time.time() - started
    if "pixels" in baselines:
        train, heldout = training_frames(bundle, train_data)
        pixels = MemoryConfig(extractor="pixels", size=memory["rows"],
                              sampler=memory.get("sampler", "coreset"),
                              smoothing=memory["smoothing"], aggregate=1)
        built = build_memory(pixels, train, heldout, tiling, bundle.channels,
                             memory["calibration"]["target_fpr"],
                             memory["calibration"]["pixel_quantile"])
        methods["pixels (baseline)"] = dataclasses.replace(
            memory_scores(built.scorer, data.images, tiling.scale, bundle.channels),
            threshold=built.manifest["image_threshold"])
    for kind in ("latent-fast", "latent-search"):
        if kind in baselines:
            # latent-fast: a threshold every tile clears (no search); latent-search: none.
            threshold = np.finfo(np.float64).max / 4 if kind == "latent-fast" else None
            tiled = score_tiles(models, data.images, tiling, cfg, device, threshold=threshold,
                                batch_size=batch_size, desc=kind)
            methods[f"AnoGAN {kind}"] = Scored(tiled.score, tiled.maps, None)
    report = {
        "bundle": str(bundle.path), "model": bundle.name, "version": bundle.version,
        "data": str(data_path), "images": len(data), "anomalies": int(truth.sum()),
        "memory": {k: memory[k] for k in ("extractor", "layers", "aggregate", "rows", "dim",
                                          "stride", "sampler", "smoothing") if k in memory},
        "threshold": bundle.threshold, "seconds": round(seconds, 2),
        "frames_per_second": round(len(data) / seconds, 2),
        "methods": {name: metrics_of(scored, data, masks) for name, scored in methods.items()},
        "aggregates": map_aggregates(next(iter(methods.values())).maps, truth),
        "heldout_normal_fail_share": memory["calibration"]["heldout_fail_share"],
        "target_fpr": memory["calibration"]["target_fpr"],
    }
    out.mkdir(parents=True, exist_ok=True)
    main = next(iter(methods.values()))
    with open(out / "scores.jsonl", "w") as handle:
        for i in range(len(data)):
            name = data.files[i] if data.files else str(i)
            handle.write(json.dumps({
                "file": name, "defect": defect_of(name) if data.files else None,
                "is_anomaly": bool(truth[i]),
                **{method: float(scored.score[i]) for method, scored in methods.items()},
                "verdict": "FAIL" if main.score[i] > bundle.threshold else "PASS"}) + "\n")
    save_roc_plot({name: (scored.score, truth) for name, scored in methods.items()},
                  out / "roc.png", f"{bundle.name} on {Path(data_path).name}")
    save_map_grid(data, main, masks, bundle.threshold, bundle.pixel_threshold, out / "maps.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def map_aggregates(maps: np.ndarray, truth: np.ndarray) -> dict:
    """Image AUROC of the memory's frame score (the map's maximum) against the means of
    its k highest map values: which frame score the maps support."""
    ranked = -np.sort(-maps.reshape(len(maps), -1), axis=1)
    out = {"max": round(auroc(ranked[:, 0], truth), 4)}
    for k in (10, 100, 1000, 5000):
        if k <= ranked.shape[1]:
            out[f"top{k}_mean"] = round(auroc(ranked[:, :k].mean(1), truth), 4)
    return out


def metrics_of(scored: Scored, data: ImageSet, masks: np.ndarray | None) -> dict:
    truth = data.is_anomaly
    entry: dict = {"image_auroc": round(auroc(scored.score, truth), 4)}
    if masks is not None and scored.maps is not None:
        entry["pixel_auroc"] = round(pixel_auroc(scored.maps, masks), 4)
        entry["pro_30"] = round(pro_score(scored.maps, masks), 4)
    if scored.threshold is not None:
        fail = scored.score > scored.threshold
        entry.update(threshold=scored.threshold,
                     defective_failed_share=round(float(fail[truth].mean()), 4),
                     normal_failed_share=round(float(fail[~truth].mean()), 4),
                     confusion=confusion(fail, truth))
    defects = np.array([defect_of(f) for f in data.files]) if data.files else None
    if defects is not None:
        entry["per_defect"] = {}
        for defect in sorted(set(defects[truth])):
            chosen = (defects == defect) | ~truth
            item = {"image_auroc": round(auroc(scored.score[chosen], truth[chosen]), 4)}
            if scored.threshold is not None:
                item["failed_share"] = round(float(
                    (scored.score[defects == defect] > scored.threshold).mean()), 4)
            if masks is not None and scored.maps is not None:
                item["pixel_auroc"] = round(pixel_auroc(scored.maps[chosen], masks[chosen]), 4)
            entry["per_defect"][defect] = item
    return entry


def print_memory_report(report: dict, out: Path) -> None:
    """The methods side by side, then per defect type."""
    print(f"{report['model']} on {report['data']} ({report['images']} frames, "
          f"{report['anomalies']} defective; memory {report['memory']['extractor']}, "
          f"{report['memory']['rows']} rows; {report['frames_per_second']} frames/s)")
    print(f"{'method':<26} {'image AUROC':>11} {'pixel AUROC':>11} {'PRO 30 %':>9} "
          f"{'defects FAIL':>12} {'normal FAIL':>11}")
    for name, entry in report["methods"].items():
        def show(key, percent=False, entry=entry):
            if key not in entry:
                return "—"
            return f"{100 * entry[key]:.0f} %" if percent else f"{entry[key]:.3f}"
        print(f"{name:<26} {show('image_auroc'):>11} {show('pixel_auroc'):>11} "
              f"{show('pro_30'):>9} {show('defective_failed_share', True):>12} "
              f"{show('normal_failed_share', True):>11}")
    print(f"frame score from the memory's map (image AUROC): {report['aggregates']}")
    print(f"calibrated: {100 * report['target_fpr']:.0f} % of normal frames to fail "
          f"({100 * report['heldout_normal_fail_share']:.1f} % of the held-out ones did)")
    for name, entry in report["methods"].items():
        per = entry.get("per_defect", {})
        if per:
            cells = ", ".join(f"{d} {v['image_auroc']:.3f}"
                              + (f"/{100 * v['failed_share']:.0f} %" if "failed_share" in v
                                 else "") for d, v in per.items())
            print(f"  {name}: {cells}")
    print(f"report: {out / 'report.json'}, scores: {out / 'scores.jsonl'}, "
          f"ROC: {out / 'roc.png'}, maps: {out / 'maps.png'}")
