"""The gRPC servicer: converts messages to and from the domain and nothing more.

Streams: a reader task takes frames as they come and starts one scoring task per frame; a
sequencer emits the final results strictly in the order the frames were sent (provisional
fast results go out as soon as they exist). When the stream ends or is cancelled, every
frame task still running is cancelled, which frees its queue entries and slots. When the
server drains, each stream stops taking frames, sends the results of those it has, and ends
with UNAVAILABLE.

The event loop never waits on pixel work it cannot bound: decoding and resizing run on a
worker thread unless the frame is raw and small (there the thread hop, about 50 µs, costs
more than the work).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.help_format import format_bytes
from anogan_inspect.search import CASCADE_MARGIN
from anogan_inspect.server.frames import (
    FrameError,
    FrameLimits,
    decode_frame,
    decoded_bytes,
    encode_png,
)
from anogan_inspect.server.models import Mode, Outcome, ServedModel, Stage

log = logging.getLogger(__name__)

MODES = {pb.MODE_FAST: Mode.FAST, pb.MODE_SEARCH: Mode.SEARCH, pb.MODE_CASCADE: Mode.CASCADE}
MODE_PB = {v: k for k, v in MODES.items()}
STAGE_PB = {Stage.FAST: pb.STAGE_FAST, Stage.SEARCH: pb.STAGE_SEARCH}
# A raw frame of up to this many pixels is decoded and resized on the event loop (cheaper
# than a hop to a worker thread); larger ones, and encoded ones, on a worker thread.
INLINE_PIXELS = 128 * 128
# The same for a FrameBatch, all its frames together (32 MNIST digits: 25,088 pixels,
# about 0.4 ms of work; the hop to a thread cost a third of the echo server's rate).
INLINE_BATCH_PIXELS = 256 * 256
DRAINING = "server is draining; reconnect to another instance"
MAX_PAGE_SIZE = 100  # ListModels
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # google.rpc.Code → grpc


class StreamError(Exception):
    """Ends a stream with a gRPC status (bad config, draining)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class ParseErrors(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a unary request whose bytes do not parse: gRPC's own
    deserializer reports that as UNKNOWN (a stream's reader answers INVALID_ARGUMENT)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary

        async def parsed(data: bytes, context):
            try:
                request = parse(data)
            except DecodeError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request does not parse: {err}")
            response = behavior(request, context)
            return await response if inspect.isawaitable(response) else response

        return handler._replace(request_deserializer=None, unary_unary=parsed)


@dataclass(eq=False)  # hashed by identity: a stream's options name it to the engine
class StreamOptions:
    model: ServedModel
    mode: Mode
    steps: int | None
    provisional: bool
    residual_map: bool
    map_encoding: int = pb.MAP_ENCODING_PNG


class InspectionService(pb_grpc.InspectionServiceServicer):
    """InspectionService over a set of resident models."""

    def __init__(self, models: dict[str, ServedModel], default_model: str, limits: FrameLimits,
                 stream_window: int, worker: int = 0, max_stream_age: float | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.models, self.default_model, self.limits = models, default_model, limits
        self.max_message_bytes = max_message_bytes  # what gRPC sends at most (one message)
        # Versions --models-dir replaced that open streams still hold (their metrics).
        self.retired: set[ServedModel] = set()
        self.stream_window = stream_window
        self.worker = worker  # this process's index among `anogan-serve --workers N`
        self.max_stream_age = max_stream_age  # s; then UNAVAILABLE (--max-stream-age)
        self.metrics = None  # server/monitoring.py's Metrics, with --metrics-port
        self.learning = None  # server/learning.py's Learning, with --admin-token-file
        self.draining = False
        self.invalid_frames = {name: 0 for name in models}  # (--models-dir adds names)
        self.frames_in_flight = 0  # frames being scored, all streams (--max-frames-in-flight)
        self.bytes_in_flight = 0  # their model inputs' bytes (--max-bytes-in-flight)
        self.results_unsent = 0  # frames whose final result gRPC has not taken yet, all streams
        self._readers: set[asyncio.Task] = set()  # one per open stream
        self._calls = 0  # Inspect and StreamInspect calls in progress
        self._idle = asyncio.Event()
        self._idle.set()

    def start_draining(self) -> None:
        """Refuse new calls and frames; open streams finish the frames they have, then end."""
        self.draining = True
        for reader in self._readers:
            reader.cancel()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no Inspect or StreamInspect call is left; False after `timeout` s."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
            return False
        return True

    @contextlib.contextmanager
    def _call(self):
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    # -- unary -------------------------------------------------------------------------------

    async def Inspect(self, request: pb.InspectRequest, context) -> pb.InspectResponse:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        try:
            options = self._options(request.config)
        except StreamError as err:
            await context.abort(err.code, err.message)
        with self._call(), _holding(options.model):
            result = await self._score(request.frame, options, None)
        if result.HasField("error"):
            await context.abort(STATUS_CODES[result.error.code], result.error.message)
        return pb.InspectResponse(result=result)

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        name = request.name or self.default_model
        if name not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, self._unknown_model(name))
        return pb.GetModelResponse(model=model_message(self.models[name]))

    async def ListModels(self, request: pb.ListModelsRequest, context
                         ) -> pb.ListModelsResponse:
        """The default model first; the page token is the name of the next model."""
        names = sorted(self.models, key=lambda n: n != self.default_model)  # default first
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be ≥ 0")
        if request.page_token and request.page_token not in names:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid page_token {request.page_token!r}")
        start = names.index(request.page_token) if request.page_token else 0
        size = request.page_size if 0 < request.page_size <= MAX_PAGE_SIZE else MAX_PAGE_SIZE
        page = names[start:start + size]
        following = names[start + size:start + size + 1]
        return pb.ListModelsResponse(models=[model_message(self.models[n]) for n in page],
                                     next_page_token=following[0] if following else "")

    async def GetServerStats(self, request, context) -> pb.GetServerStatsResponse:
        return pb.GetServerStatsResponse(worker=self.worker, models=[
            pb.ModelStats(model=name, invalid_frames=self.invalid_frames[name], **model.stats())
            for name, model in self.models.items()])

    # -- operators' verdicts (server/learning.py) ----------------------------------------------

    async def Feedback(self, request: pb.FeedbackRequest, context) -> pb.FeedbackResponse:
        return await (await self._learning(context)).feedback(request, context)

    async def CommitLearning(self, request: pb.CommitLearningRequest, context
                             ) -> pb.CommitLearningResponse:
        return await (await self._learning(context)).commit(request, context)

    async def Rollback(self, request: pb.RollbackRequest, context) -> pb.RollbackResponse:
        return await (await self._learning(context)).rollback(request, context)

    async def _learning(self, context):
        if self.learning is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "learning is off: start anogan-serve with --models-dir and "
                                "--admin-token-file")
        return self.learning

    # -- streaming ---------------------------------------------------------------------------

    async def StreamInspect(self, request_iterator, context):
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        with self._call():
            # aclosing: a cancelled call closes the inner generator now, freeing its slots.
            async with contextlib.aclosing(self._stream(request_iterator, context)) as stream:
                async for response in stream:
                    yield response

    async def _stream(self, request_iterator, context):
        out: asyncio.Queue = asyncio.Queue()
        ordered: asyncio.Queue = asyncio.Queue()
        in_flight = asyncio.Semaphore(self.stream_window)
        tasks: set[asyncio.Task] = set()
        held: list[ServedModel] = []  # the stream's model: its version serves it to the end
        reader = asyncio.create_task(
            self._read(request_iterator, out, ordered, in_flight, tasks, held))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        # Cancelled by start_draining (or at the stream's end, when nobody reads it any more),
        # even before it first ran: the frames before it get their results, then UNAVAILABLE.
        reader.add_done_callback(lambda task: task.cancelled() and ordered.put_nowait(
            StreamError(grpc.StatusCode.UNAVAILABLE, DRAINING)))
        sequencer = asyncio.create_task(self._sequence(ordered, out))
        sending = 0  # frames of the final result being written
        try:
            while (message := await out.get()) is not None:
                if isinstance(message, StreamError):
                    await context.abort(message.code, message.message)
                # A final result comes with its frames' count (a provisional one, one a frame
                # at most, with none): they leave the window once gRPC has taken it, so a
                # client that stops reading stops being read (HTTP/2 flow control).
                message, sending = message if isinstance(message, tuple) else (message, 0)
                for response in _responses(message, self.max_message_bytes):
                    yield response
                self.results_unsent -= sending
                for _ in range(sending):
                    in_flight.release()
                sending = 0
        finally:
            for task in (reader, sequencer, *tasks):
                task.cancel()
            for model in held:
                model.streams -= 1
            while not out.empty():  # finals the stream ended before sending
                if isinstance(message := out.get_nowait(), tuple):
                    sending += message[1]
            self.results_unsent -= sending

    async def _read(self, request_iterator, out, ordered, in_flight, tasks, held) -> None:
        """Take config and frames; one scoring task per frame, queued in arrival order.
        The stream's model goes on `held` (counted as in use until the stream ends)."""
        options = None
        opened = time.monotonic()
        try:
            async for request in request_iterator:
                if self.max_stream_age and time.monotonic() - opened > self.max_stream_age:
                    raise StreamError(grpc.StatusCode.UNAVAILABLE, STREAM_AGED.format(
                        self.max_stream_age))
                if request.HasField("config"):
                    if options is not None:
                        raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                                          "config is allowed as the first message only")
                    options = _held(self._options(request.config), held)
                    continue
                if self.draining:
                    raise StreamError(grpc.StatusCode.UNAVAILABLE, DRAINING)
                if options is None:
                    options = _held(self._options(pb.InspectionConfig()), held)
                on_provisional = out.put_nowait if options.provisional else None
                batch = request.batch.frames if request.HasField("batch") else None
                # Every frame holds a place in the window; a batch that could never fit
                # holds one while its error results wait their turn.
                oversized = batch is not None and len(batch) > self.stream_window
                permits = 1 if batch is None or oversized else len(batch)
                for _ in range(permits):
                    await in_flight.acquire()
                if batch is None:
                    work = self._score(request.frame, options, on_provisional)
                elif oversized:
                    work = self._oversized(batch, options.model)
                else:
                    work = self._score_batch(batch, options, on_provisional)
                task = asyncio.create_task(work)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                ordered.put_nowait((task, permits))
        except StreamError as err:
            ordered.put_nowait(err)
            return
        except DecodeError as err:  # the client's bytes: the frames before it are answered
            ordered.put_nowait(StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"a message on the stream does not parse: {err}"))
            return
        except Exception as err:  # a bug: end the stream, say so, never leave it hanging
            log.exception("reading a stream failed")
            ordered.put_nowait(StreamError(grpc.StatusCode.INTERNAL,
                                           f"reading the stream failed: {err}"))
            return
        ordered.put_nowait(None)

    async def _sequence(self, ordered, out) -> None:
        """Final results in frame order; a stream error goes out after the frames before it."""
        while (item := await ordered.get()) is not None:
            if isinstance(item, StreamError):
                out.put_nowait(item)
                return
            task, permits = item
            try:
                result = await task
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug, not a frame's fault: end the stream, say so
                log.exception("scoring task failed")
                out.put_nowait(StreamError(grpc.StatusCode.INTERNAL, f"scoring failed: {err}"))
                return
            self.results_unsent += permits
            out.put_nowait((result, permits))
        out.put_nowait(None)

    # -- per frame ---------------------------------------------------------------------------

    async def _score(self, frame: pb.Frame, options: StreamOptions, on_provisional,
                     prepared=None) -> pb.InspectionResult:
        """One frame → one final result (errors become the result's status), counted in
        the metrics. `prepared`: the frame already decoded and preprocessed (or the error
        that gave), for batches."""
        started = time.perf_counter()
        result = await self._score_frame(frame, options, on_provisional, prepared)
        if self.metrics is not None:
            self.metrics.observe(result, time.perf_counter() - started)
        if self.learning is not None:
            self.learning.remember(options.model, frame, result)
        return result

    async def _score_frame(self, frame: pb.Frame, options: StreamOptions, on_provisional,
                           prepared) -> pb.InspectionResult:
        model = options.model
        echo = _echo(frame, model)
        mode = MODES.get(frame.mode, options.mode)
        counted, held = False, 0
        try:
            if frame.mode and frame.mode not in MODES:
                raise FrameError(_unknown_mode(frame.mode))
            if self.frames_in_flight >= self.limits.max_frames_in_flight:
                raise Exhausted(f"this server is scoring {self.frames_in_flight} frames, its "
                                "limit (anogan-serve --max-frames-in-flight): send it later")
            self.frames_in_flight, counted = self.frames_in_flight + 1, True
            x = (await self._prepare([frame], model))[0] if prepared is None else prepared
            if isinstance(x, Exception):
                raise x
            size = _input_bytes(x)
            if self.bytes_in_flight + size > self.limits.max_bytes_in_flight:
                raise Exhausted(f"the frame's {format_bytes(size)} of model input do not fit: "
                                f"this server holds {format_bytes(self.bytes_in_flight)} of "
                                f"its {format_bytes(self.limits.max_bytes_in_flight)} "
                                "(anogan-serve --max-bytes-in-flight): send it later")
            self.bytes_in_flight, held = self.bytes_in_flight + size, size
            provisional = None
            if on_provisional is not None:
                provisional = lambda o: on_provisional(  # noqa: E731
                    result_message(o, model, echo, False))
            outcome = await asyncio.wait_for(
                model.inspect(x, mode, options.steps, options.residual_map, provisional,
                              owner=options), self.limits.max_seconds or None)
        except (FrameError, ValueError) as err:
            self.invalid_frames[model.name] += 1
            return _failed(frame, model, code_pb2.INVALID_ARGUMENT, str(err))
        except Exhausted as err:
            return _failed(frame, model, code_pb2.RESOURCE_EXHAUSTED, str(err))
        except asyncio.CancelledError:
            raise
        except TimeoutError:  # its searches were cancelled: their slots are free
            return _failed(frame, model, code_pb2.DEADLINE_EXCEEDED,
                           f"scoring the frame took longer than this server's limit of "
                           f"{self.limits.max_seconds:g} s (anogan-serve --max-frame-seconds)")
        except Exception as err:  # an engine failure: this frame fails, the stream goes on
            log.exception("scoring failed for frame %r", frame.frame_id)
            return _failed(frame, model, code_pb2.INTERNAL, str(err))
        finally:
            self.frames_in_flight -= counted
            self.bytes_in_flight -= held
        message = (result_message, outcome, model, echo, options.residual_map,
                   options.map_encoding)
        if options.residual_map and outcome.anomaly_map is not None:
            return await asyncio.to_thread(*message)  # PNG encoding grows with the frame
        return message[0](*message[1:])

    async def _score_batch(self, frames, options: StreamOptions, on_provisional
                           ) -> list[pb.InspectionResult]:
        """A batch's frames, each scored as if alone, their results in the frames' order;
        decoded and preprocessed together (one resize per frame size: cheaper per frame)."""
        model = options.model
        try:
            prepared = await self._prepare(frames, model)
        except Exception as err:  # e.g. out of memory resizing them: each frame says so
            log.exception("preparing a batch of %d frames failed", len(frames))
            return self._counted([_failed(frame, model, code_pb2.INTERNAL,
                                          f"preparing the frame failed: {err}")
                                  for frame in frames])
        return list(await asyncio.gather(*(self._score(frame, options, on_provisional, x)
                                           for frame, x in zip(frames, prepared))))

    async def _oversized(self, frames, model: ServedModel) -> list[pb.InspectionResult]:
        """A batch larger than the in-flight window: an error result per frame."""
        message = (f"a batch of {len(frames)} frames is larger than this stream's in-flight "
                   f"window of {self.stream_window} frames (anogan-serve --stream-window): "
                   f"send at most {self.stream_window} frames in one batch")
        return self._counted([_failed(frame, model, code_pb2.RESOURCE_EXHAUSTED, message)
                              for frame in frames])

    def _counted(self, results: list[pb.InspectionResult]) -> list[pb.InspectionResult]:
        """Error results made without scoring, counted in the metrics."""
        if self.metrics is not None:
            for result in results:
                self.metrics.observe(result, 0.0)
        return results

    async def _prepare(self, frames, model: ServedModel) -> list:
        """Frames decoded and resized (ServedModel.preprocess_many), each item the model
        input or the error its frame gave; on the event loop when they are raw and small in
        all (see INLINE_PIXELS), else on a worker thread. What decoding will take is held
        against --max-bytes-in-flight first (from raw shapes and encoded headers): a frame
        that does not fit is not decoded, its item is RESOURCE_EXHAUSTED."""
        items: list = [None] * len(frames)
        admitted, held, pixels, inline = [], 0, 0, True
        for i, frame in enumerate(frames):
            size = decoded_bytes(frame, self.limits)
            if size > self.limits.max_bytes_in_flight:
                items[i] = Exhausted(
                    f"decoding the frame takes about {format_bytes(size)}, more than this "
                    f"server's whole limit of {format_bytes(self.limits.max_bytes_in_flight)} "
                    "(anogan-serve "
                    "--max-bytes-in-flight): it cannot be scored here; send smaller frames")
                continue
            if self.bytes_in_flight + size > self.limits.max_bytes_in_flight:
                items[i] = Exhausted(
                    f"decoding the frame takes about {format_bytes(size)}: this server holds "
                    f"{format_bytes(self.bytes_in_flight)} of its "
                    f"{format_bytes(self.limits.max_bytes_in_flight)} "
                    "(anogan-serve --max-bytes-in-flight): send it later")
                continue
            self.bytes_in_flight += size
            held += size
            admitted.append(i)
            inline = inline and frame.WhichOneof("image") == "raw"
            pixels += max(frame.raw.height, 0) * max(frame.raw.width, 0)  # a negative
            # size is the decoder's to refuse: it must not make the batch look small
        prepare = lambda: model.preprocess_many(  # noqa: E731
            [_decoded(frames[i], self.limits) for i in admitted])
        limit = INLINE_PIXELS if len(frames) == 1 else INLINE_BATCH_PIXELS
        if not admitted:
            prepared = []
        elif inline and pixels <= limit:
            try:
                prepared = prepare()
            finally:
                self.bytes_in_flight -= held
        else:  # held until the thread is done, even when the stream is cancelled
            job = asyncio.ensure_future(asyncio.to_thread(prepare))
            job.add_done_callback(lambda _: setattr(
                self, "bytes_in_flight", self.bytes_in_flight - held))
            prepared = await asyncio.shield(job)
        for i, x in zip(admitted, prepared):
            items[i] = x
        return items

    def _options(self, config: pb.InspectionConfig) -> StreamOptions:
        name = config.model or self.default_model
        if name not in self.models:
            raise StreamError(grpc.StatusCode.NOT_FOUND, self._unknown_model(name))
        model = self.models[name]
        if config.search_steps < 0:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"search_steps must be ≥ 0, got {config.search_steps}")
        limit = model.options.max_search_steps
        if config.search_steps > limit:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"search_steps {config.search_steps} is above this server's "
                              f"limit of {limit} steps a frame (anogan-serve "
                              "--max-search-steps)")
        if config.mode and config.mode not in MODES:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, _unknown_mode(config.mode))
        mode = MODES.get(config.mode, model.default_mode)
        if mode not in model.modes:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"model {name} does not serve {mode.name}: it has no encoder "
                              f"(modes: {', '.join(m.name for m in model.modes)})")
        if config.map_encoding not in pb.MapEncoding.values():
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown map_encoding {config.map_encoding}")
        return StreamOptions(model, mode, config.search_steps or None,
                             config.provisional_results, config.return_residual_map,
                             config.map_encoding or pb.MAP_ENCODING_PNG)

    def _unknown_model(self, name: str) -> str:
        return f"unknown model {name!r}; served: {', '.join(self.models)}"


