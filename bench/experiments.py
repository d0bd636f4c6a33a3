"""What was tried to close the gap to the ceiling (docs/performance.md records the outcome).

    python -m bench.experiments [--bundle bundles/default] [--batch 64] [--seconds 3]

Each variant times the raw batched search step (G and f forward, input gradient, as
SlotTable.step runs it) or the fast path, side by side in one run, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import load_torch_models, read_bundle
from anogan_inspect.networks import ModelConfig
from anogan_inspect.onnxrt import make_session
from anogan_inspect.search import ScoringModels
from bench.ceilings import eager_models, search_step_fn, step_inputs
from bench.common import ROOT, header, markdown_table, rate


def step_rate(models: ScoringModels, shape, batch: int, seconds: float,
              channels_last: bool = False) -> float:
    x, fx, z0 = step_inputs(models, shape, batch, "cpu")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return rate(search_step_fn(models, x, fx, z0, 0.1), "cpu", seconds)


def compiled(models: ScoringModels) -> ScoringModels:
    return ScoringModels(torch.compile(models.generator), torch.compile(models.features),
                         models.latent_dim)


def fast_rate(bundle, threads: int, batch: int, seconds: float) -> float:
    sessions = {n: make_session(bundle.file(n, "onnx"), "cpu", threads)
                for n in ("encoder", "generator", "features")}
    x = np.random.default_rng(0).random((batch, *bundle.image_shape), np.float32) * 2 - 1

    def run() -> int:
        z = sessions["encoder"].run(None, {"image": x})[0]
        xr = sessions["generator"].run(None, {"z": z})[0]
        sessions["features"].run(None, {"image": np.concatenate([x, xr])})
        return batch

    return rate(run, "cpu", seconds)


def profile_step(bundle, batch: int, steps: int = 20) -> str:
    """torch.profiler's op table for SlotTable.step at a batch (all slots active)."""
    from torch.profiler import ProfilerActivity, profile

    from anogan_inspect.search import SearchConfig, SlotTable, random_start

    models = load_torch_models(bundle)
    table = SlotTable(models, SearchConfig(steps=10 ** 9), batch, bundle.image_shape)
    table.admit(torch.rand(batch, *bundle.image_shape) * 2 - 1,
                random_start(batch, bundle.latent_dim), [10 ** 9] * batch, range(batch))
    for _ in range(3):
        table.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            table.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's op table of the engine step and stop")
    args = parser.parse_args()
    bundle = read_bundle(args.bundle)
    if args.profile:
        print(profile_step(bundle, args.batch))
        return 0
    cfg = ModelConfig.from_dict(bundle.manifest["model"])
    shape = bundle.image_shape
    threads = torch.get_num_threads()
    exported = load_torch_models(bundle, channels_last=False)
    eager = eager_models(cfg)
    rows = []

    def add(name: str, value: float, unit: str = "frame-steps/s") -> None:
        rows.append({"variant": name, "rate": value, "unit": unit,
                     "vs_baseline": value / rows[0]["rate"] if rows else 1.0})
        print(rows[-1], flush=True)

    add(f"exported program, {threads} threads (baseline)",
        step_rate(exported, shape, args.batch, args.seconds))
    add("exported program, channels_last weights (kept)",
        step_rate(load_torch_models(bundle), shape, args.batch, args.seconds))
    add("eager modules", step_rate(eager, shape, args.batch, args.seconds))
    eager_cl = eager_models(cfg)
    for net in (eager_cl.generator, eager_cl.features):
        net.to(memory_format=torch.channels_last)
    add("eager, channels_last", step_rate(eager_cl, shape, args.batch, args.seconds, True))
    started = time.perf_counter()
    try:
        add("torch.compile(eager)", step_rate(compiled(eager), shape, args.batch, args.seconds))
        rows[-1]["note"] = f"compile took {time.perf_counter() - started:.0f} s"
    except Exception as err:  # a failed variant is a finding
        rows.append({"variant": "torch.compile(eager)", "note": f"failed: {err}"[:120]})
    torch.set_num_threads(1)
    add("exported program, 1 thread", step_rate(exported, shape, args.batch, args.seconds))
    torch.set_num_threads(threads)
    add(f"exported, batch {args.batch * 4}", step_rate(exported, shape, args.batch * 4,
                                                       args.seconds))
    for ort_threads in (1, 0):
        add(f"fast path ORT, intra-op threads {ort_threads or 'auto'}",
            fast_rate(bundle, ort_threads, 256, args.seconds), "frames/s")
    print(f"\n{header()['machine']['cpu']}, {threads} torch threads, batch {args.batch}, "
          f"bundle {args.bundle}\n")
    print(markdown_table(rows, ["variant", "rate", "unit", "vs_baseline", "note"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
