"""The gRPC service against a real server on an ephemeral port (tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.bundle import load_torch_models, read_bundle
from anogan_inspect.clients.launcher import ServerProcess
from anogan_inspect.clients.sources import SourceFrame, csv_frames
from anogan_inspect.clients.stream_client import frame_message
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.server.frames import encode_png
from anogan_inspect.server.models import EngineOptions
from anogan_inspect.trainer.scoring import search_scores
from tests.conftest import ROOT, TEST_CSV, TINY_STEPS, InProcessServer


@pytest.fixture(scope="module")
def digits() -> list[SourceFrame]:
    """The labelled MNIST test digits 2 (anomalous), 7 and 8."""
    return list(csv_frames(TEST_CSV, [7, 8], [2]))


@pytest.fixture(scope="module")
def stub(server):
    with server.channel() as channel:
        yield pb_grpc.InspectionServiceStub(channel)


def stream(stub, frames: list[pb.Frame], config: pb.InspectionConfig | None = None,
           timeout: float = 120) -> list[pb.InspectionResult]:
    requests = ([pb.StreamInspectRequest(config=config)] if config else []) + [
        pb.StreamInspectRequest(frame=f) for f in frames]
    return [r.result for r in stub.StreamInspect(iter(requests), timeout=timeout)]


def frames_of(digits, n: int, start: int = 0) -> list[pb.Frame]:
    return [frame_message(d, start + i) for i, d in enumerate(digits[start:start + n])]


def stats(stub, model: str = "tiny") -> pb.ModelStats:
    return next(m for m in stub.GetServerStats(pb.GetServerStatsRequest()).models
                if m.model == model)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_n_frames_in_n_results_out_in_order(stub, digits):
    frames = frames_of(digits, 40)
    results = stream(stub, frames)
    assert [r.sequence for r in results] == list(range(40))
    assert [r.frame_id for r in results] == [f.frame_id for f in frames]
    assert not any(r.provisional for r in results)
    assert all(r.verdict in (pb.VERDICT_PASS, pb.VERDICT_FAIL) for r in results)
    assert all(r.model == "tiny" and r.threshold > 0 for r in results)
    assert all(r.capture_time == f.capture_time for r, f in zip(results, frames))
    for r in results:  # verdict is the threshold rule on the score
        assert (r.verdict == pb.VERDICT_FAIL) == (r.score > r.threshold)


def test_bad_frames_get_errors_and_the_stream_goes_on(stub, digits):
    frames = frames_of(digits, 10)
    frames[2].raw.data = frames[2].raw.data[:-1]  # wrong byte count
    frames[4].ClearField("raw")
    frames[4].encoded.data = b"not a png"
    nan = np.full((8, 8), np.nan, dtype="<f4")
    frames[6].raw.CopyFrom(pb.RawImage(data=nan.tobytes(), data_type=pb.DATA_TYPE_FLOAT32,
                                       height=8, width=8, channels=1))
    frames[7].raw.data_type = pb.DATA_TYPE_UNSPECIFIED
    frames[8].ClearField("raw")  # no image at all
    frames[9].raw.CopyFrom(pb.RawImage(data=b"\0", data_type=pb.DATA_TYPE_UINT8,
                                       height=5000, width=5000))  # over the pixel limit
    frames += frames_of(digits, 2, start=10)
    frames[10].raw.channels = 2
    bright = np.full((8, 8), 1.5, dtype="<f4")
    frames[11].raw.CopyFrom(pb.RawImage(data=bright.tobytes(), data_type=pb.DATA_TYPE_FLOAT32,
                                        height=8, width=8, channels=1))
    results = stream(stub, frames)
    assert [r.sequence for r in results] == list(range(12))
    bad = {2: "bytes", 4: "cannot decode", 6: "NaN", 7: "data_type", 8: "no image",
           9: "the limit is", 10: "channels must be 1 or 3", 11: "must lie in [0, 1]"}
    for r in results:
        if r.sequence in bad:
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert bad[r.sequence] in r.error.message
            assert r.verdict == pb.VERDICT_UNSPECIFIED
        else:
            assert not r.HasField("error") and r.verdict != pb.VERDICT_UNSPECIFIED


def test_any_size_and_rgb_frames_are_resized_and_converted(stub, digits):
    gray = digits[0].pixels
    big_rgb = np.repeat(np.kron(gray, np.ones((3, 3, 1), np.uint8)), 3, axis=2)  # 84×84×3
    frames = [frame_message(SourceFrame("gray", gray, None), 0),
              frame_message(SourceFrame("rgb", big_rgb, None), 1)]
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_FAST))
    assert not any(r.HasField("error") for r in results)
    # The same digit, upscaled and in RGB, scores nearly the same.
    assert abs(results[0].score - results[1].score) < 0.05 * results[0].score


def test_server_score_equals_trainer_search_from_same_start(stub, digits, tiny_bundle):
    frames = frames_of(digits, 6)
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_SEARCH))
    bundle = read_bundle(tiny_bundle)
    pixels = np.stack([d.pixels.transpose(2, 0, 1) for d in digits[:6]]) / 255.0
    x = to_model_input(pixels.astype(np.float32), bundle.image_size, bundle.channels)
    expected = search_scores(load_torch_models(bundle), x, bundle.search_config, "encoder")
    assert [r.search_steps for r in results] == [TINY_STEPS] * 6
    np.testing.assert_allclose([r.score for r in results], expected.score, rtol=1e-3)
    np.testing.assert_allclose([r.residual_score for r in results], expected.residual,
                               rtol=1e-3)


def test_modes_fast_search_cascade(stub, digits):
    frames = frames_of(digits, 60, start=100)
    by_mode = {mode: stream(stub, frames, pb.InspectionConfig(mode=mode))
               for mode in (pb.MODE_FAST, pb.MODE_SEARCH, pb.MODE_CASCADE)}
    fast, searched, cascade = by_mode.values()
    assert all(r.stage == pb.STAGE_FAST and r.search_steps == 0 for r in fast)
    assert all(r.stage == pb.STAGE_SEARCH and r.search_steps == TINY_STEPS for r in searched)
    # The search starts at E(x) and keeps the best z: never above the fast score.
    assert all(s.score <= f.score * (1 + 1e-4) for s, f in zip(searched, fast))
    stages = {r.stage for r in cascade}
    assert stages == {pb.STAGE_FAST, pb.STAGE_SEARCH}, "60 digits exercise both stages"
    for c, f, s in zip(cascade, fast, searched):
        if c.stage == pb.STAGE_FAST:
            assert c.verdict == pb.VERDICT_PASS and c.score <= c.threshold
            assert c.score == pytest.approx(f.score, rel=1e-6)
        else:
            assert c.score == pytest.approx(s.score, rel=1e-4)
        # The exact cascade: its verdict is the warm-started search's verdict, every frame.
        assert c.verdict == s.verdict, c.frame_id


def test_fast_mode_is_judged_by_the_fast_paths_own_threshold(stub, digits):
    model = stub.GetModel(pb.GetModelRequest(name="tiny")).model
    assert model.fast_threshold > 0 and model.fast_threshold != model.threshold
    frames = frames_of(digits, 30)
    fast = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_FAST))
    cascade = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_CASCADE))
    assert all(r.threshold == model.fast_threshold and r.threshold_search_steps == 0
               for r in fast)
    assert all(r.threshold == model.threshold and r.threshold_search_steps == 10
               for r in cascade)
    assert all(r.threshold_target_fpr == pytest.approx(0.05) for r in fast + cascade)
    for r in fast:
        assert (r.verdict == pb.VERDICT_FAIL) == (r.score > model.fast_threshold)


def test_per_frame_mode_overrides_stream_mode(stub, digits):
    frames = frames_of(digits, 4)
    frames[1].mode = pb.MODE_SEARCH
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_FAST))
    assert [r.stage for r in results] == [pb.STAGE_FAST, pb.STAGE_SEARCH, pb.STAGE_FAST,
                                          pb.STAGE_FAST]


def test_provisional_results_precede_searched_finals(stub, digits):
    frames = frames_of(digits, 60, start=100)
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_CASCADE,
                                                       provisional_results=True))
    finals = [r for r in results if not r.provisional]
    assert [r.sequence for r in finals] == list(range(100, 160))
    provisional = {r.sequence: i for i, r in enumerate(results) if r.provisional}
    for i, r in enumerate(results):
        if not r.provisional and r.stage == pb.STAGE_SEARCH:
            assert r.sequence in provisional and provisional[r.sequence] < i
        if not r.provisional and r.stage == pb.STAGE_FAST:
            assert r.sequence not in provisional
    assert all(results[i].stage == pb.STAGE_FAST for i in provisional.values())


def test_residual_map_and_unary_inspect(stub, digits):
    frame = frames_of(digits, 1)[0]
    response = stub.Inspect(pb.InspectRequest(
        config=pb.InspectionConfig(mode=pb.MODE_SEARCH, return_residual_map=True), frame=frame))
    rmap = response.result.residual_map
    assert (rmap.height, rmap.width) == (16, 16)
    values = np.frombuffer(rmap.data, dtype="<f4")
    assert values.shape == (256,) and 0.0 <= values.min() and values.max() <= 1.0
    # Σ|x - G(z)| over pixels = 2·Σ map (gray: one channel), the result's residual part.
    assert 2 * values.sum(dtype=np.float64) == pytest.approx(response.result.residual_score,
                                                             rel=1e-3)
    bad = pb.Frame(frame_id="bad", encoded=pb.EncodedImage(data=b"GIF89a"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Inspect(pb.InspectRequest(frame=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_models_and_bundle_without_encoder(stub, digits):
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [m.name for m in models] == ["tiny", "noenc", "tex", "mem"]
    noenc = stub.GetModel(pb.GetModelRequest(name="noenc")).model
    assert not noenc.has_encoder and list(noenc.modes) == [pb.MODE_SEARCH]
    assert noenc.default_mode == pb.MODE_SEARCH and (noenc.height, noenc.width) == (16, 16)
    # What serves it, on this CPU: float32 steps in the test server's 32 slots, no CUDA graphs.
    assert (noenc.device, noenc.search_precision, noenc.search_slots,
            noenc.search_cuda_graphs) == ("cpu", "fp32", 32, False)
    results = stream(stub, frames_of(digits, 5), pb.InspectionConfig(model="noenc"))
    assert all(r.stage == pb.STAGE_SEARCH and r.model == "noenc" for r in results)
    with pytest.raises(grpc.RpcError) as err:
        stream(stub, frames_of(digits, 1), pb.InspectionConfig(model="noenc",
                                                               mode=pb.MODE_FAST))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_models_pages(stub):
    first = stub.ListModels(pb.ListModelsRequest(page_size=1))
    assert [m.name for m in first.models] == ["tiny"] and first.next_page_token
    second = stub.ListModels(pb.ListModelsRequest(page_size=1,
                                                  page_token=first.next_page_token))
    assert [m.name for m in second.models] == ["noenc"] and second.next_page_token
    third = stub.ListModels(pb.ListModelsRequest(page_size=2,
                                                 page_token=second.next_page_token))
    assert [m.name for m in third.models] == ["tex", "mem"] and not third.next_page_token
    assert first.models[0].feature_weight == pytest.approx(0.1)
    for bad in (pb.ListModelsRequest(page_token="nope"), pb.ListModelsRequest(page_size=-1)):
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_negative_sizes_are_invalid(stub, digits):
    with pytest.raises(grpc.RpcError) as err:
        stream(stub, frames_of(digits, 1), pb.InspectionConfig(search_steps=-5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    frame = frames_of(digits, 1)[0]
    frame.raw.height = -28
    (result,) = stream(stub, [frame])
    assert "height and width must be positive" in result.error.message


def test_config_after_frames_ends_the_stream(stub, digits):
    requests = [pb.StreamInspectRequest(frame=f) for f in frames_of(digits, 2)]
    requests.append(pb.StreamInspectRequest(config=pb.InspectionConfig()))
    call = stub.StreamInspect(iter(requests))
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_serving(server):
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "anogan.v1.InspectionService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


class OpenStream:
    """A stream whose frames are fed by the test; stays open until close()."""

    def __init__(self, stub, config: pb.InspectionConfig):
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(pb.StreamInspectRequest(config=config))
        self.call = stub.StreamInspect(iter(self._requests.get, None))
        self.results: list[pb.InspectionResult] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def send(self, frames: list[pb.Frame]) -> None:
        for frame in frames:
            self._requests.put(pb.StreamInspectRequest(frame=frame))

    def close(self) -> None:
        self._requests.put(None)

    def _collect(self) -> None:
        try:
            self.results.extend(r.result for r in self.call)
        except grpc.RpcError as err:
            self.error = err

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)


def test_cancelling_a_stream_frees_its_slots(stub, digits):
    before = stats(stub)
    long_search = pb.InspectionConfig(mode=pb.MODE_SEARCH, search_steps=10_000)  # the most allowed
    open_stream = OpenStream(stub, long_search)
    open_stream.send(frames_of(digits, 40))  # 32 slots: 32 searching, 8 queued
    wait_for(lambda: stats(stub).active_slots == 32 and stats(stub).queued_searches == 8,
             what="slots to fill")
    open_stream.call.cancel()
    open_stream.join()
    after = wait_for(lambda: (s := stats(stub)).active_slots == 0 and s, what="slots to empty")
    assert after.queued_searches == 0
    assert after.searches_cancelled - before.searches_cancelled == 40
    # The engine is free again: a new stream is served at once.
    assert len(stream(stub, frames_of(digits, 3))) == 3


@pytest.fixture()
def fresh_server(tiny_bundle, tmp_path):
    proc = ServerProcess([str(tiny_bundle)], tmp_path / "server.log", "--device", "cpu",
                         "--max-batch", "64", "--grace", "300",
                         "--uncalibrated-steps", "nearest", cwd=ROOT)
    yield proc
    proc.stop()


@pytest.mark.slow
def test_concurrent_streams_share_engine_batches_and_drain_on_sigterm(fresh_server, digits):
    with fresh_server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        config = pb.InspectionConfig(mode=pb.MODE_SEARCH, search_steps=1500)
        streams = [OpenStream(stub, config) for _ in range(2)]
        for i, s in enumerate(streams):
            s.send(frames_of(digits, 4, start=10 * i))
        # Both streams' searches run in the same engine steps: 8 slots active at once.
        # (Either stream alone makes batches of 4; the step's statistics count once it ends.)
        wait_for(lambda: (s := stats(stub)).active_slots == 8 and s.max_search_batch == 8,
                 what="both streams in one engine step")
        for s in streams:
            s.close()
        # SIGTERM while 8 searches are in flight: they finish, then the server exits 0.
        assert fresh_server.stop(timeout=120) == 0
        for s in streams:
            s.join()
            assert s.error is None
            assert len(s.results) == 4 and all(r.search_steps == 1500 for r in s.results)
    assert "draining" in fresh_server.log_path.read_text()


@pytest.mark.slow
def test_sigterm_reports_not_serving_then_ends_open_streams(tiny_bundle, tmp_path, digits):
    proc = ServerProcess([str(tiny_bundle)], tmp_path / "server.log", "--device", "cpu",
                         "--grace", "300",
                         "--uncalibrated-steps", "nearest", "--drain-delay", "4", cwd=ROOT)
    try:
        with proc.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            status = lambda: health.Check(health_pb2.HealthCheckRequest()).status  # noqa: E731
            open_stream = OpenStream(stub, pb.InspectionConfig(mode=pb.MODE_SEARCH,
                                                               search_steps=1500))
            open_stream.send(frames_of(digits, 4))
            wait_for(lambda: stats(stub).active_slots == 4, what="searches in the engine")
            proc.process.send_signal(signal.SIGHUP)  # no tokens to reread: serves on
            wait_for(lambda: "SIGHUP: no --auth-token-file" in proc.log_path.read_text(),
                     what="SIGHUP logged")
            assert status() == health_pb2.HealthCheckResponse.SERVING
            proc.terminate()
            wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
                     what="NOT_SERVING")
            open_stream.send(frames_of(digits, 1, start=4))  # the drain delay still serves it
            # The stream is never closed by the client: the drain ends it after its frames.
            open_stream.join()
        assert open_stream.error is not None
        assert open_stream.error.code() == grpc.StatusCode.UNAVAILABLE
        assert [r.sequence for r in open_stream.results] == list(range(5))
        assert not any(r.HasField("error") for r in open_stream.results)
        assert proc.stop(timeout=120) == 0  # well inside the 300 s grace
    finally:
        proc.stop(timeout=10)


@pytest.mark.slow
def test_server_refuses_a_tampered_bundle(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "tampered")
    (copy / "generator.onnx").write_bytes(b"\0" + (copy / "generator.onnx").read_bytes())
    proc = run_server("--bundle", str(copy), "--port", "0")
    assert proc.returncode == 2
    assert "generator.onnx does not match its sha256" in proc.stderr



def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anogan_inspect.server", "--device", "cpu", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


@pytest.mark.slow
def test_server_refuses_a_manifest_missing_what_it_serves(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "stripped")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["threshold"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_server("--bundle", str(copy), "--port", "0")
    assert proc.returncode == 2
    assert "manifest.json: threshold: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_server_says_when_its_port_is_taken(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_server("--bundle", str(tiny_bundle), "--port", str(port))
    assert proc.returncode == 2
    # One line, before any model loads: no gRPC core log ("E1202 ... add_port.cc")
    assert proc.stderr.splitlines() == [
        f"anogan-serve: error: cannot listen on [::]:{port}: another process listens on it "
        "(another anogan-serve?): stop it, or pick another --port (0: any free port)"]


def test_a_single_server_does_not_share_its_port(server):
    """Without --workers, SO_REUSEPORT is off: a server started by mistake on a port that
    another (port-sharing) server listens on fails, instead of taking half its calls."""
    from anogan_inspect.server.app import InspectionServer, ServerConfig

    with socket.socket(socket.AF_INET6) as sharing:
        sharing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sharing.bind(("::", 0))
        sharing.listen()
        port = sharing.getsockname()[1]
        config = ServerConfig(bundles=[], port=port)

        async def bind(config):  # gRPC's aio server is made on an event loop: the server's
            return InspectionServer(config, server.server.models)

        with pytest.raises(ValueError, match=f"cannot listen on \\[::\\]:{port}"):
            server._call(bind(config))
        shared = server._call(bind(dataclasses.replace(config, reuse_port=True)))
        assert shared.port == port  # what each of --workers does


@pytest.mark.slow
def test_workers_share_one_port_and_drain_together(tiny_bundle, tmp_path, digits):
    """`--workers 2`: two processes on one port, connections spread across them (each
    GetServerStats names its worker); every stream answered in order whichever worker has
    it; SIGTERM to the supervisor drains both, exit 0. SIGHUP (a token reload) stops none of
    them, sent as soon as the supervisor's first lines ignore it, again once it has workers
    that are still starting, and once all serve (before, its default action killed the
    process, and the supervisor forwarded it to workers still starting)."""
    port_file, log_path = tmp_path / "port", tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anogan_inspect.server", "--bundle", str(tiny_bundle),
             "--port", "0", "--port-file", str(port_file), "--device", "cpu",
             "--workers", "2", "--drain-delay", "0"], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ignores_sighup(proc.pid), what="SIGHUP ignored")
        proc.send_signal(signal.SIGHUP)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        wait_for(lambda: port_file.exists() or len(children.read_text().split()) == 2,
                 what="the workers")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: port_file.exists() and port_file.read_text().strip()
                 or proc.poll() is not None, timeout=180, what="the port file")
        assert proc.poll() is None, log_path.read_text()
        target = f"localhost:{int(port_file.read_text())}"
        # A channel argument of its own keeps gRPC from sharing one connection among them.
        channels = [grpc.insecure_channel(target, options=[("anogan.test.channel", i)])
                    for i in range(16)]
        stubs = [pb_grpc.InspectionServiceStub(c) for c in channels]
        workers = [s.GetServerStats(pb.GetServerStatsRequest()).worker for s in stubs]
        assert set(workers) == {0, 1}, workers
        proc.send_signal(signal.SIGHUP)  # forwarded; no tokens: both serve on
        wait_for(lambda: log_path.read_text().count("SIGHUP: no --auth-token-file") == 2,
                 what="SIGHUP logged by both workers")
        for worker in (0, 1):
            stub = stubs[workers.index(worker)]
            results = stream(stub, frames_of(digits, 20, start=20 * worker))
            assert [r.sequence for r in results] == list(range(20 * worker, 20 * worker + 20))
            assert not any(r.HasField("error") for r in results)
        for channel in channels:
            channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    log = log_path.read_text()
    assert code == 0, log
    assert "2 workers listening" in log
    assert "worker 0 anogan_inspect.server.app: stopped" in log
    assert "worker 1 anogan_inspect.server.app: stopped" in log


@pytest.mark.slow
def test_an_open_health_watch_does_not_hold_the_drain(tiny_bundle, tmp_path):
    proc = ServerProcess([str(tiny_bundle)], tmp_path / "server.log", "--device", "cpu",
                         "--grace", "300",
                         "--uncalibrated-steps", "nearest", "--drain-delay", "0", cwd=ROOT)
    try:
        with proc.channel() as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            proc.terminate()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # No Inspect call is left, so the drain ends at once, not after the 300 s grace:
            # the watch is cancelled by the server and the process exits 0.
            with pytest.raises(grpc.RpcError):
                next(watch)
        assert proc.stop(timeout=120) == 0
        assert "grace period over" not in proc.log_path.read_text()
    finally:
        proc.stop(timeout=10)


def test_8_and_16_bit_pngs_of_a_digit_score_alike(stub, digits):
    pixels = digits[0].pixels[..., 0]
    eight, sixteen = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(eight, format="PNG")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(sixteen, format="PNG")  # I;16
    frames = [pb.Frame(frame_id=str(i), sequence=i, encoded=pb.EncodedImage(data=b.getvalue()))
              for i, b in enumerate((eight, sixteen))]
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_FAST))
    assert not any(r.HasField("error") for r in results)
    assert results[0].score == pytest.approx(results[1].score, rel=1e-5)


def test_frame_batches_come_back_whole_in_order_beside_single_frames(stub, digits):
    """A FrameBatch is scored frame by frame (its bad frame gets its own error) and answered
    in one response with its results in order, between the messages sent around it."""
    frames = frames_of(digits, 12)
    frames[5].raw.data = frames[5].raw.data[:-1]
    requests = [pb.StreamInspectRequest(frame=frames[0]),
                pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames[1:9])),
                pb.StreamInspectRequest(frame=frames[9]),
                pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames[10:12])),
                pb.StreamInspectRequest(batch=pb.FrameBatch())]
    responses = list(stub.StreamInspect(iter(requests), timeout=120))
    assert [len(r.results) for r in responses] == [0, 8, 0, 2, 0]
    assert [r.HasField("result") for r in responses] == [True, False, True, False, False]
    got = [x for r in responses for x in (r.results or ([r.result] if r.HasField("result")
                                                         else []))]
    assert [x.sequence for x in got] == list(range(12))
    assert "bytes" in got[5].error.message and not got[6].HasField("error")
    # Each frame scores as if it were sent alone.
    alone = stream(stub, frames[6:7])[0]
    assert got[6].score == pytest.approx(alone.score, rel=1e-5) and got[6].stage == alone.stage


def test_results_beyond_the_message_limit_are_split_or_refused_and_the_stream_goes_on(
        tiny_bundle, digits):
    """--max-message-bytes (4,000 here): a FrameBatch whose results (float16 residual maps)
    exceed it comes back in several messages, in order, instead of gRPC ending the stream;
    a result alone above it gets a per-frame RESOURCE_EXHAUSTED naming the flag."""
    server = InProcessServer([f"tiny={tiny_bundle}"], EngineOptions(device="cpu"),
                             max_message_bytes=4000)
    try:
        png = lambda pixels: pb.EncodedImage(data=encode_png(pixels))  # noqa: E731
        frames = [pb.Frame(frame_id=f"d{i}", sequence=i, encoded=png(d.pixels))
                  for i, d in enumerate(digits[:8])]  # 28×28 PNGs: small requests
        # Its result (the 3,200-byte id it echoes, a 1 KB map) cannot fit; its request and
        # its error result (no map) can.
        large = pb.Frame(frame_id="x" * 3200, sequence=8,
                         encoded=png(np.zeros((28, 28, 1), np.uint8)))
        after = pb.Frame(frame_id="after", sequence=9, encoded=png(digits[8].pixels))
        config = pb.InspectionConfig(mode=pb.MODE_FAST, return_residual_map=True,
                                     map_encoding=pb.MAP_ENCODING_FLOAT16)
        with server.channel() as channel:
            responses = list(pb_grpc.InspectionServiceStub(channel).StreamInspect(iter([
                pb.StreamInspectRequest(config=config),
                pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames)),
                pb.StreamInspectRequest(frame=large), pb.StreamInspectRequest(frame=after)]),
                timeout=120))
    finally:
        server.stop()
    batch = [r for r in responses if r.results]
    assert len(batch) > 1 and all(r.ByteSize() <= 4000 for r in responses)
    assert [x.sequence for r in batch for x in r.results] == list(range(8))
    assert all(x.residual_map.data for r in batch for x in r.results)
    refused, last = [r.result for r in responses if r.HasField("result")]
    assert (refused.sequence, refused.frame_id) == (8, large.frame_id)
    assert refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "(anogan-serve --max-message-bytes)" in refused.error.message
    assert last.sequence == 9 and not last.HasField("error")  # the stream goes on


def test_a_batch_larger_than_the_in_flight_window_gets_an_error_per_frame(stub, digits):
    window = 256  # ServerConfig.stream_window, the session server's
    frames = [frame_message(digits[i % len(digits)], i) for i in range(window + 1)]
    requests = [pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames)),
                pb.StreamInspectRequest(frame=frames[0])]
    big, after = list(stub.StreamInspect(iter(requests), timeout=120))
    assert len(big.results) == window + 1
    assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for r in big.results)
    assert "window of 256 frames (anogan-serve --stream-window)" in big.results[0].error.message
    assert not after.result.HasField("error")  # the stream goes on


def test_a_batch_of_mixed_sizes_scores_each_frame_as_alone(stub, digits):
    gray = digits[3].pixels
    big_rgb = np.repeat(np.kron(gray, np.ones((3, 3, 1), np.uint8)), 3, axis=2)  # 84×84×3
    frames = [frame_message(digits[0], 0), frame_message(SourceFrame("rgb", big_rgb, None), 1),
              frame_message(digits[1], 2), frame_message(SourceFrame("tiny", gray[:4], None), 3)]
    config = pb.InspectionConfig(mode=pb.MODE_FAST)
    (response,) = stub.StreamInspect(iter([
        pb.StreamInspectRequest(config=config),
        pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames))]), timeout=120)
    alone = stream(stub, frames, config)
    assert [r.sequence for r in response.results] == [0, 1, 2, 3]
    for batched, single in zip(response.results, alone):
        assert batched.score == pytest.approx(single.score, rel=1e-6)
        assert batched.error == single.error


def test_a_batch_that_cannot_be_prepared_fails_its_frames_and_the_stream_goes_on(server, stub,
                                                                                  digits):
    model = server.server.models["tiny"]
    works = model.preprocess_many

    def broken(images):  # batches fail; a frame alone is prepared as ever
        if len(images) > 1:
            raise RuntimeError("out of memory (simulated)")
        return works(images)

    model.preprocess_many = broken
    try:
        frames = frames_of(digits, 4)
        responses = list(stub.StreamInspect(iter([
            pb.StreamInspectRequest(batch=pb.FrameBatch(frames=frames[:3])),
            pb.StreamInspectRequest(frame=frames[3])]), timeout=120))
    finally:
        del model.preprocess_many  # the class's method again
    failed, after = responses
    assert [r.error.code for r in failed.results] == [grpc.StatusCode.INTERNAL.value[0]] * 3
    assert "out of memory (simulated)" in failed.results[0].error.message
    assert after.result.sequence == 3 and not after.result.HasField("error")


def test_unknown_modes_and_budgets_over_the_limit_are_invalid_arguments(stub, digits):
    frames = frames_of(digits, 3)
    frames[1].mode = 99
    results = stream(stub, frames)
    assert [r.sequence for r in results] == [0, 1, 2]
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unknown mode 99: one of MODE_FAST (1)" in results[1].error.message
    assert not results[2].HasField("error")  # the stream goes on
    for config, message in ((pb.InspectionConfig(mode=42), "unknown mode 42"),
                            (pb.InspectionConfig(search_steps=2_000_000_000),
                             "above this server's limit of 10000 steps a frame "
                             "(anogan-serve --max-search-steps)")):
        with pytest.raises(grpc.RpcError) as err:
            stream(stub, frames[:1], config)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()


def test_encoded_image_errors_name_the_problem_and_the_limit_not_python_objects(stub, digits):
    huge = io.BytesIO()
    Image.new("L", (5000, 5000)).save(huge, format="PNG")  # 25 M pixels in a few KB
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(
        jpeg, format="JPEG")
    forged = bytearray(jpeg.getvalue())  # its header (SOF0) says 4096×4096
    sof = forged.index(b"\xff\xc0")
    forged[sof + 5:sof + 9] = (4096).to_bytes(2, "big") * 2
    clean = jpeg.getvalue()  # with two stray bytes after APP0, which libjpeg skips
    after_app0 = 4 + int.from_bytes(clean[4:6], "big")
    stray = clean[:after_app0] + b"\x00\x00" + clean[after_app0:]
    restarts = io.BytesIO()  # with restart markers, and a fill byte before the first
    Image.open(io.BytesIO(clean)).save(restarts, format="JPEG", restart_marker_blocks=1)
    first = restarts.getvalue().index(b"\xff\xd0")
    filled = restarts.getvalue()[:first] + b"\xff" + restarts.getvalue()[first:]
    frames = frames_of(digits, 7)
    for frame, data in zip(frames, (b"\x89PNG garbage", huge.getvalue(), bytes(forged),
                                    clean, stray, restarts.getvalue(), filled)):
        frame.ClearField("raw")
        frame.encoded.data = data
    results = stream(stub, frames)
    assert "its data is not a PNG or JPEG this server can read" in results[0].error.message
    assert "(anogan-serve --max-pixels)" in results[1].error.message
    assert "the JPEG's header declares 4096x4096 pixels, but its " in results[2].error.message
    assert "cannot hold them (at least 65536 bytes)" in results[2].error.message
    assert not results[3].HasField("error")  # the same JPEG, unforged
    assert not results[4].HasField("error") and results[4].score == results[3].score
    assert not results[5].HasField("error") and results[6].score == results[5].score
    assert not results[6].HasField("error")
    for result in results[:3]:
        assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for result in results:
        assert " object at 0x" not in result.error.message


def hand_made_png(width: int, height: int, depth: int, colour: int) -> bytes:
    """A PNG of zeros with any bit depth and colour type (Pillow writes only some)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    rows = b"".join(b"\0" + bytes(width * channels * depth // 8) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_frame_sizes_are_read_from_the_header_alone():
    """What decoding will hold is read from a PNG's IHDR or a JPEG's frame header without
    Pillow (which inflates every text chunk first): the size and the channels that
    decoding gives, from the first bytes only."""
    from anogan_inspect.server.frames import FrameLimits, decode_encoded, encoded_shape

    limits = FrameLimits()
    samples = [hand_made_png(50, 30, depth, colour)
               for colour in (0, 2, 4, 6) for depth in (8, 16)]
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 4), np.uint8), "RGBA")
    for mode, kind in (("P", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG")):
        buffer = io.BytesIO()
        image.convert("RGB").convert(mode).save(buffer, format=kind)
        samples.append(buffer.getvalue())
    for data in samples:
        channels = decode_encoded(data, limits).shape[0]
        head = data[:26] if data.startswith(b"\x89PNG") else data[:data.index(b"\xff\xda")]
        assert encoded_shape(head) == (50, 30, channels), data[:32]
    assert encoded_shape(b"\x89PNG garbage") == (0, 0, 0)
    assert encoded_shape(b"GIF89a") == (0, 0, 0)
    assert encoded_shape(b"\xff\xd8" + b"\xff\x01" * 100_000) == (0, 0, 0)  # no header


def test_a_busy_stream_cannot_hold_back_another_streams_frame(stub, digits):
    """A hog queues 100 long searches on the 32 slots; a light stream's one frame, sent
    behind them, takes the first slot that frees (slots go to streams in turn), so at most
    the 32 searches running when it came and 31 admitted with it finish with or before it,
    not the hog's whole queue (FIFO: 100)."""
    before = stats(stub)
    long_search = pb.InspectionConfig(mode=pb.MODE_SEARCH, search_steps=500)
    hog = OpenStream(stub, long_search)
    hog.send(frames_of(digits, 100))
    try:
        wait_for(lambda: stats(stub).queued_searches == 68, what="the hog's queue")
        (light,) = stream(stub, frames_of(digits, 1, start=100), long_search)
        completed = stats(stub).searches_completed - before.searches_completed
        assert not light.HasField("error")
        assert completed <= 64, f"{completed} searches finished before the light frame's"
    finally:
        hog.call.cancel()
        hog.join()
    wait_for(lambda: stats(stub).active_slots == 0, what="slots to empty")


def test_a_frame_past_the_time_limit_gets_deadline_exceeded_and_frees_its_slot(server, stub,
                                                                                 digits):
    from anogan_inspect.server.frames import FrameLimits

    service = server.server.service
    default = service.limits
    service.limits = FrameLimits(max_seconds=0.5)  # what --max-frame-seconds 0.5 sets
    try:
        before = stats(stub)
        frames = frames_of(digits, 2)
        frames[1].mode = pb.MODE_FAST
        slow, quick = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_SEARCH,
                                                               search_steps=10_000))
    finally:
        service.limits = default
    assert slow.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "longer than this server's limit of 0.5 s (anogan-serve --max-frame-seconds)" \
        in slow.error.message
    assert not quick.HasField("error") and quick.stage == pb.STAGE_FAST
    after = wait_for(lambda: (s := stats(stub)).active_slots == 0 and s,
                     what="the slot to free")
    assert after.searches_cancelled - before.searches_cancelled == 1
    assert after.searches_completed == before.searches_completed


