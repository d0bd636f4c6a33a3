"""Scores reproducible offline: the server, `anogan-train evaluate` and `anogan-train score`
give the same frame the same score (to the cascade's margin) and the same verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients.sources import csv_frames
from anogan_inspect.datasets import load_dataset
from anogan_inspect.trainer.cli import main as train_main
from tests.conftest import TEST_CSV

TOLERANCE = 1e-3  # relative: ONNX vs torch and batching, well inside what a verdict needs


def write_pngs(folder, images: list[np.ndarray]) -> list:
    """uint8 (H, W, 1) images → PNG files, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image[..., 0]).save(path)
        paths.append(path)
    return paths


def server_results(server, model: str, mode, paths) -> list[pb.InspectionResult]:
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        config = pb.InspectionConfig(model=model, mode=mode)
        requests = [pb.StreamInspectRequest(config=config)] + [
            pb.StreamInspectRequest(frame=pb.Frame(
                frame_id=p.name, sequence=i, encoded=pb.EncodedImage(data=p.read_bytes())))
            for i, p in enumerate(paths)]
        return [r.result for r in stub.StreamInspect(iter(requests), timeout=300)]


def offline(bundle, mode: str, folder, tmp_path, capsys) -> list[dict]:
    out = tmp_path / f"{mode}.jsonl"
    assert train_main(["score", "--bundle", str(bundle), "--mode", mode, "--out", str(out),
                       "--device", "cpu", str(folder)]) == 0
    capsys.readouterr()
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    digits = list(csv_frames(TEST_CSV, [7, 8], [2]))[::25]  # 12 digits, 2s among them
    return write_pngs(tmp_path_factory.mktemp("digits"), [d.pixels for d in digits])


@pytest.mark.parametrize("mode, pb_mode", [("search", pb.MODE_SEARCH),
                                           ("cascade", pb.MODE_CASCADE),
                                           ("fast", pb.MODE_FAST)])
def test_score_agrees_with_the_server(server, tiny_bundle, digit_pngs, tmp_path, capsys,
                                      mode, pb_mode):
    served = server_results(server, "tiny", pb_mode, digit_pngs)
    scored = offline(tiny_bundle, mode, digit_pngs[0].parent, tmp_path, capsys)
    assert [r["file"] for r in scored] == [str(p) for p in digit_pngs]
    for result, record in zip(served, scored):
        assert record["score"] == pytest.approx(result.score, rel=TOLERANCE)
        assert record["verdict"] == pb.Verdict.Name(result.verdict).removeprefix("VERDICT_")
        assert record["stage"] == pb.Stage.Name(result.stage).removeprefix("STAGE_").lower()


def test_tiled_score_agrees_with_the_server(server, tiny_tiled_bundle, texture_data, tmp_path,
                                            capsys):
    frames = (load_dataset(texture_data, split="test").images[::3] * 255 + 0.5)
    paths = write_pngs(tmp_path / "frames", [f.transpose(1, 2, 0).astype(np.uint8)
                                             for f in frames])
    served = server_results(server, "tex", pb.MODE_CASCADE, paths)
    scored = offline(tiny_tiled_bundle, "cascade", tmp_path / "frames", tmp_path, capsys)
    for result, record in zip(served, scored):
        assert record["score"] == pytest.approx(result.score, rel=TOLERANCE)
        assert record["verdict"] == pb.Verdict.Name(result.verdict).removeprefix("VERDICT_")
        assert (record["tiles"], record["tiles_searched"]) == (result.tiles,
                                                               result.tiles_searched)


def test_evaluate_writes_the_scores_score_gives(tiny_bundle, digit_pngs, tmp_path, capsys):
    report = tmp_path / "report"
    assert train_main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(TEST_CSV),
                       "--normal-labels", "7,8", "--anomaly-labels", "2", "--out", str(report),
                       "--device", "cpu"]) == 0
    evaluated = [json.loads(line) for line in (report / "scores.jsonl").read_text()
                 .splitlines()]
    assert len(evaluated) == 300 and {"index", "label", "score", "verdict"} <= set(evaluated[0])
    scored = offline(tiny_bundle, "search", digit_pngs[0].parent, tmp_path, capsys)
    for k, record in enumerate(scored):  # the PNGs are every 25th test digit
        assert record["score"] == pytest.approx(evaluated[25 * k]["score"], rel=TOLERANCE)


def test_score_names_a_missing_file(tiny_bundle, tmp_path, capsys):
    assert train_main(["score", "--bundle", str(tiny_bundle), str(tmp_path / "nope.png")]) == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err