STREAM_AGED = ("this stream is older than this server's limit of {:g} s (anogan-serve "
               "--max-stream-age): the frames before this one are answered; open a new "
               "stream and send the rest")


def _held(options: StreamOptions, held: list[ServedModel]) -> StreamOptions:
    """A stream's options, its model counted as in use (released when the stream ends)."""
    held.append(options.model)
    options.model.streams += 1
    return options


@contextlib.contextmanager
def _holding(model: ServedModel):
    """Count a unary call as using its model's version while it runs."""
    model.streams += 1
    try:
        yield
    finally:
        model.streams -= 1


def _responses(result, limit: int) -> list[pb.StreamInspectResponse]:
    """A frame's result, or a batch's results (a list), as the messages that carry it:
    one, unless a batch's results together exceed `limit` (--max-message-bytes), which gRPC
    would refuse to send, ending the stream: then as many messages as they need, in order.
    A result alone above the limit becomes a per-frame RESOURCE_EXHAUSTED error."""
    if not isinstance(result, list):
        return [pb.StreamInspectResponse(result=_within(result, limit))]
    response = pb.StreamInspectResponse(results=result)
    if response.ByteSize() <= limit:
        return [response]
    messages, size = [pb.StreamInspectResponse()], 0
    for one in result:
        one = _within(one, limit)
        length = one.ByteSize() + MESSAGE_OVERHEAD
        if size and size + length > limit:
            messages.append(pb.StreamInspectResponse())
            size = 0
        messages[-1].results.append(one)
        size += length
    return messages


