"""Memory bundles: the coreset, the kNN in torch and ONNX Runtime, the bundle's checks, the
trainer's options and the served verdicts, maps, regions and G(z) under them."""

from __future__ import annotations

import io
import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.bundle import BundleError, load_memory_scorer, read_bundle
from anogan_inspect.datasets import load_dataset
from anogan_inspect.memory import (
    MemoryConfig,
    MemoryScorer,
    build_features,
    edge_places,
    extract,
    frames_input,
    greedy_coreset,
    nearest_squared,
    select_memory,
)
from anogan_inspect.onnxrt import make_session
from anogan_inspect.search import CASCADE_MARGIN
from anogan_inspect.server.models import EngineOptions, load_model
from anogan_inspect.trainer.cli import main as train_main
from tests.conftest import train_tiny_memory
from tests.test_tiles import raw_frame


def k_center_radius(points: np.ndarray, centres) -> float:
    """The largest distance from a point to its nearest centre."""
    d = np.linalg.norm(points[:, None] - points[list(centres)][None], axis=-1)
    return float(d.min(1).max())


def test_the_greedy_coreset_is_the_greedy_k_center_and_within_twice_the_optimum():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 0.3, (6, 2)), rng.normal(4, 0.3, (5, 2)),
                             rng.normal((0, 5), 0.3, (3, 2))]).astype(np.float32)
    k = 3
    chosen = greedy_coreset(torch.as_tensor(points), k, projection=0, seed=0).tolist()
    # The same greedy rule by brute force: from the same start, the farthest point each time.
    reference = [chosen[0]]
    while len(reference) < k:
        distance = np.linalg.norm(points[:, None] - points[reference][None], axis=-1).min(1)
        reference.append(int(np.argmax(distance)))
    assert chosen == reference
    # Against the optimum over all k-subsets: greedy k-center is a 2-approximation, and
    # on three well separated clusters it picks one point in each.
    optimum = min(k_center_radius(points, c) for c in itertools.combinations(range(14), k))
    greedy = k_center_radius(points, chosen)
    assert greedy <= 2 * optimum
    assert len({0 if c < 6 else 1 if c < 11 else 2 for c in chosen}) == k


def test_the_gemm_form_finds_the_nearest_memory_row_in_any_chunking():
    gen = torch.Generator().manual_seed(0)
    features, memory = torch.randn(300, 24, generator=gen), torch.randn(1000, 24, generator=gen)
    expected = torch.cdist(features.double(), memory.double()).min(1).values.pow(2)
    for chunk in (7, 256, 4096):
        found = nearest_squared(features, memory, memory.pow(2).sum(1), chunk)
        torch.testing.assert_close(found.double(), expected, rtol=1e-4, atol=1e-4)


def test_a_random_subsample_and_a_coreset_keep_the_size_asked_for():
    rows = torch.randn(5000, 8, generator=torch.Generator().manual_seed(1))
    for sampler in ("coreset", "random"):
        cfg = MemoryConfig(extractor="pixels", size=300, sampler=sampler, candidates=2000)
        assert select_memory(rows, cfg).shape == (300, 8)
    # The coreset covers the rows better than a random subsample of the same size does.
    def radius(memory):
        return torch.cdist(rows, memory).min(1).values.max().item()
    coreset = select_memory(rows, MemoryConfig(extractor="pixels", size=300, projection=0))
    random = select_memory(rows, MemoryConfig(extractor="pixels", size=300, sampler="random"))
    assert radius(coreset) < radius(random)


