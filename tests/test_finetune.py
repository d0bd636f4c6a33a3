"""A whole-frame bundle trains further on confirmed-good frames as a new version
(trainer/finetune.py): the run resumed from its checkpoint, the parent untouched, the
lineage recorded, the thresholds calibrated again, and a foreign checkpoint refused."""

from __future__ import annotations

import gzip

import numpy as np
import torch
from PIL import Image

from anogan_inspect.bundle import load_checked_models, read_bundle, sha256_file, verify_checksums
from anogan_inspect.trainer.cli import main as train_main
from tests.conftest import TEST_CSV


def dimmed_digits(folder, count: int) -> list:
    """The line's lamp dimmed: `count` test 7s and 8s at 70 % brightness, as PNG files."""
    folder.mkdir(parents=True)
    with gzip.open(TEST_CSV, "rt") as csv:
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, max_rows=400, dtype=np.float32)
    digits = rows[np.isin(rows[:, 0], (7, 8))][:count, 1:].reshape(-1, 28, 28)
    paths = []
    for i, digit in enumerate(digits):
        paths.append(folder / f"part-{i:03d}.png")
        Image.fromarray((digit * 0.7).round().astype(np.uint8)).save(paths[-1])
    return paths


def generated(bundle_path) -> torch.Tensor:
    models = load_checked_models(read_bundle(bundle_path))
    z = torch.randn(4, models.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return models.generator(z)


def test_finetune_resumes_the_run_and_writes_a_version_beside_the_parent(tiny_bundle,
                                                                          tmp_path, capsys):
    parent = read_bundle(tiny_bundle)
    parent_sha = sha256_file(tiny_bundle / "manifest.json")
    paths = dimmed_digits(tmp_path / "confirmed", 8)
    out = tmp_path / "v2"
    assert train_main(["finetune", str(tmp_path / "confirmed"), "--from", str(tiny_bundle),
                       "--out", str(out), "--new-run-dir", str(tmp_path / "run-v2"),
                       "--epochs", "1", "--encoder-epochs", "0",
                       "--calibrate-steps", "25"]) == 0
    printed = capsys.readouterr().out
    new = read_bundle(out)
    verify_checksums(new)
    assert f"version {new.version} in {out} (parent {parent.version})" in printed
    assert "trained on 4 confirmed frame(s)" in printed
    lineage = new.manifest["lineage"]
    assert lineage["method"] == "finetune" and lineage["generation"] == 1
    assert lineage["parent"] == {"version": parent.version, "manifest_sha256": parent_sha}
    assert sorted(lineage["learnt"] + lineage["calibrating"]) == \
        sorted(sha256_file(p) for p in paths)
    assert lineage["epochs"] == {"gan": 1, "encoder": 0}
    # The run resumed where it stopped: one more GAN epoch than the parent's
    checkpoint = torch.load(tmp_path / "run-v2" / "checkpoint.pt", weights_only=False)
    parent_epochs = parent.manifest["training"]["config"]["epochs"]
    assert checkpoint["gan_epoch"] == parent_epochs + 1
    # ... and the new version names its run: the next finetune resumes from it
    assert new.manifest["training"]["run"] == str((tmp_path / "run-v2").resolve())
    # ... and trained: the generator moved; the thresholds were calibrated again on the
    # held-out split and the 4 confirmed frames it did not train on
    assert (generated(out) - generated(tiny_bundle)).abs().max() > 1e-3
    heldout = parent.manifest["training"]["images"]["heldout"]
    assert new.manifest["threshold"]["scores"]["n"] == heldout + 4
    steps = str(parent.search_config.steps)
    assert set(new.manifest["thresholds"]) == {"25", steps}  # --calibrate-steps, its own
    # The parent is untouched
    assert sha256_file(tiny_bundle / "manifest.json") == parent_sha
    verify_checksums(read_bundle(tiny_bundle))


def test_finetune_refuses_a_checkpoint_of_another_run(tiny_bundle, tmp_path, capsys):
    run = tmp_path / "other-run"
    run.mkdir()
    recorded = read_bundle(tiny_bundle).manifest["training"]["run"]
    state = torch.load(f"{recorded}/checkpoint.pt", weights_only=False)
    for tensor in state["discriminator"].values():
        if tensor.is_floating_point():
            tensor.add_(0.5)
    torch.save(state, run / "checkpoint.pt")
    dimmed_digits(tmp_path / "confirmed", 2)
    out = tmp_path / "v2"
    assert train_main(["finetune", str(tmp_path / "confirmed"), "--from", str(tiny_bundle),
                       "--out", str(out), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'}: not the run {tiny_bundle} was exported from" in err
    assert not out.exists()
    # One frame is too few: every 2nd confirmed frame calibrates
    assert train_main(["finetune", str(next((tmp_path / "confirmed").iterdir())), "--from",
                       str(tiny_bundle), "--out", str(out)]) == 2
    assert "finetune needs at least 2" in capsys.readouterr().err
    # A run folder without a checkpoint
    assert train_main(["finetune", str(tmp_path / "confirmed"), "--from", str(tiny_bundle),
                       "--out", str(out), "--run-dir", str(tmp_path)]) == 2
    assert "no checkpoint: finetune resumes the run" in capsys.readouterr().err
