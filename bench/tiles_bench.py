"""Full-resolution frames: tiled scoring against whole-frame scoring, in the server's own
pipeline (ServedModel: fast path and continuous-batching engine, no gRPC).

512×512 frames of the texture (a few with a planted bar), CASCADE mode, all frames in
flight at once as a line's cameras would send them: frames/s, tiles/s, the share of tiles
the search ran on, and the engine's mean batch. "Whole frame" is the same bundle with its
tiling removed: each frame squeezed to one model-sized image, as every frame was before
tiles (what the model then sees of a 1–2 px scratch is nothing).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time

import numpy as np

from anogan_inspect.bundle import Bundle, read_bundle
from anogan_inspect.server.models import EngineOptions, Mode, ServedModel
from bench.common import Context, markdown_table
from bench.texture_data import load_texture

FRAME = 512


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """(1, 512, 512) texture frames, flipped and rotated; every third has a bright bar."""
    texture = load_texture()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        frame = np.rot90(texture, rng.integers(4)).copy()
        if i % 3 == 2:
            top, left = rng.integers(20, FRAME - 40, 2)
            frame[top:top + 2, left:left + 30] = 1.0
        out.append(frame[None].astype(np.float32))
    return out


def latent_only(bundle: Bundle) -> Bundle:
    """A memory bundle as a tiled AnoGAN (its memory left out, judged by the threshold its
    trainer calibrated on the tiles' fast scores); any other bundle as it is."""
    if bundle.memory is None:
        return bundle
    manifest = copy.deepcopy(bundle.manifest)
    manifest.pop("memory")
    manifest["threshold"] = dict(manifest.get("fast_threshold") or manifest["threshold"])
    return dataclasses.replace(bundle, manifest=manifest)


def whole_frame(bundle: Bundle) -> Bundle:
    """The same bundle without its tiling: frames resized whole to the model's size."""
    manifest = copy.deepcopy(latent_only(bundle).manifest)
    manifest.pop("tiling", None)
    return dataclasses.replace(bundle, manifest=manifest)


async def _serve(model: ServedModel, images: list[np.ndarray]) -> tuple[float, list]:
    started = time.perf_counter()
    prepared = await asyncio.gather(*(asyncio.to_thread(model.preprocess, image)
                                      for image in images))
    outcomes = await asyncio.gather(*(model.inspect(x, Mode.CASCADE) for x in prepared))
    return time.perf_counter() - started, outcomes


def measure(bundle: Bundle, images: list[np.ndarray], device: str, max_batch: int) -> dict:
    model = ServedModel(bundle, EngineOptions(device=device, max_batch=max_batch,
                                              fast_max_batch=256)).start()
    try:
        asyncio.run(_serve(model, images[:1]))  # warm-up
        before = dataclasses.replace(model.engine.stats)
        seconds, outcomes = asyncio.run(_serve(model, images))
        stats = model.engine.stats
    finally:
        model.stop()
    tiles = sum(max(o.tiles, 1) for o in outcomes)
    searched = sum(o.tiles_searched if o.tiles else int(o.stage.value == "search")
                   for o in outcomes)
    batches = stats.batches - before.batches
    return {"frames_per_s": len(images) / seconds, "tiles_per_frame": tiles / len(images),
            "tiles_per_s": tiles / seconds, "tiles_searched_share": searched / tiles,
            "mean_engine_batch": (stats.slot_steps - before.slot_steps) / batches
            if batches else 0.0,
            "failed": sum(o.fail for o in outcomes)}


def run(ctx: Context) -> dict:
    if ctx.tiled_bundle_path is None or not (ctx.tiled_bundle_path / "manifest.json").exists():
        return {"table": "(no tiled bundle: pass --tiled-bundle)", "rows": [],
                "notes": "skipped"}
    bundle = latent_only(read_bundle(ctx.tiled_bundle_path))  # the memory: section memory
    images = frames(4 if ctx.quick else 12)
    slots = 256
    rows = []
    for name, variant in (("tiled", bundle), ("whole frame", whole_frame(bundle))):
        row = {"scoring": name, "frames": len(images),
               **measure(variant, images, ctx.device, slots)}
        rows.append(row)
    tiled, whole = rows
    notes = (f"{FRAME}×{FRAME} frames, bundle `{ctx.tiled_bundle_path.name}` (tiles "
             f"{bundle.tiling.patch} px every {bundle.tiling.stride}, scale "
             f"{bundle.tiling.scale:g}); CASCADE; {slots} engine slots, fast-path batches "
             f"up to 256. Tiled scoring costs {whole['frames_per_s'] / tiled['frames_per_s']:.0f}× "
             "the time of a whole-frame score, and sees what a whole frame squeezed to "
             f"{bundle.image_size}×{bundle.image_size} cannot (1–2 px defects).")
    columns = ["scoring", "frames", "frames_per_s", "tiles_per_frame", "tiles_per_s",
               "tiles_searched_share", "mean_engine_batch", "failed"]
    return {"rows": rows, "table": markdown_table(rows, columns), "notes": notes}
