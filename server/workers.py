"""`anogan-serve --workers N`: N server processes on one port, for more gRPC than one
Python process carries.

One process's event loop caps what it can receive, decode and answer (docs/design.md, "The
gRPC ceiling"); the GPU runs far more. So the supervisor started by `anogan-serve` starts N
copies of itself, each a whole server (models, engine, fast path, health) that binds the
same port with SO_REUSEPORT: the kernel spreads incoming connections across them (a
connection stays with one worker; a client needs several connections to use several).
The supervisor forwards SIGTERM, SIGINT and SIGHUP to every worker, writes --port-file
once all listen, and when one worker exits, drains the others and exits with the worst
code. Each worker keeps its own counters (GetServerStats answers for the worker the call
reached).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
WORKER_ENV = "ANOGAN_SERVE_WORKER"  # set in a worker: its index, port and port file


@dataclass(frozen=True)
class Worker:
    """What a worker process takes from the supervisor instead of its command line."""

    index: int
    port: int
    port_file: Path

    @classmethod
    def from_env(cls) -> Worker | None:
        text = os.environ.get(WORKER_ENV)
        if not text:
            return None
        fields = json.loads(text)
        return cls(fields["index"], fields["port"], Path(fields["port_file"]))

    def env(self) -> dict[str, str]:
        return {**os.environ, WORKER_ENV: json.dumps(
            {"index": self.index, "port": self.port, "port_file": str(self.port_file)})}


def write_port_file(path: Path, port: int) -> None:
    """The port, written whole or not at all, for whoever polls the file (a worker's, for
    its supervisor; --port-file, for scripts and tests)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)


def run_workers(argv: list[str], host: str, port: int, workers: int,
                port_file: Path | None, module: str = "anogan_inspect.server",
                start_timeout: float = 600.0) -> int:
    """Start `workers` copies of `python -m module argv` on one port; return the worst
    exit code."""
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="anogan-workers-") as tmp:
        specs = [Worker(i, port, Path(tmp) / f"port-{i}") for i in range(workers)]
        procs: list[subprocess.Popen] = []  # the handlers below forward to those started

        stopping: set[int] = set()  # workers told to drain: a second SIGTERM, arriving
        # after a worker's drain removed its handler, would kill it

        def forward(signum, _frame) -> None:
            for proc, spec in zip(procs, specs):
                if proc.poll() is not None:
                    continue
                if signum == signal.SIGHUP:
                    # Only to workers serving: one whose interpreter has not yet reached
                    # its first lines (which ignore SIGHUP) would die of it.
                    if spec.port_file.exists():
                        proc.send_signal(signum)
                elif proc.pid not in stopping:
                    proc.send_signal(signum)
                    stopping.add(proc.pid)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        try:
            for spec in specs:  # after the handlers: a SIGTERM now reaches every worker
                procs.append(subprocess.Popen([sys.executable, "-m", module, *argv],
                                              env=spec.env()))
            deadline = time.monotonic() + start_timeout
            while not all(spec.port_file.exists() for spec in specs):
                if any(proc.poll() is not None for proc in procs) or \
                        time.monotonic() > deadline:
                    log.error("a worker did not start: stopping the others")
                    forward(signal.SIGTERM, None)
                    return max(_wait(procs), 2)
                time.sleep(0.1)
            log.info("%d workers listening on %s:%d", workers, host, port)
            if port_file:
                write_port_file(port_file, port)
            pid, status = os.wait()  # the first worker to end (on a signal, or on its own)
            for proc in procs:
                if proc.pid == pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:  # the supervisor failing must not leave workers serving
            forward(signal.SIGTERM, None)
            _wait(procs)
            raise
        forward(signal.SIGTERM, None)
        return _wait(procs)


def _wait(procs: list[subprocess.Popen]) -> int:
    return max(abs(proc.wait()) for proc in procs)


def free_port(host: str) -> int:
    """A port no one listens on now, for workers asked for port 0."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address[:2] if family == socket.AF_INET else address)
        return probe.getsockname()[1]


def check_ports(config) -> None:
    """The server's port and its metrics port (a ServerConfig's), free to listen on."""
    check_port(config.host, config.port, "--port")
    if config.metrics_port:
        check_port(config.metrics_address, config.metrics_port, "--metrics-port")


def check_port(host: str, port: int, option: str) -> None:
    """A port something already listens on fails now, in one line, before any model
    loads (gRPC would say it only after loading them, in its core's log). A trial bind,
    released at once; port 0 (any free port) always passes."""
    if port == 0:
        return
    address = host.strip("[]") or None
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ValueError(f"cannot listen on {host}: {err.strerror}") from err
    with socket.socket(family, kind, proto) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's own
        try:
            trial.bind(where)
        except OSError as err:
            hint = ("another process listens on it (another anogan-serve?): stop it, or "
                    f"pick another {option} (0: any free port)"
                    if err.errno == errno.EADDRINUSE else err.strerror)
            raise ValueError(f"cannot listen on {host}:{port}: {hint}") from err
