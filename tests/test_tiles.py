"""Tiled inspection: geometry, stitching, the per-tile cascade, localisation, pixel metrics,
the tiled trainer and evaluate, and full-resolution frames through the server."""

from __future__ import annotations

import io
import json
import threading

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.bundle import load_torch_models, read_bundle
from anogan_inspect.clients import stream_client
from anogan_inspect.datasets import load_dataset
from anogan_inspect.metrics import pixel_auroc, pro_score
from anogan_inspect.search import fast_clears, fast_score
from anogan_inspect.server.models import ServedModel
from anogan_inspect.tiling import (
    Tiling,
    cut_tiles,
    find_regions,
    label_components,
    scale_frame,
    stitch,
    tiles_to_search,
)
from anogan_inspect.trainer.cli import main as train_main
from anogan_inspect.trainer.evaluate_tiles import read_masks
from anogan_inspect.trainer.tiles import frame_tiles, score_frames
from bench.texture_data import load_texture
from tests.test_server import stats, wait_for

# -- geometry --------------------------------------------------------------------------------

@pytest.mark.parametrize("size, patch, stride", [((48, 48), 16, 8), ((50, 37), 16, 16),
                                                 ((64, 100), 32, 12), ((16, 16), 16, 4)])
def test_tiles_cover_the_frame_and_stitch_back_exactly(size, patch, stride):
    tiling = Tiling(patch=patch, stride=stride)
    frame = torch.rand(1, *size)
    tiles, origins = cut_tiles(frame, tiling)
    assert tiles.shape == (len(origins), 1, patch, patch)
    tops, lefts = sorted({t for t, _ in origins}), sorted({left for _, left in origins})
    assert tops[0] == 0 and tops[-1] == size[0] - patch  # flush with the edges
    assert lefts[0] == 0 and lefts[-1] == size[1] - patch
    assert max(np.diff(tops), default=0) <= stride and max(np.diff(lefts), default=0) <= stride
    # A frame made of its own tiles maps back to the same pixels (overlaps averaged).
    back = stitch(tiles[:, 0].numpy(), origins, size)
    np.testing.assert_allclose(back, frame[0].numpy(), atol=1e-6)


def test_each_tile_lands_where_it_came_from():
    tiling = Tiling(patch=8, stride=8)
    tile_values = np.arange(12, dtype=np.float32)  # a 24×32 frame: 3 × 4 tiles
    maps = np.repeat(tile_values, 64).reshape(12, 8, 8)
    origins = tiling.origins(24, 32)
    back = stitch(maps, origins, (24, 32))
    for value, (top, left) in zip(tile_values, origins):
        assert (back[top:top + 8, left:left + 8] == value).all()


def test_scaling_and_frames_smaller_than_a_tile():
    tiling = Tiling(patch=16, stride=8, scale=0.5)
    assert scale_frame(torch.rand(3, 64, 40), tiling).shape == (3, 32, 20)
    with pytest.raises(ValueError, match="smaller than one 16×16 tile"):
        scale_frame(torch.rand(1, 30, 64), tiling)
    with pytest.raises(ValueError, match="stride"):
        Tiling(patch=16, stride=17)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        Tiling(patch=16, stride=8, aggregate="topk", top_k=0)


def test_aggregates():
    scores = np.array([1.0, 5.0, 3.0, 4.0])
    assert Tiling(16, 8).aggregate_scores(scores) == 5.0
    assert Tiling(16, 8, aggregate="topk", top_k=3).aggregate_scores(scores) == 4.0


def test_regions_are_connected_components_with_boxes():
    anomaly_map = np.zeros((20, 30), dtype=np.float32)
    anomaly_map[2:5, 3:7] = 0.8
    anomaly_map[10:12, 20:29] = 0.5
    anomaly_map[11, 29] = 0.9  # diagonal neighbours join (8-connected)
    regions = find_regions(anomaly_map, 0.3)
    assert [(r.top, r.left, r.height, r.width) for r in regions] == [(10, 20, 2, 10),
                                                                     (2, 3, 3, 4)]
    assert regions[0].peak == pytest.approx(0.9) and regions[1].area == 12
    assert label_components(anomaly_map > 0.3)[1] == 2


# -- pixel metrics ---------------------------------------------------------------------------

