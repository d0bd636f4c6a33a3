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
