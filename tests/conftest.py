"""Session fixtures: a tiny bundle trained once per test run, and a real server serving it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clients.launcher import ServerProcess
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


@pytest.fixture(scope="session")
def server(tiny_bundle, tiny_bundle_no_encoder, tmp_path_factory):
    """One server for the session: 'tiny' (default, with encoder) and 'noenc' (without)."""
    proc = ServerProcess([f"tiny={tiny_bundle}", f"noenc={tiny_bundle_no_encoder}"],
                         tmp_path_factory.mktemp("server") / "server.log",
                         "--device", "cpu", "--max-batch", "32", cwd=ROOT)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The directory holding the console scripts (and grpcurl) of this environment."""
    return Path(sys.executable).parent