def test_pixel_auroc_and_pro_on_hand_made_maps():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0:2] = True  # one region of 2 pixels in the first image
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0  # half of the region above every normal pixel
    maps[0, 0, 1] = 0.5
    maps[1, 3, 3] = 0.75  # one normal pixel between the region's two
    # 30 normal pixels: 29 below both region pixels, 1 between them.
    assert pixel_auroc(maps, masks) == pytest.approx((29 * 2 + 1) / 60)
    perfect = masks.astype(float)
    assert pro_score(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(perfect, masks) == 1.0
    # A map that scores the region below every normal pixel: nothing of it is found before
    # every normal pixel is (the curve runs (0, 0) → (1, 0) → (1, 1)), as MVTec AD's PRO.
    assert pro_score(np.where(masks, 0.0, 1.0), masks) == pytest.approx(0.0)
    # Half of the region above every normal pixel, all of it once 1 normal pixel in 30 is.
    assert pro_score(maps, masks) == pytest.approx((0.5 / 30 + (0.3 - 1 / 30)) / 0.3)


def test_masks_are_read_from_the_mvtec_layout(texture_data):
    data = load_dataset(texture_data, split="test")
    masks = read_masks(texture_data, data)
    assert masks.shape == (len(data), 48, 48)
    assert not masks[~data.is_anomaly].any()
    assert all(masks[i].any() for i in np.flatnonzero(data.is_anomaly))
    name = next(f for f in data.files if f.startswith("hole/"))
    expected = np.asarray(Image.open(texture_data / "ground_truth" / "hole" /
                                     name.replace("hole/", "").replace(".png", "_mask.png")))
    np.testing.assert_array_equal(masks[data.files.index(name)], expected > 127)


# -- the tiled model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiled(tiny_tiled_bundle):
    bundle = read_bundle(tiny_tiled_bundle)
    return bundle, load_torch_models(bundle, "cpu")


def test_tiled_manifest(tiny_tiled_bundle):
    manifest = read_bundle(tiny_tiled_bundle).manifest
    assert manifest["tiling"]["patch"] == 16 and manifest["tiling"]["stride"] == 8
    assert manifest["geometry"]["height"] == 16
    assert manifest["tiling"]["pixel_threshold"] > 0
    fit = manifest["training"]["fit"]
    assert set(fit) >= {"reconstruction_error", "mean_image_error",
                        "reconstruction_vs_mean_image", "learned"}


def test_the_per_tile_cascade_never_clears_a_tile_the_search_would_fail(tiled, texture_data):
    bundle, models = tiled
    frames = load_dataset(texture_data, split="test").images
    x, _, _ = frame_tiles(frames, bundle.tiling, bundle.channels)
    cfg = bundle.search_config
    s0, _ = fast_score(models, x, cfg.lam)
    searched = score_frames(models, frames, bundle.tiling, cfg, "cpu", want_maps=False)
    final = np.concatenate(searched.tile_scores)
    assert (final <= s0 + 1e-3).all()  # the search keeps its best, from E(x)
    threshold = float(np.median(s0))  # any threshold: here one that splits the tiles
    cleared = fast_clears(s0, threshold)
    assert cleared.any() and (~cleared).any()
    assert (final[cleared] <= threshold).all()
    cascade = score_frames(models, frames, bundle.tiling, cfg, "cpu", threshold=threshold,
                           want_maps=False)
    np.testing.assert_array_equal(cascade.score > threshold, searched.score > threshold)
    assert cascade.searched.sum() == (~cleared).sum()


def planted(size: int = 48, seed: int = 3) -> tuple[np.ndarray, tuple[int, int]]:
    """A texture frame with a white 6×6 square at a random place: (frame, its corner)."""
    texture = load_texture()
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, 512 - size, 2)
    frame = texture[top:top + size, left:left + size].copy()
    corner = tuple(int(v) for v in rng.integers(4, size - 10, 2))
    frame[corner[0]:corner[0] + 6, corner[1]:corner[1] + 6] = 1.0
    return frame[None], corner


def test_a_planted_defect_is_found_in_its_tile(tiled):
    bundle, models = tiled
    frame, (cy, cx) = planted()
    x, origins, _ = frame_tiles(frame[None], bundle.tiling, bundle.channels)
    s0, _ = fast_score(models, x, bundle.search_config.lam)
    top, left = origins[0][int(np.argmax(s0))]
    assert top <= cy + 5 and cy < top + 16 and left <= cx + 5 and cx < left + 16
    result = score_frames(models, frame[None], bundle.tiling, bundle.search_config, "cpu",
                          threshold=bundle.threshold)
    peak = np.unravel_index(np.argmax(result.maps[0]), result.maps[0].shape)
    assert cy - 3 <= peak[0] <= cy + 8 and cx - 3 <= peak[1] <= cx + 8


