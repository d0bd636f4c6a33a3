"""Frames/s and latency through gRPC on loopback: a real `anogan-serve` subprocess, driven
by the real client code path (``clients.stream_client.run_stream``), per mode and number of
concurrent streams.

Every stream sends its frames as fast as the server takes them (no rate limit). Latency is
the client's: from sending a frame to its final result, reported per deciding stage (FAST:
the fast path decided; SEARCH: the latent search did). SEARCH efficiency = server frames/s ÷
the engine's frames/s on the same frames and steps without gRPC (``bench.engine_bench``),
measured in this section before the server starts. mean_batch = the server engine's
slot-steps ÷ engine steps during the run, from GetServerStats before and after it.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients.launcher import ServerProcess
from anogan_inspect.clients.sources import SourceFrame, csv_frames
from anogan_inspect.clients.stream_client import Record, run_stream
from bench.common import ROOT, TEST_CSV, Context, markdown_table
from bench.engine_bench import engine_inputs, engine_run

MODES = {"FAST": pb.MODE_FAST, "CASCADE": pb.MODE_CASCADE, "SEARCH": pb.MODE_SEARCH}
STREAMS, QUICK_STREAMS = (1, 4, 8, 16), (1, 8)
FRAMES = {"FAST": 300, "CASCADE": 300, "SEARCH": 128}
QUICK_FRAMES = 64
QUICK_MAX_STEPS = 25
TARGET_STREAMS = 8  # the target: SEARCH efficiency with 8 streams
START_TIMEOUT_S, STOP_TIMEOUT_S = 120.0, 60.0
COLUMNS = ["mode", "streams", "frames", "seconds", "frames_per_s", "fast_frames",
           "fast_p50_ms", "fast_p99_ms", "search_frames", "search_p50_ms", "search_p99_ms",
           "mean_batch", "efficiency_vs_engine", "problems"]


def digit_frames(n_frames: int) -> list[SourceFrame]:
    """The first n of the 300 test digits (7, 8 normal, 2 anomalous), cycling if needed."""
    frames = list(csv_frames(TEST_CSV, [7, 8], [2]))
    return [frames[i % len(frames)] for i in range(n_frames)]


async def engine_counters(stub: pb_grpc.InspectionServiceStub) -> tuple[int, int]:
    """(engine steps, slot-steps) of the server's search engines so far, all models."""
    response = await stub.GetServerStats(pb.GetServerStatsRequest())
    return (sum(m.search_batches for m in response.models),
            sum(m.search_slot_steps for m in response.models))


async def stream_frames(target: str, frames: list[SourceFrame], streams: int, mode: str,
                        steps: int) -> tuple[list[Record], list[str], float, float | None]:
    """Send frames round-robin over concurrent streams: (records, problems, seconds, the
    server engine's mean batch over the run, None when it ran no search step)."""
    config = pb.InspectionConfig(mode=MODES[mode], search_steps=steps)
    per_stream: list[list[tuple[int, SourceFrame]]] = [[] for _ in range(streams)]
    for sequence, frame in enumerate(frames):
        per_stream[sequence % streams].append((sequence, frame))
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_S)
        stub = pb_grpc.InspectionServiceStub(channel)
        batches_before, slot_steps_before = await engine_counters(stub)
        started = time.perf_counter()
        reports = await asyncio.gather(*(run_stream(stub, i, part, config, None, lambda r: None)
                                         for i, part in enumerate(per_stream) if part))
        seconds = time.perf_counter() - started
        batches, slot_steps = await engine_counters(stub)
    batches -= batches_before
    mean_batch = (slot_steps - slot_steps_before) / batches if batches else None
    records = [r for report in reports for r in report.records]
    problems = [p for report in reports for p in report.problems]
    return records, problems, seconds, mean_batch


def latency_summary(records: list[Record], stage: str) -> dict:
    """Count and p50/p99 latency (ms) of the frames a stage decided."""
    latencies = np.array([r.latency_ms for r in records if r.stage == stage and not r.error])
    key = stage.lower()
    if latencies.size == 0:
        return {f"{key}_frames": 0, f"{key}_p50_ms": None, f"{key}_p99_ms": None}
    return {f"{key}_frames": int(latencies.size),
            f"{key}_p50_ms": float(np.percentile(latencies, 50)),
            f"{key}_p99_ms": float(np.percentile(latencies, 99))}


