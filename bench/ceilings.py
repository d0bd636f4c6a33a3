"""What this machine can do with this model: the raw ceilings the engine and server are
measured against.

- the raw batched search step (forward G and f on z, the loss, the gradient to z only,
  exactly as :meth:`SlotTable.step` computes it) at batch sizes 1..256 → frame-steps/s;
  the best is ``ceiling_frame_steps_per_s``;
- the whole :meth:`SlotTable.step` (the same plus best-z tracking and the Adam update);
- the ONNX Runtime fast path (``OrtFastPath.score_batch``: E → G → f) → frames/s;
- FLOPs per frame-step counted from the network shapes (forward hooks on an eager copy
  of the bundle's networks), cross-checked with ``torch.utils.flop_counter``;
- the machine's float32 matmul and convolution rates, and the fraction of the matmul rate
  the search ceiling achieves.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from anogan_inspect.networks import (
    Discriminator,
    FeatureExtractor,
    Generator,
    ModelConfig,
    init_weights,
)
from anogan_inspect.search import ScoringModels, SearchConfig, SlotTable, score_parts
from anogan_inspect.server.fastpath import OrtFastPath
from bench.common import Context, markdown_table, rate, save_figure

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCHES = (1, 8, 64)
FAST_BATCHES = (1, 8, 64, 256)
MATMUL_SIZE, QUICK_MATMUL_SIZE = 2048, 1024
CONV_BATCH = 64

# FLOP rules (per frame). Convolutions and linear layers: 2 FLOPs per multiply-accumulate.
# Normalisation layers, per output element: eval BatchNorm is a per-channel affine map
# (scale, shift: 2); GroupNorm computes its statistics too (mean 1, variance 2, normalise 2,
# affine 2: 7). Activations and the loss are not counted (memory-bound, not FLOP-bound).
NORM_FLOPS_PER_ELEMENT: dict[type, int] = {nn.BatchNorm2d: 2, nn.GroupNorm: 7}
# A search step is the forward pass of G and of f on G(z), and their backward to the input
# only (the weights are frozen): each layer's input gradient costs what its forward costs,
# so a step ≈ 2× the forward FLOPs. f(x) is computed once per frame, not per step.
SEARCH_STEP_FACTOR = 2.0
# The seed's step: forward G, f(G(z)) and f(x) (D(x) every step), backward with the input
# and the weight gradients (nothing frozen): ≈ 3× the forward FLOPs.
SEED_STEP_FACTOR = 3.0


# -- FLOP counting ---------------------------------------------------------------------------


@dataclass
class LayerCount:
    """One counted layer: its shapes (batch included) and its cost for that batch."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int = 0
    norm_flops: int = 0

    @property
    def kind(self) -> str:
        return type(self.module).__name__


@dataclass
class FlopCount:
    """The counted layers of one forward pass."""

    layers: list[LayerCount] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def norm_flops(self) -> int:
        return sum(layer.norm_flops for layer in self.layers)

    @property
    def flops(self) -> int:
        """2·MACs of the convolutions/linear layers plus the normalisation FLOPs."""
        return 2 * self.macs + self.norm_flops


