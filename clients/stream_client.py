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
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients.overlay import save_overlay
from anogan_inspect.clients.sources import (
    GENERATED_FRAMES,
    SourceFrame,
    csv_frames,
    folder_frames,
    generated_frames,
)
from anogan_inspect.datasets import DatasetError
from anogan_inspect.help_format import HelpFormatter
from anogan_inspect.metrics import auroc, confusion, confusion_table, save_roc_plot
from anogan_inspect.tokens import read_tokens

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's --max-message-bytes default
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
    received: float = 0.0  # time.perf_counter() when it arrived (not written to JSONL)


@dataclass
class StreamReport:
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    restarts: int = 0  # streams opened again after UNAVAILABLE (--resend)
    resent: int = 0  # frames sent again then


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
                     config: pb.InspectionConfig, rate: float | None, on_record,
                     overlays: Path | None = None, batch: int = 1,
                     metadata=None, resend: int = 0) -> StreamReport:
    """Send frames on one stream at `rate` frames/s, `batch` frames per message (a
    FrameBatch when more than one); check one in-order final per frame; save an overlay for
    each result with an anomaly map when `overlays` names a folder. When the stream ends
    UNAVAILABLE (a draining or lost server), up to `resend` times: open a new stream (with
    client-side balancing, on another server) and send again every frame from the first
    unanswered one; scoring is a pure function of the frame, so a frame answered twice is
    answered the same."""
    report = StreamReport()
    pixels = {seq: frame.pixels for seq, frame in frames}
    sent: dict[int, float] = {}
    provisional: set[int] = set()
    truth = {seq: frame.is_anomaly for seq, frame in frames}
    answered = 0  # frames[:answered] have their final result
    start = time.perf_counter()

    async def requests(first: int):
        yield pb.StreamInspectRequest(config=config)
        for k in range(first, len(frames), batch):
            if rate:  # the camera's schedule: frames sent again are overdue, so go at once
                await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
            group = frames[k:k + batch]
            now = time.perf_counter()
            for sequence, _ in group:
                sent.setdefault(sequence, now)  # latency counts from the first send
            messages = [frame_message(frame, sequence) for sequence, frame in group]
            if batch == 1:
                yield pb.StreamInspectRequest(frame=messages[0])
            else:
                yield pb.StreamInspectRequest(batch=pb.FrameBatch(frames=messages))

    async def take(result: pb.InspectionResult) -> None:
        nonlocal answered
        want = frames[answered][0] if answered < len(frames) else None
        answered += 1
        if result.sequence != want:
            report.problems.append(f"stream {index}: got sequence {result.sequence}, "
                                   f"expected {want}")
        record = to_record(result, index, sent, truth, result.sequence in provisional)
        report.records.append(record)
        if overlays is not None and result.HasField("anomaly_map") and \
                result.sequence in pixels:
            await asyncio.to_thread(save_overlay, overlays, pixels[result.sequence], result)
        on_record(record)

    attempts = 0
    while True:
        first = answered
        try:
            async for response in stub.StreamInspect(requests(first), metadata=metadata):
                if response.HasField("result") and response.result.provisional:
                    provisional.add(response.result.sequence)
                    continue
                # A frame's result, or a batch's results in its frames' order.
                for result in ([response.result] if response.HasField("result")
                               else response.results):
                    await take(result)
            break
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:  # refused (bad model, mode, steps)
                raise
            unanswered = sum(seq in sent for seq, _ in frames[answered:])
            if answered > first:  # this stream got somewhere: --resend counts failures in
                attempts = 0  # a row (a server's --max-stream-age ends streams for good)
            if attempts < resend and answered < len(frames):
                attempts += 1
                report.resent += unanswered
                report.restarts += 1
                await asyncio.sleep(min(0.05 * 2 ** attempts, 2.0))  # then a new stream
                continue
            # A draining or lost server, and no resending left: keep what came back.
            report.problems.append(f"stream {index} ended early: {err.code().name}: "
                                   f"{err.details()}")
            break
    if answered < len(frames):
        report.problems.append(f"stream {index}: no result for {len(frames) - answered} "
                               "frames")
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
        error=error, is_anomaly=truth.get(result.sequence), provisional=had_provisional,
        received=time.perf_counter())


