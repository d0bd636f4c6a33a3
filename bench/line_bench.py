"""Line-scale serving on one device: frames/s over gRPC from many streams in several client
processes, per mode and search precision, beside the gRPC ceiling and the engine and raw
search step, all measured in one run on one machine.

    python -m bench.line_bench --bundle bundles/default --device cuda --out DIR \
        [--clients 6 --streams 8 --seconds 10]

Sections, in order, each recorded in DIR/line-bench.json (rewritten after every section,
so a timeout keeps what finished) and DIR/line-bench.md:

1. raw step: ``SlotTable.step`` on a full table at each candidate slot count, fp32 and
   bf16, eager and (on a GPU) replaying CUDA graphs (the same measurement ``anogan-serve
   --max-batch auto`` sizes its slots with);
2. engine: the search engine (``SearchEngine``, continuous batching, asyncio hand-back) at
   the slot count the server chooses, on the test digits at the default search budget;
   efficiency = its frame-steps/s ÷ the raw step's at that slot count;
3. quality: AUROC of the search (from E(x), the default budget) on MNIST 7/8 vs 2 in fp32
   and bf16, and how many verdicts differ at the calibrated threshold;
4. servers: a real ``anogan-serve`` per configuration (and ``bench.echo_server``, the same
   server with scoring taken out: the gRPC ceiling), driven by ``--clients`` processes of
   ``--streams`` streams each, every stream keeping ``--window`` frames in flight; frames/s
   counts the final results received in the measured window (after ``--warmup`` s). The
   frames are the 1,000 bundled MNIST test digits (all ten classes), or with ``--frames
   reference`` the reference task's 300 (7, 8 and 2), cycled; each stream has a
   connection of its own, so that ``--workers`` servers get them spread (rows -w4 and -w8:
   four or eight processes on the port, an engine each; their counters are summed over the
   workers; rows -graphs: ``--cuda-graphs``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import load_torch_models, read_bundle
from anogan_inspect.datasets import load_dataset
from anogan_inspect.metrics import auroc
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import search
from anogan_inspect.server.engine import PRECISIONS, SLOT_CANDIDATES, SearchEngine, size_slots
from bench.common import ROOT, TEST_CSV, git_version, machine, markdown_table

MODES = ("FAST", "CASCADE", "SEARCH")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1-3: without gRPC ----------------------------------------------------------------------

def variants(device: torch.device) -> dict[str, tuple[torch.dtype | None, bool]]:
    """The search's variants measured without gRPC: each precision, eager steps and (on a
    GPU) replayed CUDA graphs (`anogan-serve --cuda-graphs`)."""
    out = {precision: (dtype, False) for precision, dtype in PRECISIONS.items()}
    if device.type == "cuda":
        out.update({f"{precision}+graphs": (dtype, True)
                    for precision, dtype in PRECISIONS.items()})
    return out


def raw_steps(models, cfg, shape, device, candidates) -> dict:
    """Frame-steps/s of a full table's step per slot count and variant, and the count the
    server would choose."""
    out = {}
    for name, (dtype, graphs) in variants(device).items():
        chosen, rates = size_slots(models, cfg, shape, device, dtype, candidates, steps=20,
                                   cuda_graphs=graphs)
        out[name] = {"chosen": chosen, "rates": rates}
        log(f"raw step {name}: chosen {chosen}, "
            + ", ".join(f"{c}: {r:,.0f}" for c, r in rates.items()))
    return out


def engine_rate(models, cfg, x: torch.Tensor, device, slots: int, dtype, steps: int,
                graphs: bool = False) -> dict:
    """The engine, at `slots`, on every frame of x at `steps` each (z0 = E(x) at admission)."""
    async def run() -> tuple[float, int]:
        engine = SearchEngine(models, cfg, tuple(x.shape[1:]), slots, device, "bench",
                              dtype, graphs).start()
        try:
            warm = [engine.submit(x[i], None, steps).future for i in range(min(slots, len(x)))]
            await asyncio.gather(*warm)
            before = engine.stats.slot_steps
            started = time.perf_counter()
            await asyncio.gather(*(engine.submit(frame, None, steps).future for frame in x))
            return time.perf_counter() - started, engine.stats.slot_steps - before
        finally:
            engine.stop()

    seconds, slot_steps = asyncio.run(run())
    return {"slots": slots, "frames": len(x), "steps": steps, "seconds": seconds,
            "frames_per_s": len(x) / seconds, "frame_steps_per_s": slot_steps / seconds}


def quality(bundle, models, device) -> dict:
    """Search AUROC on 7/8 vs 2 from E(x) at the bundle's budget, fp32 against bf16."""
    data = load_dataset(TEST_CSV, normal_labels=[7, 8], anomaly_labels=[2])
    x = to_model_input(data.images, bundle.image_size, bundle.channels).to(device)
    cfg = bundle.search_config
    with torch.no_grad():
        z0 = models.encoder(x)
    out, scores = {}, {}
    for precision, dtype in PRECISIONS.items():
        with torch.enable_grad():
            result = search(models, x, z0, cfg, batch_size=len(x), device=device,
                            autocast_dtype=dtype)
        scores[precision] = result.score
        out[precision] = {"auroc": round(auroc(result.score, data.is_anomaly), 4),
                          "failed": int((result.score > bundle.threshold).sum())}
    out["verdicts_differing"] = int(((scores["fp32"] > bundle.threshold)
                                     != (scores["bf16"] > bundle.threshold)).sum())
    out["max_relative_score_change"] = float(
        np.max(np.abs(scores["bf16"] - scores["fp32"]) / scores["fp32"]))
    out["frames"], out["steps"] = len(x), cfg.steps
    return out