def layer_macs(module: nn.Module, input_shape: tuple[int, ...],
               output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one conv/linear forward (for the whole batch).

    Conv2d: every output element sums (C_in/groups)·kh·kw products. ConvTranspose2d: every
    input element is scattered into (C_out/groups)·kh·kw outputs (taps that land in the
    cropped padding count too, as in ``torch.utils.flop_counter``). Linear: N·in·out.
    """
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(np.prod(output_shape)) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return int(np.prod(input_shape)) * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return int(np.prod(output_shape[:-1])) * module.in_features * module.out_features
    return 0


def count_flops(module: nn.Module, example: torch.Tensor) -> FlopCount:
    """Run ``module(example)`` once with forward hooks and count every counted layer."""
    count = FlopCount()
    counted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, *NORM_FLOPS_PER_ELEMENT)

    def hook(name: str) -> Callable:
        def record(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            in_shape, out_shape = tuple(inputs[0].shape), tuple(output.shape)
            norm = NORM_FLOPS_PER_ELEMENT.get(type(layer), 0) * int(np.prod(out_shape))
            count.layers.append(LayerCount(name, layer, in_shape, out_shape,
                                           layer_macs(layer, in_shape, out_shape), norm))
        return record

    handles = [sub.register_forward_hook(hook(name)) for name, sub in module.named_modules()
               if isinstance(sub, counted)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return count


def eager_networks(cfg: ModelConfig, device: str = "cpu") -> tuple[Generator, FeatureExtractor]:
    """Untrained G and f built from a model config (DCGAN initialisation), in eval mode."""
    generator, discriminator = Generator(cfg), Discriminator(cfg)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    features = FeatureExtractor(discriminator)
    return generator.to(device).eval(), features.to(device).eval()


def eager_models(cfg: ModelConfig, device: str = "cpu") -> ScoringModels:
    """ScoringModels over untrained eager networks, frozen (what the scaling section times)."""
    generator, features = eager_networks(cfg, device)
    return ScoringModels(generator, features, cfg.latent_dim).prepare()


@dataclass
class NetworkFlops:
    """Forward FLOPs per frame of G and f, and the per-frame-step costs derived from them."""

    generator: FlopCount
    features: FlopCount

    @property
    def forward_flops(self) -> int:
        """G(z) and f(G(z)) once, per frame."""
        return self.generator.flops + self.features.flops

    @property
    def search_step_gflop(self) -> float:
        return SEARCH_STEP_FACTOR * self.forward_flops / 1e9

    @property
    def seed_step_gflop(self) -> float:
        """The seed's step also runs f(x) every step and computes weight gradients."""
        return SEED_STEP_FACTOR * (self.generator.flops + 2 * self.features.flops) / 1e9


def network_flops(cfg: ModelConfig) -> NetworkFlops:
    """Count G and f for one frame on an eager copy of the networks (CPU, batch 1)."""
    generator, features = eager_networks(cfg)
    z = torch.zeros(1, cfg.latent_dim)
    image = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    return NetworkFlops(count_flops(generator, z), count_flops(features, image))


def torch_counted_step_gflop(models: ScoringModels, image_shape: tuple[int, ...],
                             lam: float, device: str) -> float:
    """GFLOP of one search step for one frame as ``torch.utils.flop_counter`` counts it
    (convolutions only, forward and backward): an independent check of the rule above."""
    from torch.utils.flop_counter import FlopCounterMode

    x, fx, z0 = step_inputs(models, image_shape, 1, device)
    z = z0.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss = score_parts(models, x, fx, z, lam)[0]
        loss.sum().backward()  # autograd.grad trips the counter's module hooks
    return counter.get_total_flops() / 1e9


# -- raw search step -------------------------------------------------------------------------


def step_inputs(models: ScoringModels, image_shape: tuple[int, ...], batch: int, device: str,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images x (batch, C, H, W) in [-1, 1], f(x) and z0 ~ N(0, 1), on the device."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, *image_shape, generator=gen) * 2 - 1).to(device)
    z0 = torch.randn(batch, models.latent_dim, generator=gen).to(device)
    with torch.no_grad():
        fx = models.features(x).flatten(1)
    return x, fx, z0


def search_step_fn(models: ScoringModels, x: torch.Tensor, fx: torch.Tensor, z0: torch.Tensor,
                   lam: float) -> Callable[[], int]:
    """One search step as SlotTable.step computes it (no Adam update); returns frames done."""
    batch = x.shape[0]

    def step() -> int:
        z = z0.clone().requires_grad_(True)
        loss, _, _ = score_parts(models, x, fx, z, lam)
        torch.autograd.grad(loss.sum(), z)
        return batch

    return step


def on_own_thread(fn: Callable[[], float]) -> float:
    """Run fn on a fresh thread, as the search engine runs its steps, and return its result.

    Timings are taken the way the engine runs: on a CPU shared with other processes, torch's
    intra-op thread pool behaves very differently on the main thread (measured 15× slower
    there at batch 64 on a busy 2-core machine), so a main-thread ceiling would not be
    comparable with the engine."""
    outcome: dict = {}

    def target() -> None:
        try:
            with torch.enable_grad():
                outcome["value"] = fn()
        except BaseException as err:  # re-raised on the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="bench-step")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def thread_rate(fn: Callable[[], int], device: str, min_seconds: float) -> float:
    """bench.common.rate of fn, measured on its own thread."""
    return on_own_thread(lambda: rate(fn, device, min_seconds))


def search_step_rate(models: ScoringModels, image_shape: tuple[int, ...], batch: int,
                     device: str, lam: float, min_seconds: float) -> float:
    """Frame-steps/s of the raw batched search step at one batch size (on its own thread)."""
    x, fx, z0 = step_inputs(models, image_shape, batch, device)
    step = search_step_fn(models, x, fx, z0, lam)
    return thread_rate(step, device, min_seconds)


def slot_table_step_rate(models: ScoringModels, cfg: SearchConfig,
                         image_shape: tuple[int, ...], batch: int, device: str,
                         min_seconds: float) -> float:
    """Frame-steps/s of the whole SlotTable.step (gradient, best tracking, Adam) at a batch
    (on its own thread)."""
    x, _, z0 = step_inputs(models, image_shape, batch, device)
    table = SlotTable(models, cfg, batch, image_shape, device)
    table.admit(x, z0, [10**9] * batch, range(batch))  # never finishes

    def step() -> int:
        table.step()
        return batch

    return thread_rate(step, device, min_seconds)


# -- fast path -------------------------------------------------------------------------------


def fast_path_rate(ctx: Context, fast: OrtFastPath, batch: int, min_seconds: float) -> float:
    """Frames/s of OrtFastPath.score_batch (ONNX Runtime E → G → f) on test digits."""
    x = cycled_test_images(ctx, batch).numpy()
    return thread_rate(lambda: (fast.score_batch(x), batch)[1], ctx.device, min_seconds)


def cycled_test_images(ctx: Context, n: int) -> torch.Tensor:
    """The first n test digits (cycling the 300), (n, C, H, W) float32 on the CPU."""
    x, _, _ = ctx.test_set()
    return x[torch.arange(n) % len(x)].contiguous().float()


# -- machine rates ---------------------------------------------------------------------------


def matmul_gflop_per_s(device: str, size: int, min_seconds: float) -> float:
    """float32 (size × size) @ (size × size): 2·size³ FLOPs per product."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    products_per_s = thread_rate(lambda: (torch.mm(a, b), 1)[1], device, min_seconds)
    return products_per_s * 2 * size**3 / 1e9


def conv_gflop_per_s(layer: LayerCount, batch: int, device: str, min_seconds: float) -> float:
    """Forward rate of a copy of one counted conv layer at a batch size (no gradients)."""
    module = copy.deepcopy(layer.module).to(device).eval()
    x = torch.randn(batch, *layer.input_shape[1:]).to(device)
    flops_per_call = 2 * layer.macs * batch / layer.input_shape[0]
    module.requires_grad_(False)
    calls_per_s = thread_rate(lambda: (module(x), 1)[1], device, min_seconds)
    return calls_per_s * flops_per_call / 1e9


def biggest_layer(count: FlopCount, kind: type) -> LayerCount:
    return max((layer for layer in count.layers if isinstance(layer.module, kind)),
               key=lambda layer: layer.macs)


# -- the section -----------------------------------------------------------------------------


def min_seconds(ctx: Context) -> float:
    return 0.3 if ctx.quick else 1.0


def search_rows(ctx: Context, step_gflop: float, seconds: float) -> list[dict]:
    """The raw step and the whole SlotTable.step at every batch size."""
    models, cfg, shape = ctx.models(), ctx.bundle.search_config, ctx.bundle.image_shape
    rows = []
    for batch in QUICK_BATCHES if ctx.quick else BATCHES:
        raw = search_step_rate(models, shape, batch, ctx.device, cfg.lam, seconds)
        table = slot_table_step_rate(models, cfg, shape, batch, ctx.device, seconds)
        rows.append(row("search step (G, f, grad to z)", batch, raw, "frame-steps/s",
                        raw * step_gflop, slot_table_per_s=table))
    return rows


def fast_rows(ctx: Context, seconds: float) -> list[dict]:
    """The ONNX Runtime fast path at every fast batch size."""
    fast = OrtFastPath(ctx.bundle, ctx.bundle.search_config.lam, ctx.device)
    return [row("fast path (ORT E→G→f)", batch, fast_path_rate(ctx, fast, batch, seconds),
                "frames/s", None) for batch in FAST_BATCHES]


def machine_rows(ctx: Context, flops: NetworkFlops, seconds: float) -> list[dict]:
    """The float32 matmul rate and the generator's biggest transposed convolution's."""
    size = QUICK_MATMUL_SIZE if ctx.quick else MATMUL_SIZE
    layer = biggest_layer(flops.generator, nn.ConvTranspose2d)
    return [
        row(f"matmul {size}×{size} float32", None, None, None,
            matmul_gflop_per_s(ctx.device, size, seconds)),
        row(f"generator's biggest ConvTranspose2d ({layer.name}: {layer.input_shape[1:]}→"
            f"{layer.output_shape[1:]})", CONV_BATCH, None, None,
            conv_gflop_per_s(layer, CONV_BATCH, ctx.device, seconds)),
    ]


def run(ctx: Context) -> dict:
    seconds = min_seconds(ctx)
    flops = network_flops(ModelConfig.from_dict(ctx.bundle.manifest["model"]))
    search, fast = search_rows(ctx, flops.search_step_gflop, seconds), fast_rows(ctx, seconds)
    matmul_row, conv_row = machine_rows(ctx, flops, seconds)
    rows = search + fast + [matmul_row, conv_row]
    matmul = matmul_row["gflop_per_s"]
    for r in rows:
        r["fraction_of_matmul"] = None if r["gflop_per_s"] is None else r["gflop_per_s"] / matmul

    best = max(search, key=lambda r: r["per_s"])
    best_fast = max(fast, key=lambda r: r["per_s"])
    result = {
        "ceiling_frame_steps_per_s": best["per_s"], "ceiling_batch": best["batch"],
        "fast_ceiling_frames_per_s": best_fast["per_s"], "fast_ceiling_batch": best_fast["batch"],
        "gflop_per_frame_step": flops.search_step_gflop,
        "seed_gflop_per_frame_step": flops.seed_step_gflop,
        "torch_counted_gflop_per_frame_step": torch_counted_step_gflop(
            ctx.models(), ctx.bundle.image_shape, ctx.bundle.search_config.lam, ctx.device),
        "matmul_gflop_per_s": matmul, "conv_gflop_per_s": conv_row["gflop_per_s"],
        "achieved_gflop_per_s": best["gflop_per_s"],
        "fraction_of_matmul": best["gflop_per_s"] / matmul,
    }
    flop_rows = flop_table_rows(flops)
    table = (markdown_table(rows, ["what", "batch", "per_s", "unit", "slot_table_per_s",
                                   "gflop_per_s", "fraction_of_matmul"])
             + "\n" + markdown_table(flop_rows, ["network", "layers", "mflop_per_frame"]))
    return {**result, "rows": rows, "flop_rows": flop_rows, "table": table,
            "notes": notes(result), "plots": [plot_batches(ctx, search, fast)]}


def row(what: str, batch: int | None, per_s: float | None, unit: str | None,
        gflop_per_s: float | None, slot_table_per_s: float | None = None) -> dict:
    return {"what": what, "batch": batch, "per_s": per_s, "unit": unit,
            "slot_table_per_s": slot_table_per_s, "gflop_per_s": gflop_per_s}


def flop_table_rows(flops: NetworkFlops) -> list[dict]:
    """Forward MFLOP per frame of each network, and per frame-step of the search and seed."""
    rows = [{"network": name, "layers": len(count.layers), "mflop_per_frame": count.flops / 1e6}
            for name, count in (("G forward", flops.generator), ("f forward", flops.features))]
    rows.append({"network": f"search step (×{SEARCH_STEP_FACTOR:g} of G + f(G(z)))",
                 "layers": None, "mflop_per_frame": flops.search_step_gflop * 1e3})
    rows.append({"network": f"seed step (×{SEED_STEP_FACTOR:g} of G + f(G(z)) + f(x))",
                 "layers": None, "mflop_per_frame": flops.seed_step_gflop * 1e3})
    return rows


def notes(result: dict) -> str:
    return (
        f"Raw search ceiling {result['ceiling_frame_steps_per_s']:.0f} frame-steps/s at batch "
        f"{result['ceiling_batch']}; ONNX Runtime fast path "
        f"{result['fast_ceiling_frames_per_s']:.0f} frames/s at batch "
        f"{result['fast_ceiling_batch']}. FLOPs counted with forward hooks on eager copies of "
        "G and f: 2 FLOPs per multiply-accumulate of Conv2d/ConvTranspose2d/Linear "
        "(transposed convolutions counted per input element), 2 FLOPs per element for eval "
        "BatchNorm, 7 for GroupNorm; activations and the loss not counted. A search step = "
        f"{SEARCH_STEP_FACTOR:g}× the forward FLOPs of G and f(G(z)) (backward to the input "
        f"only costs one more forward; f(x) once per frame): "
        f"{result['gflop_per_frame_step'] * 1e3:.2f} MFLOP per frame-step "
        f"(torch.utils.flop_counter, convolutions only: "
        f"{result['torch_counted_gflop_per_frame_step'] * 1e3:.2f}). The seed's step = "
        f"{SEED_STEP_FACTOR:g}× the forward FLOPs of G, f(G(z)) and f(x) (weight gradients "
        f"too): {result['seed_gflop_per_frame_step'] * 1e3:.2f} MFLOP. The search ceiling "
        f"achieves {result['achieved_gflop_per_s']:.1f} GFLOP/s, "
        f"{result['fraction_of_matmul']:.1%} of the float32 matmul rate "
        f"({result['matmul_gflop_per_s']:.1f} GFLOP/s; the generator's biggest transposed "
        f"convolution alone runs at {result['conv_gflop_per_s']:.1f} GFLOP/s). "
        "slot_table_per_s is the whole SlotTable.step (with best-z tracking and the Adam "
        "update)."
    )


def plot_batches(ctx: Context, search_rows: list[dict], fast_rows: list[dict]):
    """Frame-steps/s (search) and frames/s (fast path) against batch size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for rows, key, label in ((search_rows, "per_s", "search step, frame-steps/s"),
                             (search_rows, "slot_table_per_s", "SlotTable.step, frame-steps/s"),
                             (fast_rows, "per_s", "fast path, frames/s")):
        ax.plot([r["batch"] for r in rows], [r[key] for r in rows], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set(yscale="log", xlabel="batch", ylabel="per second", title=f"Ceilings on {ctx.device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, ctx, "ceilings")