def test_the_coarse_grid_joins_the_blocks_on_the_last_ones_grid():
    from anogan_inspect.networks import Discriminator, ModelConfig

    trunk = Discriminator(ModelConfig(image_size=16, width=8)).features
    for grid, stride in (("fine", 2), ("coarse", 4)):
        features = build_features(MemoryConfig(extractor="disc", layers=(0, 1), grid=grid), 1,
                                  trunk)
        out = features(torch.zeros(1, 1, 64, 48))
        assert features.stride == stride
        assert tuple(out.shape) == (1, 8 + 16, 64 // stride, 48 // stride)


def stripes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A structured texture (diagonal stripes, random phase, a little noise) in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    phases = torch.rand(n, generator=gen) * 8
    frames = torch.stack([torch.sin(2 * np.pi * (xx + 0.5 * yy + p) / 8)[None] * 0.8
                          for p in phases])
    return frames + 0.05 * torch.randn(frames.shape, generator=gen)


@pytest.mark.parametrize("top, left", [(40, 10), (5, 50), (28, 28)])
def test_a_planted_defect_is_the_peak_of_the_map(top, left):
    frames = stripes(21)
    cfg = MemoryConfig(extractor="pixels", size=2000, aggregate=3)
    features = build_features(cfg, 1)
    scorer = MemoryScorer(features, select_memory(extract(features, frames[:20]), cfg), 2.0)
    x = frames[20:].clone()
    x[0, 0, top:top + 3, left:left + 3] = 1.0
    anomaly_map, score = scorer(x)
    peak = np.unravel_index(int(anomaly_map[0].argmax()), anomaly_map.shape[1:])
    assert abs(peak[0] - (top + 1)) <= 2 and abs(peak[1] - (left + 1)) <= 2
    _, normal_score = scorer(frames[20:])
    assert score[0] > 1.3 * normal_score[0]


def test_edge_places_pair_the_distances_to_the_nearer_edges():
    places = edge_places(7, 5, margin=2)
    assert places.shape == (7, 5)
    # corners share (0, 0); a place is (smaller distance, larger distance) capped at 2
    assert {int(places[0, 0]), int(places[6, 4]), int(places[0, 4])} == {0}
    assert int(places[3, 2]) == 2 * 3 + 2  # the middle: the table's last entry
    assert int(places[0, 2]) == 0 * 3 + 2 and int(places[2, 0]) == 0 * 3 + 2
    assert int(places[1, 1]) == 1 * 3 + 1 and int(places[1, 3]) == int(places[5, 1])


def test_calibrated_edges_put_normal_frames_maxima_off_the_edges_and_keep_the_middle():
    frames = stripes(60, size=96, seed=4)
    cfg = MemoryConfig(extractor="pixels", size=500, aggregate=3, edge_margin=8)
    features = build_features(cfg, 1)
    scorer = MemoryScorer(features, select_memory(extract(features, frames[:20]), cfg), 2.0,
                          edge_margin=8)
    raw, _ = scorer(frames[40:])
    maps, _ = scorer(frames[20:40])
    scorer.calibrate_edges(list(maps.numpy()))
    calibrated, score = scorer(frames[40:])
    places = edge_places(96, 96, 8)
    middle = places == places.max()
    # The middle is as the memory scores it; the edges are brought to the middle's spread.
    torch.testing.assert_close(calibrated[:, middle], raw[:, middle])
    edge = places < places.max()
    assert raw[:, edge].std() > 1.5 * raw[:, middle].std()
    assert calibrated[:, edge].std() < 1.25 * calibrated[:, middle].std()
    # Uncalibrated, the frame maximum sits on the edge band (under 35 % of the frame) in
    # most normal frames; calibrated, less often than its area would have it.
    def on_edges(m):
        return float(edge.ravel()[m.flatten(1).argmax(1)].float().mean())
    assert float(edge.float().mean()) < 0.35
    assert on_edges(raw) > 0.8 and on_edges(calibrated) < 0.5
    torch.testing.assert_close(score, calibrated.flatten(1).amax(1))


def test_a_manifest_from_before_edge_calibration_rebuilds_without_it():
    cfg = MemoryConfig(extractor="pixels")
    assert cfg.edge_margin == 16
    old = {k: v for k, v in cfg.to_dict().items() if k != "edge_margin"}
    assert MemoryConfig.from_dict(old).edge_margin == 0
    assert MemoryConfig.from_dict(cfg.to_dict()).edge_margin == 16
    with pytest.raises(ValueError, match="edge margin"):
        MemoryConfig(extractor="pixels", edge_margin=-1)


def test_onnx_runtime_and_torch_memory_scores_agree_within_the_cascade_margin(
        tiny_memory_bundle, texture_data):
    bundle = read_bundle(tiny_memory_bundle)
    frames = frames_input(load_dataset(texture_data, split="test").images, 1.0, 1)
    session = make_session(bundle.memory_file("onnx"), "cpu", intra_op_threads=1)
    onnx_map, onnx_score = session.run(None, {"image": frames.numpy()})
    with torch.no_grad():
        torch_map, torch_score = load_memory_scorer(bundle)(frames)
    gap = np.abs(onnx_score - torch_score.numpy()) / np.abs(torch_score.numpy())
    assert gap.max() < CASCADE_MARGIN
    np.testing.assert_allclose(onnx_map, torch_map.numpy(), rtol=1e-4, atol=1e-5)


def test_a_memory_bundle_records_its_memory_and_calibration(tiny_memory_bundle):
    manifest = read_bundle(tiny_memory_bundle).manifest
    memory = manifest["memory"]
    assert memory["extractor"] == "disc" and memory["rows"] == 400
    assert memory["layers"] == [0, 1] and len(memory["layer_scales"]) == 2
    assert {"memory.pt2", "memory.onnx"} <= set(manifest["files"])
    assert manifest["threshold"]["value"] == memory["image_threshold"]
    assert memory["pixel_threshold"] <= memory["image_threshold"]
    assert manifest["threshold"]["judged_by"] == "memory"
    assert manifest["training"]["config"]["samples_per_epoch"] == 2000


def test_a_damaged_memory_file_is_refused_at_load_naming_it(tiny_memory_bundle, tmp_path):
    for name in ("memory.onnx", "memory.pt2"):
        copy = tmp_path / name
        shutil.copytree(tiny_memory_bundle, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{name} does not match its sha256"):
            load_model(copy, EngineOptions())


def test_a_manifest_whose_memory_scorer_is_not_checksummed_is_refused(tiny_memory_bundle,
                                                                      tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_memory_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["memory"]["scorer"]["onnx"] = "elsewhere.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="memory.scorer.onnx: 'elsewhere.onnx' is not among "
                                          "the checksummed files"):
        read_bundle(copy)


def test_memory_needs_tiles_and_its_backbone(texture_data, tmp_path, capsys):
    base = ["train", "--data", str(texture_data), "--preset", "tiny", "--out",
            str(tmp_path / "b"), "--device", "cpu"]
    assert train_main([*base, "--memory", "disc"]) == 2
    assert "--memory needs --patch-size" in capsys.readouterr().err
    assert train_main([*base, "--patch-size", "16", "--memory", "backbone"]) == 2
    assert "--memory backbone needs --backbone FILE.pt2" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def planted(frame: np.ndarray, top: int = 20, left: int = 24, size: int = 6) -> np.ndarray:
    frame = frame.copy()
    frame[:, top:top + size, left:left + size] = 1.0
    return frame


def stream(server, frames: list[np.ndarray], mode=pb.MODE_CASCADE, maps: bool = True):
    with server.channel() as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        config = pb.InspectionConfig(model="mem", mode=mode, return_residual_map=maps)
        requests = [pb.StreamInspectRequest(config=config)] + [
            pb.StreamInspectRequest(frame=raw_frame(f, i)) for i, f in enumerate(frames)]
        return [r.result for r in stub.StreamInspect(iter(requests), timeout=120)]


def test_a_planted_defect_fails_and_lands_in_the_top_region(server, texture_data):
    normal = load_dataset(texture_data, split="test").images[0]
    results = stream(server, [planted(normal)])
    result = results[0]
    assert result.verdict == pb.VERDICT_FAIL and result.stage == pb.STAGE_FAST
    assert result.score > result.threshold and result.search_steps == 0
    region = result.anomaly_map.regions[0]
    assert region.top <= 23 <= region.top + region.height
    assert region.left <= 27 <= region.left + region.width
    assert (result.anomaly_map.height, result.anomaly_map.width) == (48, 48)
    assert not result.anomaly_map.reconstruction_png  # only MODE_SEARCH searches


def test_the_memory_decides_every_mode_and_search_shows_g_of_z_under_the_regions(
        server, texture_data):
    frame = planted(load_dataset(texture_data, split="test").images[0])
    fast, cascade, search = (stream(server, [frame], mode)[0]
                             for mode in (pb.MODE_FAST, pb.MODE_CASCADE, pb.MODE_SEARCH))
    assert fast.score == pytest.approx(cascade.score) == pytest.approx(search.score)
    assert fast.verdict == cascade.verdict == search.verdict == pb.VERDICT_FAIL
    assert search.stage == pb.STAGE_SEARCH and 0 < search.tiles_searched <= search.tiles
    assert search.search_steps > 0
    pasted = np.asarray(Image.open(io.BytesIO(search.anomaly_map.reconstruction_png)))
    assert pasted.shape == (48, 48)
    # Far from the region the frame is itself; under it, G(z) replaced the white square.
    original = (frame[0] * 255 + 0.5).astype(np.uint8)
    assert np.abs(pasted[44:, :4].astype(int) - original[44:, :4]).max() <= 1
    assert pasted[20:26, 24:30].mean() < 250


def test_a_memory_model_judges_any_search_budget_by_its_memory(tiny_memory_bundle,
                                                               texture_data):
    # Budgets the bundle has no threshold for, with the default "refuse": the memory
    # judges, so neither the server's --steps nor a frame's search_steps is refused.
    import asyncio

    from anogan_inspect.server.models import Mode

    model = load_model(tiny_memory_bundle, EngineOptions(search_steps=7)).start()
    try:
        frame = model.preprocess(planted(load_dataset(texture_data, split="test").images[0]))
        outcome = asyncio.run(model.inspect(frame, Mode.SEARCH, 3, True))
    finally:
        model.stop()
    assert outcome.fail and outcome.stage.value == "search" and outcome.steps == 3
    assert outcome.residual == outcome.feature == 0.0


def test_a_memory_model_reports_its_scorer(server):
    with server.channel() as channel:
        model = pb_grpc.InspectionServiceStub(channel).GetModel(
            pb.GetModelRequest(name="mem")).model
    assert model.memory.extractor == "disc" and model.memory.rows == 400
    assert model.memory.backend.startswith("onnxruntime")
    assert model.default_mode == pb.MODE_CASCADE


def test_evaluate_puts_the_memory_beside_its_baselines(tiny_memory_bundle, texture_data,
                                                       tmp_path, capsys):
    out = tmp_path / "report"
    code = train_main(["evaluate", "--bundle", str(tiny_memory_bundle), "--data",
                       str(texture_data), "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["memory (disc)", "pixels (baseline)",
                                       "AnoGAN latent-fast"]
    memory = report["methods"]["memory (disc)"]
    assert {"image_auroc", "pixel_auroc", "pro_30", "defective_failed_share",
            "normal_failed_share"} <= set(memory)
    assert set(memory["per_defect"]) == {"hole", "patch", "scratch", "stain"}
    assert "pixels (baseline)" in printed and (out / "maps.png").is_file()


@pytest.mark.slow
def test_a_backbone_the_user_supplies_builds_the_memory(texture_data, tmp_path):
    # "Pretrained" weights the test writes itself: a small conv net, exported as the user
    # would export theirs; nothing is downloaded.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU()).eval()
    # Exported as docs/textures.md says: batch 1-4096, sides 16-8192, dynamic.
    program = torch.export.export(net, (torch.zeros(2, 3, 64, 64),), dynamic_shapes=(
        {0: torch.export.Dim("n", min=1, max=4096), 2: torch.export.Dim("h", min=16, max=8192),
         3: torch.export.Dim("w", min=16, max=8192)},))
    torch.export.save(program, str(tmp_path / "backbone.pt2"))
    out = train_tiny_memory(tmp_path / "bb", texture_data, "--memory", "backbone",
                            "--backbone", str(tmp_path / "backbone.pt2"))
    bundle = read_bundle(out)
    assert bundle.memory["extractor"] == "backbone" and bundle.memory["dim"] == 16
    assert bundle.memory["stride"] == 4
    model = load_model(out, EngineOptions())
    assert model.memory_path is not None


@pytest.mark.slow
def test_training_seconds_add_up_over_resumed_runs(tiny_memory_bundle, texture_data,
                                                   tmp_path):
    run_dir = tiny_memory_bundle.parent / f"run-{tiny_memory_bundle.name}"
    before = torch.load(run_dir / "checkpoint.pt", weights_only=False)["seconds"]
    assert before > 0
    resumed_run = tmp_path / "run"
    shutil.copytree(run_dir, resumed_run)
    out = tmp_path / "resumed"
    code = train_main(["train", "--data", str(texture_data), "--preset", "tiny",
                       "--patch-size", "16", "--stride", "8", "--epochs", "2",
                       "--encoder-epochs", "1", "--samples-per-epoch", "2000", "--steps", "10",
                       "--memory", "disc", "--memory-size", "400", "--holdout", "0.25",
                       "--out", str(out), "--run-dir", str(resumed_run), "--resume",
                       "--device", "cpu"])
    assert code == 0
    training = read_bundle(out).manifest["training"]
    after = torch.load(resumed_run / "checkpoint.pt", weights_only=False)["seconds"]
    assert after > before  # the second epoch added to the first run's
    assert training["seconds"] >= after
