"""The benchmark sections: the FLOP counter against hand counts, table columns, and every
section's run in quick mode on the tiny bundle (behaviour only: no timing assertions); the
targets table; the GPU check's CPU-testable parts."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from anogan_inspect.networks import PRESETS, Discriminator, Generator
from bench import (
    ceilings,
    engine_bench,
    gpu_check,
    quality,
    scaling,
    server_bench,
    tiles_bench,
    versus_seed,
)
from bench.__main__ import ensure_seed_run, render, targets
from bench.common import Context, git_version, markdown_table

# The seed's method on tiny networks: its BatchNorm discriminator, untrained (the sections'
# behaviour is under test, not the scores).
TINY_SEED = dataclasses.replace(PRESETS["tiny"], disc_norm="batch", leaky_slope=0.1)


@pytest.fixture(scope="module")
def ctx(tiny_bundle, tmp_path_factory) -> Context:
    """Quick mode on the tiny bundle, with a tiny stand-in for the seed's networks; one
    context so its models and test set load once."""
    out = tmp_path_factory.mktemp("bench")
    seed_run = out / "seed-run"
    seed_run.mkdir()
    torch.manual_seed(0)
    torch.save({"model_config": TINY_SEED.to_dict(), "source": "untrained, for tests",
                "generator": Generator(TINY_SEED).state_dict(),
                "discriminator": Discriminator(TINY_SEED).state_dict()},
               seed_run / "checkpoint.pt")
    return Context(bundle_path=tiny_bundle, device="cpu", quick=True, out_dir=out,
                   seed_run=seed_run)


def table_columns(table: str) -> list[str]:
    """The header cells of the first markdown table in a string."""
    header = table.splitlines()[0]
    return [cell.strip() for cell in header.strip("|").split("|")]


def test_flop_counter_single_layers():
    conv = ceilings.count_flops(nn.Conv2d(3, 5, 3, 1, 1, bias=False), torch.zeros(1, 3, 8, 8))
    assert conv.macs == (5 * 8 * 8) * 3 * 3 * 3  # every output: C_in·kh·kw products
    transposed = ceilings.count_flops(nn.ConvTranspose2d(4, 2, 4, 2, 1, bias=False),
                                      torch.zeros(1, 4, 3, 3))
    assert transposed.macs == (4 * 3 * 3) * 2 * 4 * 4  # every input: C_out·kh·kw taps
    linear = ceilings.count_flops(nn.Linear(10, 4), torch.zeros(2, 10))
    assert linear.macs == 2 * 10 * 4
    assert linear.flops == 2 * linear.macs


def test_flop_counter_tiny_preset_by_hand():
    """Tiny preset: 16×16, 1 channel, latent 8, width 8 → two blocks, 16×4×4 top map."""
    flops = ceilings.network_flops(PRESETS["tiny"])
    # G: ConvT 8→16 on 1×1 (→4×4), ConvT 16→8 on 4×4 (→8×8), ConvT 8→1 on 8×8 (→16×16):
    # input elements × C_out × 4·4 taps.
    g_macs = 8 * 16 * 16 + (16 * 4 * 4) * 8 * 16 + (8 * 8 * 8) * 1 * 16
    # G's eval BatchNorms on 16×4×4 and 8×8×8 outputs: 2 FLOPs per element.
    g_norm = 2 * (16 * 4 * 4) + 2 * (8 * 8 * 8)
    # f: Conv 1→8 to 8×8, Conv 8→16 to 4×4: output elements × C_in × 4·4.
    f_macs = (8 * 8 * 8) * 1 * 16 + (16 * 4 * 4) * 8 * 16
    f_norm = 7 * (16 * 4 * 4)  # GroupNorm on the second block only
    assert (flops.generator.macs, flops.generator.norm_flops) == (43008, 1536) == \
        (g_macs, g_norm)
    assert (flops.features.macs, flops.features.norm_flops) == (40960, 1792) == \
        (f_macs, f_norm)
    forward = 2 * g_macs + g_norm + 2 * f_macs + f_norm
    assert flops.search_step_gflop == pytest.approx(2 * forward / 1e9)
    seed_forward = 2 * g_macs + g_norm + 2 * (2 * f_macs + f_norm)
    assert flops.seed_step_gflop == pytest.approx(3 * seed_forward / 1e9)


def test_step_rule_matches_torch_flop_counter():
    """Backward to the input only costs one more forward: torch counts 2× the conv FLOPs."""
    cfg = PRESETS["tiny"]
    flops = ceilings.network_flops(cfg)
    models = ceilings.eager_models(cfg)
    counted = ceilings.torch_counted_step_gflop(models, (1, 16, 16), 0.1, "cpu")
    conv_forward = 2 * (flops.generator.macs + flops.features.macs)
    assert counted == pytest.approx(2 * conv_forward / 1e9)


def test_markdown_table_columns():
    table = markdown_table([{"a": 1, "b": 2.5, "c": None}], ["b", "a"])
    lines = table.splitlines()
    assert table_columns(table) == ["b", "a"]
    assert lines[1] == "|---|---|"
    assert lines[2] == "| 2.5 | 1 |"


def check_section(result: dict, columns: list[str]) -> None:
    """The common shape of a section's result."""
    assert result["rows"]
    assert table_columns(result["table"]) == columns
    assert isinstance(result["notes"], str) and result["notes"]
    for plot in result["plots"]:
        assert plot.is_file() and plot.stat().st_size > 0


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_ceilings_quick(ctx):
    result = ceilings.run(ctx)
    check_section(result, ["what", "batch", "per_s", "unit", "slot_table_per_s",
                           "gflop_per_s", "fraction_of_matmul"])
    search = [r for r in result["rows"] if r["unit"] == "frame-steps/s"]
    assert [r["batch"] for r in search] == list(ceilings.QUICK_BATCHES)
    assert result["ceiling_frame_steps_per_s"] == max(r["per_s"] for r in search)
    assert result["ceiling_batch"] in ceilings.QUICK_BATCHES
    assert result["fast_ceiling_batch"] in ceilings.FAST_BATCHES
    for key in ("ceiling_frame_steps_per_s", "fast_ceiling_frames_per_s", "matmul_gflop_per_s",
                "conv_gflop_per_s", "achieved_gflop_per_s", "fraction_of_matmul"):
        assert finite_positive(result[key]), key
    assert result["gflop_per_frame_step"] == pytest.approx(
        ceilings.network_flops(PRESETS["tiny"]).search_step_gflop)
    assert result["seed_gflop_per_frame_step"] > result["gflop_per_frame_step"]


