"""`make bench` / `make bench-quick`: measure against the seed's method and the machine's limit.

    python -m bench [--quick] [--bundle bundles/default] [--sections a,b] [--name NAME]

Writes bench/results/<name>.json and <name>.md (plots in bench/results/<name>/), each with
the machine, the command and the date. Sections, in order:

  ceilings     raw batched search step and ONNX Runtime fast path; FLOPs per frame-step
  engine       the continuous-batching engine fed from a queue (no gRPC)
  server       gRPC on loopback, 1/4/8/16 streams, FAST/CASCADE/SEARCH
  versus_seed  the engine against the seed's loop on the seed's own networks
  quality      AUROC against frames/s: seed's method, fast path, search budgets, cascade
  scaling      frames/s against image size and network width
  tiles        512×512 frames: tiled against whole-frame scoring (--tiled-bundle)
  memory       memory bundles on the grass and weave benchmarks: beside the pixels
               baseline and the tiled AnoGAN, per defect, an ablation, 512×512 serving
               and kNN speed

The seed's networks come from `--seed-run` (a trainer run directory with checkpoint.pt);
when it has none, from bench/seed_networks.pt (committed), else the seed preset is trained.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

import torch

from bench.common import ROOT, TRAIN_CSV, Context, header, markdown_table, write_json

SECTIONS = ["ceilings", "engine", "server", "versus_seed", "quality", "scaling", "tiles",
            "memory"]
MODULES = {"engine": "bench.engine_bench", "server": "bench.server_bench",
           "tiles": "bench.tiles_bench", "memory": "bench.memory_bench"}
# The seed preset's G and D (float16), so that a fresh clone needs no 10-minute training.
COMMITTED_SEED = ROOT / "bench" / "seed_networks.pt"


def shown(path: Path) -> str:
    """A path as the results show it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ensure_seed_run(seed_run: Path, quick: bool, device: str) -> str:
    """Give seed_run a checkpoint: the committed seed networks, else train the seed preset.
    Returns where its weights came from (recorded with the results: an existing fp32
    checkpoint and the committed float16 copy are not the same bits)."""
    checkpoint = seed_run / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        return f"existing checkpoint.pt: {state.get('source', 'trained locally')}"
    if COMMITTED_SEED.is_file():
        state = torch.load(COMMITTED_SEED, weights_only=False)
        for part in ("generator", "discriminator"):
            state[part] = {k: v.float() if v.is_floating_point() else v
                           for k, v in state[part].items()}
        seed_run.mkdir(parents=True, exist_ok=True)
        torch.save(state, seed_run / "checkpoint.pt")
        print(f"bench: seed networks from {COMMITTED_SEED.name} ({state['source']})")
        return f"{COMMITTED_SEED.relative_to(ROOT)} converted to float32: {state['source']}"
    from anogan_inspect.trainer.cli import main as train_main

    epochs = "1" if quick else "30"
    print(f"bench: no seed checkpoint in {seed_run}; training the seed preset "
          f"({epochs} epochs)", flush=True)
    code = train_main(["train", "--data", str(TRAIN_CSV), "--normal-labels", "7,8",
                       "--preset", "seed", "--epochs", epochs, "--no-encoder", "--steps", "2",
                       "--out", str(seed_run / "bundle"), "--run-dir", str(seed_run),
                       "--device", device])
    if code != 0:
        sys.exit("bench: training the seed preset failed")
    return f"seed preset trained here, {epochs} epochs"


