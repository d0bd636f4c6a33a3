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
import array
import asyncio
import concurrent.futures
import importlib.util
import itertools
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients.sink import ResultSink
from anogan_inspect.clients.sources import (
    GENERATED_FRAMES,
    SentLog,
    SourceFrame,
    csv_frames,
    folder_frames,
    generated_frames,
    resized,
    video_frames,
    watch_frames,
)
from anogan_inspect.datasets import DatasetError
from anogan_inspect.help_format import HelpFormatter, parse_bytes
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
    answered: int = 0
    problems: list[str] = field(default_factory=list)
    restarts: int = 0  # streams opened again after UNAVAILABLE (--resend)
    resent: int = 0  # frames sent again then


def frame_message(frame: SourceFrame, sequence: int) -> pb.Frame:
    """The frame as sent: a file's bytes as they are, or raw uint8 pixels (HWC); stamped
    with its capture time."""
    if frame.pixels is None:
        message = pb.Frame(frame_id=frame.frame_id, sequence=sequence,
                           encoded=pb.EncodedImage(data=frame.data))
    else:
        height, width, channels = frame.pixels.shape
        message = pb.Frame(frame_id=frame.frame_id, sequence=sequence,
                           raw=pb.RawImage(data=frame.pixels.tobytes(),
                                           data_type=pb.DATA_TYPE_UINT8, height=height,
                                           width=width, channels=channels))
    message.capture_time.GetCurrentTime()
    return message


END = None  # the end of a stream's frames, on its queue


def frame_queue(frames: list[tuple[int, SourceFrame]]) -> asyncio.Queue:
    """A list of (sequence, frame) as a finished queue."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in frames:
        queue.put_nowait(item)
    queue.put_nowait(END)
    return queue


async def run_stream(stub, index: int, frames, config: pb.InspectionConfig,
                     rate: float | None, on_record, on_result=None, batch: int = 1,
                     metadata=None, resend: int = 0, window: int = 0,
                     keep_records: bool = True) -> StreamReport:
    """Send frames on one stream, `batch` frames per message (a FrameBatch when more than
    one), at `rate` frames/s (None: as they come); check one in-order final per frame.

    frames: a list of (sequence, frame), or a queue of them that END closes (shared by
    several streams: each takes the next frame when it is ready). window: at most this
    many frames sent and not yet answered (0: no limit), which bounds the client's memory
    on an endless source. on_result(record, result, frame): awaited for each final result;
    on_record(record) called for each. keep_records=False: the report's records stay empty
    (an endless source: on_record keeps what it needs).
    When the stream ends UNAVAILABLE (a draining or lost server), up to `resend` times: open
    a new stream (with client-side balancing, on another server) and send again every frame
    not yet answered; scoring is a pure function of the frame, so a frame answered twice is
    answered the same."""
    report = StreamReport()
    queue = frames if isinstance(frames, asyncio.Queue) else frame_queue(frames)
    # Sent and unanswered, in the order sent; results are paired with their frames by
    # sequence, and must come in this order.
    pending: OrderedDict[int, SourceFrame] = OrderedDict()
    sent: dict[int, float] = {}
    provisional: set[int] = set()
    slots = asyncio.Semaphore(window) if window else None
    exhausted = False
    count = 0  # frames sent, for the rate
    start = time.perf_counter()

    async def next_group() -> list[tuple[int, SourceFrame]]:
        """Up to `batch` frames: the first waited for, the rest as they are there (and as
        the window has room: a batch never waits on its own frames' slots)."""
        nonlocal exhausted
        group: list[tuple[int, SourceFrame]] = []
        while not exhausted and len(group) < batch:
            if group:
                if slots and slots.locked():
                    break
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:  # send what is here
                    break
                if slots:
                    await slots.acquire()  # free: checked above
            else:
                if slots:
                    await slots.acquire()
                item = await queue.get()
            if item is END:
                exhausted = True
                if slots:
                    slots.release()
                queue.put_nowait(END)  # for the other streams on this queue
                break
            group.append(item)
        return group

    def message(group) -> pb.StreamInspectRequest:
        messages = [frame_message(frame, sequence) for sequence, frame in group]
        if len(messages) == 1:
            return pb.StreamInspectRequest(frame=messages[0])
        return pb.StreamInspectRequest(batch=pb.FrameBatch(frames=messages))

    async def requests(this_attempt: set[int]):
        """The stream's messages: first every pending frame this stream has not sent yet
        (after a resend: those its last stream left unanswered, and any that stream's
        request generator, which gRPC does not stop, took from the queue since), then the
        queue's frames."""
        nonlocal count
        yield pb.StreamInspectRequest(config=config)
        while True:
            group = [(s, f) for s, f in pending.items() if s not in this_attempt][:batch]
            if not group:
                group = await next_group()
                if not group:
                    if any(s not in this_attempt for s in pending):
                        continue
                    return
                if rate:  # the camera's schedule
                    await asyncio.sleep(max(0.0, start + count / rate - time.perf_counter()))
                count += len(group)
                now = time.perf_counter()
                for sequence, frame in group:
                    sent[sequence] = now
                    pending[sequence] = frame
            this_attempt.update(sequence for sequence, _ in group)
            yield message(group)

    async def take(result: pb.InspectionResult) -> None:
        want = next(iter(pending), None)
        frame = pending.pop(result.sequence, None)
        if result.sequence != want:
            report.problems.append(f"stream {index}: got sequence {result.sequence}, "
                                   f"expected {want}")
        record = to_record(result, index, sent.pop(result.sequence, None),
                           frame.is_anomaly if frame else None,
                           result.sequence in provisional)
        provisional.discard(result.sequence)
        if slots and frame is not None:
            slots.release()
        report.answered += 1
        if keep_records:
            report.records.append(record)
        if on_result is not None and frame is not None:
            await on_result(record, result, frame)
        on_record(record)

    attempts = 0
    while True:
        answered_before = report.answered
        try:
            async for response in stub.StreamInspect(requests(set()), metadata=metadata):
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
            if report.answered > answered_before:  # this stream got somewhere: --resend
                attempts = 0  # counts failures in a row (--max-stream-age ends streams)
            if attempts < resend and (pending or not exhausted):
                attempts += 1
                report.resent += len(pending)
                report.restarts += 1
                await asyncio.sleep(min(0.05 * 2 ** attempts, 2.0))  # then a new stream
                continue
            # A draining or lost server, and no resending left: keep what came back.
            report.problems.append(f"stream {index} ended early: {err.code().name}: "
                                   f"{err.details()}")
            break
    if pending:
        report.problems.append(f"stream {index}: no result for {len(pending)} frames")
    return report


def to_record(result: pb.InspectionResult, stream: int, sent_at: float | None,
              is_anomaly: bool | None, had_provisional: bool) -> Record:
    now = time.perf_counter()
    latency = (now - (sent_at if sent_at is not None else now)) * 1e3
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
        error=error, is_anomaly=is_anomaly, provisional=had_provisional, received=now)


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