def measure(target: str, frames: list[SourceFrame], streams: int, mode: str, steps: int
            ) -> dict:
    """One run: throughput and per-stage latency of one mode over some streams."""
    records, problems, seconds, mean_batch = asyncio.run(stream_frames(target, frames,
                                                                       streams, mode, steps))
    errors = sum(r.error is not None for r in records)
    return {"mode": mode, "streams": streams, "frames": len(records), "seconds": seconds,
            "frames_per_s": len(records) / seconds, **latency_summary(records, "FAST"),
            **latency_summary(records, "SEARCH"), "mean_batch": mean_batch, "errors": errors,
            "problems": len(problems) + errors}


def engine_reference(ctx: Context, n_frames: int, steps: int) -> dict:
    """The engine alone on the same number of test digits at the same steps (no gRPC)."""
    x, z0 = engine_inputs(ctx, n_frames)
    return engine_run(ctx, x, z0, steps)


def plan(ctx: Context, streams: tuple[int, ...] | None, n_frames: int | None
         ) -> tuple[tuple[int, ...], dict[str, int], int]:
    """Streams, frames per mode and search steps for this run (quick, full or overridden)."""
    streams = streams or (QUICK_STREAMS if ctx.quick else STREAMS)
    frames = {mode: n_frames or (QUICK_FRAMES if ctx.quick else FRAMES[mode]) for mode in MODES}
    steps = ctx.bundle.search_config.steps
    return streams, frames, min(steps, QUICK_MAX_STEPS) if ctx.quick else steps


def run(ctx: Context, streams: tuple[int, ...] | None = None,
        n_frames: int | None = None) -> dict:
    """The section; `streams` and `n_frames` override the quick/full sizes (for tests)."""
    streams, frames_per_mode, steps = plan(ctx, streams, n_frames)
    engine = engine_reference(ctx, frames_per_mode["SEARCH"], steps)
    server = ServerProcess([str(ctx.bundle_path)], ctx.out_dir / "server_bench.log",
                           "--device", ctx.device, "--uncalibrated-steps", "nearest",
                           start_timeout=START_TIMEOUT_S, cwd=ROOT)  # speed at any budget
    rows: list[dict] = []
    try:
        warm = digit_frames(8)
        for mode in ("FAST", "SEARCH"):  # first calls pay for lazy initialisation
            measure(server.target, warm, 1, mode, 2)
        for mode in MODES:
            frames = digit_frames(frames_per_mode[mode])
            for count in streams:
                rows.append(measure(server.target, frames, count, mode, steps))
    finally:
        exit_code = server.stop(STOP_TIMEOUT_S)
    for r in rows:
        r["efficiency_vs_engine"] = (r["frames_per_s"] / engine["frames_per_s"]
                                     if r["mode"] == "SEARCH" else None)
    efficiency = {r["streams"]: r["efficiency_vs_engine"] for r in rows if r["mode"] == "SEARCH"}
    return {"rows": rows, "table": markdown_table(rows, COLUMNS),
            "notes": notes(engine, efficiency, steps, exit_code), "plots": [],
            "search_steps": steps, "engine_frames_per_s": engine["frames_per_s"],
            "search_efficiency_by_streams": efficiency,
            "efficiency_8_streams": efficiency.get(TARGET_STREAMS),  # None unless measured
            "server_exit_code": exit_code}


def notes(engine: dict, efficiency: dict[int, float], steps: int, exit_code: int) -> str:
    by_streams = ", ".join(f"{s} streams {e:.0%}" for s, e in efficiency.items())
    return (f"Loopback gRPC to a server subprocess (64 search slots), frames sent as fast "
            f"as accepted; latency from send to final result, p50/p99 per deciding stage "
            f"(results come back in the order sent, so in CASCADE a frame the fast path "
            f"decided also waits for the searches of frames sent before it). "
            f"SEARCH and CASCADE search {steps} steps. The engine alone did "
            f"{engine['frames_per_s']:.1f} frames/s on {engine['frames']} digits at {steps} "
            f"steps in the same run; SEARCH efficiency (server ÷ engine): {by_streams}. "
            f"mean_batch: the server engine's slot-steps ÷ engine steps during the run "
            f"(GetServerStats). "
            f"Server exit status after SIGTERM: {exit_code}"
            f"{'' if exit_code == 0 else ' (expected 0)'}.")
