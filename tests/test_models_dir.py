"""Hot model updates (`anogan-serve --models-dir`): versions change under running streams
without losing a frame."""

import json
import os
import shutil

import grpc
import pytest

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients.sources import csv_frames
from anogan_inspect.server.models import EngineOptions
from tests.conftest import TEST_CSV, InProcessServer
from tests.test_server import OpenStream, frames_of, stream, wait_for


def write_manifest(folder, **changes) -> None:
    """The bundle's manifest with `changes`, written as an update is: new file, rename."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    staged = folder / "manifest.json.new"
    staged.write_text(json.dumps(manifest, indent=2))
    os.replace(staged, folder / "manifest.json")


def test_a_new_version_takes_new_streams_while_open_ones_finish_on_theirs(tiny_bundle,
                                                                          tmp_path):
    digits = list(csv_frames(TEST_CSV, [7, 8], [2]))
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "tiny")
    first = json.loads((models / "tiny" / "manifest.json").read_text())["version"]
    server = InProcessServer([], EngineOptions(device="cpu", max_batch=32,
                                               uncalibrated_steps="nearest"),
                             models_dir=models, models_poll=0.1)
    stopped = False
    try:
        with server.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            version = lambda name="tiny": stub.GetModel(  # noqa: E731
                pb.GetModelRequest(name=name)).model.version
            assert version() == first
            old = OpenStream(stub, pb.InspectionConfig(mode=pb.MODE_FAST))
            old.send(frames_of(digits, 5))
            wait_for(lambda: len(old.results) == 5, what="the first frames")
            replaced = server.server.service.models["tiny"]

            write_manifest(models / "tiny", version="v2")  # an update, verified then served
            wait_for(lambda: version() == "v2", what="the new version")
            old.send(frames_of(digits, 5, start=5))  # the open stream keeps its version
            new = stream(stub, frames_of(digits, 5, start=10),
                         pb.InspectionConfig(mode=pb.MODE_FAST))
            assert [r.model_version for r in new] == ["v2"] * 5
            assert replaced.streams == 1  # still held: not stopped under the open stream
            old.close()
            old.join()
            assert old.error is None
            assert [r.sequence for r in old.results] == list(range(10))
            assert [r.model_version for r in old.results] == [first] * 10
            wait_for(lambda: not replaced.lanes[0].engine._thread.is_alive(),
                     what="the replaced version to stop")

            # A version that fails verification is not served; v2 goes on.
            data = json.loads((models / "tiny" / "manifest.json").read_text())["files"]
            name = next(iter(data))
            broken = {**data, name: {**data[name], "sha256": "0" * 64}}
            write_manifest(models / "tiny", version="v3", files=broken)
            watcher = server.server.watcher
            wait_for(lambda: "tiny" in watcher.failed, what="the broken version's check")
            assert "sha256" in watcher.failed["tiny"] or "checksum" in watcher.failed["tiny"]
            assert version() == "v2"
            assert not stream(stub, frames_of(digits, 1, start=15))[0].HasField("error")

            # A second model appears, then goes: NOT_FOUND for new calls.
            shutil.copytree(tiny_bundle, models / "second")
            wait_for(lambda: "second" in server.server.service.models, what="the new model")
            shutil.rmtree(models / "second")
            wait_for(lambda: "second" not in server.server.service.models,
                     what="the removal")
            with pytest.raises(grpc.RpcError) as err:
                stream(stub, frames_of(digits, 1), pb.InspectionConfig(model="second"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            # A drain while a stream still holds a replaced version: its searches finish.
            held = OpenStream(stub, pb.InspectionConfig(mode=pb.MODE_SEARCH,
                                                        search_steps=800))
            held.send(frames_of(digits, 3))
            v2 = server.server.service.models["tiny"]
            wait_for(lambda: v2.stats()["active_slots"] == 3, what="searches on v2")
            write_manifest(models / "tiny", version="v4", files=data)
            wait_for(lambda: version() == "v4", what="v4")
            stopped = True
            server.stop()  # drains: v2's searches must not be stopped under them
            held.join()
    finally:
        if not stopped:
            server.stop()
    assert held.error is None or held.error.code() == grpc.StatusCode.UNAVAILABLE, held.error
    assert [(r.sequence, r.model_version, r.HasField("error")) for r in held.results] == [
        (0, "v2", False), (1, "v2", False), (2, "v2", False)]


def test_a_half_copied_version_is_served_once_whole_and_a_removed_default_is_not_replaced(
        tiny_bundle, tmp_path):
    """A folder whose manifest arrived before its network files fails, then serves once
    the copy completes (same manifest); removing the default model's folder gives calls
    naming no model NOT_FOUND (not another model's verdicts) and ListModels lists the rest;
    a replaced version's counters stay in /metrics, under its version, while a stream holds
    it; a folder named like a --bundle model is refused."""
    from tests.test_server import scrape, total

    digits = list(csv_frames(TEST_CSV, [7, 8], [2]))
    models = tmp_path / "models"
    for name in ("a", "b"):
        shutil.copytree(tiny_bundle, models / name)
    server = InProcessServer([], EngineOptions(device="cpu", max_batch=32),
                             models_dir=models, models_poll=0.1, metrics_port=0)
    try:
        service, watcher = server.server.service, server.server.watcher
        with server.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            (models / "c").mkdir()
            shutil.copy2(tiny_bundle / "manifest.json", models / "c" / "manifest.json")
            wait_for(lambda: "c" in watcher.failed, what="the half-copied version's check")
            for part in tiny_bundle.iterdir():
                if part.name != "manifest.json":
                    shutil.copy2(part, models / "c" / part.name)
            wait_for(lambda: "c" in service.models, what="the completed copy")

            held = OpenStream(stub, pb.InspectionConfig(model="b", mode=pb.MODE_FAST))
            held.send(frames_of(digits, 4))
            wait_for(lambda: len(held.results) == 4, what="b's first frames")
            first = held.results[0].model_version
            write_manifest(models / "b", version="b2")
            wait_for(lambda: stub.GetModel(pb.GetModelRequest(name="b")).model.version
                     == "b2", what="b's new version")
            stream(stub, frames_of(digits, 3), pb.InspectionConfig(model="b",
                                                                    mode=pb.MODE_FAST))
            samples = scrape(server)
            assert total(samples, "anogan_fast_frames_total", model="b", version=first) == 4
            assert total(samples, "anogan_fast_frames_total", model="b", version="b2") == 3
            held.close()
            held.join()

            assert stub.GetModel(pb.GetModelRequest()).model.name == "a"  # the default
            shutil.rmtree(models / "a")
            wait_for(lambda: "a" not in service.models, what="a's removal")
            with pytest.raises(grpc.RpcError) as err:
                stub.GetModel(pb.GetModelRequest())
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            listed = stub.ListModels(pb.ListModelsRequest())
            assert sorted(m.name for m in listed.models) == ["b", "c"]
    finally:
        server.stop()

    for name in ("b", "c"):  # fewer models to load
        shutil.rmtree(models / name)
    fixed = InProcessServer([f"line={tiny_bundle}"], EngineOptions(device="cpu", max_batch=32),
                            models_dir=models, models_poll=0.1)
    try:
        original = fixed.server.service.models["line"]
        shutil.copytree(tiny_bundle, models / "line")
        watcher = fixed.server.watcher
        wait_for(lambda: "line" in watcher.failed, what="the clash's check")
        assert "--bundle serves a model named 'line'" in watcher.failed["line"]
        shutil.rmtree(models / "line")
        wait_for(lambda: "line" not in watcher.failed, what="the folder's removal")
        assert fixed.server.service.models["line"] is original  # served on, untouched
    finally:
        fixed.stop()
