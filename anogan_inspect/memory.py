"""Texture-grade scoring: every location of a frame against a memory of normal features.

PatchCore's idea (Roth et al., 2022) on AnoGAN's own discriminator: features are taken at
every location of a frame, each is compared with its nearest neighbour in a memory of
features of normal training frames, and the distances form the anomaly map. The
discriminator is a good feature extractor of normal data; compared with f(G(z)), which the
generator can fake, it misses small defects; compared with a memory, it finds them.

One :class:`MemoryScorer` module does all of it, so torch (CPU or GPU) and ONNX Runtime (the
memory exported as an initializer) compute the same thing:

    frame (N, C, H, W) in [-1, 1]
      ─► extractor: features (N, D, h, w) at `stride` pixels per location, each of its
         layers scaled to unit mean squared norm, averaged over k×k neighbours
      ─► squared distance to the nearest memory row, in GEMM form ‖f‖² − 2 f·mᵀ + ‖m‖², in
         chunks of the memory (the running minimum)
      ─► distance map, upsampled to H×W (bilinear), smoothed (Gaussian σ in frame pixels)
      ─► near the frame's edges, each value calibrated for its distance to them (below)
      ─► outputs: the map (N, H, W) and the frame score (N,) = its maximum

Edges. A location near a frame's edge is scored from padded features and smoothed over
fewer distinct values, so on normal frames its values spread wider than in the middle;
the frame maximum then lands on an edge or a corner of nearly every normal frame and
hides the defects. So the scorer keeps, for each place within ``edge_margin`` pixels of the
edges (its distances to the nearer horizontal and vertical edge), the mean and spread of
normal training frames' map values there, and maps each value onto the middle's:
``m_mid + (value − m_place) · s_mid / s_place``. Values in the middle are unchanged.

Extractors (:data:`EXTRACTORS`): ``disc`` (the bundle's discriminator trunk, chosen blocks),
``pixels`` (raw p×p patches every `step` pixels: the baseline) and ``backbone`` (a
torch.export program of a pretrained network whose weights the user supplies).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anogan_inspect.configs import (  # noqa: F401 (re-exported)
    EXTRACTORS,
    GRIDS,
    SAMPLERS,
    MemoryConfig,
)
from anogan_inspect.tiling import gaussian_kernel

# Memory rows compared at once: (locations × CHUNK) distances are held, not (locations × M):
# 134 MB for a 512×512 frame at stride 2 (512 also measured faster than 2,048 here).
CHUNK = 512


# -- Extractors ----------------------------------------------------------------------------


class PixelPatches(nn.Module):
    """Raw p×p patches every `step` pixels as feature vectors (C·p·p), centred on the
    location's own stride cell; optionally standardised (mean and contrast removed)."""

    def __init__(self, channels: int, patch: int, step: int, standardize: bool = False):
        super().__init__()
        eye = torch.eye(channels * patch * patch).reshape(-1, channels, patch, patch)
        self.register_buffer("kernel", eye)
        # Location j covers rows [step·j − left, step·j − left + patch): its centre is the
        # centre of its own stride cell, where bilinear upsampling puts it.
        total = patch - step
        self.pads = (total // 2, total - total // 2) * 2
        self.step, self.standardize, self.stride = step, standardize, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads, mode="reflect")
        patches = F.conv2d(x, self.kernel, stride=self.step)
        if self.standardize:
            patches = patches - patches.mean(1, keepdim=True)
            patches = patches / (patches.pow(2).mean(1, keepdim=True).sqrt() + 0.05)
        return patches