def test_server_wide_caps_give_frames_resource_exhausted(server, stub, digits):
    import dataclasses

    service = server.server.service
    default = service.limits
    long_search = pb.InspectionConfig(mode=pb.MODE_SEARCH, search_steps=10_000)
    hog = OpenStream(stub, long_search)
    try:
        service.limits = dataclasses.replace(default, max_frames_in_flight=1)
        hog.send(frames_of(digits, 1))
        wait_for(lambda: service.frames_in_flight == 1, what="the hog's frame")
        (refused,) = stream(stub, frames_of(digits, 1, start=1))
        assert refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "(anogan-serve --max-frames-in-flight)" in refused.error.message
        # Decoding a 28×28 digit is counted as 4 float32 copies: 12,544 bytes; a 4×4 frame
        # 256, but the tiny model's input is 1×16×16 float32: 1,024 bytes, as the hog's.
        service.limits = dataclasses.replace(default, max_bytes_in_flight=2000)
        small = pb.Frame(raw=pb.RawImage(data=bytes(16), height=4, width=4,
                                         data_type=pb.DATA_TYPE_UINT8))
        huge = pb.Frame(raw=pb.RawImage(data=b"", height=20000, width=20000,
                                        data_type=pb.DATA_TYPE_UINT8))
        undecoded, too_big, never = stream(stub, frames_of(digits, 1, start=2) + [small, huge])
        assert "decoding the frame takes about 12.2KiB, more than this server's whole" \
            in undecoded.error.message  # (a frame that only waits: "send it later")
        assert "the frame's 1KiB of model input do not fit" in too_big.error.message
        for result in (undecoded, too_big):
            assert result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert "(anogan-serve --max-bytes-in-flight)" in result.error.message
        # Beyond --max-pixels it is the frame's fault, whatever the bytes cap.
        assert never.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "(anogan-serve --max-pixels)" in never.error.message
    finally:
        service.limits = default
        hog.call.cancel()
        hog.join()
    wait_for(lambda: service.frames_in_flight == 0 and service.bytes_in_flight == 0,
             what="the counts to return to 0")
    assert not stream(stub, frames_of(digits, 1, start=3))[0].HasField("error")


