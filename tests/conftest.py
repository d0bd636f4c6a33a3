"""Session fixtures: a tiny bundle trained once per test run, and a real server serving it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from trainer.cli import main as train_main

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CSV = ROOT / "data" / "mnist_train.csv.gz"
TEST_CSV = ROOT / "data" / "mnist_test.csv.gz"
TINY_STEPS = 10


def train_tiny(out: Path, *extra: str) -> Path:
    """Train the 16×16 'tiny' preset on MNIST 7/8 for a few epochs and export a bundle."""
    code = train_main(["train", "--data", str(TRAIN_CSV), "--normal-labels", "7,8",
                       "--preset", "tiny", "--epochs", "3", "--encoder-epochs", "3",
                       "--steps", str(TINY_STEPS), "--out", str(out),
                       "--run-dir", str(out.parent / f"run-{out.name}"), "--device", "cpu",
                       *extra])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def tiny_bundle_no_encoder(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("bundles") / "noenc", "--no-encoder")


class ServerProcess:
    """`anogan-serve` in a subprocess on an ephemeral port."""

    def __init__(self, bundles: list[str], log_path: Path, *extra: str):
        port_file = log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file),
             "--device", "cpu", *sum((["--bundle", b] for b in bundles), []), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        self.target = f"localhost:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drain), then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.fixture(scope="session")
def server(tiny_bundle, tiny_bundle_no_encoder, tmp_path_factory):
    """One server for the session: 'tiny' (default, with encoder) and 'noenc' (without)."""
    proc = ServerProcess([f"tiny={tiny_bundle}", f"noenc={tiny_bundle_no_encoder}"],
                         tmp_path_factory.mktemp("server") / "server.log",
                         "--max-batch", "32")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The directory holding the console scripts (and grpcurl) of this environment."""
    return Path(sys.executable).parent

