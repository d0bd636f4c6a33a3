"""`anogan-serve`: serve one or more bundles over gRPC (health and reflection included)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import sys
from pathlib import Path

from anogan_inspect.help_format import HelpFormatter, format_bytes, parse_bytes
from anogan_inspect.server.options import (
    BACKENDS,
    BYTES_FLOOR,
    MEMORY_SHARE,
    PRECISION_NAMES,
    EngineOptions,
    FrameLimits,
    ServerConfig,
    TlsConfig,
)
from anogan_inspect.server.workers import Worker, check_ports, run_workers


def parse_bundle(text: str) -> tuple[str | None, Path]:
    """'PATH' or 'NAME=PATH'."""
    name, sep, path = text.partition("=")
    return (name, Path(path)) if sep else (None, Path(text))


def _number(kind: type = int, minimum: float = 1, above: bool = False):
    """An argparse type: an int (or float) of at least `minimum` (above it, with `above`),
    so that a value that would hang or spin the server is refused at the command line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or not (value > minimum if above else value >= minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if above else 'at least'} {minimum}, got {text}")
        return value
    return parse


COUNT, COUNT_OR_ZERO = _number(int, 1), _number(int, 0)
NON_NEGATIVE, POSITIVE = _number(float, 0), _number(float, 0, above=True)


