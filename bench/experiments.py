"""What was tried to close the gap to the ceiling (docs/performance.md records the outcome).

    python -m bench.experiments [--bundle bundles/default] [--batch 64] [--seconds 3]
    python -m bench.experiments --fast-only [--seconds 3]   # the ONNX Runtime variants only

Each variant times the raw batched search step (G and f forward, input gradient, as
SlotTable.step runs it) or the fast path, side by side in one run, and prints a table.
The fast-path variants (CPU provider, batch 256, 1 intra-op thread unless named): graph
optimisation levels, and E→G→f merged into one ONNX graph (checked against the three
sessions the server runs).
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


FAST_NETWORKS = ("encoder", "generator", "features")
FAST_BATCH = 256


def fast_inputs(bundle, batch: int) -> np.ndarray:
    return np.random.default_rng(0).random((batch, *bundle.image_shape), np.float32) * 2 - 1


def three_sessions(bundle, threads: int, level: str = "all"):
    """E, G and f as the server runs them: one session each, numpy between them.
    Returns run(x) → (z, reconstruction, features of [x; reconstruction])."""
    sessions = {n: make_session(bundle.file(n, "onnx"), "cpu", threads, level)
                for n in FAST_NETWORKS}

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        z = sessions["encoder"].run(None, {"image": x})[0]
        xr = sessions["generator"].run(None, {"z": z})[0]
        return z, xr, sessions["features"].run(None, {"image": np.concatenate([x, xr])})[0]

    return run


def merged_fast_model(bundle) -> bytes:
    """E → G → f as one ONNX graph: image → (z, reconstruction, features of [x; G(E(x))]),
    the same computation as the three sessions with no numpy hand-offs between them."""
    import onnx
    from onnx import compose, helper

    parts = {n: compose.add_prefix(onnx.load(str(bundle.file(n, "onnx"))), n[0] + "_")
             for n in FAST_NETWORKS}
    e, g, f = parts["encoder"], parts["generator"], parts["features"]
    z_to_g = helper.make_node("Identity", ["e_z"], ["g_z"])
    both_to_f = helper.make_node("Concat", ["e_image", "g_image"], ["f_image"], axis=0)
    graph = helper.make_graph(
        [*e.graph.node, z_to_g, *g.graph.node, both_to_f, *f.graph.node], "fast_path",
        [e.graph.input[0]], [e.graph.output[0], g.graph.output[0], f.graph.output[0]],
        [*e.graph.initializer, *g.graph.initializer, *f.graph.initializer])
    model = helper.make_model(graph, opset_imports=e.opset_import, ir_version=e.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def merged_session(bundle, threads: int):
    session = make_session(merged_fast_model(bundle), "cpu", threads)
    return lambda x: tuple(session.run(None, {"e_image": x}))


def fast_rate(run, bundle, batch: int, seconds: float) -> float:
    """Frames/s of a fast-path variant's run(x) at a batch."""
    x = fast_inputs(bundle, batch)

    def one_batch() -> int:
        run(x)
        return batch

    return rate(one_batch, "cpu", seconds)


def fast_variants(bundle, seconds: float, threads: int = 1, rounds: int = 3) -> list[dict]:
    """The fast path's ONNX Runtime variants against the server's (three sessions, ENABLE_ALL,
    1 intra-op thread), with each one's largest difference from it on the same frames.
    Variants are timed in turn, `rounds` times over (drift on a shared machine hits them
    alike); each row keeps its best and worst round."""
    x = fast_inputs(bundle, FAST_BATCH)
    variants = {"three sessions, ORT_ENABLE_ALL (the server's)": three_sessions(bundle, threads)}
    for level in ("extended", "basic", "disable"):
        variants[f"three sessions, graph optimisation {level}"] = three_sessions(
            bundle, threads, level)
    variants["E→G→f merged into one graph, ORT_ENABLE_ALL"] = merged_session(bundle, threads)
    reference = variants["three sessions, ORT_ENABLE_ALL (the server's)"](x)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            rates[name].append(fast_rate(run, bundle, FAST_BATCH, seconds))
    rows = []
    for name, run in variants.items():
        difference = max(float(np.abs(a - b).max()) for a, b in zip(run(x), reference))
        rows.append({"variant": name, "rate": max(rates[name]), "worst": min(rates[name]),
                     "unit": "frames/s", "max_abs_difference": difference})
        rows[-1]["vs_baseline"] = rows[-1]["rate"] / rows[0]["rate"]
        print(rows[-1], flush=True)
    return rows


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
    parser.add_argument("--fast-only", action="store_true",
                        help="only the fast path's ONNX Runtime variants (a few seconds each)")
    args = parser.parse_args()
    bundle = read_bundle(args.bundle)
    if args.profile:
        print(profile_step(bundle, args.batch))
        return 0
    if args.fast_only:
        rows = fast_variants(bundle, args.seconds)
        print(f"\n{header()['machine']['cpu']}, batch {FAST_BATCH}, 1 intra-op thread, "
              f"best of 3 rounds of {args.seconds} s, bundle {args.bundle}\n")
        print(markdown_table(rows, ["variant", "rate", "worst", "unit", "vs_baseline",
                                    "max_abs_difference"]))
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
            fast_rate(three_sessions(bundle, ort_threads), bundle, FAST_BATCH, args.seconds),
            "frames/s")
    print(f"\n{header()['machine']['cpu']}, {threads} torch threads, batch {args.batch}, "
          f"bundle {args.bundle}\n")
    print(markdown_table(rows, ["variant", "rate", "unit", "vs_baseline", "note"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
