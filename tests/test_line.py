"""A line PC's way in, against a real server: a hot folder filling while it is watched,
a video file, a folder of mixed sizes sent as files, overlays for a whole-frame model,
options that cannot apply, a reject archive through a kill -9, and the operator's page
in a real headless Chromium (with the operators' verdicts it sends to a learning server)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from anogan_inspect.clients import stream_client
from anogan_inspect.clients.archive import Archive
from anogan_inspect.server.models import EngineOptions
from tests.conftest import ROOT, TEST_CSV, InProcessServer

CLIENT = [sys.executable, "-m", "anogan_inspect.clients.stream_client"]


def digits(count: int) -> list[np.ndarray]:
    """`count` MNIST test digits, uint8 (28, 28)."""
    with gzip.open(TEST_CSV, "rt") as csv:
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, max_rows=count, dtype=np.uint8)
    return list(rows[:, 1:].reshape(-1, 28, 28))


def png(image: np.ndarray, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_hot_folder_filling_at_20_files_a_second_is_answered_once_per_file(server,
                                                                             tmp_path):
    """Files of mixed sizes arrive at 20/s while the client watches, some written in two
    halves a while apart, some cut short for good: every whole file is answered once,
    under its own name, a truncated one gets a per-frame error once it stops growing, and
    a restarted client sends none of them again."""
    hot = tmp_path / "hot"
    hot.mkdir()
    images = digits(60)
    whole, cut = {}, {}

    def acquisition():
        for i, image in enumerate(images):
            data = png(image, (28, 40, 64)[i % 3])
            name = f"part-{i:03d}.png"
            if i % 15 == 7:  # cut short for good: the rest never comes
                (hot / name).write_bytes(data[:len(data) // 2])
                cut[name] = data
            elif i % 10 == 3:  # written in two halves, 0.3 s apart (still growing)
                with open(hot / name, "wb") as file:
                    file.write(data[:len(data) // 2])
                    file.flush()
                    time.sleep(0.3)
                    file.write(data[len(data) // 2:])
                whole[name] = data
            else:
                (hot / ".tmp").write_bytes(data)  # written aside, renamed in at once
                os.replace(hot / ".tmp", hot / name)
                whole[name] = data
            time.sleep(0.05)

    writer = threading.Thread(target=acquisition)
    jsonl = tmp_path / "first.jsonl"
    writer.start()
    code = stream_client.main(["--target", server.target, "--watch", str(hot), "--mode",
                               "fast", "--settle", "1", "--idle-exit", "3", "--quiet",
                               "--streams", "2", "--jsonl", str(jsonl)])
    writer.join()
    assert code == 0
    first = results(jsonl)
    names = [r["frame_id"] for r in first]
    assert sorted(names) == sorted([*whole, *cut])  # each once, under its own name
    by_name = {r["frame_id"]: r for r in first}
    assert all(by_name[name]["error"] is None for name in whole)
    assert all(by_name[name]["error"] for name in cut)  # truncated: the server says so

    # A restarted client sends nothing already answered; a new file, yes
    (hot / "late.png").write_bytes(png(images[0], 32))
    again = tmp_path / "again.jsonl"
    assert stream_client.main(["--target", server.target, "--watch", str(hot), "--mode",
                               "fast", "--idle-exit", "1.5", "--quiet", "--jsonl",
                               str(again), "--move-by-verdict"]) == 0
    assert [r["frame_id"] for r in results(again)] == ["late.png"]
    moved = [p.name for sub in ("done", "failed") if (hot / sub).is_dir()
             for p in (hot / sub).iterdir()]
    assert moved == ["late.png"] and not (hot / "late.png").exists()
    log = [json.loads(line) for line in (hot / stream_client.STATE_FILE).read_text()
           .splitlines()]
    assert len(log) == len(first) + 1
    # The log is compacted at start to the files still there: late.png was moved away
    assert stream_client.main(["--target", server.target, "--watch", str(hot), "--mode",
                               "fast", "--idle-exit", "0.5", "--quiet"]) == 0
    log = [json.loads(line)["name"] for line in (hot / stream_client.STATE_FILE).read_text()
           .splitlines()]
    assert sorted(log) == sorted(names)


def test_a_video_file_streams_frame_by_frame(server, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 32))
    for image in digits(12):
        frame = cv2.cvtColor(cv2.resize(image, (40, 32)), cv2.COLOR_GRAY2BGR)
        writer.write(frame)
    writer.release()
    jsonl = tmp_path / "video.jsonl"
    assert stream_client.main(["--target", server.target, "--video", str(video), "--mode",
                               "fast", "--quiet", "--jsonl", str(jsonl)]) == 0
    got = sorted(results(jsonl), key=lambda r: r["sequence"])
    assert [r["frame_id"] for r in got] == [f"frame-{n:06d}" for n in range(12)]
    assert all(r["error"] is None for r in got)


def test_a_folder_of_mixed_sizes_is_sent_as_its_files_with_whole_frame_overlays(
        server, tmp_path, capsys):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, image in enumerate(digits(6)):
        side = (20, 28, 50)[i % 3]
        if i % 2:
            Image.fromarray(image).resize((side, side)).save(folder / f"p{i}.jpg", quality=90)
        else:
            (folder / f"p{i}.png").write_bytes(png(image, side))
    jsonl, overlays = tmp_path / "folder.jsonl", tmp_path / "overlays"
    assert stream_client.main(["--target", server.target, "--folder", str(folder), "--mode",
                               "fast", "--quiet", "--jsonl", str(jsonl), "--overlays",
                               str(overlays)]) == 0
    got = sorted(results(jsonl), key=lambda r: r["sequence"])
    assert [r["frame_id"] for r in got] == sorted(p.name for p in folder.iterdir())
    assert all(r["error"] is None for r in got)
    # A whole-frame model's overlays: its residual map, upsampled to each frame
    written = sorted(overlays.iterdir())
    assert len(written) == 6
    tinted = np.asarray(Image.open(written[0]).convert("RGB"), dtype=np.int16)
    assert (tinted[..., 0] - tinted[..., 2]).max() > 40  # the heat tint is there


@pytest.mark.parametrize("extra, message", [
    (["--watch", "{tmp}", "--split", "test"], "--split applies with --folder only"),
    (["--generate", "5", "--settle", "2"], "--settle applies with --watch only"),
    (["--generate", "5", "--archive-pass-every", "3"],
     "--archive-pass-every applies with --archive only"),
    (["--watch", "{tmp}", "--roc", "{tmp}/roc.png"], "--roc needs labelled frames"),
    (["--csv", str(TEST_CSV), "--web-linger", "5"], "--web-linger applies with --web only"),
])
def test_an_option_that_cannot_apply_says_so_and_exits_2(extra, message, tmp_path, capsys):
    argv = [part.replace("{tmp}", str(tmp_path)) for part in extra]
    assert stream_client.main(["--target", "localhost:1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_archive_survives_a_kill_9_of_the_client_and_keeps_its_bound(server, tmp_path):
    archive = tmp_path / "archive"
    client = subprocess.Popen([*CLIENT, "--target", server.target, "--generate", "100000",
                               "--size", "48", "--mode", "fast", "--quiet", "--archive",
                               str(archive), "--archive-pass-every", "1",
                               "--archive-max-bytes", "30KiB"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        index = archive / "index.sqlite3"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the archive has evicted frames
            try:
                with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
                    first = db.execute("SELECT min(id) FROM frames").fetchone()[0]
            except sqlite3.OperationalError:  # not there yet, or its schema not yet written
                first = None
            if first and first > 5:  # some evicted: the bound is at work
                break
            time.sleep(0.2)
        else:
            pytest.fail("the archive did not fill: " + client.stderr.read1().decode())
        client.send_signal(signal.SIGKILL)
    finally:
        client.kill()
        client.wait()
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Archive(archive, max_bytes=30 << 10) as reopened:
        rows = reopened.list(limit=None)
        assert rows and all((archive / r["original"]).is_file() for r in rows)
        on_disk = sum(p.stat().st_size for p in (archive / "frames").iterdir())
        assert on_disk == reopened.stats()["bytes"] <= 30 << 10
        assert {p.name for p in (archive / "frames").iterdir()} == \
            {os.path.basename(r[key]) for r in rows for key in ("original", "overlay")
             if r[key]}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ANOGAN_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran, in a real headless Chromium."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_operators_page_shows_results_opens_a_reject_and_sends_verdicts(tiny_bundle,
                                                                           tmp_path):
    """The page, in a real headless Chromium, of a client with an archive, an admin token
    and the server's metrics: a streamed result, the threshold line, the model's drift, an
    archived reject that opens with its original and result, and GOOD/DEFECT buttons that
    send Feedback (audited) to a server following a models folder."""
    chromium()
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "digits")
    (tmp_path / "admin").write_text("boss-token\n")
    audit = tmp_path / "audit.jsonl"
    server = InProcessServer([], EngineOptions(device="cpu"), models_dir=models,
                             models_poll=0.1, admin_tokens=tmp_path / "admin",
                             audit_log=audit, learn_after=0, metrics_port=0)
    client = None
    try:
        client = subprocess.Popen([
            *CLIENT, "--target", server.target, "--csv", str(TEST_CSV), "--normal-labels",
            "7,8", "--anomaly-labels", "2", "--limit", "40", "--mode", "fast", "--quiet",
            "--archive", str(tmp_path / "archive"), "--web", "0", "--web-linger", "120",
            "--admin-token-file", str(tmp_path / "admin"), "--metrics-url",
            f"http://localhost:{server.server.metrics_port}/metrics"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = client.stdout.readline()
        assert "operator's page: " in line, client.stderr.read()
        url = line.split("operator's page: ")[-1].split()[0]
        state: dict = {}
        window = lambda: state.get("drift", {}).get("fast", {}).get("window_frames")  # noqa: E731
        deadline = time.monotonic() + 60
        while window() != 40 and time.monotonic() < deadline:  # (drift: asked every 5 s)
            time.sleep(0.2)
            state = json.load(urllib.request.urlopen(url + "api/state"))
        assert window() == 40 and sum(state["counts"].values()) == 40
        page = dump_dom(url)
        last = state["results"][0]
        assert f'data-sequence="{last["sequence"]}"' in page  # a streamed result, shown
        assert 'id="threshold"' in page  # the threshold line on the score plot
        assert "digits" in page and state["model"]["version"] in page
        assert "drift (fast): PSI" in page

        rejects = json.load(urllib.request.urlopen(url + "api/archive"))
        assert rejects and all(r["verdict"] == "FAIL" for r in rejects)
        detail = dump_dom(f"{url}#archive/{rejects[0]['id']}")
        assert f'src="/archive/{rejects[0]["id"]}/original"' in detail
        assert rejects[0]["frame_id"] in detail  # the result's JSON
        original = urllib.request.urlopen(f"{url}archive/{rejects[0]['id']}/original").read()
        assert original.startswith(b"\x89PNG")

        normal = next(r for r in state["results"] if r["is_anomaly"] is False)
        assert f'data-id="{normal["frame_id"]}" data-label="GOOD"' in page
        verdict = json.dumps({"frame_id": normal["frame_id"], "label": "GOOD"}).encode()
        forged = urllib.request.Request(url + "api/feedback", method="POST", data=verdict,
                                        headers={"content-type": "text/plain"})
        with pytest.raises(urllib.error.HTTPError, match="403"):  # another site's form
            urllib.request.urlopen(forged)
        request = urllib.request.Request(url + "api/feedback", method="POST", data=verdict,
                                         headers={"content-type": "application/json",
                                                  "x-anogan-page": "1"})  # the GOOD button's
        answer = json.load(urllib.request.urlopen(request))
        assert answer["ok"] and answer["outcome"] in ("COLLECTED", "HELD")
        client.send_signal(signal.SIGINT)  # ends the lingering page
        assert client.wait(timeout=30) == 0
    finally:
        if client is not None:
            client.kill()
            client.wait()
        server.stop()
    entry = json.loads(audit.read_text().splitlines()[-1])
    assert (entry["call"], entry["model"], entry["label"]) == ("Feedback", "digits", "GOOD")
    assert entry["note"] == "from the operator's page"


def test_ctrl_c_stops_reading_and_the_frames_sent_are_answered(server, tmp_path):
    """A source far from its end (the queue to the streams full): the first SIGINT stops
    reading it, every frame sent is answered and summarised, and the client exits 0."""
    jsonl = tmp_path / "results.jsonl"
    client = subprocess.Popen([*CLIENT, "--target", server.target, "--generate", "1000000",
                               "--mode", "fast", "--quiet", "--streams", "2", "--batch", "8",
                               "--window", "4", "--jsonl", str(jsonl)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 50) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 0, err
    answered = results(jsonl)
    assert len(answered) >= 50 and f"frames {len(answered)}  errors 0" in out
    assert sorted(r["sequence"] for r in answered) == list(range(len(answered)))
    assert "stopping: no more frames are read" in err
