"""Session fixtures: tiny bundles trained once per test run, and a real server serving them.

`make test` runs the suite on two processes (pytest-xdist): each bundle is still trained
once per run, by the first process that needs it, while the other waits for it (a file
lock in the run's shared temporary folder); each process starts its own server.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import grpc
import pytest
import torch
from filelock import FileLock

from anogan_inspect.server.app import InspectionServer, ServerConfig, load_models
from anogan_inspect.server.auth import TokenStore
from anogan_inspect.server.cli import parse_bundle
from anogan_inspect.server.models import EngineOptions
from anogan_inspect.trainer.cli import main as train_main
from bench.texture_data import write_benchmark

ROOT = Path(__file__).resolve().parent.parent
if "PYTEST_XDIST_WORKER" in os.environ:  # two test processes on the machine's cores: one
    torch.set_num_threads(1)  # torch thread each, not one per core each
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


def once_per_run(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)`'s result, made once for the whole run: in the run's shared temporary
    folder under a lock, so that of several test processes (pytest-xdist) the first makes
    it and the others wait for it; a `.done` file marks it whole."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: its own temporary folder
        return make(tmp_path_factory.mktemp("shared") / name)
    shared = tmp_path_factory.getbasetemp().parent / "shared"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def _train_from_the_other_end(request):
    """With two test processes, the second trains the session's bundles in the opposite
    order to the first (which trains them as its tests ask, the tiny one first), so the
    two train different bundles at once instead of one waiting for the other's lock."""
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
        for name in ("tiny_memory_bundle", "tiny_tiled_bundle", "tiny_bundle_no_encoder"):
            request.getfixturevalue(name)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return once_per_run(tmp_path_factory, "tiny", train_tiny)


@pytest.fixture(scope="session")
def tiny_bundle_no_encoder(tmp_path_factory) -> Path:
    # Its own budget only: no test asks it for another, and calibrating five is slow.
    return once_per_run(tmp_path_factory, "noenc", lambda out: train_tiny(
        out, "--no-encoder", "--calibrate-steps", str(TINY_STEPS)))


class InProcessServer:
    """The real gRPC server (models, engine, fast path, health, reflection) on an ephemeral
    port, run by an event loop on a thread of the test process: no process start, and the
    service's code is covered in this process. ServerProcess (clients/launcher.py) runs
    `anogan-serve` itself, for what only a process shows (signals, exit codes)."""

    def __init__(self, bundles: list[str], engine: EngineOptions, **config_fields):
        """config_fields: more ServerConfig fields (auth_tokens, host, ...)."""
        config = ServerConfig(**{"host": "localhost", **config_fields},
                              bundles=[parse_bundle(b) for b in bundles], port=0,
                              engine=engine, drain_delay_seconds=0.0)
        models = load_models(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server",
                                        daemon=True)
        self._thread.start()
        self.server = self._call(self._start(config, models))
        self.target = f"localhost:{self.server.port}"

    @staticmethod
    async def _start(config: ServerConfig, models) -> InspectionServer:
        tokens = TokenStore(config.auth_tokens) if config.auth_tokens else None
        return await InspectionServer(config, models, tokens=tokens).start()

    def _call(self, coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self) -> None:
        """Drain (as on SIGTERM) and stop the loop."""
        self._call(self.server.drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture(scope="session")
def texture_data(tmp_path_factory) -> Path:
    """A small texture benchmark (bench/texture_data.py): 48×48 frames, MVTec layout."""
    return once_per_run(tmp_path_factory, "texture", lambda out: write_benchmark(
        out, size=48, n_train=16, n_test_good=8, n_per_defect=3, seed=1))


@pytest.fixture(scope="session")
def tiny_tiled_bundle(tmp_path_factory, texture_data) -> Path:
    """The tiny preset on 16×16 tiles of the texture frames, every 8 pixels (25 a frame)."""
    def train(out: Path) -> Path:
        code = train_main(["train", "--data", str(texture_data), "--preset", "tiny",
                           "--patch-size", "16", "--stride", "8", "--epochs", "2",
                           "--encoder-epochs", "2", "--steps", str(TINY_STEPS), "--out",
                           str(out), "--run-dir", str(out.parent / "run-tex"),
                           "--device", "cpu"])
        assert code == 0
        return out
    return once_per_run(tmp_path_factory, "tex", train)


def train_tiny_memory(out: Path, data: Path, *extra: str) -> Path:
    """A tiny memory bundle on the texture frames: one GAN epoch of 2,000 sampled tiles,
    the discriminator's two blocks, a 400-row coreset."""
    code = train_main(["train", "--data", str(data), "--preset", "tiny", "--patch-size", "16",
                       "--stride", "8", "--epochs", "1", "--encoder-epochs", "1",
                       "--samples-per-epoch", "2000", "--steps", str(TINY_STEPS),
                       "--memory", "disc", "--memory-size", "400", "--holdout", "0.25",
                       "--out", str(out), "--run-dir", str(out.parent / f"run-{out.name}"),
                       "--device", "cpu", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_memory_bundle(tmp_path_factory, texture_data) -> Path:
    return once_per_run(tmp_path_factory, "mem",
                        lambda out: train_tiny_memory(out, texture_data))


@pytest.fixture(scope="session")
def server(tiny_bundle, tiny_bundle_no_encoder, tiny_tiled_bundle, tiny_memory_bundle):
    """One in-process server for the session: 'tiny' (default, with encoder), 'noenc'
    (without), 'tex' (tiled) and 'mem' (a memory bundle)."""
    running = InProcessServer([f"tiny={tiny_bundle}", f"noenc={tiny_bundle_no_encoder}",
                               f"tex={tiny_tiled_bundle}", f"mem={tiny_memory_bundle}"],
                              # Tests hold slots with long searches, beyond the
                              # calibrated budgets: judged by the nearest one's threshold.
                              EngineOptions(device="cpu", max_batch=32,
                                            uncalibrated_steps="nearest"),
                              metrics_port=0)  # Prometheus on a free port
    yield running
    running.stop()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The directory holding the console scripts (and grpcurl) of this environment."""
    return Path(sys.executable).parent


# Work a test module starts at once (its BACKGROUND: builds of other languages' clients),
# so that it overlaps the tests before it; closed when the session ends.
_BACKGROUND: list = []


def pytest_collection_finish(session):
    """Start the BACKGROUND of every test module with selected tests, for those tests."""
    if session.config.option.collectonly:
        return
    for module, items in _by_module(session.items).items():
        background = getattr(module, "BACKGROUND", None)
        if background is not None and "PYTEST_XDIST_WORKER" not in os.environ:
            background.start(items)
            _BACKGROUND.append(background)


def _by_module(items) -> dict:
    selected: dict = {}
    for item in items:
        selected.setdefault(getattr(item, "module", None), []).append(item)
    return selected


def pytest_runtest_setup(item):
    """Of several test processes (make test), each collects every test but runs a share:
    a module's BACKGROUND starts with the first of its tests this process runs, for all of
    them (one process runs a module's tests: --dist loadfile)."""
    background = getattr(getattr(item, "module", None), "BACKGROUND", None)
    if background is not None and background not in _BACKGROUND:
        background.start(_by_module(item.session.items)[item.module])
        _BACKGROUND.append(background)


def pytest_sessionfinish(session):
    for background in _BACKGROUND:
        background.close()
