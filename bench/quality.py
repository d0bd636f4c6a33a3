"""Quality against speed on MNIST 7/8-vs-2: the seed's method, the fast path, warm-started
search at several step budgets, and the cascade, measured side by side in one run."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import fast_clears, search
from anogan_inspect.server.fastpath import OrtFastPath
from bench.common import Context, markdown_table, save_figure
from bench.seed_method import SEED_BATCH, load_seed_networks, seed_scores

BUDGETS = (10, 25, 50, 100, 500)
QUICK_BUDGETS = (10, 50)


def stratified_subset(labels: np.ndarray, per_label: int) -> np.ndarray:
    """The first `per_label` images of each label, in file order."""
    picks = [np.flatnonzero(labels == label)[:per_label] for label in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def auroc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(is_anomaly, scores))


def fast_scores(ctx: Context, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """ONNX Runtime fast path over x in batches of 64: (scores, z0, seconds)."""
    fast = OrtFastPath(ctx.bundle, ctx.bundle.search_config.lam, ctx.device)
    numpy_x = x.numpy()
    fast.score_batch(numpy_x[:64])  # warm-up
    started = time.perf_counter()
    parts = [fast.score_batch(numpy_x[i:i + 64]) for i in range(0, len(numpy_x), 64)]
    seconds = time.perf_counter() - started
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[3] for p in parts]),
            seconds)


def warm_search(ctx: Context, x: torch.Tensor, z0: np.ndarray, steps: int
                ) -> tuple[np.ndarray, float]:
    """Search from E(x) with the engine's slot table (64 slots): (scores, seconds)."""
    cfg = dataclasses.replace(ctx.bundle.search_config, steps=steps)
    started = time.perf_counter()
    result = search(ctx.models(), x.to(ctx.device), torch.as_tensor(z0).to(ctx.device), cfg,
                    batch_size=64, device=ctx.device)
    return result.score, time.perf_counter() - started


def run(ctx: Context) -> dict:
    x, is_anomaly, labels = ctx.test_set()
    subset = stratified_subset(labels, 10 if ctx.quick else 15)
    seed_steps = 50 if ctx.quick else 500
    rows = [seed_row(ctx, subset, is_anomaly, seed_steps)]

    fast, z0, fast_seconds = fast_scores(ctx, x)
    n = len(x)
    rows.append(row("fast path (ONNX Runtime E→G→f)", 0, n / fast_seconds, 0.0,
                    auroc(is_anomaly[subset], fast[subset]), auroc(is_anomaly, fast)))
    for steps in QUICK_BUDGETS if ctx.quick else BUDGETS:
        scores, seconds = warm_search(ctx, x, z0, steps)
        rows.append(row(f"search from E(x), {steps} steps", steps, n / seconds,
                        n * steps / seconds, auroc(is_anomaly[subset], scores[subset]),
                        auroc(is_anomaly, scores)))

    threshold = ctx.bundle.threshold
    suspect = ~fast_clears(fast, threshold)
    cascade_steps = ctx.bundle.search_config.steps
    searched, search_seconds = warm_search(ctx, x[suspect], z0[suspect], cascade_steps)
    cascade = fast.copy()
    cascade[suspect] = searched
    cascade_seconds = fast_seconds + search_seconds
    rows.append(row(f"cascade (fast, then {cascade_steps} steps from E(x) if s0 > threshold)",
                    cascade_steps, n / cascade_seconds, None,
                    auroc(is_anomaly[subset], cascade[subset]), auroc(is_anomaly, cascade)))
    seed_fps = rows[0]["frames_per_s"]
    for r in rows:
        r["speedup_vs_seed"] = r["frames_per_s"] / seed_fps
    shares = {"normal_decided_without_search": float(np.mean(~suspect[~is_anomaly])),
              "anomalous_decided_without_search": float(np.mean(~suspect[is_anomaly])),
              "cascade_verdicts_fail": int(np.sum(cascade > threshold)),
              "threshold": threshold, "subset_size": int(len(subset)), "test_size": n}
    plot = plot_quality(ctx, rows)
    table = markdown_table(rows, ["method", "steps", "frames_per_s", "frame_steps_per_s",
                                  "auroc_subset", "auroc_all", "speedup_vs_seed"])
    notes = (f"AUROC on all {n} test digits (2 anomalous) and on a stratified subset of "
             f"{len(subset)} (the seed's method is scored on the subset only: at its speed "
             f"the full set takes too long). The cascade decided "
             f"{shares['normal_decided_without_search']:.0%} of normal and "
             f"{shares['anomalous_decided_without_search']:.0%} of anomalous digits without "
             "search.")
    return {"rows": rows, "shares": shares, "table": table, "notes": notes, "plots": [plot]}


def seed_row(ctx: Context, subset: np.ndarray, is_anomaly: np.ndarray, steps: int) -> dict:
    """The seed's method on its own networks (the seed preset's checkpoint)."""
    checkpoint = ctx.seed_run / "checkpoint.pt"
    generator, discriminator, model = load_seed_networks(checkpoint, ctx.device)
    raw = ctx.raw_test_images()[subset]
    x = to_model_input(raw, model.image_size, model.channels).to(ctx.device)
    seed_scores(generator, discriminator, x[:SEED_BATCH], 2)  # warm-up
    started = time.perf_counter()
    scores = seed_scores(generator, discriminator, x, steps)
    seconds = time.perf_counter() - started
    return row(f"seed's method ({model.image_size}x{model.image_size}, random z, train mode, "
               f"unfrozen, D(x) every step, batches of {SEED_BATCH})", steps,
               len(x) / seconds, len(x) * steps / seconds,
               auroc(is_anomaly[subset], scores), None)


def row(method: str, steps: int, frames_per_s: float, frame_steps_per_s: float | None,
        auroc_subset: float, auroc_all: float | None) -> dict:
    return {"method": method, "steps": steps, "frames_per_s": frames_per_s,
            "frame_steps_per_s": frame_steps_per_s, "auroc_subset": auroc_subset,
            "auroc_all": auroc_all}


def short_name(method: str) -> str:
    """'search from E(x), 50 steps' → 'search 50 steps'; the rest up to its parenthesis."""
    if method.startswith("search from E(x)"):
        return "search " + method.split(", ")[1]
    return method.split(" (")[0]


def plot_quality(ctx: Context, rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["frames_per_s"], r["auroc_subset"], s=40, label=short_name(r["method"]))
    ax.set(xscale="log", xlabel="frames/s (log)", ylabel="AUROC (stratified subset)",
           title="MNIST 7/8 vs 2: quality against speed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, ctx, "quality")