def _slots(text: str) -> int | None:
    """'auto' (None: sized for the device) or a positive count."""
    return None if text == "auto" else COUNT(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anogan-serve", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, gRPC core's log included")
    models = parser.add_argument_group("models")
    models.add_argument("--bundle", action="append", type=parse_bundle, default=[],
                        metavar="[NAME=]PATH",
                        help="bundle to serve (repeat; the first is the default); needed "
                             "unless --models-dir is given")
    models.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="also serve every bundle in DIR (a subfolder with a "
                             "manifest.json; named after the subfolder), and follow it while "
                             "serving: a changed manifest loads and verifies the new version "
                             "beside the old, then new calls get it (open streams finish on "
                             "theirs); a removed folder stops being served")
    models.add_argument("--models-poll", type=POSITIVE, default=ServerConfig.models_poll,
                        metavar="SECONDS", help="how often --models-dir is read again")
    models.add_argument("--parity-tolerance", type=NON_NEGATIVE, metavar="X",
                        default=EngineOptions.parity_tolerance,
                        help="at load: largest ONNX-vs-torch difference per network output "
                             "element on random inputs before the bundle is refused (the "
                             "exporter's check, one constant)")
    models.add_argument("--require-exact-cascade", action="store_true",
                        help="refuse a model whose fast path, as served, strays from the "
                             "torch scores by the cascade's margin or more (default: serve "
                             "it without CASCADE)")

    listening = parser.add_argument_group("listening")
    listening.add_argument("--host", default=ServerConfig.host,
                           help="address to listen on ([::] is every interface, 127.0.0.1 "
                                "this machine only)")
    listening.add_argument("--port", type=COUNT_OR_ZERO, default=ServerConfig.port,
                           help="0 picks a free port")
    listening.add_argument("--port-file", type=Path, metavar="FILE",
                           help="write the bound port here once listening (for --port 0)")
    listening.add_argument("--workers", type=COUNT, default=1, metavar="N",
                           help="server processes sharing the port (SO_REUSEPORT), each with "
                                "its own models and engine on the device; the kernel spreads "
                                "connections across them, so a client needs several "
                                "connections to use several")
    listening.add_argument("--max-connection-age", type=POSITIVE, metavar="SECONDS",
                           help="close each client connection after this long (its calls go "
                                "on; new calls open a new connection, resolving the target "
                                "again, so clients find replicas added since) "
                                "(default: never)")
    listening.add_argument("--max-stream-age", type=POSITIVE, metavar="SECONDS",
                           help="end a stream after this long with UNAVAILABLE, once the "
                                "frames it sent are answered (a client with --resend opens a "
                                "new one, on whichever replica its balancing picks) "
                                "(default: never)")

    security = parser.add_argument_group(
        "security", "plain text without tokens unless these are given (docs/operations.md)")
    security.add_argument("--tls-cert", type=Path, metavar="PEM",
                          help="serve TLS with this certificate chain (needs --tls-key)")
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    security.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                          help="require client certificates signed by this CA (mutual TLS)")
    security.add_argument("--auth-token-file", type=Path, metavar="FILE",
                          help="require `authorization: Bearer <token>` metadata naming one "
                               "of this file's tokens (one a line) on every RPC but health; "
                               "SIGHUP rereads it")
    security.add_argument("--open-reflection", action="store_true",
                          help="with --auth-token-file: serve reflection without a token")

    learning = parser.add_argument_group(
        "learning", "operators' verdicts teach memory models served from --models-dir "
                    "(Feedback, CommitLearning, Rollback; docs/textures.md)")
    learning.add_argument("--admin-token-file", type=Path, metavar="FILE",
                          help="tokens (one a line) that may call Feedback, CommitLearning "
                               "and Rollback (a streaming token alone: PERMISSION_DENIED); "
                               "without it learning is off")
    learning.add_argument("--audit-log", type=Path, metavar="FILE",
                          help="append every accepted admin call here, one JSON line "
                               "(default: DIR/.audit.jsonl of --models-dir)")
    learning.add_argument("--learn-after", type=COUNT_OR_ZERO, default=ServerConfig.learn_after,
                          metavar="FRAMES",
                          help="GOOD frames collected that make a new version, served at once "
                               "(0: on CommitLearning only)")
    learning.add_argument("--recent-frames", type=COUNT, default=ServerConfig.recent_frames,
                          metavar="FRAMES",
                          help="scored frames kept for a verdict to name by frame id (256 MiB "
                               "of them at most)")
    learning.add_argument("--recall-floor", type=NON_NEGATIVE, metavar="SHARE",
                          help="write no version that fails fewer of the kept DEFECT frames "
                               "than this share (default: no floor)")

    limits = parser.add_argument_group(
        "limits", "what one client may ask of the server; past a limit a frame gets an "
                  "error result (its stream goes on), never an out-of-memory")
    limits.add_argument("--stream-window", type=COUNT, default=ServerConfig.stream_window,
                        metavar="FRAMES",
                        help="frames one stream may have sent and not yet been answered (a "
                             "result counts until gRPC has taken it); the stream is not read "
                             "beyond it (flow control), and a larger FrameBatch gets "
                             "RESOURCE_EXHAUSTED")
    limits.add_argument("--max-frames-in-flight", type=COUNT,
                        default=FrameLimits.max_frames_in_flight, metavar="FRAMES",
                        help="frames being scored at once, all streams together (more: "
                             "RESOURCE_EXHAUSTED for the frame)")
    limits.add_argument("--max-bytes-in-flight", type=parse_bytes, metavar="SIZE",
                        help="bytes the frames being decoded (about 4 float32 copies of "
                             "their pixels) and the model inputs of those being scored may "
                             "hold, all streams together (more: RESOURCE_EXHAUSTED for the "
                             "frame, before decoding it); sizes like 2GiB or 512MB (default: "
                             f"1/{MEMORY_SHARE} of this machine's memory, at least "
                             f"{format_bytes(BYTES_FLOOR)}: "
                             f"{format_bytes(FrameLimits().max_bytes_in_flight)} here)")
    limits.add_argument("--max-message-bytes", type=parse_bytes,
                        default=ServerConfig.max_message_bytes, metavar="SIZE",
                        help="largest gRPC message received or sent")
    limits.add_argument("--max-pixels", type=COUNT, default=FrameLimits.max_pixels,
                        metavar="PIXELS",
                        help="largest frame accepted, height × width (larger: a per-frame "
                             "INVALID_ARGUMENT)")
    limits.add_argument("--max-frame-seconds", type=NON_NEGATIVE,
                        default=FrameLimits.max_seconds, metavar="SECONDS",
                        help="longest a frame's scoring may take (0: no limit); past it "
                             "the frame's result is DEADLINE_EXCEEDED and its slots are freed")
    limits.add_argument("--max-search-steps", type=COUNT, metavar="STEPS",
                        default=EngineOptions.max_search_steps,
                        help="most search steps a stream may ask for a frame (more: "
                             "INVALID_ARGUMENT when the stream or call starts)")
    limits.add_argument("--max-tiles", type=COUNT, default=EngineOptions.max_tiles, metavar="TILES",
                        help="tiled models: most tiles one frame may be cut into (more: a "
                             "per-frame INVALID_ARGUMENT)")

    search = parser.add_argument_group("search", "the latent search (the bundle's by default)")
    search.add_argument("--steps", type=COUNT, metavar="N",
                        help="search steps (default: the bundle's)")
    search.add_argument("--search-lr", type=POSITIVE, metavar="LR",
                        help="search learning rate (default: the bundle's)")
    search.add_argument("--patience", type=COUNT_OR_ZERO, metavar="STEPS",
                        help="early stopping: steps without improvement, 0: off "
                             "(default: the bundle's)")
    search.add_argument("--uncalibrated-steps", choices=("refuse", "nearest"),
                        default=EngineOptions.uncalibrated_steps,
                        help="a search budget the bundle has no threshold for: refuse it "
                             "(INVALID_ARGUMENT per frame; the server's own --steps at start) "
                             "or judge it by the nearest calibrated budget's threshold")

    tuning = parser.add_argument_group("device and tuning")
    tuning.add_argument("--device", default="auto",
                        help="where the torch models live: cpu, cuda, cuda:N, or auto (cuda "
                             "when present); several, comma-separated (cuda:0,cuda:1): one "
                             "search engine and fast path per device, frames spread across "
                             "them")
    tuning.add_argument("--max-batch", type=_slots, default="auto", metavar="SLOTS",
                        help="search engine slots: searches batched in one step; auto: 64 "
                             "on a CPU, on a GPU the smallest table within 10 %% of the best "
                             "frame-steps/s measured at load")
    tuning.add_argument("--fast-max-batch", type=_slots, default="auto", metavar="FRAMES",
                        help="largest fast-path batch (frames scored in one pass); auto: 64 "
                             "on a CPU, 1024 on a GPU")
    tuning.add_argument("--fast-backend", choices=BACKENDS, default=EngineOptions.fast_backend,
                        help="what scores the fast path: ONNX Runtime, or the bundle's torch "
                             "programs on the model's device; auto: ONNX Runtime on a CPU or "
                             "with its CUDA provider installed, else torch on the GPU")
    tuning.add_argument("--ort-threads", type=COUNT_OR_ZERO, default=EngineOptions.ort_threads,
                        metavar="N",
                        help="ONNX Runtime intra-op threads (0: one per core)")
    tuning.add_argument("--torch-threads", type=COUNT, metavar="N",
                        help="torch intra-op threads (default: torch's, one per core)")
    tuning.add_argument("--memory-threads", type=COUNT_OR_ZERO, metavar="N",
                        default=EngineOptions.memory_threads,
                        help="memory models: ONNX Runtime threads of the memory scorer "
                             "(0: one per core)")
    tuning.add_argument("--memory-max-batch", type=COUNT, metavar="FRAMES",
                        default=EngineOptions.memory_max_batch,
                        help="memory models: frames the memory scorer takes at once")

    gpu = parser.add_argument_group("GPU")
    gpu.add_argument("--precision", choices=PRECISION_NAMES, default=EngineOptions.precision,
                     help="the search's steps in float32, or bf16 autocast (GPUs); scores "
                          "stay float32 evaluations either way, so the cascade stays exact "
                          "(docs/design.md)")
    gpu.add_argument("--cuda-graphs", action="store_true",
                     help="capture the search step as CUDA graphs at load (one per bucket of "
                          "active slots: the slot count, halved down to 32) and replay them; "
                          "GetModel's search_cuda_graphs says whether they were captured. "
                          "Scores as without them (docs/design.md)")

    shutdown = parser.add_argument_group("shutdown", "on SIGTERM (or Ctrl-C)")
    shutdown.add_argument("--drain-delay", type=NON_NEGATIVE,
                          default=ServerConfig.drain_delay_seconds, metavar="SECONDS",
                          help="report NOT_SERVING but keep serving this long")
    shutdown.add_argument("--grace", type=NON_NEGATIVE, default=ServerConfig.grace_seconds,
                          metavar="SECONDS",
                          help="then, how long frames in flight may take to finish")

    observability = parser.add_argument_group("metrics")
    observability.add_argument(
        "--metrics-port", type=COUNT_OR_ZERO, metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics: plain HTTP and "
             "UNAUTHENTICATED, even with --auth-token-file (counters and scores, never "
             "frames); with --workers, worker i on PORT + i; 0 picks a free port (logged) "
             "(default: off)")
    observability.add_argument(
        "--metrics-host", metavar="HOST",
        help="address the metrics listen on (default: --host's)")
    return parser


