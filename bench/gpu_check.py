"""GPU check (bench/gpu_check.sh): CUDA-vs-CPU parity, then engine and fast-path speed.

Self-contained: trains the small bundle it needs on the GPU (and the seed preset, whose
weights it can hand back), so it runs on a bare machine with this repository and torch.

    python -m bench.gpu_check --out DIR [--seed-epochs 30]

Steps, each timed and recorded in DIR/gpu-check-<card>.json (e.g. gpu-check-h200.json),
rewritten after every step so that a timeout keeps what finished, with the total wall
time; a short table is printed last:
 1. train the default config (few epochs) and the seed preset on the GPU; evaluate the
    seed preset at 500 steps (AUROC on MNIST 7/8-vs-2)
 2. parity: the same frames, the same z0, the search on CPU and on CUDA (TF32 off)
 3. the card's measured FLOP rate: large matmuls in fp32, TF32 and bf16
 4. the engine's search step at 64×64 (seed widths): fp32, TF32, bf16 autocast, and a
    CUDA-graph replay of the full-table step; FLOPs per frame-step from torch's counter
 5. the fast path (ONNX Runtime) with the CUDA provider when this ORT build has it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.networks import PRESETS, Discriminator, FeatureExtractor, Generator
from anogan_inspect.search import (
    ScoringModels,
    SearchConfig,
    SlotTable,
    random_start,
    score_parts,
    search,
)
from bench.common import git_version

ROOT = Path(__file__).resolve().parent.parent
CUDA_EP = "CUDAExecutionProvider"
# "cuda" on the GPU machine; `--device cpu` dry-runs the script here with small sizes.
DEVICE = "cuda"


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(fn, seconds: float = 2.0, warmup: int = 3) -> tuple[float, int]:
    """(elapsed, iterations) of fn repeated for about `seconds`, CUDA-synchronised."""
    for _ in range(warmup):
        fn()
    sync()
    iterations, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        iterations += 1
    sync()
    return time.perf_counter() - started, iterations


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def train(out: Path, preset: str, epochs: int, extra: list[str]) -> Path:
    from anogan_inspect.trainer.cli import main as train_main

    code = train_main(["train", "--data", str(ROOT / "data/mnist_train.csv.gz"),
                       "--normal-labels", "7,8", "--preset", preset, "--epochs", str(epochs),
                       "--out", str(out / f"bundle-{preset}"), "--run-dir",
                       str(out / f"run-{preset}"), "--device", DEVICE, *extra])
    assert code == 0, f"training {preset} failed"
    return out / f"bundle-{preset}"


def matmul_rates(n: int = 8192) -> dict:
    """Measured TFLOP/s of an n² matmul in fp32 (no TF32), TF32 and bf16."""
    rates = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        set_tf32(tf32)
        a = torch.randn(n, n, device=DEVICE, dtype=dtype)
        b = torch.randn(n, n, device=DEVICE, dtype=dtype)
        elapsed, iterations = timed(lambda a=a, b=b: a @ b, seconds=1.5)
        rates[name] = 2 * n ** 3 * iterations / elapsed / 1e12
    set_tf32(False)
    return rates


def seed_models(seed_run: Path | None) -> ScoringModels:
    """The seed preset's G and f (trained weights when given), eval and frozen, on CUDA."""
    cfg = PRESETS["seed"]
    generator, discriminator = Generator(cfg), Discriminator(cfg)
    if seed_run is not None:
        state = torch.load(seed_run / "checkpoint.pt", map_location="cpu", weights_only=False)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
    return ScoringModels(generator.to(DEVICE), FeatureExtractor(discriminator).to(DEVICE),
                         cfg.latent_dim).prepare()


def flops_per_frame_step(models: ScoringModels, capacity: int = 8) -> float:
    """FLOPs of one search step per frame, counted by torch: G and f forward, and the
    backward to z (parameters are frozen, so no weight gradients). f(x) is not per step."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(capacity, 1, 64, 64, device=DEVICE)
    with torch.no_grad():
        fx = models.features(x)
    z = random_start(capacity, models.latent_dim).to(DEVICE).requires_grad_(True)
    # .backward() rather than autograd.grad: the counter's hooks need the former.
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = score_parts(models, x, fx, z, 0.1)
        loss.sum().backward()
    return counter.get_total_flops() / capacity


def engine_rate(models: ScoringModels, capacity: int, autocast=None, seconds=2.0,
                graphs: bool = False) -> float:
    """Frame-steps/s of SlotTable.step with every slot active (budgets never reached);
    with `graphs`, replaying the table's CUDA graph of its step (`--cuda-graphs`)."""
    if graphs and not DEVICE.startswith("cuda"):
        raise RuntimeError("CUDA graphs need a CUDA device")
    table = SlotTable(models, SearchConfig(steps=10 ** 9), capacity, (1, 64, 64), DEVICE,
                      autocast_dtype=autocast, cuda_graphs=graphs)
    x = torch.rand(capacity, 1, 64, 64) * 2 - 1
    table.admit(x, random_start(capacity, 20), [10 ** 9] * capacity, range(capacity))
    elapsed, iterations = timed(table.step, seconds)
    return capacity * iterations / elapsed


