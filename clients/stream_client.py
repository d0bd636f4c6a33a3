"""`anogan-client`: stream frames to an anogan-inspect server and report what comes back.

Feeds an MNIST-style CSV, an image folder or a generated sequence, at a chosen rate, over
one or more concurrent StreamInspect streams; prints a live table (id, score, verdict,
stage, latency); writes JSONL; ends with a summary (frames, verdicts, frames/s, latency
p50/p99, AUROC when labels are known). Exits 1 when a frame's result is missing,
duplicated or out of order (the service's contract), when a stream ends early (the
results that did come back are still summarised and written), or with --fail-on-error on
any per-frame error; 2 when the source or the server cannot be used at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from clients.sources import SourceFrame, csv_frames, folder_frames, generated_frames
from trainer.data import DatasetError

MODES = {"fast": pb.MODE_FAST, "search": pb.MODE_SEARCH, "cascade": pb.MODE_CASCADE,
         "default": pb.MODE_UNSPECIFIED}


@dataclass
class Record:
    """One final result as the client saw it."""

    frame_id: str
    sequence: int
    stream: int
    verdict: str
    score: float | None
    threshold: float | None
    stage: str
    search_steps: int
    latency_ms: float
    queue_ms: float
    compute_ms: float
    error: str | None
    is_anomaly: bool | None
    provisional: bool = False  # a provisional result arrived before this final one


@dataclass
class StreamReport:
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def frame_message(frame: SourceFrame, sequence: int) -> pb.Frame:
    """A raw uint8 frame (HWC), stamped with its capture time."""
    height, width, channels = frame.pixels.shape
    message = pb.Frame(frame_id=frame.frame_id, sequence=sequence,
                       raw=pb.RawImage(data=frame.pixels.tobytes(),
                                       data_type=pb.DATA_TYPE_UINT8, height=height,
                                       width=width, channels=channels))
    message.capture_time.GetCurrentTime()
    return message


async def run_stream(stub, index: int, frames: list[tuple[int, SourceFrame]],
                     config: pb.InspectionConfig, rate: float | None, on_record
                     ) -> StreamReport:
    """Send frames on one stream at `rate` frames/s; check one in-order final per frame."""
    report = StreamReport()
    sent: dict[int, float] = {}
    provisional: set[int] = set()
    truth = {seq: frame.is_anomaly for seq, frame in frames}

    async def requests():
        yield pb.StreamInspectRequest(config=config)
        start = time.perf_counter()
        for k, (sequence, frame) in enumerate(frames):
            if rate:
                await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
            sent[sequence] = time.perf_counter()
            yield pb.StreamInspectRequest(frame=frame_message(frame, sequence))

    expected = iter([seq for seq, _ in frames])
    try:
        async for response in stub.StreamInspect(requests()):
            result = response.result
            if result.provisional:
                provisional.add(result.sequence)
                continue
            want = next(expected, None)
            if result.sequence != want:
                report.problems.append(f"stream {index}: got sequence {result.sequence}, "
                                       f"expected {want}")
            record = to_record(result, index, sent, truth, result.sequence in provisional)
            report.records.append(record)
            on_record(record)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:  # refused (bad model, mode, steps)
            raise
        # A draining or lost server: keep what came back.
        report.problems.append(f"stream {index} ended early: {err.code().name}: "
                               f"{err.details()}")
    missing = list(expected)
    if missing:
        report.problems.append(f"stream {index}: no result for {len(missing)} frames")
    return report


def to_record(result: pb.InspectionResult, stream: int, sent: dict[int, float],
              truth: dict[int, bool | None], had_provisional: bool) -> Record:
    latency = (time.perf_counter() - sent.get(result.sequence, time.perf_counter())) * 1e3
    error = result.error.message if result.HasField("error") else None
    return Record(
        frame_id=result.frame_id, sequence=result.sequence, stream=stream,
        verdict=pb.Verdict.Name(result.verdict).removeprefix("VERDICT_"),
        score=None if error else round(result.score, 4),
        threshold=None if error else round(result.threshold, 4),
        stage=pb.Stage.Name(result.stage).removeprefix("STAGE_"),
        search_steps=result.search_steps, latency_ms=round(latency, 3),
        queue_ms=round(result.queue_time.ToNanoseconds() / 1e6, 3),
        compute_ms=round(result.compute_time.ToNanoseconds() / 1e6, 3),
        error=error, is_anomaly=truth.get(result.sequence), provisional=had_provisional)


class LiveTable:
    """Prints one row per result (every `every`-th), with a header."""

    COLUMNS = f"{'frame':<24} {'str':>3} {'score':>10} {'verdict':<8} {'stage':<7} " \
              f"{'steps':>5} {'latency ms':>10}"

    def __init__(self, every: int, out=None):
        self.every, self.out, self.count = every, out or sys.stdout, 0
        if every:
            print(self.COLUMNS, file=self.out)

    def __call__(self, record: Record) -> None:
        self.count += 1
        if not self.every or self.count % self.every:
            return
        score = "error" if record.error else f"{record.score:10.2f}"
        verdict = record.verdict if not record.error else record.error[:40]
        print(f"{record.frame_id:<24} {record.stream:>3} {score:>10} {verdict:<8} "
              f"{record.stage:<7} {record.search_steps:>5} {record.latency_ms:>10.1f}",
              file=self.out, flush=True)


def summarize(records: list[Record], seconds: float) -> dict:
    """Counts, throughput, latency percentiles, and AUROC/confusion when labels are known."""
    scored = [r for r in records if r.error is None]
    latencies = np.array([r.latency_ms for r in scored]) if scored else np.zeros(1)
    summary = {
        "frames": len(records), "errors": len(records) - len(scored),
        "verdicts": {v: sum(r.verdict == v for r in scored) for v in ("PASS", "FAIL")},
        "stages": {s: sum(r.stage == s for r in scored) for s in ("FAST", "SEARCH")},
        "seconds": round(seconds, 3), "frames_per_second": round(len(records) / seconds, 2),
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                       "p99": round(float(np.percentile(latencies, 99)), 2)},
    }
    labelled = [r for r in scored if r.is_anomaly is not None]
    truth = np.array([r.is_anomaly for r in labelled], dtype=bool)
    if labelled and truth.any() and not truth.all():
        from sklearn.metrics import roc_auc_score

        scores = np.array([r.score for r in labelled])
        fail = np.array([r.verdict == "FAIL" for r in labelled])
        summary["auroc"] = round(float(roc_auc_score(truth, scores)), 4)
        summary["confusion"] = {"true_positive": int(np.sum(fail & truth)),
                                "false_positive": int(np.sum(fail & ~truth)),
                                "true_negative": int(np.sum(~fail & ~truth)),
                                "false_negative": int(np.sum(~fail & truth))}
    return summary


def print_summary(summary: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"\nframes {summary['frames']}  errors {summary['errors']}  "
          f"PASS {summary['verdicts']['PASS']}  FAIL {summary['verdicts']['FAIL']}  "
          f"(decided by fast path {summary['stages']['FAST']}, "
          f"by search {summary['stages']['SEARCH']})", file=out)
    print(f"{summary['frames_per_second']} frames/s over {summary['seconds']} s; latency "
          f"p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms",
          file=out)
    if "auroc" in summary:
        print(f"AUROC {summary['auroc']:.4f}; at the model's threshold: "
              f"{summary['confusion']}", file=out)


def load_frames(args) -> list[SourceFrame]:
    if args.csv:
        frames = csv_frames(args.csv, args.normal_labels, args.anomaly_labels)
    elif args.folder:
        frames = folder_frames(args.folder, args.split)
    else:
        frames = generated_frames(args.generate, args.size, args.seed)
    frames = list(frames)
    return frames[:args.limit] if args.limit else frames


async def run(args) -> tuple[dict, list[Record], list[str]]:
    frames = load_frames(args)
    config = pb.InspectionConfig(model=args.model or "", mode=MODES[args.mode],
                                 search_steps=args.steps or 0,
                                 provisional_results=args.provisional)
    per_stream: list[list[tuple[int, SourceFrame]]] = [[] for _ in range(args.streams)]
    for sequence, frame in enumerate(frames):
        per_stream[sequence % args.streams].append((sequence, frame))
    rate = args.rate / args.streams if args.rate else None
    table = LiveTable(0 if args.quiet else args.every)
    async with open_channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        stub = pb_grpc.InspectionServiceStub(channel)
        await check_model(stub, config)
        started = time.perf_counter()
        reports = await asyncio.gather(*(run_stream(stub, i, part, config, rate, table)
                                         for i, part in enumerate(per_stream) if part))
        seconds = time.perf_counter() - started
    records = sorted((r for rep in reports for r in rep.records), key=lambda r: r.sequence)
    problems = [p for rep in reports for p in rep.problems]
    return summarize(records, seconds), records, problems


class Refused(Exception):
    """The server cannot serve what was asked (an unknown model, a mode it lacks)."""


async def check_model(stub, config: pb.InspectionConfig) -> None:
    """Ask GetModel first, so a stream the server would refuse is a clear error up front
    (a refusal mid-stream races the frames already being written)."""
    try:
        model = (await stub.GetModel(pb.GetModelRequest(name=config.model))).model
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise Refused(err.details()) from err
        raise
    if config.mode != pb.MODE_UNSPECIFIED and config.mode not in model.modes:
        modes = ", ".join(pb.Mode.Name(m).removeprefix("MODE_").lower() for m in model.modes)
        raise Refused(f"model {model.name} does not serve "
                      f"{pb.Mode.Name(config.mode).removeprefix('MODE_').lower()} "
                      f"(it serves: {modes})")


def open_channel(args) -> grpc.aio.Channel:
    """Plain text, or TLS when --tls-ca is given (with a client certificate if asked)."""
    if not args.tls_ca:
        return grpc.aio.insecure_channel(args.target)
    read = lambda path: path.read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key),
                                               read(args.tls_cert))
    return grpc.aio.secure_channel(args.target, credentials)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_labels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anogan-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="localhost:50051")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="MNIST-style CSV (.csv or .csv.gz)")
    source.add_argument("--folder", type=Path, help="image folder (MVTec layout: --split)")
    source.add_argument("--generate", type=int, metavar="N", help="N synthetic frames")
    parser.add_argument("--normal-labels", type=parse_labels, help="CSV: normal labels (7,8)")
    parser.add_argument("--anomaly-labels", type=parse_labels, help="CSV: anomaly labels (2)")
    parser.add_argument("--split", default="test", help="MVTec split to stream")
    parser.add_argument("--size", type=int, default=28, help="generated frame size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="stream at most N frames")
    parser.add_argument("--rate", type=float, help="frames/s over all streams (default: max)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams")
    parser.add_argument("--mode", choices=sorted(MODES), default="default")
    parser.add_argument("--steps", type=positive_int,
                        help="search steps (default: the model's)")
    parser.add_argument("--model", help="model name (default: the server's default)")
    parser.add_argument("--provisional", action="store_true",
                        help="ask for provisional fast-path results before the final ones")
    parser.add_argument("--jsonl", type=Path, help="write one JSON line per result")
    parser.add_argument("--summary-json", type=Path, help="write the summary as JSON")
    parser.add_argument("--roc", type=Path, metavar="PNG",
                        help="with labels: write the ROC curve of the scores as a PNG")
    parser.add_argument("--every", type=int, default=1, help="print every N-th result")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    parser.add_argument("--fail-on-error", action="store_true",
                        help="exit 1 when any frame comes back with an error")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--tls-ca", type=Path, metavar="PEM",
                        help="connect with TLS, trusting this CA (the server's --tls-cert)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="client certificate, for a server with --tls-client-ca")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary, records, problems = asyncio.run(run(args))
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as err:
        detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else "timed out"
        print(f"anogan-client: cannot stream to {args.target}: {detail}", file=sys.stderr)
        return 2
    except (DatasetError, OSError, Refused) as err:  # a bad source, TLS file or request
        # (after the clause above: TimeoutError is an OSError too)
        print(f"anogan-client: error: {err}", file=sys.stderr)
        return 2
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(args.jsonl, "w") as out:
            for record in records:
                out.write(json.dumps(asdict(record)) + "\n")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.roc and "auroc" in summary:
        from trainer.scoring import save_roc_plot  # imports torch: only when asked

        labelled = [r for r in records if r.error is None and r.is_anomaly is not None]
        save_roc_plot({"server scores": (np.array([r.score for r in labelled]),
                                         np.array([r.is_anomaly for r in labelled]))},
                      args.roc, f"{args.target}: {len(labelled)} frames")
    print_summary(summary)
    for problem in problems:
        print(f"anogan-client: {problem}", file=sys.stderr)
    if problems or (args.fail_on_error and summary["errors"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