# -- 4: servers driven by client processes --------------------------------------------------

FRAME_SETS = {  # --frames: which bundled test digits the clients send
    "all": {},  # all 1,000 (ten classes: to the 7/8 model, 80 % are anomalous)
    "reference": {"normal_labels": [7, 8], "anomaly_labels": [2]},  # the reference task's 300
}


def test_frames(which: str = "all") -> list[bytes]:
    """The bundled test digits as serialised frame requests (raw uint8)."""
    from anogan.v1 import inspection_pb2 as pb

    data = load_dataset(TEST_CSV, **FRAME_SETS[which])
    pixels = (data.images[:, 0] * 255.0 + 0.5).astype(np.uint8)
    return [pb.StreamInspectRequest(frame=pb.Frame(
        frame_id=str(i), sequence=i, raw=pb.RawImage(
            data=image.tobytes(), data_type=pb.DATA_TYPE_UINT8, height=image.shape[0],
            width=image.shape[1], channels=1))).SerializeToString()
        for i, image in enumerate(pixels)]


def drive(target: str, mode: str, steps: int, streams: int, window: int, batch: int,
          clock, warmup: float, seconds: float, requests: list[bytes], result) -> None:
    """A client process: `streams` streams, each keeping `window` frames in flight
    (`batch` frames per message: a FrameBatch when above 1). Once connected it says so on
    `result` and waits for the parent's start time (`clock`: a shared value, then an event);
    every process then sends for warmup + seconds and counts the final results received in
    the same wall-clock window [start + warmup, start + warmup + seconds). Puts (results in
    the window, errors, results in all, seconds it started late) on `result`."""
    try:
        import uvloop  # the load generator only: keeps the clients from being the limit
        uvloop.install()
    except ImportError:
        pass
    try:
        result.put(asyncio.run(_drive(target, mode, steps, streams, window, batch, clock,
                                      warmup, seconds, requests, result)))
    except Exception:  # the parent reports it
        result.put(("error", traceback.format_exc()))


