"""DCGAN generator, discriminator (with a named feature extractor) and encoder.

Pure ``nn.Module`` definitions built from one :class:`ModelConfig`; no I/O, no training.
Sizes follow the seed's DCGAN: every stride-2 block halves (or doubles) the spatial size
and doubles (or halves) the channels, between the image and a 4×4 map of ``width·2^(n-1)``
channels, where ``n = log2(image_size) - 2``. At 64×64 with width 64 that is the seed's
512·4·4 feature map.
"""

from __future__ import annotations

import torch
from torch import nn

from anogan_inspect.configs import NORMS, PRESETS, ModelConfig  # noqa: F401 (re-exported)


def _norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer for the discriminator/encoder."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class Generator(nn.Module):
    """z (latent_dim×1×1) → image (channels×S×S) in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.top_channels
        layers: list[nn.Module] = [
            # latent_dim x 1 x 1 -> top_channels x 4 x 4
            nn.ConvTranspose2d(cfg.latent_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(cfg.n_blocks - 1):
            # ch x s x s -> ch/2 x 2s x 2s
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        # width x S/2 x S/2 -> channels x S x S
        layers += [nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = cfg.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:  # (N, latent) is accepted as well as (N, latent, 1, 1)
            z = z[:, :, None, None]
        return self.net(z)


def _conv_trunk(cfg: ModelConfig) -> nn.Sequential:
    """Stride-2 conv blocks: channels×S×S → top_channels×4×4 (the discriminator's body)."""
    layers: list[nn.Module] = []
    in_ch, out_ch = cfg.channels, cfg.width
    for block in range(cfg.n_blocks):
        # in_ch x s x s -> out_ch x s/2 x s/2
        layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=cfg.disc_norm == "none"))
        if block > 0 or cfg.disc_norm == "batch":  # the seed normalises every block
            layers.append(_norm(cfg.disc_norm, out_ch))
        layers.append(nn.LeakyReLU(cfg.leaky_slope, inplace=True))
        in_ch, out_ch = out_ch, out_ch * 2
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """Critic with a named feature extractor: ``features(x)`` is f, ``critic`` gives logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.features = _conv_trunk(cfg)  # -> top_channels x 4 x 4
        self.critic = nn.Conv2d(cfg.top_channels, 1, 4, 1, 0)  # -> 1 x 1 x 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/fake logits, shape (N,)."""
        return self.critic(self.features(x)).flatten()

    def feature_vector(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the last conv block's output, flattened to (N, feature_dim)."""
        return self.features(x).flatten(1)


class FeatureExtractor(nn.Module):
    """f as a standalone module (what the bundle exports): x → (N, feature_dim)."""

    def __init__(self, discriminator: Discriminator):
        super().__init__()
        self.features = discriminator.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class Encoder(nn.Module):
    """E: image → z (N, latent_dim), the fast first guess of the latent search."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = _conv_trunk(cfg)  # -> top_channels x 4 x 4
        self.head = nn.Conv2d(cfg.top_channels, cfg.latent_dim, 4, 1, 0)  # -> latent x 1 x 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).flatten(1)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
