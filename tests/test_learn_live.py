"""Learnt versions served: promoted under a running stream and rolled back exactly, and
the operators' verdicts (Feedback, CommitLearning, Rollback) teaching a served model live.
(Apart from tests/test_learn.py so that the two files run on the two test processes.)"""

from __future__ import annotations

import hashlib
import json
import shutil

import grpc
import numpy as np
import pytest
from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.bundle import read_bundle
from anogan_inspect.server.models import EngineOptions
from anogan_inspect.trainer.cli import main as train_main
from anogan_inspect.trainer.learn import Frame, learn
from tests.conftest import InProcessServer
from tests.test_learn import brighter, failing_not_far, texture_frames
from tests.test_server import OpenStream, stream, wait_for
from tests.test_tiles import raw_frame


@pytest.fixture(scope="module")
def frames(texture_data):
    return texture_frames(texture_data)


@pytest.mark.slow
def test_a_learnt_version_is_served_under_a_running_stream_and_rolled_back_exactly(
        tiny_memory_bundle, frames, tmp_path, capsys):
    """learn → promote into the served models folder → the running server swaps it in
    (no restart, no frame lost or reordered, each result naming its version) → rollback
    serves the parent again, scoring exactly as before."""
    models = tmp_path / "models"
    shutil.copytree(tiny_memory_bundle, models / "mem")
    parent = read_bundle(models / "mem")
    probe = [raw_frame(f, i) for i, f in enumerate(brighter(frames["good"]))]
    config = pb.InspectionConfig(model="mem")
    server = InProcessServer([], EngineOptions(device="cpu"), models_dir=models,
                             models_poll=0.1)
    try:
        with server.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            version = lambda: stub.GetModel(pb.GetModelRequest(name="mem")).model.version  # noqa: E731
            before = stream(stub, probe, config)
            running = OpenStream(stub, config)
            running.send(probe[:4])

            good = [Frame(f, f"{i:064x}") for i, f in enumerate(brighter(frames["train"]))]
            learned = learn(read_bundle(models / "mem"), good, None, tmp_path / "v2")
            assert train_main(["promote", str(learned.path), "--to", str(models / "mem")]) == 0
            assert f"serving version {learned.version} (was {parent.version}" in \
                capsys.readouterr().out
            wait_for(lambda: version() == learned.version, what="the learnt version")
            running.send(probe[4:])  # the open stream goes on, on its version
            after = stream(stub, probe, config)
            assert {r.model_version for r in after} == {learned.version}
            assert np.mean([r.score for r in after]) < np.mean([r.score for r in before])

            assert train_main(["rollback", "--to", str(models / "mem")]) == 0
            wait_for(lambda: version() == parent.version, what="the parent again")
            again = stream(stub, probe, config)
            assert [r.score for r in again] == [r.score for r in before]  # exactly
            assert [r.verdict for r in again] == [r.verdict for r in before]
            running.close()
            running.join()
            assert running.error is None
            assert [r.sequence for r in running.results] == list(range(len(probe)))
            assert not any(r.HasField("error") for r in running.results)
            assert {r.model_version for r in running.results} == {parent.version}
    finally:
        server.stop()
    kept = sorted(p.name for p in (models / ".versions" / "mem").iterdir())
    assert kept == sorted([parent.version, learned.version])
    # Rolling back a trained version has nowhere to go
    assert train_main(["rollback", "--to", str(models / "mem")]) == 2
    assert "has no parent to roll back to (it was trained, not learnt)" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_operators_verdicts_teach_the_served_model_live(tiny_memory_bundle, tiny_bundle,
                                                        frames, tmp_path):
    """Feedback (admin token only, audited) collects GOOD frames named by id or sent whole,
    holds a far one until confirmed twice, and one where a kept DEFECT lies; keeps DEFECT
    ones; CommitLearning serves the learnt version; Rollback the parent again, with its
    exact scores. A whole-frame model's verdicts are written for anogan-train finetune."""
    models = tmp_path / "models"
    shutil.copytree(tiny_memory_bundle, models / "mem")
    shutil.copytree(tiny_bundle, models / "digits")
    parent = read_bundle(models / "mem")
    (tmp_path / "line").write_text("line-token\n")
    (tmp_path / "admin").write_text("boss-token\n")
    audit = tmp_path / "audit.jsonl"
    server = InProcessServer([], EngineOptions(device="cpu"), models_dir=models,
                             models_poll=0.1, auth_tokens=tmp_path / "line",
                             admin_tokens=tmp_path / "admin", audit_log=audit, learn_after=0)
    line, boss = [("authorization", "Bearer line-token")], [("authorization", "Bearer boss-token")]
    config = pb.InspectionConfig(model="mem")
    probe = [raw_frame(f, i) for i, f in enumerate(brighter(frames["good"]))]
    confirmed = [raw_frame(f, 100 + i) for i, f in enumerate(brighter(frames["train"]))]

    def inspect(frames_: list) -> list:
        requests = [pb.StreamInspectRequest(config=config)] + [
            pb.StreamInspectRequest(frame=f) for f in frames_]
        return [r.result for r in stub.StreamInspect(iter(requests), metadata=line, timeout=120)]

    def refused(call, request, metadata) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=metadata, timeout=120)
        return err.value.code()

    try:
        with server.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            before = inspect(probe)
            inspect(confirmed)  # the line streams them; the server keeps them by id
            good = lambda **frame: pb.FeedbackRequest(  # noqa: E731
                model="mem", label=pb.OPERATOR_LABEL_GOOD, note="lamp replaced", **frame)
            assert refused(stub.Feedback, good(frame_id="f100"), line) == \
                grpc.StatusCode.PERMISSION_DENIED  # a streaming token alone
            assert refused(stub.Feedback, good(frame_id="f100"), None) == \
                grpc.StatusCode.UNAUTHENTICATED
            assert refused(stub.Feedback, good(frame_id="nope"), boss) == \
                grpc.StatusCode.NOT_FOUND
            assert refused(stub.Feedback, pb.FeedbackRequest(model="mem", frame_id="f100"),
                           boss) == grpc.StatusCode.INVALID_ARGUMENT  # no label
            outcomes = [stub.Feedback(good(frame_id=f.frame_id), metadata=boss).outcome
                        for f in confirmed]
            assert outcomes == [pb.FEEDBACK_OUTCOME_COLLECTED] * len(confirmed)
            white = raw_frame(np.ones_like(frames["train"][0]), 999)
            first = stub.Feedback(good(frame=white), metadata=boss)
            assert first.outcome == pb.FEEDBACK_OUTCOME_HELD
            again = stub.Feedback(good(frame=white), metadata=boss)
            assert again.outcome == pb.FEEDBACK_OUTCOME_COLLECTED
            assert again.good_collected == len(confirmed) + 1
            near = frames["defects"][failing_not_far(parent, frames["defects"])]
            defect = stub.Feedback(pb.FeedbackRequest(
                model="mem", frame=raw_frame(near, 500),
                label=pb.OPERATOR_LABEL_DEFECT), metadata=boss)
            assert defect.outcome == pb.FEEDBACK_OUTCOME_KEPT
            # another operator calls it GOOD: it fails where the kept DEFECT lies
            assert stub.Feedback(good(frame=raw_frame(near, 501)), metadata=boss).outcome \
                == pb.FEEDBACK_OUTCOME_HELD

            committed = stub.CommitLearning(pb.CommitLearningRequest(model="mem"),
                                            metadata=boss, timeout=300)
            assert committed.parent_version == parent.version != committed.model_version
            model = stub.GetModel(pb.GetModelRequest(name="mem"), metadata=line).model
            assert model.version == committed.model_version
            after = inspect(probe)
            assert {r.model_version for r in after} == {committed.model_version}
            assert np.mean([r.score for r in after]) < np.mean([r.score for r in before])
            lineage = read_bundle(models / "mem").manifest["lineage"]
            assert first.frame_sha256 in lineage["learnt"] + lineage["calibrating"]
            assert refused(stub.CommitLearning, pb.CommitLearningRequest(model="mem"),
                           boss) == grpc.StatusCode.FAILED_PRECONDITION  # nothing collected

            rolled = stub.Rollback(pb.RollbackRequest(model="mem"), metadata=boss, timeout=300)
            assert (rolled.model_version, rolled.replaced_version) == \
                (parent.version, committed.model_version)
            assert [r.score for r in inspect(probe)] == [r.score for r in before]

            # A whole-frame model learns offline: its verdicts are written as files
            digit = (tmp_path / "digit.png")
            Image.fromarray((frames["train"][0][0] * 255).astype(np.uint8)).save(digit)
            kept = stub.Feedback(pb.FeedbackRequest(
                model="digits", label=pb.OPERATOR_LABEL_GOOD,
                frame=pb.Frame(encoded=pb.EncodedImage(data=digit.read_bytes()))),
                metadata=boss, timeout=120)
            assert kept.outcome in (pb.FEEDBACK_OUTCOME_COLLECTED, pb.FEEDBACK_OUTCOME_HELD)
            if kept.outcome == pb.FEEDBACK_OUTCOME_HELD:  # confirmed twice
                kept = stub.Feedback(pb.FeedbackRequest(
                    model="digits", label=pb.OPERATOR_LABEL_GOOD,
                    frame=pb.Frame(encoded=pb.EncodedImage(data=digit.read_bytes()))),
                    metadata=boss, timeout=120)
            assert (kept.outcome, kept.good_collected) == (pb.FEEDBACK_OUTCOME_COLLECTED, 1)
            written = models / ".collected" / "digits" / "good" / f"{kept.frame_sha256}.png"
            assert written.read_bytes() == digit.read_bytes()
            with pytest.raises(grpc.RpcError) as err:
                stub.CommitLearning(pb.CommitLearningRequest(model="digits"), metadata=boss,
                                    timeout=120)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"anogan-train finetune --from {models / 'digits'}" in err.value.details()
    finally:
        server.stop()
    entries = [json.loads(line_) for line_ in audit.read_text().splitlines()]
    entries = [e for e in entries if e["model"] == "mem"]
    assert [e["call"] for e in entries] == ["Feedback"] * (len(confirmed) + 4) + [
        "CommitLearning", "Rollback"]
    assert [e["held_because"] for e in entries
            if e.get("outcome") == "FEEDBACK_OUTCOME_HELD"] == ["far", "defect"]
    assert {e["who"] for e in entries} == {"token:" + hashlib.sha256(b"boss-token")
                                           .hexdigest()[:12]}
    assert entries[0]["note"] == "lamp replaced" and entries[0]["label"] == "GOOD"
    assert entries[-2]["new_version"] == committed.model_version
    assert entries[-1]["version"] == committed.model_version