def parity(bundle: Path, frames: int = 64, steps: int = 50) -> dict:
    """Search scores on CPU and CUDA for the same frames and z0 (TF32 off)."""
    from anogan_inspect.bundle import load_torch_models, read_bundle
    from anogan_inspect.datasets import load_dataset
    from anogan_inspect.preprocess import to_model_input

    set_tf32(False)
    b = read_bundle(bundle)
    data = load_dataset(ROOT / "data/mnist_test.csv.gz", normal_labels=[7, 8],
                        anomaly_labels=[2])
    x = to_model_input(data.images[:frames], b.image_size, b.channels)
    cfg = SearchConfig(steps=steps, lr=b.search_config.lr)
    z0 = random_start(frames, b.latent_dim, seed=7)
    scores = {}
    for device in ("cpu", DEVICE):
        models = load_torch_models(b, device)
        scores[device] = search(models, x.to(device), z0.to(device), cfg, 64, device).score
    relative = np.abs(scores[DEVICE] - scores["cpu"]) / np.abs(scores["cpu"])
    return {"frames": frames, "steps": steps, "max_relative_difference": float(relative.max()),
            "mean_relative_difference": float(relative.mean()),
            "passed": bool(relative.max() < 1e-3)}


def fast_path(bundle: Path) -> dict:
    """ONNX Runtime fast path frames/s at batch 256 on CPU, and on CUDA only when a session
    really got the CUDA provider (a "cuda" session without it is the CPU again: not timed
    under a CUDA label); `cuda_note` says why not."""
    import onnxruntime as ort

    from anogan_inspect.bundle import read_bundle
    from anogan_inspect.server.fastpath import OrtFastPath

    b = read_bundle(bundle)
    x = (np.random.default_rng(0).random((256, *b.image_shape), dtype=np.float32) * 2 - 1)
    available = ort.get_available_providers()
    out = {"available_providers": available, "cuda_ep": False}
    paths = {"cpu": OrtFastPath(b, b.search_config.lam, "cpu")}
    if CUDA_EP not in available:
        out["cuda_note"] = f"CUDA EP absent (onnxruntime has providers {', '.join(available)})"
    elif not (DEVICE.startswith("cuda") and torch.cuda.is_available()):
        out["cuda_note"] = "CUDA EP not used: no CUDA device here"
    else:
        paths["cuda"] = OrtFastPath(b, b.search_config.lam, DEVICE)
        out["cuda_ep"] = CUDA_EP in paths["cuda"].providers
        if not out["cuda_ep"]:
            out["cuda_note"] = (f"CUDA EP did not load (session providers "
                                f"{', '.join(paths.pop('cuda').providers)})")
    for device, path in paths.items():
        out[f"{device}_providers"] = path.providers
        for _ in range(3):
            path.score_batch(x)
        started, iterations = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            path.score_batch(x)
            iterations += 1
        out[f"{device}_frames_per_s"] = 256 * iterations / (time.perf_counter() - started)
    return out


def card_slug(gpu: str) -> str:
    """'NVIDIA H200' → 'h200', 'NVIDIA H100 80GB HBM3' → 'h100-80gb-hbm3': a file name part."""
    name = re.sub(r"^nvidia\s+", "", gpu.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


@dataclass
class Recorder:
    """The check's results, rewritten to `path` after every step (atomically: a timeout or
    a crash leaves the last complete file, never half of one)."""

    path: Path
    results: dict
    started: float = field(default_factory=time.perf_counter)

    def save(self, finished: bool = False) -> None:
        self.results["wall_seconds"] = time.perf_counter() - self.started
        self.results["finished"] = finished
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.results, indent=2, default=float))
        os.replace(partial, self.path)

    def attempt(self, name: str, fn, *args, into: dict | None = None, **kwargs):
        """Run one step; record its result or its error, never stop the whole check."""
        target = self.results if into is None else into
        log(f"{name} ...")
        started = time.perf_counter()
        try:
            target[name] = fn(*args, **kwargs)
        except Exception as err:  # a failed step is a finding, not a reason to lose the rest
            traceback.print_exc()
            target[name] = {"error": f"{type(err).__name__}: {err}"}
        log(f"{name} done in {time.perf_counter() - started:.1f} s")
        self.save()
        return target[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed-epochs", type=int, default=30)
    parser.add_argument("--capacities", default="256,1024,4096")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--eval-steps", type=int, default=500)
    parser.add_argument("--skip-engine", action="store_true", help="no engine timings")
    parser.add_argument("--work", type=Path, help="where bundles are trained (default OUT/work)")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "none (dry run)"
    slug = card_slug(gpu) if DEVICE.startswith("cuda") else "dry-run"
    recorder = Recorder(args.out / f"gpu-check-{slug}.json", {
        "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench.gpu_check",
                             *(sys.argv[1:] if argv is None else argv)]), **git_version()})
    results, attempt = recorder.results, recorder.attempt
    log(f"{gpu}, torch {results['torch']}, CUDA {results['cuda']} → {recorder.path}")
    recorder.save()
    work = args.work or args.out / "work"
    default_bundle = attempt("train_default", lambda: str(train(
        work, "default", 20, ["--encoder-epochs", "20", "--steps", "20"])))
    seed_bundle = attempt("train_seed", lambda: str(train(
        work, "seed", args.seed_epochs, ["--no-encoder", "--steps", "20"])))
    if isinstance(seed_bundle, str):
        attempt("seed_eval", evaluate_seed, Path(seed_bundle), args.out, args.eval_steps)
        export_seed_weights(work / "run-seed", args.out)
    if isinstance(default_bundle, str):
        attempt("parity", parity, Path(default_bundle))
    rates = attempt("matmul_tflops", matmul_rates, args.matmul_size)
    seed_run = work / "run-seed" if (work / "run-seed" / "checkpoint.pt").exists() else None
    models = seed_models(seed_run)
    flops = attempt("flops_per_frame_step", flops_per_frame_step, models)
    engine = results.setdefault("engine", {})
    for capacity in () if args.skip_engine else (int(c) for c in args.capacities.split(",")):
        for variant in ("fp32", "tf32", "bf16", "cuda_graph_fp32", "cuda_graph_tf32"):
            set_tf32(variant.endswith("tf32"))
            dtype = torch.bfloat16 if variant == "bf16" else None
            graphs = variant.startswith("cuda_graph")
            fn = lambda c=capacity, d=dtype, g=graphs: engine_rate(models, c, d, graphs=g)  # noqa: E731
            attempt(f"{variant}@{capacity}", fn, into=engine)
    set_tf32(False)
    if isinstance(default_bundle, str):
        attempt("fast_path", fast_path, Path(default_bundle))
    recorder.save(finished=True)
    print_table(results, rates, flops)
    log(f"wrote {recorder.path} ({results['wall_seconds']:.0f} s in all)")
    return 0


