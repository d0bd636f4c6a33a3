"""The search engine against the seed's loop on the same networks (the seed preset).

Both run the seed's 64×64 networks on the same frames for the same number of steps; the
only differences are the method's: the seed's loop (train mode, unfrozen weights, D(x)
every step, batches of 5) against the engine's slot table (eval mode, frozen, f(x) once,
64 slots). The ratio of their frame-steps/s is what correctness and batching buy.
"""

from __future__ import annotations

import copy
import time

import torch

from anogan_inspect.networks import FeatureExtractor
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels, SearchConfig, random_start, search
from bench.common import Context, markdown_table, sync
from bench.seed_method import SEED_BATCH, load_seed_networks, seed_scores


def run(ctx: Context) -> dict:
    generator, discriminator, model = load_seed_networks(ctx.seed_run / "checkpoint.pt",
                                                         ctx.device)
    frames = 20 if ctx.quick else 60
    steps = 20 if ctx.quick else 50
    raw = ctx.raw_test_images()[:frames]
    x = to_model_input(raw, model.image_size, model.channels).to(ctx.device)

    seed_scores(generator, discriminator, x[:SEED_BATCH], 2)  # warm-up
    sync(ctx.device)
    started = time.perf_counter()
    seed_scores(generator, discriminator, x, steps)
    sync(ctx.device)
    seed_rate = frames * steps / (time.perf_counter() - started)

    # The same weights, scored the engine's way: eval, frozen, and channels_last weights as
    # anogan_inspect.bundle.load_torch_models gives the server (eager copies here).
    engine_g, engine_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    for net in (engine_g, engine_d):
        net.to(memory_format=torch.channels_last)
    models = ScoringModels(engine_g, FeatureExtractor(engine_d), model.latent_dim).prepare()
    cfg = SearchConfig(steps=steps)
    z0 = random_start(frames, model.latent_dim).to(ctx.device)
    search(models, x[:8], z0[:8], SearchConfig(steps=2), device=ctx.device)  # warm-up
    rows = [{"method": f"seed's loop (batches of {SEED_BATCH}, train mode, unfrozen, "
                       "D(x) every step)", "batch": SEED_BATCH,
             "frame_steps_per_s": seed_rate, "speedup": 1.0}]
    for batch in (5, 64):
        sync(ctx.device)
        started = time.perf_counter()
        search(models, x, z0, cfg, batch_size=batch, device=ctx.device)
        sync(ctx.device)
        engine_rate = frames * steps / (time.perf_counter() - started)
        rows.append({"method": f"slot table (eval, frozen, f(x) once), {batch} slots",
                     "batch": batch, "frame_steps_per_s": engine_rate,
                     "speedup": engine_rate / seed_rate})
    return {
        "rows": rows,
        "seed_frame_steps_per_s": seed_rate,
        "engine_speedup_same_networks": rows[-1]["speedup"],
        "table": markdown_table(rows, ["method", "batch", "frame_steps_per_s", "speedup"]),
        "notes": (f"The seed preset's networks ({model.image_size}×{model.image_size}, width "
                  f"{model.width}), {frames} test digits, {steps} steps each, same device. "
                  f"torch threads: {torch.get_num_threads()}."),
        "plots": [],
    }
