"""Process wiring: load models, start grpc.aio with health and reflection, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.server.auth import TokenInterceptor, TokenStore
from anogan_inspect.server.learning import Learning
from anogan_inspect.server.models import ServedModel, load_model
from anogan_inspect.server.models_dir import ModelsWatcher, load_folder
from anogan_inspect.server.monitoring import Metrics
from anogan_inspect.server.options import (  # noqa: F401 (re-exported)
    ServerConfig,
    TlsConfig,
)
from anogan_inspect.server.reflection import ReflectionServicer
from anogan_inspect.server.service import InspectionService, ParseErrors
from anogan_inspect.server.workers import check_ports, write_port_file

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InspectionService"].full_name


def load_models(config: ServerConfig) -> dict[str, ServedModel]:
    """Load and verify every bundle, --bundle's then --models-dir's (BundleError on the
    first that fails)."""
    models: dict[str, ServedModel] = {}
    loaded = [load_model(path, config.engine, name) for name, path in config.bundles]
    if config.models_dir:
        loaded += load_folder(config.models_dir, config.engine).values()
    for model in loaded:
        if model.name in models:
            raise ValueError(f"two bundles are named {model.name!r}: use NAME=PATH, or "
                             "rename the --models-dir folder")
        models[model.name] = model
    if not models:
        raise ValueError(f"nothing to serve: --models-dir {config.models_dir} has no bundle "
                         "(a subfolder with a manifest.json)")
    return models


class InspectionServer:
    """A running server: start(), then wait(); drain() on SIGTERM."""

    def __init__(self, config: ServerConfig, models: dict[str, ServedModel],
                 credentials: grpc.ServerCredentials | None = None,
                 tokens: TokenStore | None = None):
        """credentials: config.tls's, read by the caller (None: plain text); tokens:
        config.auth_tokens's, read by the caller (None: no authentication)."""
        self.config, self.models, self.tokens = config, models, tokens
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", int(config.reuse_port))]
        if config.max_connection_age:  # no grace limit: gRPC would reset the streams
            # still open then (INTERNAL at the client); --max-stream-age ends them instead
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)))
        admin = TokenStore(config.admin_tokens) if config.admin_tokens else None
        interceptors = [TokenInterceptor(tokens, config.open_reflection, admin)] if tokens \
            else []
        interceptors.append(ParseErrors())
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.service = InspectionService(models, next(iter(models)), config.limits,
                                         config.stream_window, config.worker,
                                         config.max_stream_age, config.max_message_bytes)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else \
            health.HealthServicer()
        pb_grpc.add_InspectionServiceServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        ReflectionServicer((SERVICE_NAME, health.SERVICE_NAME)).add_to(self.server)
        address = f"{config.host}:{config.port}"
        try:
            self.port = (self.server.add_secure_port(address, credentials)
                         if credentials else self.server.add_insecure_port(address))
        except RuntimeError as err:  # grpc's "Failed to bind to address ..."
            raise ValueError(f"cannot listen on {address}: {err}") from err
        self.metrics = Metrics(self.service, models) if config.metrics_port is not None \
            else None
        self.service.metrics = self.metrics
        if admin is not None:
            self.service.learning = Learning(
                self.service, admin, config.audit_log or config.models_dir / ".audit.jsonl",
                config.models_dir, config.learn_after, config.recent_frames,
                config.recall_floor)
        self.metrics_port: int | None = None  # bound at start()
        self.watcher = ModelsWatcher(self.service, config.models_dir, config.engine,
                                     config.models_poll) if config.models_dir else None
        self._stopped = asyncio.Event()
        self._draining = False

    async def start(self) -> InspectionServer:
        for model in self.models.values():
            model.start()
        await self.server.start()
        if self.metrics is not None:
            host = self.config.metrics_address
            try:
                self.metrics_port = self.metrics.serve(host, self.config.metrics_port)
            except OSError as err:
                raise ValueError(f"cannot serve metrics on port {self.config.metrics_port}: "
                                 f"{err.strerror}") from err
            log.info("metrics on http://%s:%d/metrics (plain HTTP, no token)", host,
                     self.metrics_port)
            if not _loopback(host):
                log.warning("metrics on %s are unauthenticated: anyone who reaches port %d "
                            "reads the counters and score histograms (never frames); pass "
                            "--metrics-host 127.0.0.1 to keep them on this machine", host,
                            self.metrics_port)
        if self.watcher:
            self.watcher.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s:%d, %s, %s (models: %s)", self.config.host, self.port,
                 "TLS" + (" with client certificates" if self.config.tls.client_ca else "")
                 if self.config.tls else "plain text",
                 "bearer tokens required" if self.tokens else "no authentication",
                 ", ".join(f"{m.name} on {m.device_text}" for m in self.models.values()))
        if not self.config.tls and not self.tokens and not _loopback(self.config.host):
            log.warning("listening on %s in plain text without tokens: anyone who reaches "
                        "port %d can inspect frames and read the models; pass "
                        "--auth-token-file (and --tls-cert/--tls-key), or --host localhost",
                        self.config.host, self.port)
        if self.config.port_file:
            write_port_file(self.config.port_file, self.port)
        return self

    async def drain(self) -> None:
        """Report NOT_SERVING and keep serving for the drain delay (load balancers and
        clients move away), then refuse new frames, let frames in flight finish within the
        grace period, and stop."""
        if self._draining:
            return
        self._draining = True
        log.info("draining (health NOT_SERVING for %.1f s, then grace %.0f s)",
                 self.config.drain_delay_seconds, self.config.grace_seconds)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.watcher:  # the versions serving now see the drain through
            self.watcher.stop_watching()
        await asyncio.sleep(self.config.drain_delay_seconds)
        self.service.start_draining()
        if not await self.service.wait_idle(self.config.grace_seconds):
            log.warning("grace period over: cancelling the calls still in progress")
        # Ends what is left at once: health Watch streams (clients' health checks hold one
        # open for as long as they are connected) and any call past the grace period.
        await self.server.stop(0)
        if self.watcher:  # replaced versions that open streams held until now
            await self.watcher.stop()
        for model in self.models.values():
            model.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            result = self.health.set(service, status)
            if asyncio.iscoroutine(result):
                await result


