"""Start `anogan-serve` on an ephemeral port and stop it by draining (SIGTERM).

One launcher for everything that needs a real server of its own: the demo, the tests'
fixtures and the server benchmark.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc


class ServerProcess:
    """`python -m anogan_inspect.server --port 0` serving `bundles` ('PATH' or
    'NAME=PATH'); its output goes to log_path. `module`: another entry point taking the same
    arguments (the benchmarks' echo server)."""

    def __init__(self, bundles: list[str], log_path: Path, *extra: str,
                 start_timeout: float = 180.0, cwd: Path | None = None,
                 module: str = "anogan_inspect.server", host: str | None = None,
                 port: int = 0):
        """host: --host (None: the server's default, every interface); port: 0, any free."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        port_file = log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        self.log_path = log_path
        self._terminated = False
        self._log = open(log_path, "w")
        bundle_args = [arg for bundle in bundles for arg in ("--bundle", str(bundle))]
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port),
             *(["--host", host] if host else []),
             "--port-file", str(port_file), *bundle_args, *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)
        self.port = self._wait_for_port(port_file, start_timeout)
        self.target = f"{client_host(host)}:{self.port}"

    def _wait_for_port(self, port_file: Path, timeout: float) -> int:
        """The port the server wrote once listening; RuntimeError (with its log) otherwise."""
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(timeout=10)
                raise RuntimeError(f"the server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        port = int(port_file.read_text())
        port_file.unlink()
        return port

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def terminate(self) -> None:
        """SIGTERM, once: the server drains (`anogan-serve --drain-delay/--grace`). A second
        could arrive after the server has finished and removed its handler, and kill it."""
        if self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM (the server drains), wait, and return its exit status (kill if stuck)."""
        try:
            self.terminate()
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()


def client_host(host: str | None) -> str:
    """Where a client on this machine reaches a server listening on `host`: localhost for
    every interface ([::], 0.0.0.0) or none given, else the address itself."""
    if host is None or host.strip("[]") in ("", "::", "0.0.0.0"):
        return "localhost"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
