"""Does the discriminator's evidence localise texture defects better than the residual?

    python -m bench.texture_feature_maps [--bundle bundles/texture] [--data data/texture]

For every tile of the texture benchmark's test frames, at the fast path's z = E(x): the
residual map |x - G(z)| and the feature map Σ_c |f(x) - f(G(z))| (f's 4×4 spatial map,
upsampled to the tile), each stitched and smoothed as the server stitches maps, then
standardised by its mean and spread on 40 training frames; mixtures of the two. Prints
pixel AUROC and image AUROC (the map's maximum as the frame score), overall and per
defect type. (docs/tiles.md quotes its figures.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import load_checked_models, read_bundle
from anogan_inspect.datasets import load_dataset
from anogan_inspect.metrics import auroc, pixel_auroc
from anogan_inspect.tiling import smooth, stitch
from anogan_inspect.trainer.evaluate_tiles import defect_of, read_masks
from anogan_inspect.trainer.tiles import frame_tiles
from bench.common import ROOT


@torch.no_grad()
def maps(bundle, models, images: np.ndarray, batch: int = 2048) -> dict[str, np.ndarray]:
    tiling = bundle.tiling
    x, origins, size = frame_tiles(images, tiling, bundle.channels)
    residual, feature = [], []
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        g = models.generator(models.encoder(xb))
        residual.append((xb - g).abs()[:, 0])
        fx, fg = models.features(xb), models.features(g)
        distance = (fx - fg).abs().reshape(len(xb), -1, 4, 4).sum(1)
        up = tiling.patch // 4
        feature.append(distance.repeat_interleave(up, 1).repeat_interleave(up, 2))
    per = len(origins[0])
    out = {}
    for name, tiles in (("residual", torch.cat(residual)), ("feature", torch.cat(feature))):
        tiles = tiles.numpy()
        out[name] = np.stack([smooth(stitch(tiles[i * per:(i + 1) * per], origins[i], size),
                                     tiling.smoothing) for i in range(len(images))])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "texture")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "texture")
    args = parser.parse_args(argv)
    bundle = read_bundle(args.bundle)
    if bundle.tiling is None:
        parser.error(f"{args.bundle} is not a tiled bundle")
    models = load_checked_models(bundle)
    test = load_dataset(args.data, split="test")
    masks = read_masks(args.data, test)
    reference = maps(bundle, models, load_dataset(args.data, split="train").images[:40])
    scale = {k: (v.mean(), v.std()) for k, v in reference.items()}
    tested = {k: (v - scale[k][0]) / scale[k][1] for k, v in maps(bundle, models,
                                                                 test.images).items()}
    for weight in (0.25, 0.5, 0.75):
        tested[f"mix {weight}"] = ((1 - weight) * tested["residual"]
                                   + weight * tested["feature"])
    defects = np.array([defect_of(f) for f in test.files])
    truth = test.is_anomaly
    for name, frame_maps in tested.items():
        line = (f"{name:10s} pixel {pixel_auroc(frame_maps, masks):.3f} image "
                f"{auroc(frame_maps.reshape(len(truth), -1).max(1), truth):.3f}")
        for defect in sorted(set(defects[truth])):
            chosen = (defects == defect) | ~truth
            picked = frame_maps[chosen]
            line += (f" | {defect} pixel {pixel_auroc(picked, masks[chosen]):.2f} image "
                     f"{auroc(picked.reshape(len(picked), -1).max(1), truth[chosen]):.2f}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
