"""Scoring datasets with the latent search: calibration of the threshold and evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anogan_inspect.pictures import residual_maps, save_grid
from anogan_inspect.search import (
    ScoringModels,
    SearchConfig,
    SearchResult,
    fast_score,
    random_start,
    search,
)

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
    from sklearn.metrics import average_precision_score, roc_auc_score

    predicted = scores > threshold
    both = len(set(is_anomaly.tolist())) == 2
    return {
        "auroc": float(roc_auc_score(is_anomaly, scores)) if both else None,
        "auprc": float(average_precision_score(is_anomaly, scores)) if both else None,
        "threshold": threshold,
        "confusion": {
            "true_positive": int(np.sum(predicted & is_anomaly)),
            "false_positive": int(np.sum(predicted & ~is_anomaly)),
            "true_negative": int(np.sum(~predicted & ~is_anomaly)),
            "false_negative": int(np.sum(~predicted & is_anomaly)),
        },
    }


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                  title: str) -> Path:
    """ROC curves (name → (scores, is_anomaly)) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def save_reconstruction_grid(models: ScoringModels, x: torch.Tensor, z: np.ndarray,
                             path: Path, limit: int = 16) -> Path:
    """Rows of (input, G(z), residual map) for the first `limit` images."""
    x = x[:limit]
    reconstruction = models.generator(torch.as_tensor(z[:limit], device=x.device))
    residual = residual_maps(x, reconstruction).expand(-1, x.shape[1], -1, -1) * 2 - 1
    triples = torch.stack([x, reconstruction, residual], 1).flatten(0, 1).cpu()
    return save_grid(triples, path, nrow=6)


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
