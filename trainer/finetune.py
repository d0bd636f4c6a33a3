"""A whole-frame bundle trains on frames operators confirmed GOOD, as a new bundle version.

A memory bundle learns confirmed frames without training (trainer/learn.py); a whole-frame
AnoGAN bundle has no memory to add them to, so its GAN resumes: the run's checkpoint (the
networks with their optimiser states and the discriminator's head, which the bundle does
not carry) trains `epochs` more GAN epochs and `encoder_epochs` more encoder epochs on the
bundle's training split plus the confirmed frames; the thresholds are calibrated again, as
at training, on the held-out split plus every CALIBRATION_EVERY-th confirmed frame (which
it does not train on). The new version is exported beside the parent, never over it, with
a `lineage` (method "finetune") naming the parent and every frame's sha256, and its own
checkpoint in a new run folder, so that the next finetune resumes from it.

The checkpoint must be the run the bundle was exported from: its discriminator trunk must
compute the bundle's features (checked, within the export's parity tolerance).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import (
    MANIFEST,
    PARITY_TOLERANCE,
    Bundle,
    load_checked_models,
    sha256_file,
)
from anogan_inspect.networks import FeatureExtractor, ModelConfig
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels
from anogan_inspect.trainer.evaluate_memory import training_frames
from anogan_inspect.trainer.export import export_bundle
from anogan_inspect.trainer.learn import CALIBRATION_EVERY, Frame, LearnError
from anogan_inspect.trainer.scoring import (
    budget_thresholds,
    calibrate,
    fast_threshold,
    fit_report,
    search_scores,
)
from anogan_inspect.trainer.train import Networks, TrainConfig, Trainer


@dataclasses.dataclass
class Finetuned:
    path: Path
    version: str
    run_dir: Path
    trained: list[str]  # sha256 of the confirmed frames trained on
    calibrating: list[str]  # ... and of those calibrated on
    threshold: float
    parent_threshold: float
    heldout_fail_share: float  # of the held-out normal images, at the new threshold
    seconds: float


def checkpoint_of(bundle: Bundle, run_dir: Path | None) -> Path:
    """The run checkpoint a bundle was exported from: `run_dir`'s, or the one its manifest
    names (training.run, recorded since finetune exists)."""
    folder = run_dir or bundle.manifest.get("training", {}).get("run")
    if not folder:
        raise LearnError(f"{bundle.path}: its manifest names no training run: pass the run "
                         "folder train wrote (--run-dir), which holds checkpoint.pt")
    path = Path(folder) / "checkpoint.pt"
    if not path.is_file():
        raise LearnError(f"{path}: no checkpoint: finetune resumes the run the bundle was "
                         "trained in (anogan-train train --run-dir)")
    return path


def _check_same_run(trainer: Trainer, models: ScoringModels, bundle: Bundle,
                    checkpoint: Path) -> None:
    """The checkpoint's discriminator trunk computes the bundle's features."""
    model = trainer.nets.model
    probe = torch.rand(4, model.channels, model.image_size, model.image_size,
                       generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = FeatureExtractor(copy.deepcopy(trainer.nets.discriminator)).cpu().eval()
    with torch.no_grad():
        gap = (features(probe) - models.features.cpu()(probe)).abs().max().item()
    if gap > PARITY_TOLERANCE:
        raise LearnError(f"{checkpoint}: not the run {bundle.path} was exported from (its "
                         f"discriminator's features differ by {gap:.2e})")


def finetune(bundle: Bundle, good: list[Frame], out: Path, run_dir: Path | None = None,
             new_run_dir: Path | None = None, epochs: int = 2, encoder_epochs: int = 1,
             train_data: Path | None = None, device: str = "cpu",
             budgets: list[int] | None = None) -> Finetuned:
    """Write `out`, a new version of the whole-frame bundle trained further on the GOOD
    frames (pixels (C, H, W) in [0, 1], any size); LearnError (nothing written) when it
    cannot. budgets: the search budgets to calibrate besides the bundle's own (None: the
    parent's)."""
    out = Path(out)
    if out.exists():
        raise LearnError(f"{out} exists: a version is written once, into a new folder")
    if bundle.memory is not None:
        raise LearnError(f"{bundle.path}: a memory bundle learns confirmed frames without "
                         "training: anogan-train learn")
    if bundle.tiling is not None:
        raise LearnError(f"{bundle.path}: a tiled bundle without a memory: retrain it, or "
                         "train a memory bundle (docs/textures.md)")
    if len(good) < CALIBRATION_EVERY:
        raise LearnError(f"{len(good)} confirmed frame(s): finetune needs at least "
                         f"{CALIBRATION_EVERY} (every {CALIBRATION_EVERY}nd calibrates)")
    if epochs < 1:
        raise LearnError(f"--epochs must be at least 1, got {epochs}")
    checkpoint = checkpoint_of(bundle, run_dir)
    device = torch.device(device)
    model = ModelConfig.from_dict(bundle.manifest["model"])
    parent_models = load_checked_models(bundle, "cpu")
    training = bundle.manifest.get("training", {})
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{**state["train_config"],
                         "betas": tuple(state["train_config"]["betas"])})
    cfg = dataclasses.replace(
        cfg, epochs=state["gan_epoch"] + epochs,
        encoder_epochs=state["encoder_epoch"] + (encoder_epochs if bundle.has_encoder else 0))
    generation = int((bundle.manifest.get("lineage") or {}).get("generation", 0)) + 1
    base = re.sub(r"-g\d+$", "", checkpoint.parent.name)  # run-x, run-x-g1 → run-x-g2
    new_run_dir = Path(new_run_dir or checkpoint.parent.with_name(f"{base}-g{generation}"))
    if new_run_dir.exists() and any(new_run_dir.iterdir()):
        raise LearnError(f"{new_run_dir} exists: the new version's run goes into a new folder "
                         "(--new-run-dir)")

    train_frames, heldout_frames = training_frames(bundle, train_data)
    calibrating = good[CALIBRATION_EVERY - 1::CALIBRATION_EVERY]
    trained = [f for i, f in enumerate(good) if (i + 1) % CALIBRATION_EVERY]

    def inputs(frames) -> torch.Tensor:  # any sizes, one at a time
        return torch.cat([to_model_input(np.asarray(f)[None], model.image_size,
                                         model.channels) for f in frames])

    train_x = torch.cat([inputs(train_frames), inputs(f.pixels for f in trained)])
    heldout_x = inputs(heldout_frames)
    confirmed_x = inputs(f.pixels for f in calibrating)

    new_run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(Networks.build(model, cfg.seed), cfg, new_run_dir, device)
    trainer.load_checkpoint(checkpoint)
    _check_same_run(trainer, parent_models, bundle, checkpoint)
    started = trainer.started = time.time()
    trainer.train_gan(train_x)
    nets = trainer.nets
    networks = {"generator": nets.generator, "features": FeatureExtractor(nets.discriminator)}
    if bundle.has_encoder:
        trainer.train_encoder(train_x)
        networks["encoder"] = nets.encoder
    models = ScoringModels(networks["generator"], networks["features"], model.latent_dim,
                           networks.get("encoder")).prepare()

    # The thresholds, as at training: the same quantile of the same search's scores.
    parent_threshold = bundle.manifest["threshold"]
    quantile = parent_threshold.get("quantile", 0.95)
    start = parent_threshold.get("start", "encoder" if bundle.has_encoder else "random")
    search_cfg = bundle.search_config
    seed = int(training.get("seed", 0))
    calibration_x = torch.cat([heldout_x, confirmed_x])
    scored = search_scores(models, calibration_x, search_cfg, start, device, 64, seed,
                           desc="calibration")
    threshold = {**calibrate(scored.score, quantile), "steps": search_cfg.steps,
                 "start": start}
    for key in ("target_fpr", "judged_by"):
        if key in parent_threshold:
            threshold[key] = parent_threshold[key]
    heldout_share = float(np.mean(scored.score[:len(heldout_x)] > threshold["value"]))
    fields = _manifest_fields(bundle, models, calibration_x, scored, threshold, quantile,
                              start, seed, device, train_x, trainer, started, good, trained,
                              calibrating, new_run_dir, generation, epochs, encoder_epochs,
                              budgets)
    export_bundle(out, model, networks, fields)
    return Finetuned(out, fields["version"], new_run_dir, [f.sha256 for f in trained],
                     [f.sha256 for f in calibrating], threshold["value"],
                     float(parent_threshold["value"]), heldout_share,
                     round(time.time() - started, 1))


