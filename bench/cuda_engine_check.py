"""The committed default bundle through the server's search on CUDA, checked against the CPU.

    PYTHONPATH=. python3 bench/cuda_engine_check.py [--out FILE]      (on a CUDA machine)

Loads bundles/default's torch.export programs on the GPU (they were exported with another
torch version than the GPU machine's), TF32 off, and checks:

1. ONNX Runtime parity against the torch programs there;
2. the engine (16 slots, so slots are refilled) scoring 40 random frames with 30 search
   steps from E(x), on the GPU against the CPU;
3. a slot table admitting, stepping, finishing and refilling slots never makes the host
   wait for the device (torch's sync debug mode set to raise; the table's one intended
   wait, at most MAX_STEPS_AHEAD steps queued ahead of the device, lifted), fp32 and
   bf16; and runs the same schedule with that bound (the warm-up);
4. ``--cuda-graphs``: a table replaying its captured step gives the steps and scores of a
   table stepping eagerly on the same GPU (fp32 and bf16), also without a wait.

Prints one JSON object (also written to --out) and exits 1 if a check failed. With
``--device cpu`` it runs the same code on the CPU (3 and 4 need CUDA and are skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import check_parity, load_torch_models, read_bundle
from anogan_inspect.search import SearchConfig, SlotTable
from anogan_inspect.server.engine import PRECISIONS, SearchEngine

FRAMES, STEPS, SLOTS = 40, 30, 16


async def scores(bundle, x: torch.Tensor, device: str):
    """Engine scores of frames x on a device (z0 = E(x), computed by the engine)."""
    models = load_torch_models(bundle, device)
    engine = SearchEngine(models, SearchConfig(steps=STEPS), bundle.image_shape, SLOTS,
                          device).start()
    try:
        requests = [engine.submit(x[i], None, STEPS) for i in range(len(x))]
        outcomes = await asyncio.gather(*(r.future for r in requests))
        return np.array([o.result.score for o in outcomes]), engine.stats
    finally:
        engine.stop()


def schedule(table: SlotTable, x: torch.Tensor, z0: torch.Tensor,
             no_wait: bool = False) -> dict:
    """Admit frame i (budget 1 + i % 7) as soon as a slot frees, step until all are done
    (with `no_wait`, under torch's sync debug mode set to raise on any wait for a GPU),
    then collect every result; results by frame index."""
    results = {}
    bound = table.max_ahead
    if no_wait:  # the table's one intended wait (MAX_STEPS_AHEAD) is lifted for the check
        table.max_ahead = 1 << 30
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(len(x)):
            while not table.free:
                results.update({r.tag: r for r in table.step()})
            table.admit(x[i:i + 1], z0[i:i + 1], [1 + i % 7], [i])
        while table.n:
            results.update({r.tag: r for r in table.step()})
    finally:
        if no_wait:
            torch.cuda.set_sync_debug_mode("default")
            table.max_ahead = bound
    results.update({r.tag: r for r in table.collect(wait=True)})
    return results


def table_checks(bundle, device: str) -> dict:
    """Checks 3 and 4: per precision, no wait in eager steps, and replayed graphs against
    eager steps (the largest relative score difference; steps must be equal)."""
    models = load_torch_models(bundle, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(600, *bundle.image_shape, generator=gen) * 2 - 1
    with torch.no_grad():
        z0 = models.encoder(x.to(device)).cpu()
    cfg, out = SearchConfig(steps=7), {}
    for precision, dtype in PRECISIONS.items():
        warm = SlotTable(models, cfg, 128, bundle.image_shape, device, dtype)
        schedule(warm, x[:200], z0[:200])  # pinned buffers, kernels chosen
        eager = schedule(warm, x, z0, no_wait=True)
        graphed_table = SlotTable(models, cfg, 128, bundle.image_shape, device, dtype,
                                  cuda_graphs=True)
        if not graphed_table.graph_buckets:
            raise RuntimeError("the CUDA graphs were not captured (see the log)")
        graphed = schedule(graphed_table, x, z0, no_wait=True)
        steps_equal = all(graphed[i].steps == eager[i].steps == 1 + i % 7
                          for i in range(len(x)))
        gap = max(abs(graphed[i].score - eager[i].score) / abs(eager[i].score)
                  for i in range(len(x)))
        out[precision] = {"eager_no_wait": True, "graphs_no_wait": True,
                          "buckets": list(graphed_table.graph_buckets),
                          "steps_equal": steps_equal, "graphs_vs_eager_max_rel": gap,
                          "ok": steps_equal and gap < 1e-3}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    bundle = read_bundle(Path(__file__).resolve().parents[1] / "bundles" / "default")
    report: dict = {"torch": torch.__version__, "device": args.device, "problems": []}

    def attempt(name: str, fn) -> None:
        try:
            report[name] = fn()
        except Exception:
            report["problems"].append(f"{name}: {traceback.format_exc()}")

    attempt("parity", lambda: check_parity(bundle, load_torch_models(bundle, args.device)))

    def engine() -> dict:
        x = torch.rand(FRAMES, *bundle.image_shape,
                       generator=torch.Generator().manual_seed(0)) * 2 - 1
        cpu, _ = asyncio.run(scores(bundle, x, "cpu"))
        here, stats = asyncio.run(scores(bundle, x, args.device))
        return {"max_rel_vs_cpu": float(np.max(np.abs(here - cpu) / cpu)),
                "batches": stats.batches, "max_batch": stats.max_batch}

    attempt("engine", engine)
    if args.device.startswith("cuda"):
        attempt("tables", lambda: table_checks(bundle, args.device))
    ok = not report["problems"] and report["engine"]["max_rel_vs_cpu"] < 1e-4 and all(
        check["ok"] for check in report.get("tables", {}).values())
    report["ok"] = ok
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
