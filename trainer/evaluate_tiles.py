"""`anogan-train evaluate` for tiled bundles, as MVTec AD evaluates: image AUROC, pixel
AUROC and PRO from ``ground_truth/<defect>/<name>_mask.png``, per defect type, per-image
scores (JSONL), a ROC plot and a labelled grid of frames with their maps and regions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anogan_inspect.bundle import Bundle
from anogan_inspect.datasets import DatasetError, ImageSet
from anogan_inspect.metrics import auroc, confusion, pixel_auroc, pro_score, save_roc_plot
from anogan_inspect.search import ScoringModels, SearchConfig
from anogan_inspect.tiling import find_regions
from anogan_inspect.trainer.tiles import TiledScores, score_frames

GOOD = "good"


def read_masks(root: Path, data: ImageSet) -> np.ndarray | None:
    """Ground-truth masks (N, H, W) bool for an MVTec split: ``root/ground_truth/<defect>/
    <name>_mask.png`` for anomalous images, empty for normal ones; None without any."""
    truth = root / "ground_truth"
    if data.files is None or not truth.is_dir():
        return None
    height, width = data.images.shape[-2:]
    masks = np.zeros((len(data), height, width), dtype=bool)
    for i, name in enumerate(data.files):
        defect, stem = Path(name).parent.name, Path(name).stem
        if not data.is_anomaly[i]:
            continue
        path = truth / defect / f"{stem}_mask.png"
        if not path.is_file():
            raise DatasetError(f"{path}: ground-truth mask missing for test/{name}")
        mask = np.asarray(Image.open(path).convert("L")) > 127
        if mask.shape != (height, width):
            raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                               f"{width}x{height}")
        masks[i] = mask
    return masks


def defect_of(name: str | None) -> str:
    return Path(name).parent.name if name else "unknown"


def evaluate_tiled(bundle: Bundle, models: ScoringModels, cfg: SearchConfig, data: ImageSet,
                   data_path: Path, out: Path, device, batch_size: int) -> dict:
    """Score the labelled frames with the exact cascade per tile; write the report."""
    tiling, threshold = bundle.tiling, bundle.threshold
    started = time.time()
    result = score_frames(models, data.images, tiling, cfg, device, threshold=threshold,
                          batch_size=batch_size, desc="evaluate tiles")
    seconds = time.time() - started
    truth = data.is_anomaly
    masks = read_masks(Path(data_path), data)
    tiles = len(result.tile_scores[0])
    report = {
        "bundle": str(bundle.path), "model": bundle.name, "version": bundle.version,
        "data": str(data_path), "images": len(data), "anomalies": int(truth.sum()),
        "tiling": bundle.manifest["tiling"], "tiles_per_frame": tiles,
        "seconds": round(seconds, 2), "frames_per_second": round(len(data) / seconds, 2),
        "threshold": threshold, "search": cfg.to_dict(),
        "cascade": _image_metrics(result.score, truth, threshold),
        "tiles_searched_share": round(float(result.searched.sum()) / (tiles * len(data)), 4),
        "aggregates": _aggregates(result, truth),
    }
    report["cascade"]["heldout_normal_fail_share"] = \
        bundle.manifest["threshold"].get("heldout_fpr")
    if masks is not None:
        report["cascade"]["pixel_auroc"] = round(pixel_auroc(result.maps, masks), 4)
        report["cascade"]["pro_30"] = round(pro_score(result.maps, masks), 4)
    report["per_defect"] = _per_defect(result, data, masks, threshold)
    out.mkdir(parents=True, exist_ok=True)
    _write_scores(out / "scores.jsonl", result, data, threshold)
    save_roc_plot({"cascade (frame = max over tiles)": (result.score, truth)},
                  out / "roc.png", f"{bundle.name} on {Path(data_path).name}")
    save_map_grid(data, result, masks, threshold, bundle.pixel_threshold, out / "maps.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _image_metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    fail = scores > threshold
    return {"image_auroc": round(auroc(scores, truth), 4),
            "defective_failed_share": round(float(fail[truth].mean()), 4),
            "normal_failed_share": round(float(fail[~truth].mean()), 4),
            "confusion": confusion(fail, truth)}


def _aggregates(result: TiledScores, truth: np.ndarray) -> dict:
    """Image AUROC of each way of aggregating the same tile scores (max vs top-k means)."""
    tiles = np.stack(result.tile_scores)
    ranked = np.sort(tiles, axis=1)[:, ::-1]
    out = {"max": round(auroc(ranked[:, 0], truth), 4)}
    for k in (3, 5, 10):
        if k <= tiles.shape[1]:
            out[f"top{k}_mean"] = round(auroc(ranked[:, :k].mean(1), truth), 4)
    return out


def _per_defect(result: TiledScores, data: ImageSet, masks, threshold: float) -> dict:
    """For each defect type: image AUROC against the normal frames, the share failed, and
    pixel AUROC over its frames and the normal ones."""
    defects = np.array([defect_of(f) for f in data.files]) if data.files else None
    if defects is None:
        return {}
    normal = ~data.is_anomaly
    report = {}
    for defect in sorted(set(defects[data.is_anomaly])):
        chosen = (defects == defect) | normal
        truth = data.is_anomaly[chosen]
        entry = {"frames": int((defects == defect).sum()),
                 "image_auroc": round(auroc(result.score[chosen], truth), 4),
                 "failed_share": round(float((result.score[defects == defect] > threshold)
                                             .mean()), 4)}
        if masks is not None:
            entry["pixel_auroc"] = round(pixel_auroc(result.maps[chosen], masks[chosen]), 4)
        report[defect] = entry
    return report


def _write_scores(path: Path, result: TiledScores, data: ImageSet, threshold: float) -> None:
    with open(path, "w") as out:
        for i in range(len(data)):
            name = data.files[i] if data.files else str(i)
            out.write(json.dumps({
                "file": name, "defect": defect_of(name) if data.files else None,
                "is_anomaly": bool(data.is_anomaly[i]), "score": float(result.score[i]),
                "verdict": "FAIL" if result.score[i] > threshold else "PASS",
                "tiles_searched": int(result.searched[i]),
                "tile_scores": [round(float(s), 3) for s in result.tile_scores[i]]}) + "\n")


def save_map_grid(data: ImageSet, result: TiledScores, masks, threshold: float,
                  pixel_threshold: float | None, path: Path, rows: int = 10) -> Path:
    """A labelled grid: frame, anomaly map, frame with regions (and ground truth), one row
    per frame; the highest-scoring defective frames, then the highest-scoring normal ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    order = np.argsort(-result.score, kind="stable")
    anomalous = [i for i in order if data.is_anomaly[i]][: rows - rows // 3]
    normal = [i for i in order if not data.is_anomaly[i]][: rows // 3]
    picked = anomalous + normal
    top = float(np.quantile(result.maps, 0.999)) or 1.0
    fig, axes = plt.subplots(len(picked), 3, figsize=(7.5, 2.3 * len(picked) + 0.5),
                             squeeze=False)
    for r, i in enumerate(picked):
        image = data.images[i].transpose(1, 2, 0).squeeze()
        gray = image.ndim == 2
        verdict = "FAIL" if result.score[i] > threshold else "PASS"
        name = data.files[i] if data.files else str(i)
        axes[r, 0].imshow(image, cmap="gray" if gray else None, vmin=0, vmax=1)
        axes[r, 1].imshow(result.maps[i], cmap="inferno", vmin=0, vmax=top)
        axes[r, 2].imshow(image, cmap="gray" if gray else None, vmin=0, vmax=1)
        if masks is not None and masks[i].any():
            axes[r, 2].contour(masks[i], levels=[0.5], colors="deepskyblue", linewidths=0.8)
        if pixel_threshold is not None:
            for region in find_regions(result.maps[i], pixel_threshold, limit=5):
                axes[r, 2].add_patch(Rectangle((region.left - 0.5, region.top - 0.5),
                                               region.width, region.height, fill=False,
                                               edgecolor="red", linewidth=1.2))
        axes[r, 0].set_ylabel(f"{name}\nscore {result.score[i]:.1f}\n{verdict}", fontsize=8,
                              rotation=0, ha="right", va="center", labelpad=6,
                              color="firebrick" if verdict == "FAIL" else "black")
        for c in range(3):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for c, title in enumerate(("frame", "anomaly map", "regions (red), truth (blue)")):
        axes[0, c].set_title(title, fontsize=9)
    fig.suptitle(f"threshold {threshold:.2f}; the highest-scoring defective frames, then "
                 "normal ones", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.3 * len(picked) + 0.5)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def print_tiled_report(report: dict, out: Path) -> None:
    cascade = report["cascade"]
    pixel = (f"  pixel AUROC {cascade['pixel_auroc']:.4f}  PRO(30 %) {cascade['pro_30']:.4f}"
             if "pixel_auroc" in cascade else "")
    print(f"{report['model']}: image AUROC {cascade['image_auroc']:.4f}{pixel}  "
          f"({report['images']} frames of {report['tiles_per_frame']} tiles, "
          f"{100 * report['tiles_searched_share']:.1f} % of tiles searched, "
          f"{report['frames_per_second']} frames/s)")
    print(f"at threshold {report['threshold']:.2f}: {100 * cascade['defective_failed_share']:.0f} "
          f"% of defective frames FAIL, {100 * cascade['normal_failed_share']:.1f} % of normal "
          "frames FAIL")
    for defect, entry in report["per_defect"].items():
        pixel = f", pixel AUROC {entry['pixel_auroc']:.4f}" if "pixel_auroc" in entry else ""
        print(f"  {defect:<10} image AUROC {entry['image_auroc']:.4f}, "
              f"{100 * entry['failed_share']:.0f} % FAIL{pixel}")
    print(f"aggregates (image AUROC): {report['aggregates']}")
    print(f"report: {out / 'report.json'}, scores: {out / 'scores.jsonl'}, "
          f"ROC: {out / 'roc.png'}, maps: {out / 'maps.png'}")