def config_from_args(args) -> ServerConfig:
    if (args.tls_cert is None) != (args.tls_key is None) or \
            (args.tls_client_ca and not args.tls_cert):
        raise ValueError("TLS needs --tls-cert and --tls-key together "
                         "(and both for --tls-client-ca)")
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    engine = EngineOptions(device=args.device, max_batch=args.max_batch,
                           fast_max_batch=args.fast_max_batch, search_steps=args.steps,
                           fast_backend=args.fast_backend, precision=args.precision,
                           cuda_graphs=args.cuda_graphs,
                           search_lr=args.search_lr, patience=args.patience,
                           ort_threads=args.ort_threads, parity_tolerance=args.parity_tolerance,
                           require_exact_cascade=args.require_exact_cascade,
                           uncalibrated_steps=args.uncalibrated_steps,
                           max_tiles=args.max_tiles, max_search_steps=args.max_search_steps,
                           memory_threads=args.memory_threads,
                           memory_max_batch=args.memory_max_batch)
    if not args.bundle and not args.models_dir:
        raise ValueError("nothing to serve: pass --bundle PATH or --models-dir DIR")
    if args.admin_token_file and not args.models_dir:
        raise ValueError("--admin-token-file needs --models-dir: a learnt version is written "
                         "and served there")
    limits = {"max_bytes_in_flight": args.max_bytes_in_flight} \
        if args.max_bytes_in_flight is not None else {}
    return ServerConfig(bundles=args.bundle, host=args.host, port=args.port, engine=engine,
                        models_dir=args.models_dir, models_poll=args.models_poll,
                        limits=FrameLimits(max_pixels=args.max_pixels,
                                           max_seconds=args.max_frame_seconds,
                                           max_frames_in_flight=args.max_frames_in_flight,
                                           **limits),
                        max_message_bytes=args.max_message_bytes,
                        stream_window=args.stream_window, grace_seconds=args.grace,
                        drain_delay_seconds=args.drain_delay,
                        port_file=args.port_file, tls=tls,
                        auth_tokens=args.auth_token_file,
                        open_reflection=args.open_reflection,
                        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                        max_connection_age=args.max_connection_age,
                        max_stream_age=args.max_stream_age,
                        admin_tokens=args.admin_token_file, audit_log=args.audit_log,
                        learn_after=args.learn_after, recent_frames=args.recent_frames,
                        recall_floor=args.recall_floor)


