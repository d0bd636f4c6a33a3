"""`anogan-client` against a real server: the live table, JSONL, the summary, early ends."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from sklearn.metrics import roc_auc_score

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients import stream_client
from anogan_inspect.clients.launcher import ServerProcess
from tests.conftest import ROOT, TEST_CSV
from tests.test_server import wait_for

DIGITS = ["--csv", str(TEST_CSV), "--normal-labels", "7,8", "--anomaly-labels", "2"]


def test_client_streams_digits_and_writes_jsonl_and_summary(server, tmp_path, capsys):
    jsonl, summary_json = tmp_path / "results.jsonl", tmp_path / "summary.json"
    code = stream_client.main(["--target", server.target, *DIGITS, "--mode", "fast",
                               "--streams", "3", "--every", "10", "--jsonl", str(jsonl),
                               "--summary-json", str(summary_json)])
    out = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]  # as they came
    records.sort(key=lambda r: r["sequence"])
    assert [r["sequence"] for r in records] == list(range(300))  # 100 each of 2, 7, 8
    assert {r["stream"] for r in records} == {0, 1, 2}
    assert sum(r["is_anomaly"] for r in records) == 100
    assert all(r["stage"] == "FAST" and r["error"] is None for r in records)
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == 300 and summary["errors"] == 0
    assert sum(summary["verdicts"].values()) == 300
    expected_auroc = roc_auc_score([r["is_anomaly"] for r in records],
                                   [r["score"] for r in records])
    assert summary["auroc"] == round(expected_auroc, 4)
    fails = [r for r in records if r["verdict"] == "FAIL"]
    assert summary["confusion"]["true_positive"] == sum(r["is_anomaly"] for r in fails)
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    # The live table: what it shows, a header and every 10th result; then the summary, with
    # the confusion as a table (rows: truth, columns: verdict).
    lines = out.splitlines()
    assert lines[0] == ("showing 1 result in 10 as they arrive (--every 10); "
                        "the summary counts them all")
    assert lines[1] == stream_client.LiveTable.COLUMNS
    assert len([line for line in lines if line.startswith("mnist_test")]) == 30
    assert f"AUROC {summary['auroc']:.4f}" in out
    confusion = summary["confusion"]
    anomalous_row = next(line for line in lines if line.startswith("anomalous"))
    assert anomalous_row.split()[1:] == [str(confusion["true_positive"]),
                                         str(confusion["false_negative"])]
    normal_row = next(line for line in lines if line.startswith("normal "))
    assert normal_row.split()[1:] == [str(confusion["false_positive"]),
                                      str(confusion["true_negative"])]
    assert "fell behind" not in capsys.readouterr().err  # no --rate asked


def test_client_sends_frame_batches_and_gets_every_result_in_order(server, tmp_path):
    jsonl = tmp_path / "results.jsonl"
    one_by_one = tmp_path / "alone.jsonl"
    for path, extra in ((jsonl, ["--batch", "16"]), (one_by_one, [])):
        code = stream_client.main(["--target", server.target, *DIGITS, "--mode", "fast",
                                   "--streams", "2", "--quiet", "--limit", "70",
                                   "--jsonl", str(path), *extra])
        assert code == 0
    by_sequence = lambda path: sorted((json.loads(line) for line in  # noqa: E731
                                       path.read_text().splitlines()),
                                      key=lambda r: r["sequence"])
    batched, alone = by_sequence(jsonl), by_sequence(one_by_one)
    assert [r["sequence"] for r in batched] == list(range(70))
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in alone],
                                                          rel=1e-5)


def test_client_says_when_nothing_listens(capsys):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code = stream_client.main(["--target", f"localhost:{port}", "--generate", "5", "--quiet"])
    assert code == 2
    assert time.monotonic() - started < 10  # refused at once, not after --connect-timeout
    assert (f"no server at localhost:{port}: start one with `anogan-serve --bundle PATH` or "
            "pass --target" in capsys.readouterr().err)


@pytest.mark.slow
def test_client_warns_when_the_server_falls_behind_the_rate(server, tmp_path, capsys):
    # 600 frames/s of 600-step searches is far beyond this tiny CPU server.
    code = stream_client.main(["--target", server.target, *DIGITS, "--limit", "64",
                               "--mode", "search", "--steps", "600", "--rate", "600",
                               "--quiet", "--summary-json", str(tmp_path / "summary.json")])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["results_per_second"] < 0.95 * 600 and summary["behind_seconds"] > 0.5
    err = capsys.readouterr().err
    assert ("anogan-client: warning: the server fell behind: frames sent at 600/s, results "
            f"came back at {summary['results_per_second']:g}/s") in err


def test_client_is_quiet_about_a_rate_the_server_keeps_up_with(server, capsys):
    code = stream_client.main(["--target", server.target, *DIGITS, "--limit", "40",
                               "--mode", "fast", "--rate", "40", "--quiet"])
    assert code == 0
    assert "fell behind" not in capsys.readouterr().err


def test_generated_frames_are_explained(server, capsys):
    code = stream_client.main(["--target", server.target, "--generate", "20", "--every", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("generated frames: gray frames of one bright straight stroke")
    assert "every 10th also carries a small bright disc, labelled anomalous" in out


@pytest.mark.slow
def test_client_keeps_what_came_back_when_the_server_drains(tiny_bundle, tmp_path, capsys):
    proc = ServerProcess([str(tiny_bundle)], tmp_path / "server.log", "--device", "cpu",
                         "--drain-delay", "0", cwd=ROOT)
    try:
        def terminate_after_some_frames():
            with proc.channel() as channel:
                stub = pb_grpc.InspectionServiceStub(channel)
                wait_for(lambda: stub.GetServerStats(pb.GetServerStatsRequest())
                         .models[0].fast_frames >= 10, what="frames scored")
            proc.terminate()

        killer = threading.Thread(target=terminate_after_some_frames)
        killer.start()
        jsonl = tmp_path / "results.jsonl"
        code = stream_client.main(["--target", proc.target, *DIGITS, "--mode", "fast",
                                   "--rate", "20", "--quiet", "--jsonl", str(jsonl)])
        killer.join()
        assert code == 1
        captured = capsys.readouterr()
        assert "stream 0 ended early: UNAVAILABLE: server is draining" in captured.err
        assert "no result for" in captured.err
        records = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert 10 <= len(records) < 300
        assert [r["sequence"] for r in records] == list(range(len(records)))
        assert proc.stop() == 0
    finally:
        proc.stop(timeout=10)


def test_client_writes_a_roc_plot(server, tmp_path):
    roc = tmp_path / "roc.png"
    code = stream_client.main(["--target", server.target, *DIGITS, "--mode", "fast",
                               "--quiet", "--roc", str(roc)])
    assert code == 0
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and roc.stat().st_size > 1000


@pytest.mark.parametrize("request_, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "noenc", "--mode", "fast"], "model noenc does not serve fast (it serves: search)"),
])
def test_client_exits_2_when_the_server_cannot_serve_it(server, capsys, request_, message):
    code = stream_client.main(["--target", server.target, *DIGITS, "--limit", "4",
                               "--quiet", *request_])
    assert code == 2
    assert message in capsys.readouterr().err


def test_three_replicas_share_the_streams_and_a_drained_one_loses_nothing(tiny_bundle,
                                                                         tmp_path, capsys):
    """Three servers behind one round_robin target: each gets frames; one drains under
    load (health NOT_SERVING, its streams end UNAVAILABLE after their frames in flight),
    and the client resends what it had not answered on new streams, which go to the other
    two: all 300 frames answered once, in order on every stream."""
    from anogan_inspect.server.models import EngineOptions
    from tests.conftest import InProcessServer

    replicas = [InProcessServer([f"tiny={tiny_bundle}"], EngineOptions(device="cpu",
                                                                       max_batch=32),
                                host="127.0.0.1") for _ in range(3)]
    stopped = set()
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{r.server.port}" for r in replicas)
        jsonl, summary_json = tmp_path / "results.jsonl", tmp_path / "summary.json"
        outcome = {}
        client = threading.Thread(target=lambda: outcome.setdefault("code", stream_client.main(
            ["--target", target, "--lb", "round_robin", "--resend", "5", *DIGITS,
             "--mode", "fast", "--streams", "6", "--rate", "100", "--quiet",
             "--jsonl", str(jsonl), "--summary-json", str(summary_json)])))
        client.start()
        frames = lambda i: replicas[i].server.service.models["tiny"].stats()[  # noqa: E731
            "fast_frames"]
        wait_for(lambda: sum(frames(i) for i in range(3)) >= 30,
                 what="the streams to reach the replicas")
        # Drain the busiest (a drain, as on SIGTERM, while the streams go on): its streams
        # move to the others, so by the end every replica has had frames, even if
        # round_robin had put them all on one before the others' connections were up.
        busiest = max(range(3), key=frames)
        drained_frames = frames(busiest)
        replicas[busiest].stop()
        stopped.add(busiest)
        client.join(120)
        served = [drained_frames if i == busiest else frames(i) for i in range(3)]
    finally:
        for i, replica in enumerate(replicas):
            if i not in stopped:
                replica.stop()
    assert all(count > 0 for count in served), served
    assert outcome["code"] == 0, capsys.readouterr()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["sequence"] for r in records) == list(range(300))  # each once
    summary = json.loads(summary_json.read_text())
    assert summary["frames"] == 300 and summary["errors"] == 0
    assert summary["streams_restarted"] >= 1
    assert "opened again (--resend)" in capsys.readouterr().out