@pytest.mark.slow
def test_engine_bench_quick(ctx):
    result = engine_bench.run(ctx)
    check_section(result, engine_bench.COLUMNS)
    assert [r["steps"] for r in result["rows"]] == list(engine_bench.QUICK_BUDGETS)
    for r in result["rows"]:
        assert r["frames"] == engine_bench.QUICK_FRAMES
        # every frame ran its whole budget, all slot-steps accounted for
        assert r["slot_steps"] == r["frames"] * r["steps"]
        assert 1 <= r["mean_batch"] <= r["max_batch"] <= engine_bench.CAPACITY
        assert finite_positive(r["efficiency"])
        assert r["frame_steps_per_s"] == pytest.approx(r["frames_per_s"] * r["steps"])
    assert result["efficiency"] == result["rows"][-1]["efficiency"]  # the longest budget


@pytest.mark.slow
def test_server_bench_one_stream(ctx):
    result = server_bench.run(ctx, streams=(1,), n_frames=16)
    check_section(result, server_bench.COLUMNS)
    assert result["server_exit_code"] == 0
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"FAST", "CASCADE", "SEARCH"}
    for r in rows.values():
        assert (r["frames"], r["streams"], r["problems"]) == (16, 1, 0)
        assert r["fast_frames"] + r["search_frames"] == 16
    assert rows["FAST"]["search_frames"] == 0 and rows["SEARCH"]["fast_frames"] == 0
    # the server engine's mean batch, from GetServerStats: none without search steps
    assert rows["FAST"]["mean_batch"] is None
    assert 1 <= rows["SEARCH"]["mean_batch"] <= 16
    assert rows["FAST"]["fast_p50_ms"] <= rows["FAST"]["fast_p99_ms"]
    assert finite_positive(rows["SEARCH"]["efficiency_vs_engine"])
    assert rows["FAST"]["efficiency_vs_engine"] is None
    assert result["search_efficiency_by_streams"] == {1: rows["SEARCH"]["efficiency_vs_engine"]}
    assert result["efficiency_8_streams"] is None  # 8 streams not measured here


@pytest.mark.slow
def test_scaling_quick(ctx):
    result = scaling.run(ctx)
    check_section(result, scaling.COLUMNS)
    configs = [(r["image_size"], r["width"]) for r in result["rows"]]
    assert configs == [(32, 32), (64, 32), (32, 16)]  # (32, 32) measured once
    gflop = {c: r["gflop_per_frame_step"] for c, r in zip(configs, result["rows"])}
    assert gflop[(64, 32)] > gflop[(32, 32)] > gflop[(32, 16)]
    base = result["rows"][0]
    assert base["relative_cost"] == 1.0


