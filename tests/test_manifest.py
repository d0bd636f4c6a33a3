"""The manifest's schema and the networks' shapes, checked at load: each kind of damage is
refused with the file, the field and what was expected (and the server exits 2)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from anogan_inspect.bundle import (
    BundleError,
    check_program_shapes,
    check_shapes,
    load_torch_models,
    read_bundle,
)
from anogan_inspect.server.cli import main as serve_main


def damaged(tiny_bundle, tmp_path, change) -> object:
    """A copy of the tiny bundle whose manifest `change` edits (a dict → None)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return bundle


def set_field(dotted: str, value):
    def change(manifest):
        *parents, last = dotted.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value
    return change


SCHEMA = {
    "threshold NaN": ("threshold.value", math.nan,
                      "threshold.value: Input should be a finite number (found nan)"),
    "threshold text": ("threshold.value", "abc",
                       "threshold.value: Input should be a valid number (found 'abc')"),
    "threshold zero": ("threshold.value", 0.0,
                       "threshold.value: Input should be greater than 0 (found 0.0)"),
    "latent as words": ("latent_dim", "twenty",
                        "latent_dim: Input should be a valid integer (found 'twenty')"),
    "latent as a string number": ("latent_dim", "8",
                                  "latent_dim: Input should be a valid integer (found '8')"),
    "search lr text": ("search.lr", "fast",
                       "search.lr: Input should be a valid number (found 'fast')"),
    "negative steps": ("search.steps", -5,
                       "search.steps: Input should be greater than 0 (found -5)"),
    "channels 2": ("geometry.channels", 2, "geometry.channels: Input should be 1 or 3"),
    "not square": ("geometry.height", 64, "geometry: height (64) and width (16) must be equal"),
    "file outside the checksums": ("networks.generator.onnx", "other.onnx",
                                   "'other.onnx' is not among the checksummed files"),
    "bad checksum text": ("files.generator.onnx", {"sha256": "xyz"},
                          "must be 64 lowercase hexadecimal digits"),
    # Unknown fields, at the top and inside a section, are named, never ignored
    "unknown field": ("thresholdd", {"value": 3.0},
                      "thresholdd: unknown field (not part of this server's manifest format"),
    "misspelt inner field": ("search.stepz", 200, "search.stepz: unknown field"),
    "unknown network key": ("networks.generator.tensorrt", "g.engine",
                            "networks.generator.tensorrt: unknown field"),
}


@pytest.mark.parametrize("field, value, message", SCHEMA.values(), ids=SCHEMA.keys())
def test_schema_refuses_each_kind_of_damage(tiny_bundle, tmp_path, field, value, message):
    if field == "files.generator.onnx":  # a key with a dot in it
        change = lambda m: m["files"].__setitem__("generator.onnx", value)  # noqa: E731
    else:
        change = set_field(field, value)
    bundle = damaged(tiny_bundle, tmp_path, change)
    with pytest.raises(BundleError) as err:
        read_bundle(bundle)
    text = str(err.value)
    assert text.startswith(f"{bundle / 'manifest.json'}: ")
    assert message in text


def test_missing_fields_are_named(tiny_bundle, tmp_path):
    bundle = damaged(tiny_bundle, tmp_path, lambda m: (m.pop("threshold"), m["search"].pop("lr")))
    with pytest.raises(BundleError, match=r"search\.lr: Field required; threshold: Field required"):
        read_bundle(bundle)


SHAPES = {
    "generator file is the encoder's": (
        set_field("networks.generator.onnx", "encoder.onnx"),
        "generator.onnx".replace("generator", "encoder"),
        "the generator should map z [8] to image [1, 16, 16]"),
    "three channels": (set_field("geometry.channels", 3), "generator.onnx",
                       "to image [3, 16, 16]"),
    "latent 21": (set_field("latent_dim", 21), "generator.onnx", "should map z [21]"),
}


@pytest.mark.parametrize("change, file, message", SHAPES.values(), ids=SHAPES.keys())
def test_networks_that_do_not_fit_the_manifest_are_refused_by_shape(tiny_bundle, tmp_path,
                                                                      change, file, message):
    bundle = read_bundle(damaged(tiny_bundle, tmp_path, change))  # the schema passes
    with pytest.raises(BundleError) as err:
        check_shapes(bundle)
    assert str(err.value).startswith(str(bundle.path / file)) and message in str(err.value)


def test_torch_programs_are_checked_too(tiny_bundle, tmp_path):
    # The ONNX files agree with the manifest, but the generator's torch program is the
    # encoder's: its output has the wrong shape.
    bundle_dir = damaged(tiny_bundle, tmp_path, set_field("networks.generator.torch",
                                                          "encoder.pt2"))
    bundle = read_bundle(bundle_dir)
    check_shapes(bundle)
    with pytest.raises(BundleError, match="encoder.pt2: the generator program"):
        check_program_shapes(bundle, load_torch_models(bundle))


