"""What `anogan-serve` takes from its command line, without torch or gRPC.

The server's modules read these dataclasses (re-exported where they are used:
``models.EngineOptions``, ``frames.FrameLimits``, ``app.ServerConfig``); the command line
builds its parser and `--help` from them in a fraction of a second.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from anogan_inspect.configs import PARITY_TOLERANCE
from anogan_inspect.help_format import memory_bytes

if TYPE_CHECKING:
    import grpc

# What scores the fast path (server/fastpath.py), and the search's precisions
# (server/engine.py: PRECISIONS maps them to autocast dtypes).
BACKENDS = ("auto", "onnx", "torch")
PRECISION_NAMES = ("fp32", "bf16")
# --max-bytes-in-flight's default: this share of the machine's (or container's) memory,
# never below the floor (one 4096×4096 RGB frame decoded takes about 0.8 GB).
MEMORY_SHARE = 16
BYTES_FLOOR = 1 << 30


def default_bytes_in_flight() -> int:
    """1/MEMORY_SHARE of this machine's memory, at least BYTES_FLOOR (the floor alone
    where the memory cannot be read)."""
    return max(BYTES_FLOOR, (memory_bytes() or 0) // MEMORY_SHARE)


@dataclass
class EngineOptions:
    """Server-side search and batching options (the bundle supplies the defaults)."""

    device: str = "cpu"  # or "auto" (cuda when present), or several: "cuda:0,cuda:1"
    # Slots in the search engine; None: sized for the device (64 on a CPU; on a GPU the
    # smallest table within 10 % of the best frame-steps/s measured at load).
    max_batch: int | None = None
    fast_max_batch: int | None = None  # None: 64 on a CPU, 1024 on a GPU
    # The fast path's backend: "auto" (ONNX Runtime on a CPU or with its CUDA provider, else
    # the torch programs on the GPU), "onnx" or "torch".
    fast_backend: str = "auto"
    # The search's precision: "fp32", or "bf16" (autocast steps; each finished search is
    # re-scored in float32 at its best z and at its start, and keeps the lower).
    precision: str = "fp32"
    # Capture the search step as CUDA graphs at load (GPUs; one per bucket of active slots)
    # and replay them instead of launching its kernels from Python each step.
    cuda_graphs: bool = False
    search_steps: int | None = None
    search_lr: float | None = None
    patience: int | None = None
    ort_threads: int = 1  # 1 beat ORT's automatic pool on 2 cores (docs/performance.md)
    max_tiles: int = 65536  # tiled models: most tiles one frame may be cut into
    # Memory models: frames scored at once by the memory scorer, and its ONNX Runtime
    # threads (0: one per core; the memory scorer is a memory bundle's main work).
    memory_max_batch: int = 8
    memory_threads: int = 0
    max_search_steps: int = 10_000  # most search steps a client may ask for a frame
    parity_tolerance: float = PARITY_TOLERANCE
    # Refuse to start (instead of serving without CASCADE) when the fast path as served
    # strays from the torch scores by more than the cascade's margin.
    require_exact_cascade: bool = False
    # A search budget the bundle has no threshold for: "refuse" it (per frame, and at start
    # for the server's own --steps) or judge it by the "nearest" calibrated budget's.
    uncalibrated_steps: str = "refuse"
    seed: int = 0


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on what one frame may carry."""

    max_pixels: int = 4096 * 4096
    # Longest a frame's scoring may take (0: no limit); past it the frame's result is
    # DEADLINE_EXCEEDED and its searches leave their slots.
    max_seconds: float = 300.0
    # Server-wide: frames being scored at once, and the bytes their model inputs hold (a
    # tiled frame's tiles); past either, a frame gets RESOURCE_EXHAUSTED, never an OOM.
    max_frames_in_flight: int = 16384
    max_bytes_in_flight: int = field(default_factory=default_bytes_in_flight)


@dataclass
class ServerConfig:
    """Everything `anogan-serve` takes from its command line."""

    bundles: list[tuple[str | None, Path]]
    host: str = "[::]"
    port: int = 50051
    engine: EngineOptions = field(default_factory=EngineOptions)
    limits: FrameLimits = field(default_factory=FrameLimits)
    max_message_bytes: int = 64 * 1024 * 1024
    # Frames one stream has sent and not yet had answered (a result counts until gRPC
    # has taken it): past it the stream is not read (flow control).
    stream_window: int = 256
    grace_seconds: float = 30.0
    drain_delay_seconds: float = 1.0  # NOT_SERVING, still serving, before refusing frames
    port_file: Path | None = None  # written once listening (useful with port 0)
    tls: TlsConfig | None = None  # None: plain text
    auth_tokens: Path | None = None  # bearer tokens, one a line (None: no authentication)
    open_reflection: bool = False  # with tokens: serve reflection without one
    # Share the port with other processes (SO_REUSEPORT): --workers only, so that a second
    # server started on a taken port by mistake fails instead of taking half its calls.
    reuse_port: bool = False
    worker: int = 0  # this process's index among --workers (reported by GetServerStats)
    metrics_port: int | None = None  # Prometheus /metrics (None: off; 0: a free port)
    metrics_host: str | None = None  # None: host's (plain HTTP, no token)
    # Close each connection after this long (GOAWAY: its calls go on, new ones go to a new
    # connection, and the client resolves its target again). None: never.
    max_connection_age: float | None = None
    # End a stream after this long with UNAVAILABLE, once its frames read are answered
    # (a client with --resend opens a new one, possibly on another replica). None: never.
    max_stream_age: float | None = None
    models_dir: Path | None = None  # bundles followed while serving (server/models_dir.py)
    models_poll: float = 5.0  # s between reads of models_dir
    # Operators' verdicts (server/learning.py): the admin tokens (None: learning off), the
    # audit log (None: models_dir/.audit.jsonl), GOOD frames that make a new version (0:
    # CommitLearning only), frames kept for a verdict to name by id, and the share of the
    # kept DEFECT frames every new version must fail (None: no floor).
    admin_tokens: Path | None = None
    audit_log: Path | None = None
    learn_after: int = 50
    recent_frames: int = 256
    recall_floor: float | None = None

    @property
    def metrics_address(self) -> str:
        """Where /metrics listens: --metrics-host, else --host (plain HTTP, no token)."""
        return self.metrics_host or self.host


@dataclass(frozen=True)
class TlsConfig:
    """PEM files for TLS; with `client_ca`, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials; ValueError naming the file that cannot be read."""
        import grpc

        def read(path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError as err:
                raise ValueError(f"cannot read TLS file {path}: {err.strerror}") from err

        key, cert = read(self.key), read(self.cert)
        client_ca = read(self.client_ca) if self.client_ca else None
        self._check()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca,
            require_client_auth=self.client_ca is not None)

    def _check(self) -> None:
        """What gRPC would only say as "Failed to bind to address" once the models are
        loaded: a key that is not the certificate's, or files that are not PEM."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as err:
            raise ValueError(f"TLS certificate {self.cert} and key {self.key} do not go "
                             f"together, or are not PEM ({err.reason or err})") from err
        if self.client_ca:
            try:
                context.load_verify_locations(self.client_ca)
            except ssl.SSLError as err:
                raise ValueError(f"cannot use TLS client CA {self.client_ca}: "
                                 f"{err.reason or err}") from err