@pytest.mark.slow
def test_tiles_quick(ctx, tiny_tiled_bundle):
    result = tiles_bench.run(dataclasses.replace(ctx, tiled_bundle_path=tiny_tiled_bundle,
                                                 _cache={}))
    tiled, whole = result["rows"]
    assert (tiled["scoring"], whole["scoring"]) == ("tiled", "whole frame")
    assert tiled["tiles_per_frame"] == 63 * 63 and whole["tiles_per_frame"] == 1
    assert 0 <= tiled["tiles_searched_share"] <= 1 and tiled["frames"] == 4
    assert "tiles_searched_share" in table_columns(result["table"])


@pytest.mark.slow
def test_versus_seed_quick(ctx):
    result = versus_seed.run(ctx)
    check_section(result, ["method", "batch", "frame_steps_per_s", "speedup"])
    seed, five, sixty_four = result["rows"]
    assert (seed["batch"], five["batch"], sixty_four["batch"]) == (5, 5, 64)
    assert seed["speedup"] == 1.0
    assert finite_positive(result["seed_frame_steps_per_s"])
    assert result["engine_speedup_same_networks"] == sixty_four["speedup"]
    assert sixty_four["speedup"] == pytest.approx(
        sixty_four["frame_steps_per_s"] / seed["frame_steps_per_s"])


@pytest.mark.slow
def test_quality_quick_and_targets(ctx):
    result = quality.run(ctx)
    check_section(result, ["method", "steps", "frames_per_s", "frame_steps_per_s",
                           "auroc_subset", "auroc_all", "speedup_vs_seed"])
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("seed's method") and methods[1].startswith("fast path")
    assert methods[-1].startswith("cascade")
    assert [r["steps"] for r in result["rows"][2:-1]] == list(quality.QUICK_BUDGETS)
    assert result["rows"][0]["speedup_vs_seed"] == 1.0
    assert result["rows"][0]["auroc_all"] is None  # the seed's method: subset only
    for r in result["rows"]:
        assert 0.0 <= r["auroc_subset"] <= 1.0
    shares = result["shares"]
    assert shares["subset_size"] == 30 and shares["test_size"] == 300  # 10 per label
    for key in ("normal_decided_without_search", "anomalous_decided_without_search"):
        assert 0.0 <= shares[key] <= 1.0

    rows = {r["target"].split(":")[0].split(" (")[0]: r for r in targets({"quality": result})}
    seed, cascade = result["rows"][0], result["rows"][-1]
    speed = rows["cascade ≥ 20× the seed's method in frames/s"]
    assert speed["measured"] == pytest.approx(cascade["frames_per_s"] / seed["frames_per_s"])
    auroc = rows["cascade AUROC ≥ the seed's method"]
    assert auroc["measured"] == pytest.approx(cascade["auroc_subset"] - seed["auroc_subset"])
    assert "cascade − seed AUROC" in auroc["target"]  # a difference, and the label says so
    assert f"{cascade['auroc_subset']:.3f} − {seed['auroc_subset']:.3f}" in auroc["target"]
    assert rows["engine ≥ 3× the seed's loop in frame-steps/s"]["met"] is None  # not run


def test_render_records_code_version_and_seed_source(ctx):
    source = ensure_seed_run(ctx.seed_run, quick=True, device="cpu")
    assert "untrained, for tests" in source  # an existing checkpoint is described, not replaced
    meta = {"name": "t", "date": "d", "command": "c", "device": "cpu", "bundle": "b",
            "seed_run": str(ctx.seed_run), "seed_source": source, "results_dir": ctx.out_dir,
            "machine": {"cpu": "x", "cores": 2, "torch": "t", "torch_threads": 2,
                        "onnxruntime": "o", "gpu": None, **git_version()}}
    markdown = render({"targets": targets({})}, meta)
    assert f"- code: git `{git_version()['git_describe'] or 'unknown'}`" in markdown
    assert source in markdown


def test_gpu_check_card_slug():
    assert gpu_check.card_slug("NVIDIA H200") == "h200"
    assert gpu_check.card_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert gpu_check.card_slug("  ") == "unknown"


