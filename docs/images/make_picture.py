"""Draw docs/images/frame-map-verdict.png: frame → G(z) → residual map → verdict.

    .venv/bin/python docs/images/make_picture.py [--out docs/images/frame-map-verdict.png]

Uses the committed default bundle (MNIST 7 and 8 normal) and the test digits of
data/mnist_test.csv.gz. Rows: the first 7, the first 8 and the first 2 of the file (that 2
passes: 38 of the 100 anomalous 2s do at the default threshold), then the 2 with the
median score of those the model fails. Every digit is scored as the server's default mode
scores it (CASCADE): the fast score s0 at z = E(x); a digit whose s0 does not clear the
threshold goes on to the bundle's latent search (100 steps from E(x)), and its G(z) is
the search's best. The residual map is |x − G(z)|; the verdict compares the score with the
bundle's threshold. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import Bundle, load_checked_models, read_bundle
from anogan_inspect.datasets import load_csv
from anogan_inspect.pictures import residual_maps
from anogan_inspect.preprocess import to_model_input, to_unit_range
from anogan_inspect.search import ScoringModels, fast_clears, fast_score, search

ROOT = Path(__file__).resolve().parents[2]
NORMAL = (7, 8)


def cascade(bundle: Bundle, models: ScoringModels, x: torch.Tensor):
    """Score images (N, C, H, W) as CASCADE does: scores, stages and the z of each G(z)."""
    cfg = bundle.search_config
    scores, z = fast_score(models, x, cfg.lam)
    stages = np.array(["fast path"] * len(x), dtype=object)
    suspect = np.flatnonzero(~fast_clears(scores, bundle.threshold))
    if len(suspect):
        result = search(models, x[torch.as_tensor(suspect)], z[torch.as_tensor(suspect)], cfg)
        scores[suspect] = result.score
        z[torch.as_tensor(suspect)] = torch.as_tensor(result.z, dtype=z.dtype)
        stages[suspect] = f"search, {cfg.steps} steps"
    return scores, stages, z


def pick_rows(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[tuple[int, str]]:
    """(index, why) of each row: the first 7, 8 and 2, and the median 2 the model fails."""
    rows = [(int(np.flatnonzero(labels == digit)[0]), f"the first {digit}")
            for digit in (7, 8, 2)]
    failed = np.flatnonzero((labels == 2) & (scores > threshold))
    median = failed[np.argsort(scores[failed])[len(failed) // 2]]
    return rows + [(int(median), "the median failed 2")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/mnist_test.csv.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/frame-map-verdict.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bundle = read_bundle(args.bundle)
    models = load_checked_models(bundle)
    data = load_csv(args.data, normal_labels=NORMAL, anomaly_labels=(2,))
    x = to_model_input(data.images, bundle.image_size, bundle.channels)
    scores, stages, z = cascade(bundle, models, x)
    threshold = bundle.threshold
    rows = pick_rows(data.labels, scores, threshold)

    fig, axes = plt.subplots(len(rows), 4, figsize=(7.2, 1.75 * len(rows) + 0.5),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    titles = ("frame x", "G(z): what the model\nreproduces", "residual map\n|x − G(z)|",
              "verdict")
    for r, (index, why) in enumerate(rows):
        with torch.no_grad():
            reconstruction = models.generator(z[index:index + 1])
        pictures = (to_unit_range(x[index:index + 1])[0, 0].numpy(),
                    to_unit_range(reconstruction)[0, 0].numpy(),
                    residual_maps(x[index:index + 1], reconstruction)[0, 0].numpy())
        for c, picture in enumerate(pictures):
            axes[r, c].imshow(picture, cmap="inferno" if c == 2 else "gray", vmin=0, vmax=1,
                              interpolation="nearest")
        verdict = "FAIL" if scores[index] > threshold else "PASS"
        truth = "normal" if data.labels[index] in NORMAL else "anomalous"
        axes[r, 3].text(0.02, 0.5, f"{verdict}\nscore {scores[index]:.0f}\nthreshold "
                        f"{threshold:.0f}\n({stages[index]})\n{why}: {truth}", va="center",
                        fontsize=10, color="firebrick" if verdict == "FAIL" else "darkgreen",
                        transform=axes[r, 3].transAxes)
        for c in range(4):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
        for side in axes[r, 3].spines.values():
            side.set_visible(False)
    fig.suptitle("bundles/default (trained on 7s and 8s only), MNIST test digits", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