MESSAGE_OVERHEAD = 16  # a result's tag and length in its response, with room to spare


def _within(result: pb.InspectionResult, limit: int) -> pb.InspectionResult:
    """The result, or, when it alone could never be sent, RESOURCE_EXHAUSTED for it (a
    provisional one stays marked provisional; its final result follows). The error echoes
    the frame's id only if it fits."""
    size = result.ByteSize() + MESSAGE_OVERHEAD
    if size <= limit:
        return result
    error = pb.InspectionResult(
        frame_id=result.frame_id, sequence=result.sequence, model=result.model,
        model_version=result.model_version, mode=result.mode,
        provisional=result.provisional,
        error=status_pb2.Status(
            code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            message=f"this frame's result is {size} bytes, above this server's limit of "
                    f"{limit} a message (anogan-serve --max-message-bytes): ask for no "
                    "residual map, or for it as a PNG (MAP_ENCODING_PNG)"))
    if result.HasField("capture_time"):
        error.capture_time.CopyFrom(result.capture_time)
    if error.ByteSize() + MESSAGE_OVERHEAD > limit:
        error.frame_id = ""  # the sequence still names it
    return error


def _unknown_mode(value: int) -> str:
    return (f"unknown mode {value}: one of " + ", ".join(
        f"{pb.Mode.Name(m)} ({m})" for m in MODES) + ", or MODE_UNSPECIFIED (0) for the "
        "stream's or model's default")