def test_a_unary_request_that_does_not_parse_is_invalid_argument(server, digits):
    """gRPC's own deserializer said UNKNOWN; a unary call now gets INVALID_ARGUMENT, like a
    stream, and a request that parses is answered as before."""
    with server.channel() as channel:
        for method in ("Inspect", "GetModel", "ListModels"):
            call = channel.unary_unary(f"/anogan.v1.InspectionService/{method}")
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff", timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "the request does not parse" in err.value.details()
        inspect = channel.unary_unary("/anogan.v1.InspectionService/Inspect")
        request = pb.InspectRequest(frame=frames_of(digits, 1)[0])
        answer = pb.InspectResponse.FromString(inspect(request.SerializeToString(), timeout=60))
        assert answer.result.verdict != pb.VERDICT_UNSPECIFIED


def test_a_message_that_does_not_parse_or_a_reader_fault_ends_the_stream_with_a_status(
        server, stub, digits, monkeypatch):
    """Bytes that are no StreamInspectRequest, after two frames: both answered, then
    INVALID_ARGUMENT (the stream used to hang until its deadline). A fault in the stream's
    own reading ends it with INTERNAL."""
    with server.channel() as channel:
        raw_call = channel.stream_stream("/anogan.v1.InspectionService/StreamInspect")
        frames = [pb.StreamInspectRequest(frame=f).SerializeToString()
                  for f in frames_of(digits, 2)]
        responses = raw_call(iter(frames + [b"\xff\xff\xff"]), timeout=60)
        answered = []
        with pytest.raises(grpc.RpcError) as err:
            for response in responses:
                answered.append(pb.StreamInspectResponse.FromString(response).result)
    assert [r.sequence for r in answered] == [0, 1]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a message on the stream does not parse" in err.value.details()

    def broken(config):
        raise RuntimeError("a bug in reading the config")
    monkeypatch.setattr(server.server.service, "_options", broken)
    with pytest.raises(grpc.RpcError) as err:
        stream(stub, frames_of(digits, 1), timeout=60)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "reading the stream failed: a bug in reading the config" in err.value.details()