def test_training_refuses_a_model_that_did_not_learn_when_asked(texture_data, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = train_main(["train", "--data", str(texture_data), "--preset", "tiny",
                       "--patch-size", "16", "--epochs", "1", "--encoder-epochs", "1",
                       "--steps", "2", "--out", str(out), "--run-dir", str(tmp_path / "run"),
                       "--device", "cpu", "--require-fit"])
    assert code == 2
    assert "the generator did not learn the data" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_reports_image_and_pixel_metrics(tiny_tiled_bundle, texture_data, tmp_path,
                                                  capsys):
    out = tmp_path / "report"
    code = train_main(["evaluate", "--bundle", str(tiny_tiled_bundle), "--data",
                       str(texture_data), "--out", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    cascade = report["cascade"]
    assert 0 <= cascade["image_auroc"] <= 1 and 0 <= cascade["pixel_auroc"] <= 1
    assert 0 <= cascade["pro_30"] <= 1
    assert set(report["per_defect"]) == {"scratch", "hole", "stain", "patch"}
    assert report["tiles_per_frame"] == 25 and set(report["aggregates"]) >= {"max",
                                                                              "top3_mean"}
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == report["images"] and lines[0]["file"].startswith(("good/", "hole/",
                                                                           "patch/", "scratch/",
                                                                           "stain/"))
    assert len(lines[0]["tile_scores"]) == 25
    assert (out / "maps.png").stat().st_size > 1000 and (out / "roc.png").exists()
    assert "pixel AUROC" in capsys.readouterr().out


# -- through the server ----------------------------------------------------------------------

def raw_frame(pixels: np.ndarray, sequence: int = 0) -> pb.Frame:
    """A gray float frame (1, H, W) in [0, 1] → a raw uint8 Frame."""
    data = (pixels[0] * 255 + 0.5).astype(np.uint8)
    return pb.Frame(frame_id=f"f{sequence}", sequence=sequence,
                    raw=pb.RawImage(data=data.tobytes(), data_type=pb.DATA_TYPE_UINT8,
                                    height=data.shape[0], width=data.shape[1], channels=1))


def test_a_512_frame_comes_back_with_a_verdict_a_map_and_regions(server):
    texture = load_texture()[None]
    texture[:, 200:210, 300:340] = 1.0  # a bright bar
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        model = stub.GetModel(pb.GetModelRequest(name="tex")).model
        assert (model.tiling.patch, model.tiling.stride) == (16, 8)
        config = pb.InspectionConfig(model="tex", return_residual_map=True)
        result = stub.Inspect(pb.InspectRequest(config=config, frame=raw_frame(texture)),
                              timeout=300).result
        assert result.verdict in (pb.VERDICT_PASS, pb.VERDICT_FAIL)
        assert result.tiles == 63 * 63 and 0 <= result.tiles_searched <= result.tiles
        heat = result.anomaly_map
        assert (heat.height, heat.width) == (512, 512)
        png = np.asarray(Image.open(io.BytesIO(heat.png)))
        assert png.shape == (512, 512) and heat.png_scale > 0
        assert heat.pixel_threshold == pytest.approx(model.tiling.pixel_threshold)
        assert heat.regions and all(r.peak > heat.pixel_threshold for r in heat.regions)
        bar = heat.regions[0]  # the highest peak is on the bar
        assert bar.top <= 209 and bar.top + bar.height >= 200
        assert bar.left <= 339 and bar.left + bar.width >= 300
        raw = pb.InspectionConfig(model="tex", return_residual_map=True,
                                  map_encoding=pb.MAP_ENCODING_FLOAT16, mode=pb.MODE_FAST)
        fast = stub.Inspect(pb.InspectRequest(config=raw, frame=raw_frame(texture[:, :64, :64])),
                            timeout=60).result
        values = np.frombuffer(fast.anomaly_map.float16_data, dtype="<f2")
        assert values.shape == (64 * 64,) and fast.stage == pb.STAGE_FAST


@pytest.mark.slow
def test_tiles_of_several_streams_share_engine_batches(server):
    frame = load_texture()[None, :32, :32]  # 9 tiles
    config = pb.InspectionConfig(model="tex", mode=pb.MODE_SEARCH, search_steps=1500)
    results: list[pb.InspectionResult] = []
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)

        def run(sequence: int) -> None:
            requests = [pb.StreamInspectRequest(config=config),
                        pb.StreamInspectRequest(frame=raw_frame(frame, sequence))]
            results.extend(r.result for r in stub.StreamInspect(iter(requests), timeout=300))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        # One frame alone fills 9 slots: 18 active at once means both streams' tiles in the
        # same engine steps (every active slot steps together).
        wait_for(lambda: stats(stub, "tex").active_slots == 18,
                 what="both frames' tiles in the engine at once")
        assert stats(stub, "tex").max_search_batch >= 18
        for thread in threads:
            thread.join(300)
    assert len(results) == 2 and all(r.tiles == 9 and r.tiles_searched == 9 for r in results)
    assert all(r.search_steps == 1500 for r in results)


def test_a_frame_smaller_than_a_tile_is_a_per_frame_error(server):
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        config = pb.InspectionConfig(model="tex")
        requests = [pb.StreamInspectRequest(config=config),
                    pb.StreamInspectRequest(frame=raw_frame(np.zeros((1, 8, 8)), 0)),
                    pb.StreamInspectRequest(frame=raw_frame(load_texture()[None, :32, :32], 1))]
        results = [r.result for r in stub.StreamInspect(iter(requests), timeout=120)]
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "smaller than one 16×16 tile" in results[0].error.message
    assert results[1].verdict in (pb.VERDICT_PASS, pb.VERDICT_FAIL)



def test_the_client_saves_overlays_of_maps_and_regions(server, texture_data, tmp_path, capsys):
    overlays = tmp_path / "overlays"
    code = stream_client.main(["--target", server.target, "--folder", str(texture_data),
                               "--model", "tex", "--quiet", "--overlays", str(overlays)])
    assert code == 0
    pictures = sorted(overlays.glob("*.png"))
    assert len(pictures) == 20  # 8 normal and 3 of each of the 4 defects
    image = Image.open(pictures[0])
    assert image.mode == "RGB" and image.height > 48  # the frame under its caption strip
    assert "AUROC" in capsys.readouterr().out  # the folder's labels: good vs defects


def test_which_tiles_the_server_searches_for_each_aggregate():
    """max: each tile on its own bound; topk: the frame clears at once or all are searched."""
    s0 = np.array([3.0, 12.0, 9.0, 11.0])
    max_tiling = Tiling(16, 8, aggregate="max")
    np.testing.assert_array_equal(tiles_to_search(max_tiling, s0, 10.0),
                                  [False, True, False, True])
    topk = Tiling(16, 8, aggregate="topk", top_k=2)  # top-2 mean of s0: 11.5
    assert tiles_to_search(topk, s0, 10.0).all()
    assert not tiles_to_search(topk, np.array([3.0, 9.0, 9.5, 2.0]), 10.0).any()  # 9.25


def test_the_servers_tiled_cascade_decides_as_the_search_does(server, texture_data):
    frames = load_dataset(texture_data, split="test").images
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)

        def verdicts(mode):
            config = pb.InspectionConfig(model="tex", mode=mode)
            requests = [pb.StreamInspectRequest(config=config)] + [
                pb.StreamInspectRequest(frame=raw_frame(f, i)) for i, f in enumerate(frames)]
            return [r.result for r in stub.StreamInspect(iter(requests), timeout=300)]

        cascade, search = verdicts(pb.MODE_CASCADE), verdicts(pb.MODE_SEARCH)
    assert [r.verdict for r in cascade] == [r.verdict for r in search]
    assert all(r.tiles == 25 and r.tiles_searched == 25 for r in search)
    assert sum(r.tiles_searched for r in cascade) < sum(r.tiles_searched for r in search)
    for c, s in zip(cascade, search):  # a cleared frame's score is an upper bound
        assert s.score <= c.score + 1e-3 * abs(c.score)


def test_a_frame_of_too_many_tiles_is_refused(tiny_tiled_bundle):
    from anogan_inspect.server.models import EngineOptions

    bundle = read_bundle(tiny_tiled_bundle)
    model = ServedModel.__new__(ServedModel)  # preprocess needs the tiling and options only
    model.tiling, model.bundle, model.memory = bundle.tiling, bundle, None
    model.options = EngineOptions(max_tiles=100)
    assert len(model.preprocess(np.zeros((1, 48, 48), np.float32)).tiles) == 25
    with pytest.raises(ValueError, match=r"a 512×512 frame is 3969 tiles of 16×16; the limit "
                                         r"is 100 \(--max-tiles\)"):
        model.preprocess(np.zeros((1, 512, 512), np.float32))
