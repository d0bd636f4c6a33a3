"""Scoring datasets with the latent search: calibration of the threshold and evaluation."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anogan_inspect.metrics import auroc, confusion
from anogan_inspect.pictures import residual_maps
from anogan_inspect.preprocess import to_unit_range
from anogan_inspect.search import (
    ScoringModels,
    SearchConfig,
    SearchResult,
    fast_score,
    random_start,
    search,
)
from anogan_inspect.tiling import Tiling

log = logging.getLogger(__name__)
STARTS = ("encoder", "random")


def search_scores(models: ScoringModels, x: torch.Tensor, cfg: SearchConfig, start: str,
                  device: torch.device | str = "cpu", batch_size: int = 64, seed: int = 0,
                  desc: str = "search") -> SearchResult:
    """Latent-search scores of x, from E(x) ('encoder') or z ~ N(0, 1) ('random')."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}")
    x = x.to(device)
    if start == "encoder":
        if models.encoder is None:
            raise ValueError("this model has no encoder: use start='random'")
        _, z0 = fast_score(models, x, cfg.lam)
    else:
        z0 = random_start(x.shape[0], models.latent_dim, seed)
    with tqdm(total=x.shape[0], desc=f"{desc} ({cfg.steps} steps)", unit="img",
              leave=False) as bar:
        return search(models, x, z0.to(device), cfg, batch_size, device, bar.update)


def summarize(scores: np.ndarray) -> dict:
    """A score distribution in a few numbers (recorded in the manifest)."""
    q = np.quantile(scores, [0.5, 0.9, 0.95, 0.99]) if len(scores) else [float("nan")] * 4
    return {"n": int(len(scores)), "mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "min": float(np.min(scores)), "p50": float(q[0]), "p90": float(q[1]),
            "p95": float(q[2]), "p99": float(q[3]), "max": float(np.max(scores))}