def main(argv: list[str] | None = None, module: str = "anogan_inspect.server") -> int:
    """`anogan-serve`; `module`: the entry point --workers starts N of (the benchmarks'
    echo server passes its own)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    worker = Worker.from_env()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s " + (
                            f"worker {worker.index} " if worker else "") + "%(name)s: "
                               "%(message)s")
    if not args.verbose:  # gRPC core's own log lines (read when gRPC starts), unless asked
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        config = config_from_args(args)
        if not worker:  # a taken port: one line now, not after importing torch
            check_ports(config)
    except ValueError as err:
        print(f"anogan-serve: error: {err}", file=sys.stderr)
        return 2
    # torch and gRPC, once the command line is read (--help without them: well under 1 s)
    from anogan_inspect.bundle import BundleError
    from anogan_inspect.server.app import check_files, serve

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        if worker:  # one of --workers N: the supervisor chose the port
            metrics = config.metrics_port and config.metrics_port + worker.index
            config = dataclasses.replace(config, port=worker.port, port_file=worker.port_file,
                                         reuse_port=True, worker=worker.index,
                                         metrics_port=metrics)
        elif args.workers > 1:
            check_files(config)  # once, before N processes load models
            return run_workers(argv, config.host, config.port, args.workers, config.port_file,
                               module)
        return asyncio.run(serve(config))
    except (BundleError, ValueError, FileNotFoundError) as err:
        print(f"anogan-serve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
