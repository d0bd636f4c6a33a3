"""How the search's cost grows with the image size and the network width.

The raw batched search step (bench.ceilings, batch 64, on its own thread) on untrained
networks built from a ModelConfig (DCGAN initialisation, eval mode, frozen): image sizes
32, 64, 128 at width 32, and widths 16, 32, 64 at size 32; GFLOP per frame-step counted
from the shapes for each.
"""

from __future__ import annotations

from anogan_inspect.networks import ModelConfig
from bench.ceilings import eager_models, min_seconds, network_flops, search_step_rate
from bench.common import Context, markdown_table, save_figure

SIZES, QUICK_SIZES = (32, 64, 128), (32, 64)
WIDTHS, QUICK_WIDTHS = (16, 32, 64), (16, 32)
BASE_SIZE, BASE_WIDTH = 32, 32
BATCH = 64
LAM = 0.1
COLUMNS = ["image_size", "width", "gflop_per_frame_step", "frame_steps_per_s",
           "achieved_gflop_per_s", "relative_cost"]


def measure_config(cfg: ModelConfig, device: str, batch: int, seconds: float) -> dict:
    """Frame-steps/s and GFLOP/frame-step of one untrained configuration."""
    models = eager_models(cfg, device)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    per_s = search_step_rate(models, shape, batch, device, LAM, seconds)
    gflop = network_flops(cfg).search_step_gflop
    return {"image_size": cfg.image_size, "width": cfg.width, "gflop_per_frame_step": gflop,
            "frame_steps_per_s": per_s, "achieved_gflop_per_s": per_s * gflop}


def sweep(ctx: Context, sizes: tuple[int, ...], widths: tuple[int, ...],
          batch: int = BATCH) -> list[dict]:
    """Every (size, BASE_WIDTH) and (BASE_SIZE, width) configuration, each measured once."""
    configs = [(size, BASE_WIDTH) for size in sizes]
    configs += [(BASE_SIZE, width) for width in widths if (BASE_SIZE, width) not in configs]
    rows = [measure_config(ModelConfig(image_size=size, width=width), ctx.device, batch,
                           min_seconds(ctx)) for size, width in configs]
    base = next((r for r in rows if (r["image_size"], r["width"]) == (BASE_SIZE, BASE_WIDTH)),
                rows[0])
    for r in rows:
        r["relative_cost"] = base["frame_steps_per_s"] / r["frame_steps_per_s"]
    return rows


def run(ctx: Context, sizes: tuple[int, ...] | None = None,
        widths: tuple[int, ...] | None = None, batch: int = BATCH) -> dict:
    """The section; `sizes`, `widths` and `batch` override the quick/full sweep (for tests)."""
    sizes = sizes or (QUICK_SIZES if ctx.quick else SIZES)
    widths = widths or (QUICK_WIDTHS if ctx.quick else WIDTHS)
    rows = sweep(ctx, sizes, widths, batch)
    notes = (f"Untrained networks (latent 20, 1 channel, LayerNorm discriminator) at batch "
             f"{batch}; relative_cost = time per frame-step against size {BASE_SIZE}, width "
             f"{BASE_WIDTH} (the default preset). Doubling the image size adds a stride-2 "
             "block to G and f and doubles the top channels; doubling the width doubles "
             "every convolution's channels on both sides. GFLOP per frame-step grew "
             f"{growth(rows, 'image_size', 'width', BASE_WIDTH)} by image size and "
             f"{growth(rows, 'width', 'image_size', BASE_SIZE)} by width.")
    return {"rows": rows, "table": markdown_table(rows, COLUMNS), "notes": notes,
            "plots": [plot_scaling(ctx, rows)], "batch": batch}


def growth(rows: list[dict], key: str, fixed_key: str, fixed_value: int) -> str:
    """'×a (32→64), ×b (64→128)': the GFLOP/frame-step ratio between consecutive configs."""
    series = sorted((r for r in rows if r[fixed_key] == fixed_value), key=lambda r: r[key])
    steps = [f"×{b['gflop_per_frame_step'] / a['gflop_per_frame_step']:.1f} "
             f"({a[key]}→{b[key]})" for a, b in zip(series, series[1:])]
    return ", ".join(steps) or "(one configuration)"


def plot_scaling(ctx: Context, rows: list[dict]):
    """Frame-steps/s against image size (width 32) and against width (size 32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    by_size = sorted((r for r in rows if r["width"] == BASE_WIDTH), key=lambda r: r["image_size"])
    by_width = sorted((r for r in rows if r["image_size"] == BASE_SIZE), key=lambda r: r["width"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, series, key, label in ((left, by_size, "image_size", f"image size (width "
                                    f"{BASE_WIDTH})"),
                                   (right, by_width, "width", f"width (size {BASE_SIZE})")):
        ax.plot([r[key] for r in series], [r["frame_steps_per_s"] for r in series], "o-")
        for r in series:
            ax.annotate(f"{r['gflop_per_frame_step'] * 1e3:.0f} MFLOP", (r[key],
                        r["frame_steps_per_s"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel=label)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks([r[key] for r in series], [str(r[key]) for r in series])
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("frame-steps/s (batch 64)")
    fig.suptitle(f"Search step cost scaling on {ctx.device}")
    return save_figure(fig, ctx, "scaling")