def scrape(server) -> dict[tuple[str, tuple], float]:
    """The server's /metrics, as {(sample name, sorted labels): value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    port = server.server.metrics_port
    with urlopen(f"http://localhost:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def test_metrics_count_frames_errors_latency_and_drift(server, stub, digits):
    """A stream of 30 digits and 2 malformed frames, then a scrape: the frame, error and
    latency counts grew by what was sent, and every fast score went into the drift
    window, beside the held-out share the bundle carries."""
    before = scrape(server)
    frames = frames_of(digits, 32)
    for frame in frames[30:]:
        frame.raw.data = b"short"
    results = stream(stub, frames)
    after = scrape(server)

    def grew(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    passed = sum(r.verdict == pb.VERDICT_PASS for r in results[:30])
    assert grew("anogan_frames_total", model="tiny", mode="cascade") == 30
    assert grew("anogan_frames_total", model="tiny", mode="cascade", verdict="pass") == passed
    assert grew("anogan_frame_errors_total", model="tiny", code="INVALID_ARGUMENT") == 2
    assert grew("anogan_frame_seconds_count", model="tiny", mode="cascade") == 30
    assert grew("anogan_frame_queue_seconds_count", model="tiny") == 30
    searched = sum(r.stage == pb.STAGE_SEARCH for r in results[:30])
    assert grew("anogan_frame_compute_seconds_count", model="tiny", stage="search") == searched
    window = total(after, "anogan_drift_window_frames", model="tiny", score="fast")
    assert window == min(1000, total(before, "anogan_drift_window_frames", model="tiny",
                                     score="fast") + 30)
    heldout = total(after, "anogan_drift_heldout_fail_share", model="tiny", score="fast")
    assert 0 < heldout < 0.5
    assert total(after, "anogan_drift_psi", model="tiny", score="fast") >= 0
    version = server.server.service.models["tiny"].bundle.version
    assert ("anogan_search_slots", (("manifest", ""), ("model", "tiny"),
                                    ("version", version))) in after  # a --bundle model
    assert ("anogan_streams_open", ()) in after
    assert grew("anogan_fast_frames_total", model="tiny") == 30


def test_a_stream_past_its_age_limit_ends_unavailable_after_its_frames(server, stub, digits):
    """--max-stream-age: the frames read before the limit are answered, then UNAVAILABLE
    (which `anogan-client --resend` answers with a new stream)."""
    service = server.server.service
    service.max_stream_age = 0.5
    try:
        old = OpenStream(stub, pb.InspectionConfig(mode=pb.MODE_FAST))
        old.send(frames_of(digits, 2))
        wait_for(lambda: len(old.results) == 2, what="the first frames' results")
        time.sleep(0.6)
        old.send(frames_of(digits, 1, start=2))
        old.join()
    finally:
        service.max_stream_age = None
    assert [r.sequence for r in old.results] == [0, 1]
    assert old.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "(anogan-serve --max-stream-age)" in old.error.details()


def test_a_client_that_stops_reading_stops_being_read(server, stub, digits):
    """Results of 256 KB (a long frame_id, echoed) to a client that reads none: once HTTP/2
    flow control stops gRPC taking them, the server holds at most the stream's window of
    unsent results and reads no more frames; when the client reads, all come, in order.
    The client's channel does not probe the bandwidth-delay product: with probing, gRPC
    may grow its receive window to megabytes, take every result into its buffers and
    never let the server's window fill (seen once with the suite loading both cores)."""
    service = server.server.service
    default_window, service.stream_window = service.stream_window, 4
    frames = frames_of(digits, 40)
    for frame in frames:
        frame.frame_id = f"{frame.sequence:03d}" + "x" * (256 << 10)
    config = pb.InspectionConfig(mode=pb.MODE_FAST)
    before = stats(stub).fast_frames
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = pb_grpc.InspectionServiceStub(channel).StreamInspect(iter(
            [pb.StreamInspectRequest(config=config)]
            + [pb.StreamInspectRequest(frame=f) for f in frames]), timeout=120)
        wait_for(lambda: service.results_unsent == 4, what="the window to fill")
        time.sleep(1.0)  # room for any more frames to be read, if they could be
        assert service.results_unsent <= 4
        scored = stats(stub).fast_frames - before
        assert scored < 40, "every frame was read though no result was"
        results = [r.result for r in call]
    finally:
        service.stream_window = default_window
        channel.close()
    assert [r.frame_id[:3] for r in results] == [f"{i:03d}" for i in range(40)]
    assert not any(r.HasField("error") for r in results)
    assert service.results_unsent == 0