def test_the_server_exits_2_naming_the_field(tiny_bundle, tmp_path, capsys):
    bundle = damaged(tiny_bundle, tmp_path, set_field("search.steps", -5))
    assert serve_main(["--bundle", str(bundle), "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "anogan-serve: error:" in err and "search.steps: Input should be greater than 0" in err


def test_the_server_exits_2_on_a_swapped_network(tiny_bundle, tmp_path, capsys):
    bundle = damaged(tiny_bundle, tmp_path, set_field("latent_dim", 21))
    assert serve_main(["--bundle", str(bundle), "--port", "0", "--device", "cpu"]) == 2
    assert "should map z [21]" in capsys.readouterr().err


def test_bundles_the_trainer_writes_pass(tiny_bundle, tiny_bundle_no_encoder, tiny_tiled_bundle):
    for path in (tiny_bundle, tiny_bundle_no_encoder, tiny_tiled_bundle):
        bundle = read_bundle(path)
        check_shapes(bundle)
        check_program_shapes(bundle, load_torch_models(bundle))


def test_the_fast_path_as_served_is_checked_against_the_cascade_margin(server, tiny_bundle):
    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc
    from anogan_inspect.server.models import EngineOptions, Mode, ServedModel

    with server.channel() as channel:
        model = pb_grpc.InspectionServiceStub(channel).GetModel(
            pb.GetModelRequest(name="tiny")).model
    assert model.cascade_margin == 1e-4 and 0 <= model.score_gap < model.cascade_margin
    assert pb.MODE_CASCADE in model.modes

    served = ServedModel(read_bundle(tiny_bundle), EngineOptions())
    honest = served.fast.score_batch
    served.fast.score_batch = lambda x: (honest(x)[0] * (1 + 1e-3), *honest(x)[1:])
    assert served.check_exactness() >= 1e-3 * 0.99
    assert Mode.CASCADE not in served.modes and served.default_mode is Mode.SEARCH
    strict = ServedModel(read_bundle(tiny_bundle), EngineOptions(require_exact_cascade=True))
    strict.fast.score_batch = served.fast.score_batch
    with pytest.raises(BundleError, match="not under the cascade's margin 1e-04 "
                                          r"\(--require-exact-cascade\)"):
        strict.check_exactness()


def test_a_server_searching_otherwise_than_calibrated_says_so(server, tiny_bundle, caplog):
    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc
    from anogan_inspect.server.models import EngineOptions, ServedModel
    from anogan_inspect.server.service import model_message

    with server.channel() as channel:
        model = pb_grpc.InspectionServiceStub(channel).GetModel(
            pb.GetModelRequest(name="tiny")).model
    assert not model.search_overridden
    assert model.calibrated_search_steps == model.default_search_steps == 10
    overridden = ServedModel(read_bundle(tiny_bundle), EngineOptions(search_steps=25))
    assert "calibrated for another search" in caplog.text
    message = model_message(overridden)
    assert message.search_overridden and message.default_search_steps == 25
    assert message.calibrated_search_steps == 10


def test_search_budgets_have_their_own_thresholds(tiny_bundle):
    import asyncio

    import torch

    from anogan_inspect.server.models import EngineOptions, Mode, ServedModel

    bundle = read_bundle(tiny_bundle)
    table = bundle.thresholds_by_steps
    assert sorted(table) == [10, 25, 50, 100, 200] and table[10] == bundle.threshold
    assert table[200] < table[10]  # more steps, lower scores, a lower threshold
    x = torch.rand(*bundle.image_shape) * 2 - 1

    async def judged(options, steps, mode=Mode.SEARCH):
        model = ServedModel(bundle, options).start()
        try:
            return await model.inspect(x, mode, steps)
        finally:
            model.stop()

    fifty = asyncio.run(judged(EngineOptions(), 50))
    assert (fifty.threshold, fifty.threshold_steps) == (table[50], 50)
    with pytest.raises(ValueError, match="no threshold calibrated for 30 search steps "
                                         r"\(calibrated: 10, 25, 50, 100, 200\)"):
        asyncio.run(judged(EngineOptions(), 30))
    assert asyncio.run(judged(EngineOptions(), 30, Mode.FAST)).stage.value == "fast"
    nearest = EngineOptions(uncalibrated_steps="nearest")
    thirty = asyncio.run(judged(nearest, 30))
    assert (thirty.threshold, thirty.threshold_steps) == (table[25], 25)
    with pytest.raises(ValueError, match="no threshold calibrated for 7 search steps"):
        ServedModel(bundle, EngineOptions(search_steps=7))  # the server's own budget


def test_an_uncalibrated_budget_is_a_per_frame_error_by_default(tiny_bundle, tmp_path):
    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc
    from anogan_inspect.clients.sources import csv_frames
    from anogan_inspect.clients.stream_client import frame_message
    from anogan_inspect.server.models import EngineOptions
    from tests.conftest import TEST_CSV, InProcessServer

    digits = list(csv_frames(TEST_CSV, [7, 8], [2]))[:2]
    server = InProcessServer([str(tiny_bundle)], EngineOptions(device="cpu"))
    try:
        with server.channel() as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            model = stub.GetModel(pb.GetModelRequest()).model
            assert list(model.calibrated_budgets) == [10, 25, 50, 100, 200]
            requests = [pb.StreamInspectRequest(config=pb.InspectionConfig(
                mode=pb.MODE_SEARCH, search_steps=30))] + [
                pb.StreamInspectRequest(frame=frame_message(d, i)) for i, d in enumerate(digits)]
            results = [r.result for r in stub.StreamInspect(iter(requests), timeout=60)]
    finally:
        server.stop()
    assert [r.error.code for r in results] == [3, 3]  # INVALID_ARGUMENT, the stream goes on
    assert "no threshold calibrated for 30 search steps" in results[0].error.message