def _decoded(frame: pb.Frame, limits: FrameLimits):
    """The frame's pixels, or the error decoding them gave (a batch's other frames go on)."""
    try:
        return decode_frame(frame, limits)
    except (FrameError, ValueError) as err:
        return err


class Exhausted(Exception):
    """A server-wide cap is reached: this frame gets RESOURCE_EXHAUSTED."""


def _input_bytes(x) -> int:
    """Bytes a preprocessed frame holds: its model input, or a tiled frame's tiles."""
    if hasattr(x, "held_bytes"):  # a memory model's frame
        return x.held_bytes
    tensor = getattr(x, "tiles", x)
    return tensor.nelement() * tensor.element_size()


def _failed(frame: pb.Frame, model: ServedModel, code: int, message: str
            ) -> pb.InspectionResult:
    """The frame's result when it could not be scored: its status, and its echo."""
    return pb.InspectionResult(error=status_pb2.Status(code=code, message=message),
                               **_echo(frame, model))


def _echo(frame: pb.Frame, model: ServedModel) -> dict:
    """The fields a result repeats from its frame and model."""
    echo = {"frame_id": frame.frame_id, "sequence": frame.sequence,
            "model": model.name, "model_version": model.bundle.version}
    if frame.HasField("capture_time"):
        echo["capture_time"] = frame.capture_time
    return echo


