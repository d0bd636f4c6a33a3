"""Serving sized and placed for the device: the fast path on the bundle's torch programs,
bf16 searches re-scored in float32 (the cascade stays exact), slots sized at load. On this
CPU the same code runs as on a GPU: torch on "cpu", bf16 autocast on "cpu"."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from anogan_inspect.bundle import read_bundle
from anogan_inspect.search import SearchConfig, SlotTable, fast_score, score_parts, search
from anogan_inspect.server.cli import build_parser, config_from_args
from anogan_inspect.server.engine import size_slots
from anogan_inspect.server.fastpath import TorchFastPath, choose_backend
from anogan_inspect.server.models import EngineOptions, Mode, ServedModel
from bench.cuda_engine_check import schedule as run_schedule


def frames(n: int, side: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def tiny_models(tiny_bundle):
    return ServedModel(read_bundle(tiny_bundle), EngineOptions()).models


def test_torch_fast_path_scores_as_onnx_runtime_does_and_keeps_the_cascade(tiny_bundle):
    onnx = ServedModel(read_bundle(tiny_bundle), EngineOptions(fast_backend="onnx"))
    served = ServedModel(read_bundle(tiny_bundle), EngineOptions(fast_backend="torch"))
    assert isinstance(served.fast, TorchFastPath) and served.fast.backend == "torch cpu"
    assert onnx.fast.backend == "onnxruntime CPUExecutionProvider"
    x = frames(40).numpy()
    by_torch, by_onnx = served.fast.score_batch(x), onnx.fast.score_batch(x)
    np.testing.assert_allclose(by_torch[0], by_onnx[0], rtol=1e-5)
    np.testing.assert_allclose(by_torch[3], by_onnx[3], rtol=1e-4, atol=1e-5)
    assert by_torch[4].shape == (40, 1, 16, 16)
    assert served.check_exactness() < 1e-6  # the same programs the search starts from
    assert Mode.CASCADE in served.modes

    async def cascade(x: torch.Tensor):
        for model in (served, onnx):
            model.start()
        try:
            return [await asyncio.gather(*(m.inspect(image, Mode.CASCADE) for image in x))
                    for m in (served, onnx)]
        finally:
            for model in (served, onnx):
                model.stop()

    by_torch, by_onnx = asyncio.run(cascade(frames(6, seed=9)))
    for a, b in zip(by_torch, by_onnx):
        assert (a.stage, a.fail) == (b.stage, b.fail)
        assert a.score == pytest.approx(b.score, rel=1e-4)


def test_batches_stay_within_the_exported_programs_bound(tiny_bundle, monkeypatch):
    """The torch programs refuse batches above MAX_BATCH (4096): slots or torch fast-path
    batches set above it are refused at load (ONNX Runtime's are not bound), and the torch
    fast path scores a batch whose features pass (frames and reconstructions together:
    twice the batch) would exceed it in two passes, with the same scores. Before, both
    failed every frame in flight as INTERNAL."""
    from anogan_inspect.bundle import MAX_BATCH
    from anogan_inspect.server import fastpath

    for options in ({"max_batch": MAX_BATCH + 1},
                    {"fast_max_batch": MAX_BATCH + 1, "fast_backend": "torch"}):
        with pytest.raises(ValueError, match=f"{MAX_BATCH}, the largest batch the bundle"):
            ServedModel(read_bundle(tiny_bundle), EngineOptions(**options))
    served = ServedModel(read_bundle(tiny_bundle), EngineOptions(fast_backend="torch"))
    x = frames(5).numpy()
    together = served.fast.score_batch(x)
    monkeypatch.setattr(fastpath, "MAX_BATCH", 8)  # 2 × 5 frames: above it
    apart = served.fast.score_batch(x)
    for a, b in zip(together, apart):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_backend_choice_follows_the_device():
    assert choose_backend("auto", torch.device("cpu")) == "onnx"
    assert choose_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="fast-path backend must be one of"):
        choose_backend("tensorrt", torch.device("cpu"))


def test_onnx_runtimes_cuda_provider_is_asked_for_the_named_gpu_without_tf32():
    """Where onnxruntime has its CUDA provider (not on this machine), each lane's sessions
    run on the lane's own GPU with TF32 off; a CPU lane asks for the CPU alone."""
    from anogan_inspect.onnxrt import cuda_provider, providers_for

    assert cuda_provider("cuda") == ("CUDAExecutionProvider",
                                     {"device_id": "0", "use_tf32": "0"})
    assert cuda_provider("cuda:1")[1]["device_id"] == "1"
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_bf16_search_returns_float32_scores_never_above_the_start(tiny_models):
    models = tiny_models
    cfg = SearchConfig(steps=10, lr=0.05)
    x = frames(16)
    z0 = models.encoder(x).detach()
    with torch.no_grad():
        start, _ = fast_score(models, x, cfg.lam)
    result = search(models, x, z0, cfg, batch_size=8, autocast_dtype=torch.bfloat16)
    assert (result.score <= start).all()
    with torch.no_grad():
        again, residual, feature = score_parts(
            models, x, models.features(x).flatten(1), torch.as_tensor(result.z), cfg.lam)
    # Each score is the float32 score at the z returned with it, not a bf16 figure.
    np.testing.assert_allclose(result.score, again.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.residual, residual.numpy(), rtol=1e-6)
    # And the search did search: most frames end below their start.
    assert (result.score < start - 1e-3 * np.abs(start)).mean() > 0.5
    fp32 = search(models, x, z0, cfg, batch_size=8)
    assert np.corrcoef(fp32.score, result.score)[0, 1] > 0.99


def bf16_table(models, budgets: list[int], seed: int):
    """A bf16 slot table holding one search per budget, from E(x): (table, x, z0)."""
    table = SlotTable(models, SearchConfig(steps=max(budgets), lr=0.05), len(budgets),
                      (1, 16, 16), autocast_dtype=torch.bfloat16)
    x = frames(len(budgets), seed=seed)
    z0 = models.encoder(x).detach()
    table.admit(x, z0, budgets, range(len(budgets)))
    return table, x, z0


def run_out(table: SlotTable) -> dict:
    """Step the table until every search finished: results by tag."""
    results = {}
    while table.n:
        results.update({r.tag: r for r in table.step()})
    return results


def test_a_bf16_table_keeps_its_rows_straight_while_compacting(tiny_models):
    """Rows finishing at different steps move in the table; each keeps its own start."""
    models = tiny_models
    table, x, _ = bf16_table(models, [3, 9, 1, 6, 2, 12], seed=5)
    results = run_out(table)
    with torch.no_grad():
        start, _ = fast_score(models, x, 0.1)
        fx = models.features(x).flatten(1)
        for i, r in results.items():
            assert r.steps == [3, 9, 1, 6, 2, 12][i]
            assert r.score <= start[i]
            # Its own frame's float32 score at the z it came back with (rows kept apart).
            own, _, _ = score_parts(models, x[i:i + 1], fx[i:i + 1],
                                    torch.as_tensor(r.z)[None], 0.1)
            assert r.score == pytest.approx(float(own), rel=1e-6)


def test_a_bf16_search_whose_best_is_worse_in_float32_returns_its_start(tiny_models):
    """Rows 0, 2 and 4 are made to hold a far-off "best" z that nothing beats (as if bf16
    had judged it best): each comes back with its own start, float32-scored, even after
    rows finishing earlier moved it in the table; the others keep their search."""
    models = tiny_models
    table, x, z0 = bf16_table(models, [4, 3, 6, 2, 1, 5], seed=8)
    table.best_z[[0, 2, 4]] = 25.0
    table.best_loss[[0, 2, 4]] = -1e30
    results = run_out(table)
    with torch.no_grad():
        start, _ = fast_score(models, x, 0.1)
    for i in (0, 2, 4):
        np.testing.assert_allclose(results[i].z, z0[i].numpy(), rtol=1e-6)
        assert results[i].score == pytest.approx(start[i], rel=1e-6)
    for i in (1, 3, 5):
        assert not np.allclose(results[i].z, z0[i].numpy())


def test_slots_are_sized_at_the_knee_of_measured_rates(tiny_models):
    chosen, rates = size_slots(tiny_models, SearchConfig(), (1, 16, 16), torch.device("cpu"),
                               candidates=(4, 16, 64), steps=2)
    assert set(rates) == {4, 16, 64} and all(r > 0 for r in rates.values())
    assert chosen in rates and rates[chosen] >= 0.9 * max(rates.values())
    assert all(rates[c] < 0.9 * max(rates.values()) for c in rates if c < chosen)


def test_serve_options_for_the_device(tiny_bundle):
    args = build_parser().parse_args(["--bundle", str(tiny_bundle)])
    engine = config_from_args(args).engine
    assert (engine.max_batch, engine.fast_max_batch, engine.fast_backend, engine.precision) \
        == (None, None, "auto", "fp32")
    served = ServedModel(read_bundle(tiny_bundle), engine)  # auto on a CPU: 64 and 64
    assert served.engine.table.capacity == 64 and served.fast.max_batch == 64
    args = build_parser().parse_args(["--bundle", str(tiny_bundle), "--max-batch", "128",
                                      "--precision", "bf16", "--fast-backend", "torch"])
    engine = config_from_args(args).engine
    assert (engine.max_batch, engine.precision, engine.fast_backend) == (128, "bf16", "torch")
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--bundle", str(tiny_bundle), "--max-batch", bad])


def test_frames_spread_across_devices_and_score_as_on_one(tiny_bundle):
    """--device cpu,cpu: two lanes (programs, engine, fast path each), frames spread over
    both, every frame scored as a one-device model scores it."""
    two = ServedModel(read_bundle(tiny_bundle), EngineOptions(device="cpu,cpu"))
    one = ServedModel(read_bundle(tiny_bundle), EngineOptions(device="cpu"))
    assert two.device_text == "cpu,cpu" and len(two.lanes) == 2 and two.slots == 128
    assert two.lanes[0].models is not two.lanes[1].models
    assert two.check_exactness() < 1e-4 and Mode.CASCADE in two.modes
    x = frames(24, seed=11)

    async def run(model: ServedModel, mode: Mode):
        model.start()
        try:
            return await asyncio.gather(*(model.inspect(image, mode) for image in x))
        finally:
            model.stop()

    spread = asyncio.run(run(two, Mode.SEARCH))
    alone = asyncio.run(run(one, Mode.SEARCH))
    for a, b in zip(spread, alone):
        assert a.score == pytest.approx(b.score, rel=1e-5)
    completed = [lane.engine.stats.completed for lane in two.lanes]
    assert sum(completed) == 24 and min(completed) > 0, completed
    assert two.stats()["searches_completed"] == 24 and two.stats()["slot_capacity"] == 128


def test_a_gpu_this_machine_lacks_is_refused():
    from anogan_inspect.server.models import parse_devices

    assert parse_devices("cpu") == [torch.device("cpu")]
    with pytest.raises(ValueError, match=r"cuda:7: this machine has \d+ CUDA device"):
        parse_devices("cuda:7")
    with pytest.raises(ValueError, match="no device"):
        parse_devices(" , ")


def test_removing_searches_does_no_device_work(tiny_models):
    """Cancelled or failed searches leave a bf16 table without being re-scored, so a failing
    device (the reason they are removed) cannot stop them from being failed and freed."""
    import dataclasses

    table = SlotTable(tiny_models, SearchConfig(steps=5), 4, (1, 16, 16),
                      autocast_dtype=torch.bfloat16)
    x = frames(4)
    table.admit(x, tiny_models.encoder(x).detach(), [5] * 4, range(4))

    def broken(z):
        raise RuntimeError("CUDA error (simulated)")

    table.models = dataclasses.replace(tiny_models, generator=broken)
    assert table.remove(lambda tag: tag % 2 == 0) == 2 and table.tags == [3, 1]
    assert table.remove(lambda tag: True) == 2 and table.n == 0


class LateCopy:
    """Stands in for the CUDA event of a finished search's copy to the host (this machine
    has no GPU): it has landed only once ``landed`` is set."""

    landed = False

    def query(self) -> bool:
        return LateCopy.landed

    def synchronize(self) -> None:
        LateCopy.landed = True


def test_finished_searches_come_back_once_their_copy_lands(tiny_models, monkeypatch):
    """On a GPU a finished search's scores come back by an asynchronous copy: the table
    goes on stepping (and refilling the freed slot) while it lands, hands it back in finish
    order once it has, and the engine and search() wait for the rest when nothing else is
    left to do, with the same results as on the CPU."""
    from anogan_inspect import search as search_module

    monkeypatch.setattr(LateCopy, "landed", False)
    cfg = SearchConfig(steps=4, lr=0.05)
    x = frames(6, seed=21)
    z0 = tiny_models.encoder(x).detach()
    expected = search(tiny_models, x, z0, cfg, batch_size=3)
    monkeypatch.setattr(search_module, "_marker", lambda device: LateCopy())
    table = SlotTable(tiny_models, cfg, 3, (1, 16, 16))
    table.admit(x[:3], z0[:3], [1, 2, 4], ["a", "b", "c"])
    assert table.step() == [] and (table.n, table.waiting, table.free) == (2, 1, 1)
    table.admit(x[3:4], z0[3:4], [1], ["d"])  # into the slot "a" left
    assert table.step() == [] and (table.n, table.waiting) == (1, 3)
    assert table.landing_tags() == ["a", "b", "d"]
    LateCopy.landed = True
    assert [(r.tag, r.steps) for r in table.step()] == [("a", 1), ("b", 2), ("d", 1)]
    monkeypatch.setattr(LateCopy, "landed", False)
    table.step()  # "c" finishes; its copy has not landed
    assert table.n == 0 and table.waiting == 1 and table.step() == []
    assert [(r.tag, r.steps) for r in table.collect(wait=True)] == [("c", 4)]
    assert table.waiting == 0

    monkeypatch.setattr(LateCopy, "landed", False)
    late = search(tiny_models, x, z0, cfg, batch_size=3)
    np.testing.assert_allclose(late.score, expected.score, rtol=1e-6)
    np.testing.assert_allclose(late.z, expected.z, rtol=1e-6)

    from anogan_inspect.server.engine import SearchEngine

    async def through_engine():
        monkeypatch.setattr(LateCopy, "landed", False)
        engine = SearchEngine(tiny_models, cfg, (1, 16, 16), capacity=3).start()
        try:
            requests = [engine.submit(x[i], z0[i], 4) for i in range(6)]
            return await asyncio.wait_for(asyncio.gather(*(r.future for r in requests)), 60)
        finally:
            engine.stop()

    outcomes = asyncio.run(through_engine())
    np.testing.assert_allclose([o.result.score for o in outcomes], expected.score, rtol=1e-6)


class FailedCopy:
    """Stands in for the event of a copy whose device fails before it lands."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        raise RuntimeError("CUDA error: an illegal memory access (simulated)")


class LandsLater:
    """Stands in for the event of a copy that has landed from the second look on."""

    def __init__(self):
        self.looked = 0

    def query(self) -> bool:
        self.looked += 1
        return self.looked > 1

    def synchronize(self) -> None:
        pass


def test_reconstructions_come_back_with_their_search(tiny_models):
    x = frames(3, seed=2)
    z0 = tiny_models.encoder(x).detach()
    table = SlotTable(tiny_models, SearchConfig(steps=2), 3, (1, 16, 16),
                      reconstruct=lambda tag: tag == "b")
    table.admit(x, z0, [1, 1, 2], ["a", "b", "c"])
    done = {r.tag: r for r in table.step()}
    assert done["a"].reconstruction is None and done["b"].reconstruction.shape == (1, 16, 16)
    with torch.no_grad():
        again = tiny_models.generator(torch.as_tensor(done["b"].z)[None])[0].numpy()
    np.testing.assert_allclose(done["b"].reconstruction, again, rtol=1e-5, atol=1e-6)


def test_a_failed_copy_back_keeps_its_searches_in_progress(tiny_models, monkeypatch):
    """If the device fails while finished searches are copied back, none of those being
    read leaves the table's searches in progress (one landing read fine, the next failing),
    so the engine fails their requests instead of leaving them waiting forever; so are
    those it had read in the same step."""
    from anogan_inspect import search as search_module
    from anogan_inspect.server.engine import SearchEngine

    x = frames(3, seed=2)
    z0 = tiny_models.encoder(x).detach()
    monkeypatch.setattr(LateCopy, "landed", False)
    copies = iter([LateCopy(), FailedCopy()])
    monkeypatch.setattr(search_module, "_marker", lambda device: next(copies))
    table = SlotTable(tiny_models, SearchConfig(steps=2), 3, (1, 16, 16))
    table.admit(x[:2], z0[:2], [1, 2], ["a", "b"])
    assert table.step() == [] and table.step() == [] and table.n == 0
    with pytest.raises(RuntimeError, match="illegal memory access"):
        table.collect(wait=True)
    assert table.landing_tags() == ["a", "b"] and table.waiting == 2
    table.forget_landing()
    assert table.waiting == 0 and table.landing_tags() == []

    async def through_engine():
        # "a" lands at the second step, as "b" finishes and its copy fails: the engine
        # has read "a" when the wait for "b" fails, and fails both.
        engine = SearchEngine(tiny_models, SearchConfig(steps=2), (1, 16, 16), capacity=3)
        requests = [engine.submit(x[i], z0[i], budget) for i, budget in ((0, 1), (1, 2))]
        engine.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(r.future for r in requests),
                                                         return_exceptions=True), 60)
        finally:
            engine.stop()

    copies = iter([LandsLater(), FailedCopy()])
    outcomes = asyncio.run(through_engine())
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError], outcomes
    assert all("illegal memory access" in str(o) for o in outcomes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_table_steps_without_waiting_for_the_device(tiny_bundle, tiny_models):
    """On a GPU, admitting, stepping, finishing and refilling slots never makes the host
    wait for the device (torch's sync debug mode raises on any such wait), and the scores
    are the CPU's, to the GPU's rounding."""
    device = torch.device("cuda")
    models = ServedModel(read_bundle(tiny_bundle), EngineOptions(device="cuda", max_batch=4)
                         ).models
    cfg = SearchConfig(steps=5, lr=0.05)
    x = frames(12, seed=4)
    z0 = tiny_models.encoder(x).detach()
    on_cpu = run_schedule(SlotTable(tiny_models, cfg, 4, (1, 16, 16)), x, z0)
    for dtype, rtol in ((None, 1e-2), (torch.bfloat16, 5e-2)):
        table = SlotTable(models, cfg, 4, (1, 16, 16), device, dtype)
        table.admit(x[:1], z0[:1], [2], ["warm-up"])  # pinned buffers, kernels chosen
        table.step()
        table.step()
        assert [r.tag for r in table.collect(wait=True)] == ["warm-up"]
        results = run_schedule(table, x, z0, no_wait=True)
        assert sorted(results) == list(range(12))
        for i, r in results.items():
            assert r.steps == on_cpu[i].steps == 1 + i % 7
            assert r.score == pytest.approx(on_cpu[i].score, rel=rtol)


class EagerBucket:
    """What a CUDA graph of the step replays, run eagerly (this machine has no GPU): the
    device's part of a step on every row of its bucket, active or not."""

    def __init__(self, table: SlotTable, rows: int):
        self.table, self.rows = table, rows

    def replay(self) -> None:
        self.table._advance(self.rows)


def test_a_step_over_a_whole_bucket_scores_the_active_slots_as_a_step_over_them(tiny_models):
    """A CUDA graph steps a fixed bucket of rows, the active ones and whatever the others
    hold (finished or never used): every search still ends with the scores, z and steps
    of a table that steps its active rows only."""
    cfg = SearchConfig(steps=5, lr=0.05)
    x = frames(12, seed=6)
    z0 = tiny_models.encoder(x).detach()
    alone = run_schedule(SlotTable(tiny_models, cfg, 4, (1, 16, 16)), x, z0)
    for precision in (None, torch.bfloat16):
        table = SlotTable(tiny_models, cfg, 4, (1, 16, 16), autocast_dtype=precision)
        table._graphs = {2: EagerBucket(table, 2), 4: EagerBucket(table, 4)}
        table.graph_buckets = (2, 4)
        assert table._graph_for(1).rows == 2 and table._graph_for(3).rows == 4
        bucketed = run_schedule(table, x, z0)
        if precision is not None:
            alone = run_schedule(SlotTable(tiny_models, cfg, 4, (1, 16, 16),
                                           autocast_dtype=precision), x, z0)
        for i in range(12):
            assert bucketed[i].steps == alone[i].steps
            assert bucketed[i].score == pytest.approx(alone[i].score, rel=1e-5)
            np.testing.assert_allclose(bucketed[i].z, alone[i].z, rtol=1e-4, atol=1e-6)


def test_cuda_graphs_are_asked_for_only_on_a_gpu(tiny_bundle):
    """--cuda-graphs on a CPU serves as without it and says so (GetModel:
    search_cuda_graphs false)."""
    args = build_parser().parse_args(["--bundle", str(tiny_bundle), "--cuda-graphs"])
    options = config_from_args(args).engine
    assert options.cuda_graphs
    served = ServedModel(read_bundle(tiny_bundle), options)
    assert not served.cuda_graphs and served.engine.table.graph_buckets == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_of_the_step_score_as_eager_steps(tiny_bundle, tiny_models):
    """On a GPU, --cuda-graphs captures one graph per bucket (capacity halved down to
    GRAPH_MIN_ROWS) and replays them: the same steps and scores as eager steps on the GPU,
    no wait for the device, and the served model reports them."""
    from anogan_inspect.search import GRAPH_MIN_ROWS

    device = torch.device("cuda")
    served = ServedModel(read_bundle(tiny_bundle),
                         EngineOptions(device="cuda", max_batch=128, cuda_graphs=True))
    assert served.cuda_graphs
    assert GRAPH_MIN_ROWS == 32 and served.engine.table.graph_buckets == (32, 64, 128)
    models = served.models
    cfg = SearchConfig(steps=5, lr=0.05)
    x = frames(300, seed=12)
    z0 = tiny_models.encoder(x).detach()
    for dtype in (None, torch.bfloat16):
        eager = run_schedule(SlotTable(models, cfg, 128, (1, 16, 16), device, dtype), x, z0)
        table = SlotTable(models, cfg, 128, (1, 16, 16), device, dtype, cuda_graphs=True)
        assert table.graph_buckets == (32, 64, 128)
        graphed = run_schedule(table, x, z0, no_wait=True)
        for i in range(300):
            assert graphed[i].steps == eager[i].steps
            assert graphed[i].score == pytest.approx(eager[i].score, rel=1e-4)