class LiveTable:
    """Prints one row per result (every `every`-th), with a header."""

    COLUMNS = f"{'frame':<24} {'str':>3} {'score':>10} {'verdict':<8} {'stage':<7} " \
              f"{'steps':>5} {'latency ms':>10}"

    def __init__(self, every: int, out=None, total: int | None = None):
        self.every, self.out, self.count = every, out or sys.stdout, 0
        if every > 1:
            of = f" of {total}" if total else ""
            print(f"showing 1 result in {every}{of} as they arrive (--every {every}); "
                  "the summary counts them all", file=self.out)
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


def summarize(records: list[Record], seconds: float, requested_rate: float | None = None
              ) -> dict:
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
    if requested_rate:
        summary["requested_frames_per_second"] = requested_rate
        # Results per second from the first result to the last: with a steady latency it is
        # the rate the frames were sent at; when the server falls behind, it is lower.
        received = [r.received for r in records]
        if len(received) > 1 and max(received) > min(received):
            came_back = max(received) - min(received)
            summary["results_per_second"] = round((len(received) - 1) / came_back, 2)
            # How much longer the results took to come back than the frames took to go out:
            # about 0 when the server keeps up, growing with the run when it does not.
            summary["behind_seconds"] = round(came_back - (len(received) - 1) / requested_rate,
                                              3)
    labelled = [r for r in scored if r.is_anomaly is not None]
    truth = np.array([r.is_anomaly for r in labelled], dtype=bool)
    if labelled and truth.any() and not truth.all():
        scores = np.array([r.score for r in labelled])
        fail = np.array([r.verdict == "FAIL" for r in labelled])
        summary["auroc"] = round(auroc(scores, truth), 4)
        summary["confusion"] = confusion(fail, truth)
    return summary


# The server fell behind when its results took longer to come back than the frames took to
# go out by more than this share of the sending time, and at least BEHIND_FLOOR seconds
# (one slow result at the end of a short run is not a queue).
BEHIND_SHARE, BEHIND_FLOOR = 0.05, 0.5


def fell_behind(summary: dict) -> str | None:
    """A warning when results came back slower than frames were sent."""
    asked, behind = summary.get("requested_frames_per_second"), summary.get("behind_seconds")
    if not asked or behind is None:
        return None
    sending = (summary["frames"] - 1) / asked
    if behind <= max(BEHIND_FLOOR, BEHIND_SHARE * sending):
        return None
    return (f"the server fell behind: frames sent at {asked:g}/s, results came back at "
            f"{summary['results_per_second']:g}/s, {behind:.1f} s behind by the end "
            f"(latency p99 {summary['latency_ms']['p99']:g} ms); lower --rate, or give the "
            "server more slots (--max-batch), cores or replicas")


def print_summary(summary: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"\nframes {summary['frames']}  errors {summary['errors']}  "
          f"PASS {summary['verdicts']['PASS']}  FAIL {summary['verdicts']['FAIL']}  "
          f"(decided by fast path {summary['stages']['FAST']}, "
          f"by search {summary['stages']['SEARCH']})", file=out)
    print(f"{summary['frames_per_second']} frames/s over {summary['seconds']} s; latency "
          f"p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms",
          file=out)
    if summary.get("streams_restarted"):
        print(f"{summary['streams_restarted']} stream(s) ended UNAVAILABLE and were opened "
              f"again (--resend): {summary['frames_resent']} frames sent again, each "
              "answered once", file=out)
    if "auroc" in summary:
        print(f"AUROC {summary['auroc']:.4f}; at the model's threshold:", file=out)
        print(confusion_table(summary["confusion"]), file=out)