def targets(results: dict) -> list[dict]:
    """The issue's targets as measured ratios (None where a section did not run)."""
    get = lambda section, key: results.get(section, {}).get(key)  # noqa: E731
    quality = results.get("quality", {}).get("rows", [])
    seed_q = next((r for r in quality if r["method"].startswith("seed")), None)
    cascade = next((r for r in quality if r["method"].startswith("cascade")), None)
    rows = [
        {"target": "engine ≥ 3× the seed's loop in frame-steps/s (same networks, same steps)",
         "measured": get("versus_seed", "engine_speedup_same_networks"), "goal": 3.0},
        {"target": "engine ≥ 80 % of the raw batched ceiling",
         "measured": get("engine", "efficiency"), "goal": 0.8},
        {"target": "server ≥ 85 % of the engine with 8 streams",
         "measured": get("server", "efficiency_8_streams"), "goal": 0.85},
    ]
    if seed_q and cascade:
        rows.append({"target": "cascade ≥ 20× the seed's method in frames/s",
                     "measured": cascade["frames_per_s"] / seed_q["frames_per_s"],
                     "goal": 20.0})
        rows.append({"target": "cascade AUROC ≥ the seed's method (same subset): "
                               "cascade − seed AUROC, "
                               f"{cascade['auroc_subset']:.3f} − {seed_q['auroc_subset']:.3f}",
                     "measured": cascade["auroc_subset"] - seed_q["auroc_subset"],
                     "goal": 0.0})
    for row in rows:
        row["met"] = None if row["measured"] is None else row["measured"] >= row["goal"]
    return rows


def render(results: dict, meta: dict) -> str:
    lines = [f"# Benchmark: {meta['name']}", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
             f"torch {meta['machine']['torch']} ({meta['machine']['torch_threads']} threads), "
             f"ONNX Runtime {meta['machine']['onnxruntime']}, device {meta['device']}"
             + (f" ({meta['machine']['gpu']})" if meta['machine']['gpu'] else ""),
             f"- code: git `{meta['machine'].get('git_describe') or 'unknown'}`",
             f"- bundle: `{meta['bundle']}`; seed networks: `{meta['seed_run']}`"
             + (f" ({meta['seed_source']})" if meta.get("seed_source") else "")
             + (f"; tiled bundle: `{meta['tiled_bundle']}`" if "tiles" in results else ""),
             ""]
    measured = [row for row in results["targets"] if row["measured"] is not None]
    if measured:  # a run of other sections only measures none of them
        lines += ["## Targets", "", markdown_table(results["targets"])]
    for name in SECTIONS:
        if name not in results:
            continue
        section = results[name]
        lines += [f"## {name} ({section['seconds']:.0f} s)", "", section.get("notes", ""), "",
                  section["table"]]
        for plot in section.get("plots", []):
            lines.append(f"![{name}]({Path(plot).relative_to(meta['results_dir'])})\n")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--tiled-bundle", type=Path, default=ROOT / "bundles" / "texture",
                        help="tiled bundle for the tiles section")
    parser.add_argument("--quick", action="store_true", help="a few minutes, for development")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--seed-run", type=Path, default=ROOT / "runs" / "seed")
    parser.add_argument("--name", help="results name (default: <device>-quick or <device>)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    name = args.name or (f"{device_kind}-quick" if args.quick else device_kind)
    results_dir = args.results_dir / ("quick" if args.quick else "")
    out_dir = results_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_source = None
    if {"versus_seed", "quality"} & set(sections):
        seed_source = ensure_seed_run(args.seed_run, args.quick, args.device)
    ctx = Context(args.bundle, args.device, args.quick, out_dir, args.seed_run,
                  tiled_bundle_path=args.tiled_bundle)
    meta = {"name": name, **header(["python", "-m", "bench", *(argv or sys.argv[1:])]),
            "device": args.device, "bundle": shown(args.bundle), "seed_run": shown(args.seed_run),
            "tiled_bundle": shown(args.tiled_bundle),
            "seed_source": seed_source,
            "quick": args.quick, "results_dir": results_dir}
    results: dict = {}
    for section in sections:
        print(f"bench: {section} ...", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(MODULES.get(section, f"bench.{section}"))
        results[section] = module.run(ctx)
        results[section]["seconds"] = time.perf_counter() - started
        print(results[section]["table"], flush=True)
    results["targets"] = targets(results)
    meta["results_dir"] = str(results_dir)
    write_json(results_dir / f"{name}.json", {**meta, "results": _jsonable(results)})
    meta["results_dir"] = results_dir
    markdown = render(results, meta)
    (results_dir / f"{name}.md").write_text(markdown)
    print(markdown_table(results["targets"]))
    print(f"bench: wrote {results_dir / (name + '.md')} and .json")
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "table"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