class Tally:
    """What the summary needs of each result, in memory that does not grow with an endless
    source: counts, the first and last arrival, latencies (a uniform sample of at most
    LATENCY_SAMPLE), and, only for frames whose label is known (finite, labelled sources),
    their score, truth and verdict in compact arrays (10 bytes a frame)."""

    LATENCY_SAMPLE = 100_000

    def __init__(self):
        self.frames = self.errors = 0
        self.verdicts = {"PASS": 0, "FAIL": 0}
        self.stages = {"FAST": 0, "SEARCH": 0}
        self.latencies = array.array("d")
        self.first = self.last = None
        self.scores, self.truth, self.fail = array.array("d"), array.array("b"), \
            array.array("b")
        self._random = np.random.default_rng(0)

    def __call__(self, record: Record) -> None:
        self.frames += 1
        # (min and max: the records of several streams, summarised afterwards, come in
        # no particular order)
        self.first = record.received if self.first is None else min(self.first,
                                                                    record.received)
        self.last = record.received if self.last is None else max(self.last, record.received)
        if record.error is not None:
            self.errors += 1
            return
        self.verdicts[record.verdict] = self.verdicts.get(record.verdict, 0) + 1
        self.stages[record.stage] = self.stages.get(record.stage, 0) + 1
        scored = self.frames - self.errors
        if len(self.latencies) < self.LATENCY_SAMPLE:
            self.latencies.append(record.latency_ms)
        elif (k := int(self._random.integers(scored))) < self.LATENCY_SAMPLE:
            self.latencies[k] = record.latency_ms  # reservoir sampling
        if record.is_anomaly is not None:
            self.scores.append(record.score)
            self.truth.append(record.is_anomaly)
            self.fail.append(record.verdict == "FAIL")

    def summary(self, seconds: float, requested_rate: float | None = None) -> dict:
        """Counts, throughput, latency percentiles, and AUROC/confusion when labels are
        known."""
        latencies = np.frombuffer(self.latencies, dtype=np.float64) if self.latencies \
            else np.zeros(1)
        summary = {
            "frames": self.frames, "errors": self.errors,
            "verdicts": {v: self.verdicts.get(v, 0) for v in ("PASS", "FAIL")},
            "stages": {s: self.stages.get(s, 0) for s in ("FAST", "SEARCH")},
            "seconds": round(seconds, 3), "frames_per_second": round(self.frames / seconds, 2),
            "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                           "p99": round(float(np.percentile(latencies, 99)), 2)},
        }
        if requested_rate:
            summary["requested_frames_per_second"] = requested_rate
            # Results per second from the first result to the last: with a steady latency it
            # is the rate the frames were sent at; when the server falls behind, it is lower.
            if self.frames > 1 and self.last > self.first:
                came_back = self.last - self.first
                summary["results_per_second"] = round((self.frames - 1) / came_back, 2)
                # How much longer the results took to come back than the frames took to go
                # out: about 0 when the server keeps up, growing with the run when it does not.
                summary["behind_seconds"] = round(
                    came_back - (self.frames - 1) / requested_rate, 3)
        truth = np.frombuffer(self.truth, dtype=np.int8).astype(bool)
        if truth.any() and not truth.all():
            scores = np.frombuffer(self.scores, dtype=np.float64)
            summary["auroc"] = round(auroc(scores, truth), 4)
            summary["confusion"] = confusion(np.frombuffer(self.fail, dtype=np.int8)
                                             .astype(bool), truth)
        return summary