def load_frames(args) -> list[SourceFrame]:
    if args.csv:
        frames = csv_frames(args.csv, args.normal_labels, args.anomaly_labels)
    elif args.folder:
        frames = folder_frames(args.folder, args.split)
    else:
        if not args.quiet:
            print(f"generated frames: {GENERATED_FRAMES} ({args.generate} frames, "
                  f"{args.size}×{args.size})")
        frames = generated_frames(args.generate, args.size, args.seed)
    frames = list(frames)
    return frames[:args.limit] if args.limit else frames


async def run(args) -> tuple[dict, list[Record], list[str]]:
    frames = load_frames(args)
    config = pb.InspectionConfig(model=args.model or "", mode=MODES[args.mode],
                                 search_steps=args.steps or 0,
                                 provisional_results=args.provisional,
                                 return_residual_map=bool(args.overlays),
                                 map_encoding=pb.MAP_ENCODING_PNG)
    per_stream: list[list[tuple[int, SourceFrame]]] = [[] for _ in range(args.streams)]
    for sequence, frame in enumerate(frames):
        per_stream[sequence % args.streams].append((sequence, frame))
    rate = args.rate / args.streams if args.rate else None
    async with open_channel(args) as channel:
        await connect(channel, args)
        stub = pb_grpc.InspectionServiceStub(channel)
        metadata = token_metadata(args)
        await check_model(stub, config, metadata)
        table = LiveTable(0 if args.quiet else args.every, total=len(frames))
        started = time.perf_counter()
        reports = await asyncio.gather(*(run_stream(stub, i, part, config, rate, table,
                                                    args.overlays, args.batch, metadata,
                                                    args.resend)
                                         for i, part in enumerate(per_stream) if part))
        seconds = time.perf_counter() - started
    records = sorted((r for rep in reports for r in rep.records), key=lambda r: r.sequence)
    problems = [p for rep in reports for p in rep.problems]
    summary = summarize(records, seconds, args.rate)
    summary["streams_restarted"] = sum(rep.restarts for rep in reports)
    summary["frames_resent"] = sum(rep.resent for rep in reports)
    return summary, records, problems


class Refused(Exception):
    """The server cannot serve what was asked (an unknown model, a mode it lacks)."""


class NoServer(Exception):
    """Nothing answers at the target."""


async def connect(channel: grpc.aio.Channel, args) -> None:
    """Wait until the channel is ready. NoServer at once when the connection fails (gRPC
    would retry quietly until the timeout), or after --connect-timeout."""
    deadline = time.monotonic() + args.connect_timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise NoServer(await _connection_problem(channel, args))
        remaining = deadline - time.monotonic()
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), max(remaining, 0))
        except asyncio.TimeoutError:
            raise NoServer(f"no answer from {args.target} within {args.connect_timeout:g} s "
                           f"(--connect-timeout): {NO_SERVER_HINT}") from None
        state = channel.get_state(try_to_connect=True)


NO_SERVER_HINT = "start one with `anogan-serve --bundle PATH` or pass --target HOST:PORT"


async def _connection_problem(channel: grpc.aio.Channel, args) -> str:
    """Why the channel failed, in words: a refused connection means nothing listens;
    anything else (a TLS handshake, a name that does not resolve) is quoted from gRPC."""
    try:
        await pb_grpc.InspectionServiceStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=5, wait_for_ready=False)
    except grpc.aio.AioRpcError as err:
        detail = err.details() or err.code().name
    else:
        return f"the connection to {args.target} failed and then worked: try again"
    if "refused" in detail.lower():
        return f"no server at {args.target}: {NO_SERVER_HINT}"
    hint = (" (TLS: check --tls-ca, and --tls-cert/--tls-key where the server asks for "
            "client certificates)") if args.tls_ca else ""
    return f"cannot connect to {args.target}: {detail}{hint}"