def result_message(outcome: Outcome, model: ServedModel, echo: dict, residual_map: bool,
                   map_encoding: int = pb.MAP_ENCODING_PNG) -> pb.InspectionResult:
    """Domain outcome → InspectionResult."""
    result = pb.InspectionResult(
        provisional=not outcome.final,
        verdict=pb.VERDICT_FAIL if outcome.fail else pb.VERDICT_PASS,
        score=outcome.score, residual_score=outcome.residual, feature_score=outcome.feature,
        threshold=outcome.threshold, threshold_search_steps=outcome.threshold_steps,
        threshold_target_fpr=model.target_fpr,
        stage=STAGE_PB[outcome.stage], search_steps=outcome.steps,
        mode=MODE_PB[outcome.mode], tiles=outcome.tiles,
        tiles_searched=outcome.tiles_searched, **echo)
    result.queue_time.FromNanoseconds(int(outcome.queue_seconds * 1e9))
    result.compute_time.FromNanoseconds(int(outcome.compute_seconds * 1e9))
    if residual_map and outcome.final and outcome.residual_map is not None:
        height, width = outcome.residual_map.shape
        result.residual_map.CopyFrom(pb.ResidualMap(
            data=outcome.residual_map.astype("<f4").tobytes(), height=height, width=width))
    if residual_map and outcome.final and outcome.anomaly_map is not None:
        result.anomaly_map.CopyFrom(anomaly_map_message(outcome, model, map_encoding))
    return result