def summarize(records: list[Record], seconds: float, requested_rate: float | None = None
              ) -> dict:
    """The summary of a list of records (the benchmarks keep theirs)."""
    tally = Tally()
    for record in records:
        tally(record)
    return tally.summary(seconds, requested_rate)


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


def open_source(args, sent_log: SentLog | None, stop: threading.Event
                ) -> Iterator[SourceFrame]:
    """The frames the arguments name, read as they are streamed."""
    if args.csv:
        frames = csv_frames(args.csv, args.normal_labels, args.anomaly_labels)
    elif args.folder:
        frames = folder_frames(args.folder, args.split or "test")
    elif args.watch:
        frames = watch_frames(args.watch, sent_log, args.settle, args.idle_exit, stop=stop)
    elif args.video or args.camera is not None:
        frames = video_frames(args.video or args.camera, stop)
    else:
        if not args.quiet:
            print(f"generated frames: {GENERATED_FRAMES} ({args.generate} frames, "
                  f"{args.size or 28}×{args.size or 28})")
        frames = generated_frames(args.generate, args.size or 28, args.seed or 0)
    if args.resize:
        frames = (resized(frame, args.resize) for frame in frames)
    return itertools.islice(frames, args.limit) if args.limit else frames


class Producer:
    """Reads the source on a thread (files, a folder being watched, a camera block) and
    puts (sequence, frame) on the streams' shared queue, which holds two batches a stream:
    the source is read as fast as the streams send, or at --rate, never far ahead of them.
    Each stream takes the next frame when it is ready, so a stream's frames are not every
    N-th, and results (and JSONL lines) come in the order they are answered."""

    def __init__(self, source: Iterator[SourceFrame], queue: asyncio.Queue,
                 stop: threading.Event, rate: float | None):
        self.source, self.queue, self.stop, self.rate = source, queue, stop, rate
        self.loop = asyncio.get_running_loop()
        self.error: Exception | None = None
        self.count = 0  # frames put on the queue
        self.exhausted = False  # the source ended by itself (not stopped)
        self.streams_done = threading.Event()  # no stream takes frames any more

    def first(self) -> SourceFrame | None:
        """The first frame (the source's errors come here, before any stream opens)."""
        return next(self.source, None)

    def run(self, first: SourceFrame | None) -> None:
        started = time.perf_counter()
        try:
            frames = itertools.chain([first], self.source) if first is not None else ()
            for sequence, frame in enumerate(frames):
                if self.rate:  # the camera's schedule
                    time.sleep(max(0.0, started + sequence / self.rate - time.perf_counter()))
                if self.stop.is_set() or not self._put((sequence, frame)):
                    break
                self.count += 1
            else:
                self.exhausted = True
        except (DatasetError, OSError, ValueError) as err:  # a source that fails midway
            self.error = err
        finally:
            self._put(END, give_up=self.streams_done)  # the streams wait for it

    def _put(self, item, give_up: threading.Event | None = None) -> bool:
        """Put on the queue, waiting for room; False when `give_up` (a frame: stop) is set
        first."""
        give_up = give_up or self.stop
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                future.result(timeout=0.2)
                return True
            except concurrent.futures.TimeoutError:
                if give_up.is_set():
                    return not future.cancel()  # (put just now, if too late to cancel)


