"""Train → export → evaluate, end to end on the tiny preset; bundle checks and failures."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogan_inspect.bundle import (
    BundleError,
    check_parity,
    load_torch_models,
    read_bundle,
    sha256_file,
    verify_checksums,
)
from anogan_inspect.networks import PRESETS, Discriminator, FeatureExtractor, Generator
from anogan_inspect.onnxrt import make_session
from anogan_inspect.trainer import export as export_module
from anogan_inspect.trainer.cli import main as train_main
from anogan_inspect.trainer.train import Networks, TrainConfig, Trainer
from tests.conftest import TEST_CSV, TINY_STEPS, TRAIN_CSV


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_gray_images(folder: Path, sizes: dict[str, tuple[int, int]], value: int = 0) -> Path:
    """One uniform gray PNG per name, of the given (height, width)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        Image.fromarray(np.full(size, value, dtype=np.uint8)).save(folder / name)
    return folder


def write_nan_npy(path: Path) -> Path:
    """Three 16×16 float images, the second with a NaN pixel."""
    images = np.zeros((3, 16, 16), dtype=np.float32)
    images[1, 4, 4] = np.nan
    np.save(path, images)
    return path


def test_manifest_records_what_the_server_needs(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    m = bundle.manifest
    assert m["geometry"] == {"channels": 1, "height": 16, "width": 16}
    assert m["latent_dim"] == 8 and m["lambda"] == 0.1
    assert m["search"]["steps"] == 10
    assert set(m["networks"]) == {"generator", "features", "encoder"}
    threshold = m["threshold"]
    assert threshold["quantile"] == 0.95 and threshold["scores"]["n"] > 0
    assert threshold["scores"]["min"] <= threshold["value"] <= threshold["scores"]["max"]
    fast = m["fast_threshold"]  # MODE_FAST's own, on the fast scores of the same images
    assert fast["quantile"] == 0.95 and fast["scores"]["n"] == threshold["scores"]["n"]
    assert fast["scores"]["min"] <= fast["value"] <= fast["scores"]["max"]
    assert bundle.fast_threshold == fast["value"] != bundle.threshold
    assert m["training"]["normal_labels"] == [7, 8]
    listed = set(m["files"])
    assert listed == {p.name for p in tiny_bundle.iterdir()} - {"manifest.json"}
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(tiny_bundle / name)


def test_checksum_mismatch_is_refused(tiny_bundle, tmp_path):
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    verify_checksums(read_bundle(copy))
    with open(copy / "features.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="features.onnx does not match its sha256"):
        verify_checksums(read_bundle(copy))
    (copy / "generator.pt2").unlink()
    with pytest.raises(BundleError, match="generator.pt2 is missing"):
        verify_checksums(read_bundle(copy))


def test_exported_torch_and_onnx_agree(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    models = load_torch_models(bundle)
    errors = check_parity(bundle, models)
    assert set(errors) == {"generator", "features", "encoder"}
    assert max(errors.values()) < 1e-4
    # Dynamic batch axis: ORT accepts any batch size; fixed input/output names.
    session = make_session(bundle.file("encoder", "onnx"))
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["z"]
    (z,) = session.run(None, {"image": np.zeros((7, 1, 16, 16), np.float32)})
    assert z.shape == (7, 8)
    with torch.no_grad():
        np.testing.assert_allclose(models.encoder(torch.zeros(7, 1, 16, 16)).numpy(), z,
                                   atol=1e-4)


def test_exported_program_backpropagates_to_its_input(tiny_bundle):
    models = load_torch_models(read_bundle(tiny_bundle))
    z = torch.zeros(2, 8, requires_grad=True)
    models.features(models.generator(z)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.slow
def test_parity_failure_leaves_no_bundle(tmp_path, monkeypatch):
    cfg = PRESETS["tiny"]
    networks = {"generator": Generator(cfg),
                "features": FeatureExtractor(Discriminator(cfg))}
    monkeypatch.setattr(export_module, "max_parity_error", lambda *a: 1.0)
    with pytest.raises(export_module.ExportError, match="differ"):
        export_module.export_bundle(tmp_path / "b", cfg, networks, {"name": "b"})
    assert list(tmp_path.iterdir()) == []


def test_evaluate_writes_report_plots_and_grid(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "report"
    code = train_main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(TEST_CSV),
                       "--normal-labels", "7,8", "--anomaly-labels", "2", "--steps", "5",
                       "--out", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 300 and report["anomalies"] == 100
    search = report["search"]
    assert 0.5 < search["auroc"] <= 1.0 and 0 < search["auprc"] <= 1.0
    assert sum(search["confusion"].values()) == 300
    assert "fast" in report
    for picture in ("roc.png", "reconstructions.png"):
        assert (out / picture).stat().st_size > 1000
    assert "AUROC" in capsys.readouterr().out


@pytest.mark.parametrize("steps, start", [(TINY_STEPS, "encoder"), (2, "encoder"),
                                         (TINY_STEPS, "random"), (50, "encoder")])
def test_evaluate_flags_a_search_unlike_the_thresholds(tiny_bundle, tmp_path, caplog, steps,
                                                       start):
    rows = gzip.decompress(TEST_CSV.read_bytes()).decode().splitlines()[:41]  # 13 x 7/8, 4 x 2
    data = write_text(tmp_path / "digits.csv", "\n".join(rows) + "\n")
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="anogan-train"):
        code = train_main(["evaluate", "--bundle", str(tiny_bundle), "--data", str(data),
                           "--normal-labels", "7,8", "--anomaly-labels", "2",
                           "--steps", str(steps), "--start", start, "--out", str(out),
                           "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    threshold = report["threshold"]
    calibrated = steps in (TINY_STEPS, 50) and start == "encoder"  # 50: a calibrated budget
    assert threshold["calibrated_start"] == "encoder"
    assert threshold["calibrated_steps"] == (steps if calibrated else TINY_STEPS)
    assert threshold["value"] == read_bundle(tiny_bundle).thresholds_by_steps[
        threshold["calibrated_steps"]]
    assert (threshold["evaluated_steps"], threshold["evaluated_start"]) == (steps, start)
    warned = "threshold calibrated for another search" in caplog.text
    assert warned == (not calibrated)
    shares = report["calibration"]  # each served scoring's held-out FAIL share
    assert shares["target_fpr"] == pytest.approx(0.05)
    assert {"fast", "search/cascade, 10 steps", "search/cascade, 200 steps"} <= set(shares)


def test_bundle_without_encoder(tiny_bundle_no_encoder):
    bundle = read_bundle(tiny_bundle_no_encoder)
    assert not bundle.has_encoder
    assert bundle.manifest["threshold"]["start"] == "random"
    assert bundle.manifest["fast_threshold"] is None
    assert not any(name.startswith("encoder") for name in bundle.manifest["files"])


# Every input the loaders reject: (make the data under a folder, extra CLI args, message).
BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.csv", ["--normal-labels", "7"],
                     "nope.csv: file not found"),
    "column count": (lambda d: write_text(d / "cols.csv", "label,a,b,c,d\n7,1,2,3,4\n7,1,2\n"),
                     ["--normal-labels", "7"], "cols.csv: line 3 has 3 columns"),
    "non-numeric cell": (lambda d: write_text(d / "cells.csv", "7,1,2,3,4\n7,1,x,3,4\n"),
                         ["--normal-labels", "7"], "cells.csv: line 2, column 3: non-numeric"),
    "no rows after label filter": (lambda d: write_text(d / "digits.csv", "1,0,0,0,0\n"),
                                   ["--normal-labels", "7"],
                                   "digits.csv: --normal-labels 7: no rows with label 7; "
                                   "labels present: 1"),
    "non-image file": (lambda d: write_text(d / "imgs" / "notes.txt", "hello").parent,
                       [], "notes.txt: not an image"),
    "mixed image sizes": (lambda d: write_gray_images(d / "imgs", {"a.png": (16, 16),
                                                                   "b.png": (16, 20)}),
                          [], "b.png: image size 20x16 differs"),
    "NaN in npy": (lambda d: write_nan_npy(d / "x.npy"), [], "x.npy: image 1 has non-finite"),
    "one normal image": (lambda d: write_gray_images(d / "imgs", {"a.png": (16, 16)}), [],
                         "imgs: 1 normal image(s) with --holdout 0.15 leave none held out"),
    "no normal class folder": (lambda d: write_gray_images(d / "parts" / "crack",
                                                           {"a.png": (16, 16)}).parent,
                               [], "parts: no normal images to train on"),
}


@pytest.mark.parametrize("make, extra, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_dataset_stops_training_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                       make, extra, expected):
    (tmp_path / "data").mkdir()
    data = make(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default runs/<name> would land here too
    out, run_dir = work / "bundle", work / "run"
    code = train_main(["train", "--data", str(data), *extra, "--preset", "tiny",
                       "--out", str(out), "--run-dir", str(run_dir), "--device", "cpu"])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists() and not run_dir.exists()
    assert list(work.iterdir()) == []


def test_wgan_gp_trains_the_critic_more_often_than_the_generator(tmp_path):
    model = PRESETS["tiny"]
    images = torch.rand(64, model.channels, model.image_size, model.image_size) * 2 - 1
    cfg = TrainConfig(epochs=1, encoder_epochs=0, batch_size=16, bn_recalibration_batches=1,
                      gan_loss="wgan-gp", critic_steps=2)
    trainer = Trainer(Networks.build(model, 0), cfg, tmp_path, torch.device("cpu"))
    before = [p.clone() for p in trainer.nets.generator.parameters()]
    trainer.train_gan(images)
    assert trainer.critic_updates == 4 and trainer.opt_g.state  # 4 critic, 2 G steps
    g_steps = next(iter(trainer.opt_g.state.values()))["step"]
    assert int(g_steps) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.nets.generator.parameters()))
    with pytest.raises(ValueError, match="gan_loss"):
        Trainer(Networks.build(model, 0), TrainConfig(gan_loss="hinge"), tmp_path,
                torch.device("cpu"))
    with pytest.raises(ValueError, match="critic_steps must be at least 1"):
        Trainer(Networks.build(model, 0), TrainConfig(gan_loss="wgan-gp", critic_steps=0),
                tmp_path, torch.device("cpu"))
    batch_norm = dataclasses.replace(model, disc_norm="batch")
    with pytest.raises(ValueError, match="wgan-gp needs a discriminator without BatchNorm"):
        Trainer(Networks.build(batch_norm, 0), TrainConfig(gan_loss="wgan-gp"), tmp_path,
                torch.device("cpu"))


@pytest.mark.slow
def test_calibrate_gives_an_older_bundle_its_fast_threshold(tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "older")
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    trained = manifest["fast_threshold"]["value"]
    manifest["fast_threshold"] = {"value": manifest["threshold"]["value"],
                                  "shared_with_search": True}  # as bundles were written
    path.write_text(json.dumps(manifest))
    assert read_bundle(bundle).fast_threshold == manifest["threshold"]["value"]
    assert train_main(["calibrate", "--bundle", str(bundle), "--device", "cpu"]) == 0
    assert read_bundle(bundle).fast_threshold == pytest.approx(trained, rel=1e-5)
    assert "fast-path threshold" in capsys.readouterr().out
    manifest = json.loads(path.read_text())
    manifest["training"]["images"]["heldout"] += 1  # not the data it was trained on
    path.write_text(json.dumps(manifest))
    assert train_main(["calibrate", "--bundle", str(bundle), "--device", "cpu"]) == 2
    assert "not its training data" in capsys.readouterr().err


@pytest.mark.slow
def test_class_folders_train_on_good_only(tmp_path):
    data = tmp_path / "parts"
    write_gray_images(data / "good", {f"{i}.png": (16, 16) for i in range(8)}, value=40)
    write_gray_images(data / "crack", {f"{i}.png": (16, 16) for i in range(5)}, value=250)
    out = tmp_path / "bundle"
    code = train_main(["train", "--data", str(data), "--preset", "tiny", "--epochs", "1",
                       "--no-encoder", "--steps", "1", "--out", str(out),
                       "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 0
    images = read_bundle(out).manifest["training"]["images"]
    assert images["train"] + images["heldout"] == 8


@pytest.mark.slow
def test_resume_continues_from_checkpoint(tmp_path):
    run = tmp_path / "run"
    common = ["train", "--data", str(TRAIN_CSV), "--normal-labels", "7,8", "--preset", "tiny",
              "--encoder-epochs", "1", "--steps", "2", "--calibrate-steps", "2",
              "--run-dir", str(run)]
    assert train_main([*common, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["gan_epoch"] == 1
    assert train_main([*common, "--epochs", "2", "--resume", "--out", str(tmp_path / "b")]) == 0
    second = torch.load(run / "checkpoint.pt", weights_only=False)
    assert second["gan_epoch"] == 2 and len(second["history"]) > len(first["history"])
    assert (run / "samples" / "gan_epoch_002.png").exists()


@pytest.mark.parametrize("gan_loss", ["bce", "wgan-gp"])
@pytest.mark.parametrize("stop_after", [(1, 0), (2, 1)], ids=["in-gan", "in-encoder"])
def test_resumed_training_equals_uninterrupted(tmp_path, stop_after, gan_loss):
    """Epoch orders, z draws and optimiser states all come back from the checkpoint."""
    model = PRESETS["tiny"]
    images = torch.rand(48, model.channels, model.image_size, model.image_size) * 2 - 1

    def run(epochs: int, encoder_epochs: int, name: str, resume: str | None = None) -> Trainer:
        cfg = TrainConfig(epochs=epochs, encoder_epochs=encoder_epochs, batch_size=16,
                          bn_recalibration_batches=2, gan_loss=gan_loss, critic_steps=2)
        trainer = Trainer(Networks.build(model, cfg.seed), cfg, tmp_path / name,
                          torch.device("cpu"))
        if resume:
            trainer.load_checkpoint(tmp_path / resume / "checkpoint.pt")
        trainer.train_gan(images)
        trainer.train_encoder(images)
        return trainer

    straight = run(2, 2, "straight")
    run(*stop_after, "interrupted")
    resumed = run(2, 2, "resumed", resume="interrupted")
    for name in ("generator", "discriminator", "encoder"):
        for a, b in zip(getattr(straight.nets, name).parameters(),
                        getattr(resumed.nets, name).parameters()):
            assert torch.equal(a, b), name
