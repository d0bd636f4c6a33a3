"""Detection metrics with numpy only: ROC curve, AUROC, confusion counts, a ROC plot.

The streaming client reports these from a base install (no scikit-learn, no torch); the
plot needs matplotlib, imported only when one is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def roc_curve(scores: np.ndarray, is_anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates), from (0, 0) to (1, 1), one point per
    distinct score (tied scores move both rates at once, as scikit-learn's roc_curve)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(is_anomaly, dtype=bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("a ROC curve needs both anomalous and normal examples")
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(truth)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def auroc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids: a tie counts one half)."""
    fpr, tpr = roc_curve(scores, is_anomaly)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of every pixel's map value against its mask (MVTec AD's pixel AUROC)."""
    return auroc(np.asarray(maps).ravel(), np.asarray(masks, dtype=bool).ravel())


def pro_score(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3,
              thresholds: int = 200) -> float:
    """Per-region overlap (MVTec AD), integrated over false-positive rates up to max_fpr
    and divided by max_fpr (1.0 is perfect).

    At each threshold, a ground-truth region's overlap is the share of its pixels above the
    threshold, PRO is the mean over all regions of all images, and the FPR is the share of
    normal pixels above it. Needs at least one region and one normal pixel.
    """
    from anogan_inspect.tiling import label_components  # torch: only for pixel metrics

    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    regions = []  # (image index, flat pixel indices) per ground-truth region
    for i, mask in enumerate(masks):
        labels, count = label_components(mask)
        regions += [(i, np.flatnonzero(labels == k)) for k in range(1, count + 1)]
    normal = maps[~masks]
    if not regions or normal.size == 0:
        raise ValueError("PRO needs ground-truth regions and normal pixels")
    levels = np.unique(np.quantile(normal, np.linspace(1 - max_fpr * 1.2, 1, thresholds)
                                   .clip(0, 1)))
    # "> level" and "≥ level" both: where tied values straddle max_fpr, the curve's point
    # past it is a measured one, not the straight line to (1, 1).
    levels = np.unique(np.r_[levels, np.nextafter(levels, -np.inf)])
    flat = maps.reshape(len(maps), -1)
    # The curve from (0, 0) (nothing flagged) to (1, 1) (everything flagged), one point per
    # threshold; ties between thresholds are joined by straight lines, as in a ROC curve.
    points = [(0.0, 0.0), (1.0, 1.0)]
    for level in levels:
        points.append((float(np.mean(normal > level)),
                       float(np.mean([np.mean(flat[i][pixels] > level) for i, pixels in regions]))))
    points.sort()  # by FPR, then PRO: both grow as the threshold falls
    fprs, pros = np.array(points).T
    after = int(np.argmax(fprs > max_fpr))  # the first point past max_fpr ((1, 1) at most)
    share = (max_fpr - fprs[after - 1]) / (fprs[after] - fprs[after - 1])
    f = np.r_[fprs[:after], max_fpr]
    p = np.r_[pros[:after], pros[after - 1] + share * (pros[after] - pros[after - 1])]
    return float(np.sum(np.diff(f) * (p[1:] + p[:-1]) / 2.0) / max_fpr)


def confusion(fail: np.ndarray, is_anomaly: np.ndarray) -> dict[str, int]:
    """Counts of verdicts (FAIL = True) against the truth (anomalous = True)."""
    fail, truth = np.asarray(fail, dtype=bool), np.asarray(is_anomaly, dtype=bool)
    return {"true_positive": int(np.sum(fail & truth)),
            "false_positive": int(np.sum(fail & ~truth)),
            "true_negative": int(np.sum(~fail & ~truth)),
            "false_negative": int(np.sum(~fail & truth))}


def confusion_table(counts: dict[str, int]) -> str:
    """The confusion counts as a small text table (rows: truth; columns: verdict)."""
    tp, fp = counts["true_positive"], counts["false_positive"]
    tn, fn = counts["true_negative"], counts["false_negative"]
    rows = [("", "verdict FAIL", "verdict PASS"),
            ("anomalous", str(tp), str(fn)),
            ("normal", str(fp), str(tn))]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}"
                     for a, b, c in rows)


def save_roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                  title: str) -> Path:
    """ROC curves (name → (scores, is_anomaly)) in one PNG (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("a ROC plot needs matplotlib: pip install matplotlib "
                          "(or anogan-inspect[train])") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(scores, labels):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