async def run(args, stop: threading.Event | None = None) -> tuple[dict, Tally, list[str]]:
    stop = stop or threading.Event()
    sent_log = SentLog(args.state_file or args.watch / STATE_FILE, args.watch) \
        if args.watch else None
    source = open_source(args, sent_log, stop)
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * args.streams * args.batch)
    producer = Producer(source, queue, stop, args.rate)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) \
        if threading.current_thread() is threading.main_thread() else ()
    for signal_number in signals:  # stop reading, finish what is sent
        loop.add_signal_handler(signal_number, _stopper(loop, stop, signal_number))
    try:
        first = await asyncio.to_thread(producer.first)  # (a hot folder: until a file comes)
    except BaseException:
        for signal_number in signals:
            loop.remove_signal_handler(signal_number)
        raise
    maps = bool(args.overlays or args.archive or args.web is not None)
    config = pb.InspectionConfig(model=args.model or "", mode=MODES[args.mode],
                                 search_steps=args.steps or 0,
                                 provisional_results=args.provisional,
                                 return_residual_map=maps, map_encoding=pb.MAP_ENCODING_PNG)
    page = archive = None
    sink = ResultSink(args.jsonl, args.overlays, None, None, sent_log,
                      args.watch if args.move_by_verdict else None)
    try:
        async with open_channel(args) as channel:
            await connect(channel, args)
            stub = pb_grpc.InspectionServiceStub(channel)
            metadata = token_metadata(args)
            model = await check_model(stub, config, metadata)
            if args.archive:
                from anogan_inspect.clients.archive import Archive

                archive = sink.archive = Archive(args.archive, args.archive_max_bytes,
                                                 args.archive_pass_every)
            if args.web is not None:
                from anogan_inspect.clients.web import LivePage

                page = sink.page = LivePage(stub, metadata, model, archive, args)
                await page.start(args.web_host, args.web)
                print(f"operator's page: {page.url}", flush=True)
            table = LiveTable(0 if args.quiet else args.every)
            tally = Tally()

            def on_record(record: Record) -> None:
                table(record)
                tally(record)

            started = time.perf_counter()
            reading = asyncio.create_task(asyncio.to_thread(producer.run, first))
            try:
                reports = await asyncio.gather(*(
                    run_stream(stub, i, queue, config, None, on_record, sink, args.batch,
                               metadata, args.resend, args.window, keep_records=False)
                    for i in range(args.streams)))
            finally:
                stop.set()  # the streams are done: so is the source
                producer.streams_done.set()
                await reading
            seconds = time.perf_counter() - started
            if page is not None and args.web_linger:
                print(f"operator's page: {page.url} stays up {args.web_linger:g} s "
                      "(--web-linger; Ctrl-C ends it)", flush=True)
                stop.clear()  # the streams are done; a Ctrl-C now ends the page
                signals and loop.add_signal_handler(signal.SIGINT, stop.set)
                signals and loop.add_signal_handler(signal.SIGTERM, stop.set)
                await asyncio.to_thread(stop.wait, args.web_linger)
    finally:
        for signal_number in signals:
            loop.remove_signal_handler(signal_number)
        sink.close()
        if page is not None:
            await page.stop()
        if archive is not None:
            archive.close()
    problems = [p for rep in reports for p in rep.problems] + sink.problems
    if producer.error is not None:
        problems.append(f"the source failed after {producer.count} frames: {producer.error}")
    unanswered = producer.count - tally.frames
    if unanswered or (problems and not producer.exhausted):  # the streams ended early
        problems.append(f"no result for {unanswered} frame(s) read from the source"
                        + ("" if producer.exhausted else "; the rest was not read"))
    summary = tally.summary(seconds, args.rate)
    summary["streams_restarted"] = sum(rep.restarts for rep in reports)
    summary["frames_resent"] = sum(rep.resent for rep in reports)
    return summary, tally, problems


STATE_FILE = ".anogan-client-sent.jsonl"  # in the hot folder, unless --state-file