def test_a_png_flood_stays_within_the_bytes_cap(server, stub, digits):
    """16 PNGs of a few KB that decode to 2048×2048 RGBA, from 2 streams at once: what
    decoding takes is held against --max-bytes-in-flight (512 MB here, 2 such frames), so
    the rest are refused before decoding and the server's peak memory grows by less than
    the cap. Without the hold, 6 decode at once (the worker threads): the peak grew
    by 927 MB (335 MB with it)."""
    import dataclasses

    service = server.server.service
    default = service.limits
    cap = 512 << 20
    png = io.BytesIO()
    Image.new("RGBA", (2048, 2048), (40, 80, 120, 255)).save(png, format="PNG")
    flood = [pb.Frame(encoded=pb.EncodedImage(data=png.getvalue()), sequence=i)
             for i in range(8)]
    service.limits = dataclasses.replace(default, max_bytes_in_flight=cap)
    rss = lambda: _status_kb("VmRSS") << 10  # noqa: E731
    before = rss()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from now
    try:
        streams = [OpenStream(stub, pb.InspectionConfig(mode=pb.MODE_FAST)) for _ in range(2)]
        for open_stream in streams:
            open_stream.send(flood)
            open_stream.close()
        for open_stream in streams:
            open_stream.join()
    finally:
        service.limits = default
    growth = (_status_kb("VmHWM") << 10) - before
    results = [r for s in streams for r in s.results]
    assert len(results) == 16 and all(s.error is None for s in streams)
    refused = [r for r in results if r.HasField("error")]
    assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and
               "(anogan-serve --max-bytes-in-flight)" in r.error.message for r in refused)
    assert 0 < len(refused) < 16
    assert growth < cap, f"peak memory grew by {growth >> 20} MB"
    assert service.bytes_in_flight == 0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def test_soak_many_streams_with_malformed_and_cancelled_ones(server, stub, digits):
    """16 streams × 100 frames at once, every 10th frame malformed, 2 more streams cancelled
    part-way: each kept stream gets its 100 results in order (the malformed ones as
    INVALID_ARGUMENT, no other error), and the server is idle and serving afterwards."""
    rng = np.random.default_rng(7)
    outcomes: dict[int, list[pb.InspectionResult]] = {}

    def frames_for(index: int) -> list[pb.Frame]:
        picks = rng.integers(0, len(digits), 100) if index >= 0 else range(100)
        frames = [frame_message(digits[int(k)], i) for i, k in enumerate(picks)]
        for frame in frames[int(rng.integers(10))::10]:
            frame.raw.data = frame.raw.data[:-3]
        return frames

    streams = {i: frames_for(i) for i in range(16)}

    def run(index: int) -> None:
        outcomes[index] = stream(stub, streams[index])

    cancelled = [OpenStream(stub, pb.InspectionConfig()) for _ in range(2)]
    threads = [threading.Thread(target=run, args=(i,)) for i in streams]
    for thread in threads:
        thread.start()
    for open_stream in cancelled:
        open_stream.send(frames_for(-1))
    wait_for(lambda: all(len(s.results) >= 5 for s in cancelled), what="some results")
    for open_stream in cancelled:
        open_stream.call.cancel()
        open_stream.join()
    for thread in threads:
        thread.join(180)
    for index, frames in streams.items():
        results = outcomes[index]
        assert [r.sequence for r in results] == list(range(100)), index
        bad = {i for i, f in enumerate(frames) if len(f.raw.data) % 784}
        for i, result in enumerate(results):
            if i in bad:
                assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            else:
                assert not result.HasField("error"), result.error.message
    wait_for(lambda: stats(stub).active_slots == 0 and stats(stub).queued_searches == 0,
             what="the server to be idle")
    assert server.server.service.frames_in_flight == 0
    with grpc.insecure_channel(server.target) as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_decoder_fuzz_every_frame_answered_none_internal(server, stub, digits):
    """2,000 seeded random frames (raw of any type, size and length, PNG/JPEG good, cut or
    garbage, unknown modes): each gets a result in order, none INTERNAL."""
    rng = np.random.default_rng(11)
    good_png, good_jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(digits[0].pixels[..., 0]).save(good_png, format="PNG")
    Image.fromarray(digits[0].pixels[..., 0]).save(good_jpeg, format="JPEG")
    encoded = [good_png.getvalue(), good_jpeg.getvalue()]

    def fuzzed(i: int) -> pb.Frame:
        frame = pb.Frame(frame_id=f"fuzz-{i}", sequence=i,
                         mode=int(rng.choice([0, 1, 2, 3, 7, -1])))
        kind = rng.integers(4)
        if kind == 0:  # raw, sizes and types at random, data of any length
            height, width = (int(v) for v in rng.integers(-2, 70, 2))
            frame.raw.CopyFrom(pb.RawImage(
                data=rng.bytes(int(rng.integers(0, 20000))), height=height, width=width,
                channels=int(rng.integers(-1, 5)), data_type=int(rng.integers(0, 6))))
        elif kind == 1:  # raw, consistent: a valid frame
            height, width = (int(v) for v in rng.integers(1, 64, 2))
            frame.raw.CopyFrom(pb.RawImage(data=rng.bytes(height * width), height=height,
                                           width=width, channels=1,
                                           data_type=pb.DATA_TYPE_UINT8))
        elif kind == 2:  # a real PNG or JPEG, maybe cut, maybe with bytes flipped
            data = bytearray(encoded[int(rng.integers(2))])
            if rng.random() < 0.5:
                data = data[:int(rng.integers(1, len(data)))]
            for _ in range(int(rng.integers(0, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            frame.encoded.data = bytes(data)
        else:  # garbage
            frame.encoded.data = rng.bytes(int(rng.integers(0, 500)))
        return frame

    frames = [fuzzed(i) for i in range(2000)]
    results = stream(stub, frames, pb.InspectionConfig(mode=pb.MODE_FAST), timeout=300)
    assert [r.sequence for r in results] == list(range(2000))
    codes = {r.error.code for r in results}
    assert grpc.StatusCode.INTERNAL.value[0] not in codes
    assert sum(not r.HasField("error") for r in results) >= 300  # the valid ones scored
    assert stub.GetModel(pb.GetModelRequest(), timeout=30).model.name == "tiny"


def ignores_sighup(pid: int) -> bool:
    """Whether the process ignores SIGHUP now (its /proc status's SigIgn mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn"))
    return bool(int(mask, 16) & (1 << (signal.SIGHUP - 1)))