def _manifest_fields(bundle, models, calibration_x, scored, threshold, quantile, start, seed,
                     device, train_x, trainer, started, good, trained, calibrating,
                     new_run_dir, generation, epochs, encoder_epochs, budgets) -> dict:
    """The parent's manifest fields with the new thresholds, training record and lineage."""
    parent = bundle.manifest
    search_cfg = bundle.search_config
    created = datetime.now(timezone.utc)
    fields = {key: copy.deepcopy(value) for key, value in parent.items()
              if key not in ("format", "format_version", "model", "normalization", "parity",
                             "networks", "files", "geometry", "latent_dim")}
    fields.update(version=f"{created:%Y%m%dT%H%M%SZ}-g{generation}",
                  created=created.isoformat(), threshold=threshold)
    if "thresholds" in parent or budgets:
        if budgets is None:
            budgets = [int(steps) for steps in parent["thresholds"]]
        fields["thresholds"] = budget_thresholds(models, calibration_x, search_cfg, start,
                                                 quantile, budgets, device, 64, seed)
    fields["fast_threshold"] = fast_threshold(models, calibration_x.to(device), search_cfg,
                                              quantile, None, len(calibration_x))
    seconds = time.time() - started
    training = dict(parent.get("training", {}))
    training.update(
        run=str(new_run_dir.resolve()),
        seconds=round(float(training.get("seconds", 0.0)) + seconds, 1),
        final_losses=trainer.history[-2:],
        fit=fit_report(models, train_x, calibration_x, scored.z, trainer.history, device))
    fields["training"] = training
    fields["lineage"] = {
        "generation": generation, "method": "finetune",
        "parent": {"version": parent["version"],
                   "manifest_sha256": sha256_file(bundle.path / MANIFEST)},
        "learnt": [f.sha256 for f in trained],
        "calibrating": [f.sha256 for f in calibrating],
        "held": [], "epochs": {"gan": epochs, "encoder": encoder_epochs},
        "parent_threshold": float(parent["threshold"]["value"]),
        "seconds": round(seconds, 1),
    }
    return fields