def calibrate(scores: np.ndarray, quantile: float) -> dict:
    """Threshold at a quantile of held-out normal scores (target false-positive rate 1-q)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if len(scores) == 0:
        raise ValueError("no held-out images to calibrate on")
    value = float(np.quantile(scores, quantile, method="higher"))
    return {"value": value, "method": "quantile", "quantile": quantile,
            "target_fpr": round(1.0 - quantile, 6),
            "heldout_fpr": float(np.mean(scores > value)), "scores": summarize(scores)}


def metrics(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict:
    """AUROC, AUPRC and the confusion counts at the threshold."""
    from sklearn.metrics import average_precision_score

    both = len(set(is_anomaly.tolist())) == 2
    return {
        "auroc": auroc(scores, is_anomaly) if both else None,
        "auprc": float(average_precision_score(is_anomaly, scores)) if both else None,
        "threshold": threshold,
        "confusion": confusion(scores > threshold, is_anomaly),
    }


@torch.no_grad()
def save_reconstruction_grid(models: ScoringModels, x: torch.Tensor, z: np.ndarray,
                             scores: np.ndarray, threshold: float,
                             is_anomaly: np.ndarray | None, path: Path,
                             most: int = 8, least: int = 4) -> Path:
    """A labelled figure, one row per image: input, G(z), residual |x − G(z)| as a heat
    map, with the score, the verdict at `threshold` and the truth. Rows: the `most`
    highest-scoring images, then the `least` lowest-scoring, for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-scores, kind="stable")
    rows = np.r_[order[:most], order[max(most, len(order) - least):]]
    picked = torch.as_tensor(rows.copy(), device=x.device)
    inputs = x[picked]
    reconstruction = models.generator(torch.as_tensor(z[rows], device=x.device))
    residual = residual_maps(inputs, reconstruction)[:, 0].cpu().numpy()
    to_image = lambda t: to_unit_range(t).permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    columns = [("input x", to_image(inputs)), ("G(z), the search's best", to_image(reconstruction)),
               ("residual |x − G(z)|", residual)]
    height = 1.6 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.2, height), squeeze=False)
    for r, index in enumerate(rows):
        verdict = "FAIL" if scores[index] > threshold else "PASS"
        truth = "" if is_anomaly is None else \
            ("\nanomalous" if is_anomaly[index] else "\nnormal")
        rank = r + 1 if r < most else len(order) - (len(rows) - 1 - r)
        axes[r, 0].set_ylabel(f"#{rank}\nscore {scores[index]:.1f}\n{verdict}{truth}",
                              fontsize=9, rotation=0, ha="right", va="center", labelpad=8,
                              color="firebrick" if verdict == "FAIL" else "black")
        for c, (title, images) in enumerate(columns):
            image = images[r]
            gray = image.ndim == 2 or image.shape[-1] == 1
            axes[r, c].imshow(image.squeeze(), cmap=("inferno" if c == 2 else "gray")
                              if gray else None, vmin=0, vmax=1, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.suptitle(f"rank by score, score, verdict at threshold {threshold:.2f}, truth: the "
                 f"{min(most, len(order))} highest, then the {len(rows) - min(most, len(order))}"
                 " lowest", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# G has learned the data when it reproduces held-out normal images with less than this
# fraction of the error of the mean training image (a model that learned nothing draws a
# blur near the mean). The committed MNIST bundle reaches 0.66 at E(x), less after the
# search; a generator drawing flat grey blotches on a texture stays near 1.
FIT_RATIO = 0.8


@torch.no_grad()
def fit_report(models: ScoringModels, train_x: torch.Tensor, heldout_x: torch.Tensor,
               heldout_z: np.ndarray, history: list[dict], device) -> dict:
    """Whether G reproduces held-out normal data: mean |x − G(z)| at the calibration's z
    against mean |x − mean training image|, and the last GAN epoch's losses."""
    mean_image = train_x.mean(0, keepdim=True).to(device)
    errors, baseline = [], []
    for begin in range(0, len(heldout_x), 256):
        x = heldout_x[begin:begin + 256].to(device)
        z = torch.as_tensor(heldout_z[begin:begin + 256], device=device)
        errors.append((x - models.generator(z)).abs().mean().item() * len(x))
        baseline.append((x - mean_image).abs().mean().item() * len(x))
    error, base = sum(errors) / len(heldout_x), sum(baseline) / len(heldout_x)
    ratio = error / base if base > 0 else float("inf")
    gan = [h for h in history if h.get("phase") == "gan"]
    return {"reconstruction_error": round(error, 5), "mean_image_error": round(base, 5),
            "reconstruction_vs_mean_image": round(ratio, 4), "learned": bool(ratio < FIT_RATIO),
            "learned_below": FIT_RATIO, "last_gan_epoch": gan[-1] if gan else None}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def budget_thresholds(models: ScoringModels, x: torch.Tensor, cfg: SearchConfig, start: str,
                      quantile: float, budgets, device, batch_size: int, seed: int) -> dict:
    """A threshold for each search budget (steps → the same quantile of the held-out
    normal images' scores after that many steps), the bundle's own budget included."""
    thresholds = {}
    for steps in sorted(set(budgets or []) | {cfg.steps}):
        scores = search_scores(models, x, dataclasses.replace(cfg, steps=steps), start, device,
                               batch_size, seed, desc=f"calibration, {steps} steps").score
        thresholds[str(steps)] = {**calibrate(scores, quantile), "steps": steps, "start": start}
    return thresholds


def fast_threshold(models: ScoringModels, x: torch.Tensor, cfg: SearchConfig,
                   quantile: float, tiling: Tiling | None, frames: int) -> dict | None:
    """MODE_FAST's own threshold: the same quantile of the held-out fast scores s0 (which
    lie above the search scores, so the search's threshold would fail too many normal
    frames). The cascade still decides with the search's threshold, where s0 ≤ T is exact.
    Tiled, x holds every tile of the held-out frames, and a frame's s0 aggregates them."""
    if models.encoder is None:
        return None
    scores, _ = fast_score(models, x, cfg.lam)
    if tiling:
        scores = np.array([tiling.aggregate_scores(t) for t in scores.reshape(frames, -1)])
    return calibrate(scores, quantile)