async def check_model(stub, config: pb.InspectionConfig, metadata=None) -> None:
    """Ask GetModel first, so a stream the server would refuse is a clear error up front
    (a refusal mid-stream races the frames already being written)."""
    try:
        model = (await stub.GetModel(pb.GetModelRequest(name=config.model),
                                     metadata=metadata)).model
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
    # Results can carry a frame-sized anomaly map: allow what the server allows to send.
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if getattr(args, "lb", "pick_first") != "pick_first":
        # Client-side balancing, health-driven: a server reporting NOT_SERVING gets no new
        # streams (grpc.health.v1, which anogan-serve serves without a token).
        options.append(("grpc.service_config", json.dumps({
            "loadBalancingConfig": [{args.lb: {}}],
            "healthCheckConfig": {"serviceName": ""}})))
    if not args.tls_ca:
        return grpc.aio.insecure_channel(args.target, options=options)
    read = lambda path: path.read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key),
                                               read(args.tls_cert))
    return grpc.aio.secure_channel(args.target, credentials, options=options)


TOKEN_VARIABLE = "ANOGAN_TOKEN"


def read_token(path: Path | None) -> str | None:
    """The file's first token (read as the server reads its own), else $ANOGAN_TOKEN;
    ValueError naming the file when it cannot be used."""
    if path is None:
        return os.environ.get(TOKEN_VARIABLE) or None
    return read_tokens(path)[0]


def token_metadata(args) -> tuple[tuple[str, str], ...] | None:
    """`authorization: Bearer <token>` call metadata when a token is given; every call of
    the client passes it (a grpc.aio stream-stream client interceptor adding it was not
    delivered on StreamInspect in a test here, so no interceptor)."""
    token = read_token(args.token_file)
    return (("authorization", f"Bearer {token}"),) if token else None


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_labels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


