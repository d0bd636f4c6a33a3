"""The configuration dataclasses every command reads its defaults from, without torch.

The networks, the search, the memory scorer and the trainer take these; the command lines
build their parsers (and print `--help`) from them without importing torch, which takes
seconds. Each class is re-exported where it is used (`networks.ModelConfig`, ...).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

# Tiled frames' score from their tiles' (tiling.Tiling.aggregate).
AGGREGATES = ("max", "topk")
# The largest ONNX-vs-torch difference per network output element on random inputs: the
# exporter refuses to write a bundle beyond it, the server to load one.
PARITY_TOLERANCE = 1e-4
# What `anogan-train evaluate` scores beside a memory bundle's memory, and the scorings
# `anogan-train score` runs (as the server's modes).
BASELINES = ("pixels", "latent-fast", "latent-search")
SCORE_MODES = ("cascade", "search", "fast")

# -- The networks --------------------------------------------------------------------------

NORMS = ("batch", "layer", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and widths of the three networks; stored in checkpoints and manifests."""

    image_size: int = 32
    channels: int = 1
    latent_dim: int = 20
    width: int = 32
    # Discriminator/encoder normalisation. "batch" is the seed's; "layer" (GroupNorm with one
    # group: per-sample statistics) makes eval-mode features independent of batch statistics.
    disc_norm: str = "layer"
    leaky_slope: float = 0.2

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 16, got {self.image_size}")
        if self.disc_norm not in NORMS:
            raise ValueError(f"disc_norm must be one of {NORMS}, got {self.disc_norm!r}")
        for name in ("channels", "latent_dim", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    @property
    def n_blocks(self) -> int:
        """Stride-2 blocks between the image and the 4×4 map."""
        return int(math.log2(self.image_size)) - 2

    @property
    def top_channels(self) -> int:
        """Channels of the 4×4 map (512 for the seed)."""
        return self.width * 2 ** (self.n_blocks - 1)

    @property
    def feature_dim(self) -> int:
        """Length of the flattened feature vector f(x)."""
        return self.top_channels * 4 * 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS: dict[str, ModelConfig] = {
    # Small and fast on a 2-core CPU; the product default.
    "default": ModelConfig(image_size=32, channels=1, latent_dim=20, width=32, disc_norm="layer"),
    # The seed's DCGAN: 64×64, width 64, BatchNorm + LeakyReLU(0.1) in the discriminator.
    "seed": ModelConfig(
        image_size=64, channels=1, latent_dim=20, width=64, disc_norm="batch", leaky_slope=0.1
    ),
    # For tests: trains in seconds.
    "tiny": ModelConfig(image_size=16, channels=1, latent_dim=8, width=8, disc_norm="layer"),
}


# -- The latent search ----------------------------------------------------------------------

@dataclass(frozen=True)
class SearchConfig:
    """Latent-search options; the bundle's manifest records the defaults it was calibrated with."""

    steps: int = 100
    lr: float = 0.01
    lam: float = 0.1  # weight of the feature distance (λ)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # Early stopping: a slot stops after `patience` steps without a relative improvement of
    # `min_delta` in its best loss (0 disables).
    patience: int = 0
    min_delta: float = 1e-4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# -- The memory scorer ----------------------------------------------------------------------

EXTRACTORS = ("disc", "pixels", "backbone")
SAMPLERS = ("coreset", "random")
GRIDS = ("fine", "coarse")


@dataclass(frozen=True)
class MemoryConfig:
    """How a memory bundle extracts, reduces and scores features (the manifest's `memory`)."""

    extractor: str = "disc"
    layers: tuple[int, ...] = (0, 1)  # disc: trunk blocks joined (0: the first)
    aggregate: int = 3  # k×k neighbourhood average of the features (1: none)
    # The grid the layers are joined on: "fine" (the first chosen block's: coarser blocks
    # upsampled) or "coarse" (the last chosen block's: finer blocks averaged down; 4× fewer
    # locations per halving, for speed).
    grid: str = "fine"
    patch: int = 8  # pixels: patch side
    step: int = 2  # pixels: pixels between patches
    standardize: bool = False  # pixels: each patch's mean and contrast removed
    size: int = 10000  # rows kept in the memory
    sampler: str = "coreset"  # greedy k-center coreset, or a random subsample
    projection: int = 64  # coreset: dimensions of the random projection it runs in
    candidates: int = 100_000  # coreset: at most this many rows, drawn at random, compete
    smoothing: float = 4.0  # Gaussian σ of the map, frame pixels
    augment: bool = False  # photometric augmentation of the frames the memory is built from
    # Map values within this many pixels of a frame's edges are calibrated per distance to
    # them (memory.py, MemoryScorer); 0: none, as in bundles written before it.
    edge_margin: int = 16
    layer_scales: tuple[float, ...] = field(default=())  # set when the memory is built

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {self.extractor!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.size < 1 or self.aggregate < 1 or self.aggregate % 2 == 0:
            raise ValueError("memory size must be positive and aggregate a positive odd number")
        if self.patch < 1 or not 0 < self.step <= self.patch or (self.patch - self.step) % 2:
            raise ValueError(f"pixels need 0 < step ≤ patch with patch − step even (patches "
                             f"centred on their cells), got step {self.step}, patch "
                             f"{self.patch}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"layers must be block indices ≥ 0, got {self.layers}")
        if self.edge_margin < 0:
            raise ValueError(f"edge margin must be ≥ 0 pixels, got {self.edge_margin}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"], data["layer_scales"] = list(self.layers), list(self.layer_scales)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MemoryConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("edge_margin", 0)  # a memory built before edges were calibrated
        for key in ("layers", "layer_scales"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# -- Training -------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Optimisation settings for the GAN and the encoder."""

    epochs: int = 150
    batch_size: int = 64
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    encoder_epochs: int = 100
    encoder_lr: float = 1e-3
    kappa: float = 1.0  # weight of the feature term in the encoder loss
    seed: int = 0
    # Batches of z ~ N(0, 1) used to re-estimate G's BatchNorm statistics after training.
    bn_recalibration_batches: int = 50
    # "bce": the seed's non-saturating GAN loss; "wgan-gp": a Wasserstein critic with a
    # gradient penalty (Gulrajani et al. 2017, f-AnoGAN's choice), one G update every
    # `critic_steps` critic updates.
    gan_loss: str = "bce"
    gp_weight: float = 10.0
    critic_steps: int = 5
    # Tiles (or images) drawn at random for each epoch, GAN and encoder alike; 0: all of
    # them. A 192×192 frame is hundreds of overlapping tiles: an epoch of a sample of them
    # trains a memory bundle's discriminator in minutes (docs/textures.md).
    samples_per_epoch: int = 0


GAN_LOSSES = ("bce", "wgan-gp")


GAN_LOSSES = ("bce", "wgan-gp")