def test_gpu_check_saves_after_every_step(tmp_path):
    recorder = gpu_check.Recorder(tmp_path / "gpu-check-x.json", {"gpu": "x"})
    recorder.attempt("first", lambda: 1.5)
    saved = json.loads(recorder.path.read_text())
    assert saved["first"] == 1.5 and saved["finished"] is False
    assert saved["wall_seconds"] >= 0
    nested = recorder.results.setdefault("engine", {})
    recorder.attempt("broken@8", lambda: 1 / 0, into=nested)
    saved = json.loads(recorder.path.read_text())
    assert saved["engine"]["broken@8"]["error"].startswith("ZeroDivisionError")
    recorder.save(finished=True)
    assert json.loads(recorder.path.read_text())["finished"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["gpu-check-x.json"]  # no partial left


@pytest.mark.slow
def test_gpu_check_fast_path_line_says_when_cuda_was_not_measured(tiny_bundle, monkeypatch):
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")  # the dry run: the CPU provider only
    fast = gpu_check.fast_path(tiny_bundle)
    assert finite_positive(fast["cpu_frames_per_s"])
    assert not fast["cuda_ep"] and "cuda_frames_per_s" not in fast  # no CPU run labelled CUDA
    assert fast["cuda_note"] in gpu_check.fast_path_line(fast)
    cpu_only = {"available_providers": ["AzureExecutionProvider", "CPUExecutionProvider"],
                "cuda_ep": False, "cpu_frames_per_s": 2268.1}  # as in gpu-check-h200.json
    line = gpu_check.fast_path_line(cpu_only)
    assert line.endswith("CUDA EP absent (onnxruntime has providers AzureExecutionProvider, "
                         "CPUExecutionProvider)")
    assert "{" not in line  # a sentence, not a dict


@pytest.mark.slow
def test_line_bench_drives_the_echo_server_from_client_processes(tmp_path):
    """The gRPC ceiling's run: a real echo server, one client process of two streams."""
    from bench import line_bench

    code = line_bench.main(["--out", str(tmp_path), "--device", "cpu", "--only", "servers",
                            "--servers", "echo:FAST:B", "--batch", "4", "--clients", "1",
                            "--streams", "2",
                            "--seconds", "1", "--warmup", "0.5"])
    report = json.loads((tmp_path / "line-bench.json").read_text())
    assert code == 0, report["problems"]
    assert [(row["server"], row["batch"]) for row in report["servers"]] == [("echo", 4)]
    for row in report["servers"]:
        assert row["errors"] == 0
        assert row["frames_counted"] > 0 and row["results"] >= row["frames_counted"]
        assert row["fast_path"] == "onnxruntime CPUExecutionProvider"
        assert row["search_slots"] == 64
    assert "| echo | 1 | all | FAST | 4 |" in (tmp_path / "line-bench.md").read_text()


def test_line_bench_runs_the_servers_named_in_the_order_named():
    """A lent GPU's time limit cuts the last rows: the most wanted go first."""
    from bench.line_bench import SERVERS, chosen_servers

    rows = chosen_servers("bf16-graphs-w8:CASCADE:B,echo:FAST:1,fp32:FAST")
    assert [(name, mode, batched) for name, _, mode, _, batched in rows] == [
        ("bf16-graphs-w8", "CASCADE", True), ("echo", "FAST", False),
        ("fp32", "FAST", False), ("fp32", "FAST", True)]
    assert chosen_servers(None) == SERVERS and chosen_servers("nope:FAST") == []


def test_the_weave_benchmark_is_a_regular_fabric_in_the_mvtec_layout(tmp_path):
    from bench.texture_data import DEFECTS, weave, write_benchmark

    fabric = weave((128, 128), period=10.0, seed=1)
    assert fabric.dtype == np.float32 and 0 <= fabric.min() and fabric.max() <= 1
    np.testing.assert_array_equal(fabric, weave((128, 128), period=10.0, seed=1))
    # Yarns every 10 px: the rows' profile correlates with itself a weave repeat (two
    # yarns, over and under) away far more than half a yarn away.
    profile = fabric.mean(0) - fabric.mean()
    def correlation(shift):
        return float(np.corrcoef(profile[:-shift], profile[shift:])[0, 1])
    assert correlation(20) > correlation(5) + 0.3
    out = write_benchmark(tmp_path / "weave", size=48, n_train=3, n_test_good=2,
                          n_per_defect=1, texture="weave")
    assert len(list((out / "train" / "good").glob("*.png"))) == 3
    for defect in DEFECTS:
        assert (out / "ground_truth" / defect / "000_mask.png").is_file()