def evaluate_seed(bundle: Path, out: Path, steps: int) -> dict:
    """The seed preset, eval-mode search from random z, on the 300 test digits."""
    from anogan_inspect.trainer.cli import main as train_main

    code = train_main(["evaluate", "--bundle", str(bundle), "--data",
                       str(ROOT / "data/mnist_test.csv.gz"), "--normal-labels", "7,8",
                       "--anomaly-labels", "2", "--steps", str(steps), "--search-lr", "0.01",
                       "--out", str(out / "seed-eval"), "--device", DEVICE])
    report = json.loads((out / "seed-eval" / "report.json").read_text())
    search_metrics = report["search"]
    return {"exit": code, "steps": steps, "auroc": search_metrics["auroc"],
            "auprc": search_metrics["auprc"], "frames_per_second": report["frames_per_second"]}


def export_seed_weights(run: Path, out: Path) -> None:
    """G and D of the seed preset, in two files under 16 MB, for the CPU benchmarks."""
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    for part in ("generator", "discriminator"):
        torch.save({"model_config": state["model_config"], part: state[part],
                    "gan_epoch": state["gan_epoch"], "history": state["history"]},
                   out / f"seed_{part}.pt")


def print_table(results: dict, rates, flops) -> None:
    print("\n== GPU check:", results["gpu"], "==")
    if isinstance(rates, dict) and "error" not in rates:
        print("matmul TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    if isinstance(flops, float):
        print(f"search step: {flops / 1e9:.3f} GFLOP per frame-step (64x64, seed widths)")
    print(f"parity CUDA vs CPU: {results.get('parity')}")
    print(f"seed preset, eval-mode search from random z: {results.get('seed_eval')}")
    print(f"{'engine variant':<26} {'frame-steps/s':>14} {'TFLOP/s':>9} {'% of matmul':>12}")
    for name, value in results.get("engine", {}).items():
        if not isinstance(value, float):
            print(f"{name:<26} {str(value)[:60]}")
            continue
        tflops = value * flops / 1e12 if isinstance(flops, float) else float("nan")
        base = rates.get("bf16" if "bf16" in name else "tf32" if "tf32" in name else "fp32",
                         float("nan")) if isinstance(rates, dict) else float("nan")
        print(f"{name:<26} {value:14.0f} {tflops:9.2f} {100 * tflops / base:11.1f}%")
    print(fast_path_line(results.get("fast_path")))


def fast_path_line(fast: dict | None) -> str:
    """The fast path's line of the final table, saying plainly when CUDA was not measured."""
    if not isinstance(fast, dict) or "error" in fast:
        return f"fast path: not measured ({(fast or {}).get('error', 'no default bundle')})"
    line = f"fast path (ONNX Runtime, batch 256): CPU EP {fast['cpu_frames_per_s']:.0f} frames/s"
    if not fast.get("cuda_ep"):
        providers = ", ".join(fast["available_providers"])
        return f"{line}; " + fast.get("cuda_note",
                                      f"CUDA EP absent (onnxruntime has providers {providers})")
    return (f"{line}; CUDA EP {fast['cuda_frames_per_s']:.0f} frames/s "
            f"(session providers {', '.join(fast['cuda_providers'])})")


if __name__ == "__main__":
    raise SystemExit(main())