def check_files(config: ServerConfig) -> tuple[grpc.ServerCredentials | None,
                                                TokenStore | None]:
    """The TLS credentials and tokens, read now: unreadable or mismatched files fail
    before any model loads (ValueError naming the file)."""
    credentials = config.tls.credentials() if config.tls else None
    tokens = TokenStore(config.auth_tokens) if config.auth_tokens else None
    if config.admin_tokens:  # read again by the server; a bad file fails here first
        TokenStore(config.admin_tokens)
    folder = config.port_file.parent if config.port_file else None
    if folder and not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise ValueError(f"--port-file {config.port_file}: {folder} is not a folder this "
                         "process can write to")
    if not config.reuse_port:  # --workers' processes share the port their supervisor chose
        check_ports(config)
    return credentials, tokens


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain and return 0; SIGHUP rereads the tokens (and
    never stops the server: anogan-serve's entry, server/__main__.py, ignores it until this
    handler is in place)."""
    credentials, tokens = check_files(config)
    models = load_models(config)
    server = await InspectionServer(config, models, credentials, tokens).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.drain()))
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_tokens(tokens) if tokens else
                            log.info("SIGHUP: no --auth-token-file to reread; serving on"))
    await server.wait()
    return 0


def reload_tokens(tokens: TokenStore) -> None:
    """SIGHUP: reread the token file; a file that cannot be used keeps the tokens held."""
    try:
        log.info("reloaded %d token(s) from %s", tokens.reload(), tokens.path)
    except ValueError as err:
        log.error("%s: keeping the %d token(s) loaded before", err, len(tokens))


def _loopback(host: str) -> bool:
    return host.strip("[]") in ("localhost", "127.0.0.1", "::1")
