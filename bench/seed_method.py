"""The seed's scoring method, reimplemented with its flaws, for side-by-side comparison.

As in the walkthrough the project started from: the seed's DCGAN (64×64, width 64,
BatchNorm discriminator), networks left in train mode (BatchNorm on batch statistics),
weights not frozen (backward also computes every weight gradient), D(x) recomputed at
every step, one batch of 5 images at a time, z ~ N(0, 1), Adam lr 1e-3 on z, score
0.9·Σ|x - G(z)| + 0.1·Σ|f(x) - f(G(z))| at the last step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.networks import Discriminator, Generator, ModelConfig

log = logging.getLogger(__name__)
SEED_BATCH = 5
SEED_LR = 1e-3


def load_seed_networks(checkpoint: Path, device: str) -> tuple[Generator, Discriminator,
                                                               ModelConfig]:
    """Eager G and D from a trainer checkpoint (runs/<name>/checkpoint.pt)."""
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    model = ModelConfig.from_dict(state["model_config"])
    generator, discriminator = Generator(model).to(device), Discriminator(model).to(device)
    generator.load_state_dict(state["generator"])
    discriminator.load_state_dict(state["discriminator"])
    return generator, discriminator, model


def seed_scores(generator: Generator, discriminator: Discriminator, x: torch.Tensor,
                steps: int, seed: int = 0, lam: float = 0.1) -> np.ndarray:
    """Scores of x (N, C, 64, 64) by the seed's search, batches of 5, flaws included."""
    generator.train()  # the seed never called .eval()
    discriminator.train()
    # Keep the BatchNorm running statistics as they were (train mode updates them).
    saved = {k: v.clone() for k, v in {**generator.state_dict(),
                                       **{f"d.{k}": v for k, v in
                                          discriminator.state_dict().items()}}.items()}
    rng = torch.Generator().manual_seed(seed)
    scores = []
    try:
        for start in range(0, x.shape[0], SEED_BATCH):
            batch = x[start:start + SEED_BATCH]
            scores.append(_search_batch(generator, discriminator, batch, steps, rng, lam))
    finally:
        generator.load_state_dict({k: v for k, v in saved.items() if not k.startswith("d.")})
        discriminator.load_state_dict({k[2:]: v for k, v in saved.items()
                                       if k.startswith("d.")})
        for net in (generator, discriminator):
            net.zero_grad(set_to_none=True)
    return np.concatenate(scores)


def _search_batch(generator, discriminator, x, steps, rng, lam) -> np.ndarray:
    z = torch.randn(x.shape[0], generator.latent_dim, 1, 1, generator=rng).to(x.device)
    z.requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=SEED_LR)
    for _ in range(steps):
        optimizer.zero_grad()
        reconstruction = generator(z)
        residual = (x - reconstruction).abs().flatten(1).sum(1)
        # D(x) every step, and gradients flow into every weight (nothing is frozen).
        feature = (discriminator.feature_vector(x)
                   - discriminator.feature_vector(reconstruction)).abs().sum(1)
        loss = (1 - lam) * residual + lam * feature
        loss.sum().backward()
        optimizer.step()
    return loss.detach().cpu().numpy().astype(np.float64)