def _stopper(loop, stop: threading.Event, signal_number: int):
    """The first Ctrl-C (or SIGTERM) stops reading frames; the frames sent are answered and
    summarised. A second one stops at once."""
    def handler():
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nanogan-client: stopping: no more frames are read; waiting for the results "
              "of those sent (again to stop at once)", file=sys.stderr, flush=True)
        loop.remove_signal_handler(signal_number)
    return handler


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


async def check_model(stub, config: pb.InspectionConfig, metadata=None):
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
    return model


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


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' → (640, 480)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return width, height


# Options that belong to one source, or need another option: given without it, they would
# do nothing, so the client says so and exits 2.
ONLY_WITH = {
    "normal_labels": ("csv",), "anomaly_labels": ("csv",), "split": ("folder",),
    "size": ("generate",), "seed": ("generate",),
    "idle_exit": ("watch",), "state_file": ("watch",), "move_by_verdict": ("watch",),
    "archive_pass_every": ("archive",), "web_linger": ("web",), "admin_token_file": ("web",),
    "metrics_url": ("web",),
}


def unusable_options(args, parser: argparse.ArgumentParser) -> list[str]:
    """The options given that cannot apply to the rest of the command line."""
    problems = []
    for dest, needs in ONLY_WITH.items():
        value = getattr(args, dest)
        if value in (None, False, 0, 0.0) or value == parser.get_default(dest):
            continue
        if not any(getattr(args, need) is not None and getattr(args, need) is not False
                   for need in needs):  # (--web 0 is given: any free port)
            flag = "--" + dest.replace("_", "-")
            problems.append(f"{flag} applies with {' or '.join('--' + n for n in needs)} only")
    if args.settle != parser.get_default("settle") and not args.watch:
        problems.append("--settle applies with --watch only")
    if args.archive_max_bytes != parser.get_default("archive_max_bytes") and not args.archive:
        problems.append("--archive-max-bytes applies with --archive only")
    if args.web_host != parser.get_default("web_host") and args.web is None:
        problems.append("--web-host applies with --web only")
    if args.roc and not (args.csv or args.folder or args.generate):
        problems.append("--roc needs labelled frames (--csv, --folder in the MVTec layout, "
                        "--generate)")
    return problems


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
    frames = parser.add_argument_group("frames", "what to stream (one source), and how fast; "
                                                 "each is read as it is streamed")
    source = frames.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="MNIST-style CSV (.csv or .csv.gz)")
    source.add_argument("--folder", type=Path,
                        help="image folder, in order, each file sent as it is (any size; "
                             "MVTec layout: --split); frame ids are the file names")
    source.add_argument("--watch", type=Path, metavar="DIR",
                        help="a hot folder: each new image file, once completely written, "
                             "sent under its file name; runs until Ctrl-C or --idle-exit")
    source.add_argument("--video", metavar="PATH_OR_URL",
                        help="a video file or an RTSP/HTTP stream, frame by frame, ids "
                             "frame-000000... (OpenCV: pip install 'anogan-inspect[video]')")
    source.add_argument("--camera", type=int, metavar="N",
                        help="local camera N through OpenCV, until Ctrl-C")
    source.add_argument("--generate", type=positive_int, metavar="N",
                        help=f"N synthetic frames: {GENERATED_FRAMES}")
    frames.add_argument("--normal-labels", type=parse_labels,
                        help="--csv: labels of normal rows, e.g. 7,8")
    frames.add_argument("--anomaly-labels", type=parse_labels,
                        help="--csv: labels of anomalous rows, e.g. 2")
    frames.add_argument("--split", help="--folder in the MVTec layout: the split to stream "
                                        "(default: test)")
    frames.add_argument("--size", type=positive_int,
                        help="--generate: frame size, pixels (default: 28)")
    frames.add_argument("--seed", type=int, help="--generate: seed (default: 0)")
    frames.add_argument("--resize", type=parse_size, metavar="WxH",
                        help="send every frame resized to W×H pixels, raw (default: as it "
                             "comes; the server resizes to its model)")
    frames.add_argument("--limit", type=positive_int,
                        help="stream at most N frames (default: all)")
    frames.add_argument("--rate", type=float,
                        help="frames/s over all streams, like a camera (default: as fast as "
                             "the server answers)")
    frames.add_argument("--streams", type=positive_int, default=1, help="concurrent streams")
    frames.add_argument("--batch", type=positive_int, default=1,
                        help="frames per message: above 1, each stream sends FrameBatch "
                             "messages (fewer messages for high frame rates; the server "
                             "answers each with all its results at once)")
    frames.add_argument("--window", type=positive_int, default=64,
                        help="frames a stream has sent and not yet had answered, at most")
    watch = parser.add_argument_group("hot folder", "with --watch")
    watch.add_argument("--settle", type=float, default=1.0, metavar="SECONDS",
                       help="a file that is not a whole PNG or JPEG is sent once it has not "
                            "changed for this long (a truncated file: a per-frame error)")
    watch.add_argument("--idle-exit", type=float, metavar="SECONDS",
                       help="stop when no new file has come for this long")
    watch.add_argument("--state-file", type=Path,
                       help="the log of files answered, so that a restarted client sends "
                            f"none of them again (default: DIR/{STATE_FILE})")
    watch.add_argument("--move-by-verdict", action="store_true",
                       help="move each answered file to DIR/done/ (PASS) or DIR/failed/ "
                            "(FAIL or error)")
    output = parser.add_argument_group("output")
    output.add_argument("--jsonl", type=Path, help="write one JSON line per result")
    output.add_argument("--summary-json", type=Path, help="write the summary as JSON")
    output.add_argument("--overlays", type=Path, metavar="DIR",
                        help="ask for maps and save one PNG per frame here (frame, heat tint "
                             "of the anomaly or residual map, region boxes, score, verdict)")
    output.add_argument("--archive", type=Path, metavar="DIR",
                        help="keep every FAIL frame (the file, its overlay, the result) in "
                             "a queryable archive: anogan-client archive list DIR")
    output.add_argument("--archive-pass-every", type=int, default=0, metavar="N",
                        help="--archive: keep every N-th PASS frame too (0: none)")
    output.add_argument("--archive-max-bytes", type=parse_bytes, default=1 << 30,
                        metavar="SIZE", help="--archive: the frames' files at most (oldest "
                                             "go first), e.g. 500MiB (default: 1GiB)")
    output.add_argument("--web", type=int, metavar="PORT",
                        help="serve the operator's page here (0: any free port): the last "
                             "results, counts, reject rate, scores against the threshold, "
                             "the model and its health, the archive")
    output.add_argument("--web-host", default="127.0.0.1",
                        help="--web: the address it listens on (0.0.0.0: every interface)")
    output.add_argument("--web-linger", type=float, default=0.0, metavar="SECONDS",
                        help="--web: keep the page up this long after the last frame")
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
    security.add_argument("--admin-token-file", type=Path, metavar="FILE",
                          help="--web: a token of the server's --admin-token-file, so that "
                               "results can be marked GOOD or DEFECT from the page")
    security.add_argument("--metrics-url", metavar="URL",
                          help="--web: the server's metrics (anogan-serve --metrics-port), "
                               "e.g. http://host:9100/metrics: the page shows its drift")
    security.add_argument("--token-file", type=Path, metavar="FILE",
                          help="send its first token as `authorization: Bearer` metadata, for "
                               f"a server with --auth-token-file (default: ${TOKEN_VARIABLE}, "
                               "if set)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["archive"]:  # anogan-client archive list|show|export
        from anogan_inspect.clients.archive import archive_main

        return archive_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if problems := unusable_options(args, parser):
        for problem in problems:
            print(f"anogan-client: error: {problem}", file=sys.stderr)
        return 2
    if args.roc and importlib.util.find_spec("matplotlib") is None:
        print("anogan-client: error: --roc needs matplotlib: pip install matplotlib",
              file=sys.stderr)
        return 2
    try:
        summary, tally, problems = asyncio.run(run(args))
    except grpc.aio.AioRpcError as err:
        hint = (" (pass --token-file or set $" + TOKEN_VARIABLE + ")"
                if err.code() == grpc.StatusCode.UNAUTHENTICATED else "")
        print(f"anogan-client: cannot stream to {args.target}: {err.details()}{hint}",
              file=sys.stderr)
        return 2
    except (DatasetError, OSError, ValueError, Refused, NoServer, sqlite3.Error) as err:
        # a bad source, TLS file, archive, request or target
        print(f"anogan-client: error: {err}", file=sys.stderr)
        return 2
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.roc and "auroc" not in summary:
        print(f"anogan-client: warning: --roc: no ROC written to {args.roc}: the frames "
              "streamed carry no labels of both kinds", file=sys.stderr)
    if args.roc and "auroc" in summary:
        save_roc_plot({"server scores": (np.frombuffer(tally.scores, dtype=np.float64),
                                         np.frombuffer(tally.truth, np.int8).astype(bool))},
                      args.roc, f"{args.target}: {len(tally.scores)} frames")
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