async def _drive(target, mode, steps, streams, window, batch, clock, warmup, seconds,
                 requests, result):
    import grpc

    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc

    messages = [pb.StreamInspectRequest.FromString(r) for r in requests]
    if batch > 1:
        frames = [m.frame for m in messages]
        messages = [pb.StreamInspectRequest(batch=pb.FrameBatch(frames=[
            frames[(k + j) % len(frames)] for j in range(batch)]))
            for k in range(0, len(frames), batch)]
    config = pb.StreamInspectRequest(config=pb.InspectionConfig(
        mode=getattr(pb, f"MODE_{mode}"), search_steps=steps))
    counted, errors, total = 0, 0, 0
    window_start = window_end = 0.0

    async def one(stub, index: int) -> None:
        nonlocal counted, errors, total
        call = stub.StreamInspect()
        await call.write(config)
        room = asyncio.Semaphore(max(1, window // batch))  # messages in flight

        async def send() -> None:
            k = index
            while time.time() < window_end:
                await room.acquire()
                await call.write(messages[k % len(messages)])
                k += streams
            await call.done_writing()

        sender = asyncio.create_task(send())
        async for response in call:
            if response.HasField("result") and response.result.provisional:
                continue
            room.release()
            results = [response.result] if response.HasField("result") else response.results
            total += len(results)
            errors += sum(r.HasField("error") for r in results)
            if window_start <= time.time() < window_end:
                counted += len(results)
        await sender

    # A connection per stream (a channel argument of its own keeps gRPC from sharing one),
    # as separate cameras would have: the kernel spreads them over `--workers` processes.
    channels = [grpc.aio.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", 64 << 20), ("bench.stream", f"{os.getpid()}/{i}")])
        for i in range(streams)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 60)
        result.put(("ready", os.getpid()))
        await asyncio.to_thread(clock.go.wait)
        start = clock.start.value
        await asyncio.sleep(max(0.0, start - time.time()))
        late = max(0.0, time.time() - start)
        window_start, window_end = start + warmup, start + warmup + seconds
        await asyncio.gather(*(one(pb_grpc.InspectionServiceStub(channel), i)
                               for i, channel in enumerate(channels)))
    finally:
        for channel in channels:
            await channel.close()
    return counted, errors, total, late


class Clock:
    """The client processes' common start: a shared time, set once all are connected."""

    def __init__(self, context):
        self.start = context.Value("d", 0.0)
        self.go = context.Event()


def all_workers_stats(target: str, workers: int) -> dict:
    """The model's counters summed over every worker of the server (`--workers`): asked
    over new connections until each worker has answered (the kernel picks one per
    connection). Largest batches: the largest any worker ran."""
    import grpc

    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc

    seen: dict[int, pb.ModelStats] = {}
    for attempt in range(64 * workers):
        with grpc.insecure_channel(target, options=[("bench.stats", attempt)]) as channel:
            reply = pb_grpc.InspectionServiceStub(channel).GetServerStats(
                pb.GetServerStatsRequest(), timeout=30)
        seen.setdefault(reply.worker, reply.models[0])
        if len(seen) == workers:
            break
    else:
        raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered")
    total = pb.ModelStats()
    for stats in seen.values():
        for field in ("search_batches", "search_slot_steps", "searches_completed",
                      "fast_batches", "fast_frames"):
            setattr(total, field, getattr(total, field) + getattr(stats, field))
        total.max_search_batch = max(total.max_search_batch, stats.max_search_batch)
    return total


def serve_and_drive(name: str, module: str, args: argparse.Namespace, mode: str,
                    extra: list[str], batch: int, requests: list[bytes], logs: Path) -> dict:
    """Start a server, drive it with the client processes, read its stats, stop it."""
    import grpc

    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc
    from anogan_inspect.clients.launcher import ServerProcess

    started = time.perf_counter()
    server = ServerProcess([str(args.bundle)], logs / f"{name}-{mode}-{batch}.log",
                           "--device", args.device, *extra, module=module)
    try:
        startup = time.perf_counter() - started
        stub = pb_grpc.InspectionServiceStub(server.channel())
        model = stub.GetModel(pb.GetModelRequest()).model
        processes = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
        before = all_workers_stats(server.target, processes)
        context = multiprocessing.get_context("spawn")
        queue, clock = context.Queue(), Clock(context)
        steps = args.steps or model.default_search_steps
        workers = [context.Process(target=drive, args=(
            server.target, mode, steps, args.streams, args.window, batch, clock,
            args.warmup, args.seconds, requests, queue)) for _ in range(args.clients)]
        for worker in workers:
            worker.start()
        try:
            for _ in workers:  # each connected, or the first failure
                message = queue.get(timeout=120)
                if message[0] == "error":
                    raise RuntimeError(f"{name}: a client process failed:\n{message[1]}")
            clock.start.value = time.time() + 0.5
            clock.go.set()  # every process's window is the same wall-clock window
            outcomes = [queue.get(timeout=args.warmup + args.seconds + 120) for _ in workers]
        finally:
            for worker in workers:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.terminate()
        after = all_workers_stats(server.target, processes)
    except grpc.RpcError as err:
        raise RuntimeError(f"{name}: {err.code().name} {err.details()}") from err
    finally:
        server.stop(timeout=60)
    failed = [o[1] for o in outcomes if o[0] == "error"]
    if failed:
        raise RuntimeError(f"{name}: a client process failed:\n{failed[0]}")
    counted = sum(o[0] for o in outcomes)
    late = max(o[3] for o in outcomes)
    batches = after.search_batches - before.search_batches
    fast_batches = after.fast_batches - before.fast_batches
    row = {
        "server": name, "workers": processes, "frames": args.frames, "mode": mode, "batch": batch,
        "streams": args.clients * args.streams,
        "client_processes": args.clients, "frames_per_s": counted / args.seconds,
        "frames_counted": counted, "results": sum(o[2] for o in outcomes),
        "errors": sum(o[1] for o in outcomes), "startup_s": round(startup, 1),
        "clients_late_s": round(late, 3),
        "search_slots": model.search_slots, "precision": model.search_precision,
        "cuda_graphs": model.search_cuda_graphs,
        "fast_path": model.fast_path_backend,
        "mean_search_batch": ((after.search_slot_steps - before.search_slot_steps) / batches
                              if batches else None),
        "mean_fast_batch": ((after.fast_frames - before.fast_frames) / fast_batches
                            if fast_batches else None),
        "searches": after.searches_completed - before.searches_completed,
    }
    log(f"{name} {mode} batch {batch}: {row['frames_per_s']:,.0f} frames/s "
        f"({row['errors']} errors, search batch {row['mean_search_batch']}, "
        f"fast batch {row['mean_fast_batch']})")
    return row


SERVE, ECHO = "anogan_inspect.server", "bench.echo_server"
BF16 = ["--precision", "bf16"]
GRAPHS = ["--cuda-graphs"]
W4 = ["--workers", "4"]  # 4 processes on the port (SO_REUSEPORT), an engine each
# 8 processes: slots given, so that eight do not time their tables at once on one card
W8 = ["--workers", "8", "--max-batch", "2048"]
SERVERS = [  # name, module, mode, extra serve arguments, batched (--batch frames a message)
    ("echo", ECHO, "FAST", [], False),
    ("echo", ECHO, "FAST", [], True),
    ("echo-w4", ECHO, "FAST", W4, True),
    ("fp32", SERVE, "FAST", [], False),
    ("fp32", SERVE, "FAST", [], True),
    ("fp32-w4", SERVE, "FAST", W4, True),
    ("fp32", SERVE, "CASCADE", [], True),
    ("fp32-w4", SERVE, "CASCADE", W4, True),
    ("fp32", SERVE, "SEARCH", [], True),
    ("bf16", SERVE, "CASCADE", BF16, True),
    ("bf16-w4", SERVE, "CASCADE", BF16 + W4, True),
    ("bf16", SERVE, "SEARCH", BF16, True),
    ("bf16-w4", SERVE, "SEARCH", BF16 + W4, True),
    ("bf16-graphs", SERVE, "SEARCH", BF16 + GRAPHS, True),
    ("bf16-graphs-w4", SERVE, "SEARCH", BF16 + GRAPHS + W4, True),
    ("bf16-graphs-w4", SERVE, "CASCADE", BF16 + GRAPHS + W4, True),
    ("echo-w8", ECHO, "FAST", W8, True),
    ("fp32-w8", SERVE, "FAST", W8, True),
    ("bf16-w8", SERVE, "SEARCH", BF16 + W8, True),
    ("bf16-graphs-w8", SERVE, "SEARCH", BF16 + GRAPHS + W8, True),
    ("bf16-graphs-w8", SERVE, "CASCADE", BF16 + GRAPHS + W8, True),
]


def chosen_servers(names: str | None) -> list[tuple]:
    """The SERVERS rows named (NAME:MODE or NAME:MODE:1/B, comma-separated), in the order
    named, so that a run cut short by its time limit has the first ones; all without names."""
    if not names:
        return list(SERVERS)
    order = {key: i for i, key in enumerate(names.split(","))}

    def position(row: tuple) -> int | None:
        name, _, mode, _, batched = row
        keys = (f"{name}:{mode}", f"{name}:{mode}:{'B' if batched else 1}")
        return min((order[k] for k in keys if k in order), default=None)

    return sorted((row for row in SERVERS if position(row) is not None), key=position)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "line")
    parser.add_argument("--clients", type=int, default=6, help="client processes")
    parser.add_argument("--streams", type=int, default=8, help="streams per client process")
    parser.add_argument("--window", type=int, default=128, help="frames in flight per stream")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="before the window, s")
    parser.add_argument("--steps", type=int, help="search budget (default: the bundle's)")
    parser.add_argument("--engine-frames", type=int, default=8192)
    parser.add_argument("--candidates", type=lambda t: tuple(int(c) for c in t.split(",")),
                        default=SLOT_CANDIDATES, help="slot counts for the raw step")
    parser.add_argument("--only", help="comma-separated sections: raw,engine,quality,servers")
    parser.add_argument("--servers", help="comma-separated NAME:MODE of the servers to run, "
                        "in that order (default: all: "
                        + ",".join(f"{n}:{m}" for n, _, m, _, _ in SERVERS)
                        + "; NAME:MODE:1 only the per-frame one, NAME:MODE:B the batched)")
    parser.add_argument("--batch", type=int, default=32,
                        help="frames per message of the batched runs")
    parser.add_argument("--frames", choices=FRAME_SETS, default="all",
                        help="the test digits sent: all 1,000, or the reference task's 300 "
                             "(7 and 8 normal, 2 anomalous; a third need the search)")
    parser.add_argument("--code-version", default="",
                        help="recorded as the code version where git is absent")
    args = parser.parse_args(argv)
    sections = set((args.only or "raw,engine,quality,servers").split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    bundle = read_bundle(args.bundle)
    models = load_torch_models(bundle, device)
    cfg = bundle.search_config
    if args.steps:
        cfg = type(cfg)(**{**cfg.to_dict(), "steps": args.steps})
    if device.type == "cuda":  # as the server sets them: fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    report = {"command": " ".join([Path(sys.executable).name, "-m", "bench.line_bench",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else "cpu",
              "code": args.code_version or git_version().get("git_describe"),
              "bundle": str(args.bundle), "steps": cfg.steps, "problems": []}
    path = args.out / "line-bench.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        (args.out / "line-bench.md").write_text(markdown(report))

    def section(name: str, fn) -> None:
        if name not in sections:
            return
        started = time.perf_counter()
        try:
            report[name] = fn()
        except Exception:
            report["problems"].append(f"{name}: {traceback.format_exc()}")
            log(f"{name} failed:\n{traceback.format_exc()}")
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        save()

    shape = bundle.image_shape
    if device.type == "cuda":  # clocks up and kernels chosen before anything is timed
        size_slots(models, cfg, shape, device, None, args.candidates[-1:], steps=200)
    section("raw", lambda: raw_steps(models, cfg, shape, device, args.candidates))

    def engines() -> dict:
        data = load_dataset(TEST_CSV)
        x = to_model_input(data.images, bundle.image_size, bundle.channels)
        x = x.repeat((args.engine_frames + len(x) - 1) // len(x), 1, 1, 1)[:args.engine_frames]
        out = {}
        for name, (dtype, graphs) in variants(device).items():
            slots = report.get("raw", {}).get(name, {}).get("chosen", 64)
            row = engine_rate(models, cfg, x, device, slots, dtype, cfg.steps, graphs)
            raw = report.get("raw", {}).get(name, {}).get("rates", {}).get(slots)
            row["raw_frame_steps_per_s"] = raw
            row["efficiency_vs_raw"] = row["frame_steps_per_s"] / raw if raw else None
            out[name] = row
            log(f"engine {name} at {slots} slots: {row['frames_per_s']:,.0f} frames/s, "
                f"{row['efficiency_vs_raw']}")
        return out

    section("engine", engines)
    section("quality", lambda: quality(bundle, models, device))
    if "servers" in sections:
        requests = test_frames(args.frames)
        logs = args.out / "logs"
        logs.mkdir(exist_ok=True)
        report["servers"] = []
        for name, module, mode, extra, batched in chosen_servers(args.servers):
            batch = args.batch if batched else 1
            section_start = time.perf_counter()
            try:
                report["servers"].append(serve_and_drive(name, module, args, mode, extra,
                                                         batch, requests, logs))
            except Exception:
                report["problems"].append(f"server {name} {mode} batch {batch}: "
                                          f"{traceback.format_exc()}")
                log(f"server {name} {mode} batch {batch} failed:\n{traceback.format_exc()}")
            report.setdefault("seconds", {})[f"server {name} {mode} batch {batch}"] = round(
                time.perf_counter() - section_start, 1)
            save()
    save()
    log(f"wrote {path}")
    return 0 if not report["problems"] else 1


def markdown(report: dict) -> str:
    lines = [f"# Line-scale serving: {report['device']}", "",
             f"- date: {report['date']}", f"- command: `{report['command']}`",
             "- machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()
                                        if k in ("cpu", "cores", "python", "torch",
                                                 "onnxruntime", "gpu")),
             f"- code: {report['code']}",
             f"- bundle: `{report['bundle']}`, search budget {report['steps']} steps", ""]
    if "raw" in report:
        lines += ["## Raw search step (full table, frame-steps/s)", ""]
        rows = [{"precision": p, "chosen slots": r["chosen"],
                 **{str(c): round(v) for c, v in r["rates"].items()}}
                for p, r in report["raw"].items()]
        lines += [markdown_table(rows), ""]
    if "engine" in report:
        lines += ["## Engine at its slots (no gRPC)", "",
                  markdown_table([{"precision": p, **r} for p, r in report["engine"].items()]),
                  ""]
    if "quality" in report:
        lines += ["## Search quality, fp32 against bf16 (MNIST 7/8 vs 2)", "",
                  "```", json.dumps(report["quality"], indent=2), "```", ""]
    if report.get("servers"):
        lines += ["## Servers over gRPC", "", markdown_table(report["servers"]), ""]
    if report["problems"]:
        lines += ["## Problems", ""] + [f"```\n{p}\n```" for p in report["problems"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