def anomaly_map_message(outcome: Outcome, model: ServedModel, encoding: int) -> pb.AnomalyMap:
    """The frame-sized map, as a PNG heat map or float16 values, with its regions."""
    values = outcome.anomaly_map
    height, width = values.shape
    message = pb.AnomalyMap(height=height, width=width, pixel_threshold=model.pixel_threshold,
                            regions=[pb.Region(top=r.top, left=r.left, height=r.height,
                                               width=r.width, peak=r.peak, area=r.area)
                                     for r in outcome.regions or []])
    if encoding == pb.MAP_ENCODING_FLOAT16:
        message.float16_data = values.astype("<f2").tobytes()
    else:
        scale = float(max(values.max(), 1e-6))
        message.png = encode_png((values / scale * 255 + 0.5).clip(0, 255).astype(np.uint8))
        message.png_scale = scale
    if outcome.reconstruction is not None:
        message.reconstruction_png = encode_png(
            (outcome.reconstruction * 255 + 0.5).clip(0, 255).astype(np.uint8))
    return message


def model_message(model: ServedModel) -> pb.Model:
    bundle = model.bundle
    message = pb.Model(
        name=model.name, version=bundle.version,
        format_version=bundle.manifest["format_version"], channels=bundle.channels,
        height=bundle.image_size, width=bundle.image_size, latent_dim=bundle.latent_dim,
        threshold=model.threshold, default_search_steps=model.search_config.steps,
        search_learning_rate=model.search_config.lr, has_encoder=bundle.has_encoder,
        modes=[MODE_PB[m] for m in model.modes], default_mode=MODE_PB[model.default_mode],
        device=model.device_text, feature_weight=model.search_config.lam,
        fast_threshold=model.fast_threshold, score_gap=model.score_gap,
        cascade_margin=CASCADE_MARGIN,
        calibrated_search_steps=bundle.search_config.steps,
        calibrated_search_learning_rate=bundle.search_config.lr,
        search_overridden=model.search_overridden,
        calibrated_budgets=sorted(model.thresholds),
        fast_path_backend=model.fast.backend if model.fast else "",
        search_precision=model.precision, search_slots=model.slots,
        search_cuda_graphs=model.cuda_graphs)
    if model.memory is not None:
        memory = model.memory
        message.memory.CopyFrom(pb.MemoryScorer(
            extractor=memory["extractor"], rows=memory["rows"], dim=memory["dim"],
            stride=memory["stride"], backend=model.memory_path.backend))
        message.fast_path_backend = model.memory_path.backend
    if model.tiling is not None:
        tiling = model.tiling
        message.tiling.CopyFrom(pb.Tiling(
            patch=tiling.patch, stride=tiling.stride, scale=tiling.scale,
            aggregate=tiling.aggregate, top_k=tiling.top_k,
            pixel_threshold=model.pixel_threshold))
    if "created" in bundle.manifest:
        message.create_time.FromJsonString(bundle.manifest["created"].replace("+00:00", "Z"))
    return message