MODE_HELP = ("default: the model's own (cascade with an encoder, else search); "
             "fast: the fast path alone, s0 at E(x); search: always the latent search; "
             "cascade: the fast path, then the search for frames it does not pass")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anogan-client", description=__doc__,
                                     formatter_class=HelpFormatter)
    server = parser.add_argument_group("server", "where to send frames and how they are judged")
    server.add_argument("--target", default="localhost:50051",
                        help="server address, HOST:PORT; several servers: "
                             "dns:///NAME:PORT (every address the name has) or "
                             "ipv4:HOST:PORT,HOST:PORT, with --lb round_robin")
    server.add_argument("--lb", choices=("pick_first", "round_robin"), default="pick_first",
                        help="with several servers behind --target: round_robin spreads the "
                             "streams over them, one connection each, and skips a server "
                             "whose health check says NOT_SERVING (draining)")
    server.add_argument("--resend", type=int, nargs="?", const=3, default=0, metavar="N",
                        help="when a stream ends UNAVAILABLE (its server drains or goes "
                             "away), open it again and resend its unanswered frames, up to "
                             "N times a stream (3 if N is left out); each frame is still "
                             "answered once")
    server.add_argument("--mode", choices=sorted(MODES), default="default", help=MODE_HELP)
    server.add_argument("--steps", type=positive_int,
                        help="search steps (default: the model's)")
    server.add_argument("--model", help="model name (default: the server's default)")
    server.add_argument("--provisional", action="store_true",
                        help="ask for provisional fast-path results before the final ones")
    server.add_argument("--connect-timeout", type=float, default=30.0,
                        help="seconds to wait for a server that does not answer at all (a "
                             "refused connection fails at once)")
    frames = parser.add_argument_group("frames", "what to stream (one source), and how fast")
    source = frames.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="MNIST-style CSV (.csv or .csv.gz)")
    source.add_argument("--folder", type=Path, help="image folder (MVTec layout: --split)")
    source.add_argument("--generate", type=positive_int, metavar="N",
                        help=f"N synthetic frames: {GENERATED_FRAMES}")
    frames.add_argument("--normal-labels", type=parse_labels,
                        help="CSV: labels of normal rows, e.g. 7,8")
    frames.add_argument("--anomaly-labels", type=parse_labels,
                        help="CSV: labels of anomalous rows, e.g. 2")
    frames.add_argument("--split", default="test", help="MVTec split to stream")
    frames.add_argument("--size", type=int, default=28, help="generated frame size, pixels")
    frames.add_argument("--seed", type=int, default=0, help="seed of the generated frames")
    frames.add_argument("--limit", type=int, help="stream at most N frames (default: all)")
    frames.add_argument("--rate", type=float,
                        help="frames/s over all streams, like a camera (default: as fast as "
                             "the server answers)")
    frames.add_argument("--streams", type=positive_int, default=1, help="concurrent streams")
    frames.add_argument("--batch", type=positive_int, default=1,
                        help="frames per message: above 1, each stream sends FrameBatch "
                             "messages (fewer messages for high frame rates; the server "
                             "answers each with all its results at once)")
    output = parser.add_argument_group("output")
    output.add_argument("--jsonl", type=Path, help="write one JSON line per result")
    output.add_argument("--summary-json", type=Path, help="write the summary as JSON")
    output.add_argument("--overlays", type=Path, metavar="DIR",
                        help="tiled models: ask for anomaly maps and save one PNG per frame "
                             "here (frame, heat tint, region boxes, score, verdict)")
    output.add_argument("--roc", type=Path, metavar="PNG",
                        help="with labels: write the ROC curve of the scores as a PNG")
    output.add_argument("--every", type=positive_int, default=1,
                        help="print every N-th result in the live table (all are summarised)")
    output.add_argument("--quiet", action="store_true", help="print the summary only")
    output.add_argument("--fail-on-error", action="store_true",
                        help="exit 1 when any frame comes back with an error")
    security = parser.add_argument_group("security", "for a server with TLS or tokens")
    security.add_argument("--tls-ca", type=Path, metavar="PEM",
                          help="connect with TLS, trusting this CA (the server's --tls-cert)")
    security.add_argument("--tls-cert", type=Path, metavar="PEM",
                          help="client certificate, for a server with --tls-client-ca")
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    security.add_argument("--token-file", type=Path, metavar="FILE",
                          help="send its first token as `authorization: Bearer` metadata, for "
                               f"a server with --auth-token-file (default: ${TOKEN_VARIABLE}, "
                               "if set)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.roc and importlib.util.find_spec("matplotlib") is None:
        print("anogan-client: error: --roc needs matplotlib: pip install matplotlib",
              file=sys.stderr)
        return 2
    try:
        summary, records, problems = asyncio.run(run(args))
    except grpc.aio.AioRpcError as err:
        hint = (" (pass --token-file or set $" + TOKEN_VARIABLE + ")"
                if err.code() == grpc.StatusCode.UNAUTHENTICATED else "")
        print(f"anogan-client: cannot stream to {args.target}: {err.details()}{hint}",
              file=sys.stderr)
        return 2
    except (DatasetError, OSError, ValueError, Refused, NoServer) as err:  # a bad source, TLS file,
        # request or target
        print(f"anogan-client: error: {err}", file=sys.stderr)
        return 2
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(args.jsonl, "w") as out:
            for record in records:
                fields = asdict(record)
                del fields["received"]
                out.write(json.dumps(fields) + "\n")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.roc and "auroc" in summary:
        labelled = [r for r in records if r.error is None and r.is_anomaly is not None]
        save_roc_plot({"server scores": (np.array([r.score for r in labelled]),
                                         np.array([r.is_anomaly for r in labelled]))},
                      args.roc, f"{args.target}: {len(labelled)} frames")
    print_summary(summary)
    if warning := fell_behind(summary):
        print(f"anogan-client: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"anogan-client: {problem}", file=sys.stderr)
    if problems or (args.fail_on_error and summary["errors"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