class TrunkBlocks(nn.Module):
    """Chosen blocks of a stride-2 conv trunk (the discriminator's, or a backbone's stages),
    joined on the finest chosen block's grid."""

    def __init__(self, blocks: list[nn.Module], layers: tuple[int, ...], grid: str = "fine"):
        super().__init__()
        self.blocks = nn.ModuleList(blocks[:max(layers) + 1])
        self.layers = tuple(sorted(layers))
        self.grid = grid
        self.stride = 2 ** ((self.layers[-1] if grid == "coarse" else self.layers[0]) + 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.layers:
                out.append(x)
        if self.grid == "coarse":  # the last block first: the others are joined onto it
            last = out[-1]
            out = [last] + [F.avg_pool2d(layer, 2 ** (self.layers[-1] - self.layers[i]))
                            for i, layer in enumerate(out[:-1])]
        return out


def trunk_blocks(trunk: nn.Sequential) -> list[nn.Module]:
    """A discriminator trunk (networks._conv_trunk) cut into its blocks: each starts at a
    stride-2 convolution and runs to the next."""
    blocks, current = [], []
    for layer in trunk:
        if isinstance(layer, nn.Conv2d) and current:
            blocks.append(nn.Sequential(*current))
            current = []
        current.append(layer)
    blocks.append(nn.Sequential(*current))
    return blocks


class Features(nn.Module):
    """An extractor's features, per layer scaled, joined and neighbourhood-averaged:
    (N, C, H, W) → (N, D, h, w), one location every `stride` frame pixels."""

    def __init__(self, extractor: nn.Module, scales: tuple[float, ...], aggregate: int):
        super().__init__()
        self.extractor, self.aggregate = extractor, aggregate
        self.stride = extractor.stride
        self.scaled = bool(scales)  # unscaled until the memory's build measures them
        self.register_buffer("scales", torch.tensor(scales or (1.0,), dtype=torch.float32))

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.extractor(x)
        return out if isinstance(out, list | tuple) else [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.raw(x)
        size = layers[0].shape[-2:]
        joined = []
        for index, layer in enumerate(layers):
            if index > 0:  # coarser blocks onto the first one's grid (always: no shape guard)
                layer = F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
            joined.append(layer / self.scales[index] if self.scaled else layer)
        features = torch.cat(joined, 1) if len(joined) > 1 else joined[0]
        if self.aggregate > 1:
            features = F.avg_pool2d(features, self.aggregate, 1, self.aggregate // 2,
                                    count_include_pad=False)
        return features


def layer_scales(features: Features, frames: torch.Tensor) -> tuple[float, ...]:
    """Each layer's root mean squared feature norm on these frames: dividing by it puts
    every layer on the same footing (the last block's squared norm can be thousands of
    times the one before it)."""
    with torch.no_grad():
        layers = features.raw(frames)
    return tuple(float(layer.pow(2).sum(1).mean().sqrt().clamp_min(1e-6)) for layer in layers)


# -- Scoring -------------------------------------------------------------------------------


def nearest_squared(features: torch.Tensor, memory: torch.Tensor, memory_sq: torch.Tensor,
                    chunk: int = CHUNK) -> torch.Tensor:
    """Squared distance of each row of `features` (L, D) to its nearest `memory` row
    (M, D): min over m of ‖m‖² − 2 f·mᵀ, one GEMM per chunk of the memory with a running
    minimum, then + ‖f‖² (constant per row, so added after the minimum)."""
    best = None
    for start in range(0, memory.shape[0], chunk):
        part = torch.addmm(memory_sq[None, start:start + chunk], features,
                           memory[start:start + chunk].t(), alpha=-2.0)
        low = part.amin(1)
        best = low if best is None else torch.minimum(best, low)
    return (best + features.pow(2).sum(1)).clamp_min(0.0)


def edge_places(height: int, width: int, margin: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(height, width) indices into an edge table of (margin + 1)² entries: the pixel's
    distances to the nearer horizontal and to the nearer vertical edge, each capped at
    `margin`, the smaller one first (the four corners and edges share their entries); the
    last entry, (margin, margin), is the middle of the frame."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    dy = torch.minimum(ys, height - 1 - ys).clamp(max=margin)[:, None]
    dx = torch.minimum(xs, width - 1 - xs).clamp(max=margin)[None, :]
    return torch.minimum(dy, dx) * (margin + 1) + torch.maximum(dy, dx)


def edge_table(maps: list[np.ndarray], margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation of the map values at each edge place (edge_places)
    over maps of any sizes; a place no map reaches (a frame narrower than 2·margin) takes
    the middle's."""
    entries = (margin + 1) ** 2
    count, total, square = np.zeros(entries), np.zeros(entries), np.zeros(entries)
    for anomaly_map in maps:
        places = edge_places(*anomaly_map.shape, margin).numpy().ravel()
        values = np.asarray(anomaly_map, dtype=np.float64).ravel()
        count += np.bincount(places, minlength=entries)
        total += np.bincount(places, values, minlength=entries)
        square += np.bincount(places, values * values, minlength=entries)
    seen = count > 0
    if not seen[-1]:
        raise ValueError(f"no map reaches {margin} pixels from its edges: frames must be "
                         f"larger than {2 * margin + 1} pixels to calibrate the edges")
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    spread = np.sqrt(np.maximum(np.where(seen, square / np.maximum(count, 1), 0.0) - mean ** 2,
                                0.0))
    mean = np.where(seen, mean, mean[-1])
    spread = np.where(seen & (spread > 0), spread, spread[-1] or 1.0)
    return mean.astype(np.float32), np.maximum(spread, 1e-12).astype(np.float32)


class MemoryScorer(nn.Module):
    """image (N, C, H, W) in [-1, 1] → (map (N, H, W), score (N,)): the module exported to
    torch and ONNX, memory, extractor and edge calibration inside."""

    def __init__(self, features: Features, memory: torch.Tensor, smoothing: float,
                 chunk: int = CHUNK, edge_margin: int = 0):
        super().__init__()
        self.features, self.chunk = features, chunk
        self.register_buffer("memory", memory.float().contiguous())
        self.register_buffer("memory_sq", memory.float().pow(2).sum(1))
        self.smoothing = smoothing
        self.register_buffer("kernel", gaussian_kernel(smoothing) if smoothing > 0
                             else torch.ones(1))
        self.edge_margin = edge_margin
        if edge_margin:  # the identity until calibrate_edges sets them
            self.register_buffer("edge_mean", torch.zeros((edge_margin + 1) ** 2))
            self.register_buffer("edge_std", torch.ones((edge_margin + 1) ** 2))

    def calibrate_edges(self, maps: list[np.ndarray]) -> None:
        """Set the edge table from normal frames' maps scored with the identity table."""
        mean, spread = edge_table(maps, self.edge_margin)
        self.edge_mean.copy_(torch.from_numpy(mean))
        self.edge_std.copy_(torch.from_numpy(spread))

    def distances(self, image: torch.Tensor) -> torch.Tensor:
        """Nearest-memory distance per feature location, (N, 1, h, w)."""
        feats = self.features(image)
        n, d, h, w = feats.shape
        flat = feats.permute(0, 2, 3, 1).reshape(-1, d)
        return nearest_squared(flat, self.memory, self.memory_sq, self.chunk).sqrt() \
            .reshape(n, 1, h, w)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distances(image)
        up = F.interpolate(dist, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if self.smoothing > 0:
            radius = (self.kernel.shape[0] - 1) // 2
            up = F.pad(up, (radius, radius, radius, radius), mode="replicate")
            up = F.conv2d(up, self.kernel.view(1, 1, 1, -1))
            up = F.conv2d(up, self.kernel.view(1, 1, -1, 1))
        anomaly_map = up[:, 0]
        if self.edge_margin:
            places = edge_places(anomaly_map.shape[-2], anomaly_map.shape[-1],
                                 self.edge_margin, anomaly_map.device)
            mean, spread = self.edge_mean[places], self.edge_std[places]
            anomaly_map = self.edge_mean[-1] + (anomaly_map - mean) * (self.edge_std[-1] / spread)
        return anomaly_map, anomaly_map.amax((1, 2))


# -- Building the memory -------------------------------------------------------------------


def greedy_coreset(features: torch.Tensor, size: int, projection: int = 128,
                   seed: int = 0) -> torch.Tensor:
    """PatchCore's greedy k-center selection: indices of `size` rows of `features` (N, D),
    each the row farthest from those already chosen, starting from a random one; distances
    measured after a random Gaussian projection to `projection` dimensions (0: none)."""
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection and projection < x.shape[1]:
        matrix = torch.randn(x.shape[1], projection, generator=gen) / math.sqrt(projection)
        x = x @ matrix
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=gen)
    x_sq = x.pow(2).sum(1)
    nearest = torch.full((n,), float("inf"))
    for i in range(1, size):
        last = x[chosen[i - 1]]
        distance = x_sq - 2 * (x @ last) + last.pow(2).sum()
        torch.minimum(nearest, distance, out=nearest)
        chosen[i] = torch.argmax(nearest)
    return chosen


def select_memory(features: torch.Tensor, cfg: MemoryConfig, seed: int = 0) -> torch.Tensor:
    """The memory rows kept from all training features (N, D): a coreset or a random
    subsample of cfg.size (the coreset among at most cfg.candidates rows drawn first)."""
    gen = torch.Generator().manual_seed(seed)
    if features.shape[0] <= cfg.size:
        return features.clone()
    if cfg.sampler == "random":
        return features[torch.randperm(features.shape[0], generator=gen)[:cfg.size]].clone()
    pool = features
    if features.shape[0] > cfg.candidates:
        pool = features[torch.randperm(features.shape[0], generator=gen)[:cfg.candidates]]
    return pool[greedy_coreset(pool, cfg.size, cfg.projection, seed)].clone()


def build_features(cfg: MemoryConfig, channels: int, trunk: nn.Sequential | None = None,
                   backbone: nn.Module | None = None) -> Features:
    """The extractor cfg names, unscaled until cfg.layer_scales is set."""
    if cfg.extractor == "pixels":
        extractor: nn.Module = PixelPatches(channels, cfg.patch, cfg.step, cfg.standardize)
    elif cfg.extractor == "disc":
        if trunk is None:
            raise ValueError("the disc extractor needs the discriminator's trunk")
        blocks = trunk_blocks(trunk)
        if max(cfg.layers) >= len(blocks):
            raise ValueError(f"layers {list(cfg.layers)}: the discriminator has "
                             f"{len(blocks)} blocks (0..{len(blocks) - 1})")
        extractor = TrunkBlocks(blocks, cfg.layers, cfg.grid)
    else:
        if backbone is None:
            raise ValueError("the backbone extractor needs a backbone program")
        extractor = backbone if isinstance(backbone, BackboneStages) else \
            BackboneStages(backbone)
    extractor.requires_grad_(False)
    return Features(extractor, cfg.layer_scales, cfg.aggregate).eval()


class BackboneStages(nn.Module):
    """A user-supplied backbone program (torch.export, its weights inside): image → one
    feature map, or a list of maps (joined on the first). A gray frame goes into an RGB
    network as three equal channels."""

    def __init__(self, program: nn.Module, stride: int = 1, in_channels: int = 1):
        super().__init__()
        self.program, self.stride, self.in_channels = program, stride, in_channels

    def train(self, mode: bool = True) -> BackboneStages:
        """A torch.export program has no train mode: it stays as exported (eval)."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor):
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1)
        out = self.program(x)
        return list(out) if isinstance(out, list | tuple) else out


def frames_input(frames: np.ndarray | torch.Tensor, scale: float, channels: int
                 ) -> torch.Tensor:
    """Frames (N, C, H, W) in [0, 1] of one size → the scorer's input: resized by `scale`
    (bicubic, antialiased when shrinking), the bundle's channels, in [-1, 1]."""
    from anogan_inspect.preprocess import NORMALIZATION, convert_channels

    x = convert_channels(torch.as_tensor(frames, dtype=torch.float32), channels)
    if scale != 1.0:
        h, w = max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale))
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False,
                          antialias=scale < 1).clamp_(0.0, 1.0)
    return x * NORMALIZATION["scale"] + NORMALIZATION["offset"]


@torch.no_grad()
def extract(features: Features, frames: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Features of frames (N, C, H, W) in [-1, 1] as rows (N·h·w, D)."""
    rows = []
    for start in range(0, len(frames), batch):
        f = features(frames[start:start + batch])
        rows.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return torch.cat(rows)


@torch.no_grad()
def score_frames(scorer: MemoryScorer, frames: torch.Tensor, batch: int = 8
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, H, W), scores (N,)) of frames in [-1, 1], in batches."""
    maps, scores = [], []
    device = next(iter(scorer.buffers()), torch.zeros(0)).device
    for start in range(0, len(frames), batch):
        m, s = scorer(frames[start:start + batch].to(device))
        maps.append(m.cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def augment(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A photometric copy of frames in [-1, 1] as a line varies them: gain 0.8–1.2, offset
    ±0.16 (±0.08 of the [0, 1] range), a lighting gradient of up to ±25 % across the frame."""
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = frames.shape
    x01 = (frames + 1) / 2
    gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    offset = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.16
    angle = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    slope = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.5
    yy = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2).view(1, 1, h, 1) / h
    xx = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2).view(1, 1, 1, w) / w
    light = 1 + slope * 2 * (torch.cos(angle) * xx + torch.sin(angle) * yy)
    return ((x01 * gain * light + offset).clamp(0, 1)) * 2 - 1
