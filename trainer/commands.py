"""`anogan-train`'s commands: train → calibrate → export a bundle, evaluate, recalibrate.

trainer/cli.py reads the command line without torch and hands the arguments here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from anogan_inspect.bundle import (
    Bundle,
    BundleError,
    load_checked_models,
    read_bundle,
)
from anogan_inspect.datasets import (
    DatasetError,
    ImageSet,
    heldout_split,
    load_dataset,
    normal_subset,
)
from anogan_inspect.memory import MemoryConfig
from anogan_inspect.metrics import confusion_table, save_roc_plot
from anogan_inspect.networks import PRESETS, FeatureExtractor, ModelConfig
from anogan_inspect.preprocess import to_model_input
from anogan_inspect.search import ScoringModels, SearchConfig, fast_score
from anogan_inspect.tiling import Tiling
from anogan_inspect.trainer.cli import PRESET_TRAINING
from anogan_inspect.trainer.distributed import Distributed
from anogan_inspect.trainer.evaluate_memory import (
    evaluate_memory,
    print_memory_report,
)
from anogan_inspect.trainer.evaluate_tiles import evaluate_tiled, print_tiled_report
from anogan_inspect.trainer.export import ExportError, export_bundle
from anogan_inspect.trainer.finetune import finetune
from anogan_inspect.trainer.learn import Frame, learn
from anogan_inspect.trainer.memory_bundle import build_memory, load_backbone
from anogan_inspect.trainer.score import image_files, read_frame, run_score
from anogan_inspect.trainer.scoring import (
    FIT_RATIO,
    budget_thresholds,
    calibrate,
    fast_threshold,
    fit_report,
    metrics,
    save_reconstruction_grid,
    search_scores,
    write_json,
)
from anogan_inspect.trainer.tiles import frame_tiles, score_frames
from anogan_inspect.trainer.train import Networks, TrainConfig, Trainer
from anogan_inspect.trainer.versions import archive_of, promote, rollback

log = logging.getLogger("anogan-train")


def run(args) -> int:
    """Run the parsed command; 2 with a one-line message for what the user can fix."""
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):  # export chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if getattr(args, "device", "cpu") == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.command == "train":
            return run_train(args)
        if args.command == "score":
            return run_score(args)
        if args.command == "calibrate":
            return run_calibrate(args)
        if args.command == "learn":
            return run_learn(args)
        if args.command == "finetune":
            return run_finetune(args)
        if args.command in ("promote", "rollback"):
            replaced, now = promote(args.version, args.to) if args.command == "promote" \
                else rollback(args.to)
            print(f"{args.to}: serving version {now}" + (f" (was {replaced}; kept in "
                                                        f"{archive_of(args.to)})"
                                                        if replaced else ""))
            return 0
        return run_evaluate(args)
    except (DatasetError, ExportError, BundleError, FileNotFoundError, ValueError) as err:
        # (LearnError is a ValueError)
        print(f"anogan-train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anogan-train: interrupted; no bundle written", file=sys.stderr)
        return 130


def search_config(args, base: SearchConfig) -> SearchConfig:
    """Search options from the CLI over a base config."""
    changes = {"steps": args.steps, "lr": args.search_lr}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def model_config(args) -> ModelConfig:
    overrides = {f: getattr(args, f) for f in ("image_size", "channels", "latent_dim", "width",
                                               "disc_norm") if getattr(args, f) is not None}
    if getattr(args, "patch_size", None):
        if args.image_size not in (None, args.patch_size):
            raise ValueError("--image-size and --patch-size differ: a tiled model's image "
                             "size is its patch size")
        overrides["image_size"] = args.patch_size
    return dataclasses.replace(PRESETS[args.preset], **overrides)


def tiling_config(args) -> Tiling | None:
    """The tiling asked for (--patch-size), or None for whole frames."""
    if not args.patch_size:
        return None
    return Tiling(patch=args.patch_size, stride=args.stride or max(1, args.patch_size // 2),
                  scale=args.scale, aggregate=args.aggregate, top_k=args.top_k)


def train_config(args) -> TrainConfig:
    preset = PRESET_TRAINING.get(args.preset, PRESET_TRAINING["default"])
    chosen = {"epochs": args.epochs, "encoder_epochs": args.encoder_epochs,
              "batch_size": args.batch_size}
    values = {k: v if v is not None else preset[k] for k, v in chosen.items()}
    if args.no_encoder:
        values["encoder_epochs"] = 0
    recalibration = 0 if args.no_bn_recalibration else TrainConfig.bn_recalibration_batches
    return TrainConfig(**values, lr_g=args.lr_g, lr_d=args.lr_d, seed=args.seed,
                       gan_loss=args.gan_loss, critic_steps=args.critic_steps,
                       bn_recalibration_batches=recalibration,
                       samples_per_epoch=args.samples_per_epoch)


def memory_config(args) -> MemoryConfig | None:
    """The memory asked for (--memory), or None."""
    if not args.memory:
        return None
    if not args.patch_size:
        raise ValueError("--memory needs --patch-size: the GAN of a memory bundle learns tiles")
    if args.memory == "backbone" and not args.backbone:
        raise ValueError("--memory backbone needs --backbone FILE.pt2")
    if args.backbone and args.memory != "backbone":
        raise ValueError("--backbone is used by --memory backbone only")
    return MemoryConfig(extractor=args.memory, layers=tuple(args.layers),
                        aggregate=args.neighbourhood, grid=args.memory_grid,
                        patch=args.pixel_patch,
                        step=args.pixel_step, standardize=args.standardize_patches,
                        size=args.memory_size, sampler=args.memory_sampler,
                        smoothing=args.map_smoothing, augment=args.augment,
                        edge_margin=args.edge_margin)


def run_train(args) -> int:
    name = args.name or args.out.name
    run_dir = args.run_dir or Path("runs") / name
    model, cfg, tiling = model_config(args), train_config(args), tiling_config(args)
    memory_cfg = memory_config(args)
    backbone = load_backbone(args.backbone) if memory_cfg and args.backbone else None
    # The threshold's quantile of held-out scores: from --target-fpr, --quantile, or 0.95
    # (0.99 for a memory bundle: 1 % of normal frames to fail).
    if args.target_fpr is not None:
        quantile, target_fpr = 1.0 - args.target_fpr, args.target_fpr
    else:
        quantile = args.quantile if args.quantile is not None else (0.99 if memory_cfg else 0.95)
        target_fpr = round(1.0 - quantile, 12)
    search_cfg = search_config(args, SearchConfig())
    device = torch.device(args.device)
    job = Distributed.from_env(device)  # under torchrun: one of several processes
    if job:
        device = job.device(device)

    data, train_idx, holdout_idx, train_x, heldout_x = _training_images(args, model, tiling)
    log.info("model %s, device %s", model, device)

    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(Networks.build(model, args.seed), cfg, run_dir, device, job)
    checkpoint = run_dir / "checkpoint.pt"
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        trainer.load_checkpoint(checkpoint)
    started = trainer.started = time.time()
    trainer.train_gan(train_x)
    nets = trainer.nets
    networks = {"generator": nets.generator, "features": FeatureExtractor(nets.discriminator)}
    if cfg.encoder_epochs > 0:
        trainer.train_encoder(train_x)
        networks["encoder"] = nets.encoder
    train_seconds = trainer.seconds_before + time.time() - started
    if job:  # rank 0 goes on alone: calibration and the bundle
        job.close()
        if not job.main:
            return 0

    models = ScoringModels(networks["generator"], networks["features"], model.latent_dim,
                           networks.get("encoder")).prepare()
    start = "encoder" if models.encoder is not None else "random"
    extra: dict = {}
    built = None
    if memory_cfg:
        # The memory decides the verdict: no tile searches to calibrate.
        memory_started = time.time()
        trunk = copy.deepcopy(nets.discriminator.features).cpu().eval()
        built = build_memory(memory_cfg, data.images[train_idx], data.images[holdout_idx],
                             tiling, model.channels, target_fpr, args.pixel_quantile,
                             trunk=trunk, backbone=backbone, seed=args.seed)
        train_seconds += time.time() - memory_started
        memory_entry = built.manifest
        threshold = {"value": memory_entry["image_threshold"], "judged_by": "memory",
                     "quantile": quantile, "target_fpr": target_fpr,
                     "heldout_fpr": memory_entry["calibration"]["heldout_fail_share"],
                     "frames": len(holdout_idx)}
        extra["memory"] = memory_entry
        extra["tiling"] = {**tiling.to_dict(), "pixel_threshold": memory_entry["pixel_threshold"],
                           "pixel_quantile": args.pixel_quantile}
        heldout_z = fast_score(models, heldout_x[:4096].to(device), search_cfg.lam)[1].numpy() \
            if models.encoder is not None else None
        log.info("memory: %d rows of %d (%s, %s), image threshold %.4f, pixel threshold %.4f",
                 memory_entry["rows"], memory_entry["dim"], memory_cfg.extractor,
                 memory_cfg.sampler, memory_entry["image_threshold"],
                 memory_entry["pixel_threshold"])
    elif tiling:
        heldout_frames = data.images[holdout_idx]
        tiled = score_frames(models, heldout_frames, tiling, search_cfg, device,
                             batch_size=args.search_batch, desc="calibration tiles")
        threshold = calibrate(tiled.score, quantile)
        # The regions' threshold from maps made as the server makes them: the cascade at
        # this threshold (cleared tiles keep G(E(x)), whose residuals are larger).
        served = score_frames(models, heldout_frames, tiling, search_cfg, device,
                              threshold=threshold["value"], batch_size=args.search_batch,
                              desc="calibration maps")
        pixel_threshold = float(np.quantile(served.maps, args.pixel_quantile))
        extra["tiling"] = {**tiling.to_dict(), "pixel_threshold": pixel_threshold,
                           "pixel_quantile": args.pixel_quantile}
        heldout_z = tiled.z
    else:
        heldout = search_scores(models, heldout_x, search_cfg, start, device,
                                args.search_batch, args.seed, desc="calibration")
        threshold = calibrate(heldout.score, quantile)
        heldout_z = heldout.z
        extra["thresholds"] = budget_thresholds(models, heldout_x, search_cfg, start, quantile,
                                                args.calibrate_steps, device,
                                                args.search_batch, args.seed)
    threshold.update(steps=search_cfg.steps, start=start)
    log.info("threshold %.2f at quantile %.3f of %d held-out %s scores", threshold["value"],
             quantile, len(holdout_idx), "frame" if tiling else "image")
    if built is not None and heldout_z is None:  # no encoder: nothing to judge G's fit by
        fit = {"learned": None, "reason": "no encoder"}
    else:
        fit_x = heldout_x[:len(heldout_z)]
        fit = fit_report(models, train_x, fit_x, heldout_z, trainer.history, device)
        if built is None or args.require_fit:
            _say_fit(fit, args.require_fit)
        else:  # a memory bundle's verdicts do not rest on G; its regions' G(z) do
            log.info("fit: G reproduces held-out tiles at %.3f of the mean tile's error",
                     fit["reconstruction_vs_mean_image"])

    created = datetime.now(timezone.utc)
    fields = {
        "name": name,
        "version": created.strftime("%Y%m%dT%H%M%SZ"),
        "created": created.isoformat(),
        "lambda": search_cfg.lam,
        "search": search_cfg.to_dict(),
        "threshold": threshold,
        "fast_threshold": fast_threshold(models, heldout_x.to(device), search_cfg,
                                         quantile, tiling, len(holdout_idx)),
        "training": {**_training_metadata(args, data, train_idx, holdout_idx, cfg, trainer,
                                          train_seconds), "fit": fit,
                     "run": str(run_dir.resolve())},  # its checkpoint: what finetune resumes
        **extra,
    }
    export_bundle(args.out, model, networks, fields,
                  memory_scorer=built.scorer if built is not None else None,
                  heldout_frames=data.images[holdout_idx] if built is not None else None)
    print(f"bundle: {args.out} (threshold {threshold['value']:.2f}, "
          f"trained in {train_seconds:.0f} s; samples in {run_dir / 'samples'})")
    return 0


def _training_images(args, model: ModelConfig, tiling: Tiling | None
                     ) -> tuple[ImageSet, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Normal images, split into train/held-out indices (by frame), and the model inputs of
    each part: the images resized to the model, or, tiled, every tile of each frame.

    Every data error fires here, before run_train writes anything.
    """
    loaded = load_dataset(args.data, split="train", normal_labels=args.normal_labels)
    data = normal_subset(loaded)  # GAN and held-out calibration both see normal images only
    train_idx, holdout_idx = heldout_split(len(data), args.holdout, args.seed)
    if len(holdout_idx) == 0:
        raise DatasetError(f"{data.source}: {len(data)} normal image(s) with --holdout "
                           f"{args.holdout} leave none held out to calibrate the threshold on")
    log.info("%s: %d normal images (%d train, %d held out; %d anomalous left out)",
             args.data, len(data), len(train_idx), len(holdout_idx), len(loaded) - len(data))
    if tiling is None:
        images = to_model_input(data.images, model.image_size, model.channels)
        return data, train_idx, holdout_idx, images[train_idx], images[holdout_idx]
    try:
        train_x, _, _ = frame_tiles(data.images[train_idx], tiling, model.channels)
    except ValueError as err:  # frames smaller than a tile
        raise DatasetError(f"{data.source}: {err}") from err
    heldout_x, _, _ = frame_tiles(data.images[holdout_idx], tiling, model.channels)
    log.info("tiles: %d for training, %d held out (%s)", len(train_x), len(heldout_x), tiling)
    return data, train_idx, holdout_idx, train_x, heldout_x


def _say_fit(fit: dict, require: bool) -> None:
    """Warn loudly (or refuse, with --require-fit) when G did not learn the data."""
    if fit["learned"]:
        log.info("fit: G reproduces held-out normal data at %.3f of the mean image's error",
                 fit["reconstruction_vs_mean_image"])
        return
    message = (f"the generator did not learn the data: its reconstruction of held-out normal "
               f"images is {fit['reconstruction_vs_mean_image']:.2f} times the error of the "
               f"mean training image (learned below {FIT_RATIO}); its scores will not "
               "separate defects. Train longer, or a wider model (--width), or check the data")
    if require:
        raise ValueError(f"{message} (--require-fit: no bundle written)")
    log.warning("WARNING: %s", message)
    print(f"anogan-train: WARNING: {message}", file=sys.stderr)


def _training_metadata(args, data: ImageSet, train_idx, holdout_idx, cfg: TrainConfig,
                       trainer: Trainer, seconds: float) -> dict:
    return {
        "data": str(args.data),
        "normal_labels": args.normal_labels,
        "holdout": args.holdout,
        "images": {"train": int(len(train_idx)), "heldout": int(len(holdout_idx))},
        "config": dataclasses.asdict(cfg),
        "seed": args.seed,
        "device": str(args.device),
        "seconds": round(seconds, 1),
        "final_losses": [h for h in trainer.history[-2:]],
        # torchrun: processes that trained (each on its share, --batch-size each)
        "processes": trainer.job.world_size if trainer.job else 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_evaluate(args) -> int:
    bundle = read_bundle(args.bundle)
    device = torch.device(args.device)
    models = load_checked_models(bundle, device)
    cfg = search_config(args, bundle.search_config)
    start = args.start or ("encoder" if bundle.has_encoder else "random")
    data = load_dataset(args.data, split="test", normal_labels=args.normal_labels,
                        anomaly_labels=args.anomaly_labels)
    if data.is_anomaly is None:
        raise DatasetError(f"{args.data}: evaluation needs labels "
                           "(--normal-labels/--anomaly-labels for CSV, test/ folders for MVTec)")
    out = args.out or Path("reports") / bundle.name
    if bundle.memory is not None:
        report = evaluate_memory(bundle, models, cfg, data, args.data, out, device,
                                 args.search_batch, args.baselines, args.train_data)
        print_memory_report(report, out)
        return 0
    if bundle.tiling is not None:
        _threshold_steps(bundle, cfg, start)  # warns before the search
        report = evaluate_tiled(bundle, models, cfg, data, args.data, out, device,
                                args.search_batch)
        print_tiled_report(report, out)
        return 0
    x = to_model_input(data.images, bundle.image_size, bundle.channels).to(device)
    threshold = _threshold_steps(bundle, cfg, start)  # warns before the search
    started = time.time()
    result = search_scores(models, x, cfg, start, device, args.search_batch, args.seed,
                           desc="evaluate")
    seconds = time.time() - started
    report = {
        "bundle": str(args.bundle), "model": bundle.name, "version": bundle.version,
        "data": str(args.data), "images": len(data),
        "anomalies": int(data.is_anomaly.sum()), "start": start,
        "search_seconds": round(seconds, 2), "frames_per_second": round(len(data) / seconds, 2),
        "threshold": threshold,
        "search": {**cfg.to_dict(), **metrics(result.score, data.is_anomaly,
                                              threshold["value"])},
        "calibration": heldout_fail_shares(bundle),
    }
    curves = {f"search, {cfg.steps} steps": (result.score, data.is_anomaly)}
    if models.encoder is not None:
        fast, _ = fast_score(models, x, cfg.lam)
        report["fast"] = metrics(fast, data.is_anomaly, bundle.fast_threshold)
        curves["fast path (encoder)"] = (fast, data.is_anomaly)
    save_roc_plot(curves, out / "roc.png", f"{bundle.name} on {args.data.name}")
    save_reconstruction_grid(models, x, result.z, result.score, threshold["value"],
                             data.is_anomaly, out / "reconstructions.png")
    write_json(out / "report.json", report)
    _write_scores(out / "scores.jsonl", data, result.score, threshold["value"])
    search_metrics = report["search"]
    print(f"{bundle.name}: AUROC {search_metrics['auroc']:.4f}  AUPRC "
          f"{search_metrics['auprc']:.4f}  ({len(data)} images, {cfg.steps} steps from {start}, "
          f"{report['frames_per_second']} frames/s); at threshold {threshold['value']:.2f}:")
    print(confusion_table(search_metrics["confusion"]))
    shares = report["calibration"]
    print(f"held-out normal FAIL share of each served scoring (target "
          f"{shares.pop('target_fpr'):.3f}): "
          + ", ".join(f"{name} {share:.3f}" for name, share in shares.items()))
    if "fast" in report:
        print(f"fast path: AUROC {report['fast']['auroc']:.4f}")
    print(f"report: {out / 'report.json'}, scores: {out / 'scores.jsonl'}, ROC: {out / 'roc.png'}, "
          f"grid: {out / 'reconstructions.png'}")
    return 0


def _write_scores(path: Path, data: ImageSet, scores: np.ndarray, threshold: float) -> None:
    """One JSON line per image: its index (and file, for folders), label and search score."""
    with open(path, "w") as out:
        for i, score in enumerate(scores):
            out.write(json.dumps({
                "index": i, "file": data.files[i] if data.files else None,
                "label": int(data.labels[i]), "is_anomaly": bool(data.is_anomaly[i]),
                "score": float(score), "verdict": "FAIL" if score > threshold else "PASS"})
                + "\n")


def run_calibrate(args) -> int:
    """MODE_FAST's own threshold for an existing bundle, on its training's held-out split."""
    bundle = read_bundle(args.bundle)
    training = bundle.manifest.get("training", {})
    counts = training.get("images", {})
    if not counts or not bundle.has_encoder:
        raise BundleError(f"{bundle.path}: no training record or no encoder: nothing to "
                          "recalibrate")
    data_path = args.data or Path(training["data"])
    labels = args.normal_labels or training.get("normal_labels")
    holdout = counts["heldout"] / (counts["train"] + counts["heldout"])
    seed = int(training.get("seed", 0))
    data = normal_subset(load_dataset(data_path, split="train", normal_labels=labels))
    _, holdout_idx = heldout_split(len(data), holdout, seed)
    if len(data) != counts["train"] + counts["heldout"] or \
            len(holdout_idx) != counts["heldout"]:
        raise DatasetError(f"{data_path}: {len(data)} normal images, {len(holdout_idx)} held "
                           f"out, but the bundle was trained on {counts['train']} and "
                           f"calibrated on {counts['heldout']}: not its training data")
    device = torch.device(args.device)
    models = load_checked_models(bundle, device)
    tiling = bundle.tiling
    if tiling:
        heldout_x, _, _ = frame_tiles(data.images[holdout_idx], tiling, bundle.channels)
    else:
        heldout_x = to_model_input(data.images[holdout_idx], bundle.image_size,
                                   bundle.channels)
    quantile = args.quantile or bundle.manifest["threshold"].get("quantile", 0.95)
    fast = fast_threshold(models, heldout_x.to(device), bundle.search_config, quantile,
                          tiling, len(holdout_idx))
    manifest = dict(bundle.manifest, fast_threshold=fast)
    if not tiling:
        start = bundle.manifest["threshold"].get("start", "encoder")
        manifest["thresholds"] = budget_thresholds(
            models, heldout_x.to(device), bundle.search_config, start, quantile,
            args.calibrate_steps, device, 64, seed)
    path = bundle.path / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")  # whole, then in place at once
    tmp.replace(path)
    budgets = ", ".join(f"{k} steps {v['value']:.2f}"
                        for k, v in manifest.get("thresholds", {}).items())
    print(f"{bundle.name}: fast-path threshold {fast['value']:.2f} (quantile {quantile} of "
          f"{len(holdout_idx)} held-out fast scores; held-out FAIL share "
          f"{fast['heldout_fpr']:.3f}); search thresholds by budget: {budgets or 'none'}")
    return 0


def heldout_fail_shares(bundle: Bundle) -> dict:
    """From the manifest: the share of held-out normal images each served scoring fails at
    its own threshold (FAST, and SEARCH at each budget; CASCADE decides as SEARCH does)."""
    manifest = bundle.manifest
    shares = {"target_fpr": manifest["threshold"].get("target_fpr")}
    fast = manifest.get("fast_threshold") or {}
    if "heldout_fpr" in fast:
        shares["fast"] = fast["heldout_fpr"]
    budgets = manifest.get("thresholds") or {
        str(bundle.search_config.steps): manifest["threshold"]}
    for steps, entry in sorted(budgets.items(), key=lambda item: int(item[0])):
        if "heldout_fpr" in entry:
            shares[f"search/cascade, {steps} steps"] = entry["heldout_fpr"]
    return shares


def _threshold_steps(bundle: Bundle, cfg: SearchConfig, start: str) -> dict:
    """The threshold with the search it was calibrated with (the manifest's `search`, and
    its start) and this one's; warns when they differ."""
    calibrated_start = bundle.manifest["threshold"].get("start", start)
    same_search = dataclasses.replace(cfg, steps=bundle.search_config.steps) == \
        bundle.search_config and start == calibrated_start
    if same_search and cfg.steps in bundle.thresholds_by_steps:  # a calibrated budget
        return {"value": bundle.thresholds_by_steps[cfg.steps], "calibrated_steps": cfg.steps,
                "calibrated_start": calibrated_start, "evaluated_steps": cfg.steps,
                "evaluated_start": start}
    if cfg != bundle.search_config or start != calibrated_start:
        # Search scores fall as steps grow, so the verdicts shift; the ranking metrics do not.
        log.warning("this search (%s, from %s) differs from the one the threshold %.2f was "
                    "calibrated with (%s, from %s): the search verdicts and confusion counts "
                    "use a threshold calibrated for another search (AUROC and AUPRC do not "
                    "use it and are unaffected)", cfg.to_dict(), start, bundle.threshold,
                    bundle.search_config.to_dict(), calibrated_start)
    return {"value": bundle.threshold, "calibrated_steps": bundle.search_config.steps,
            "calibrated_start": calibrated_start, "evaluated_steps": cfg.steps,
            "evaluated_start": start}


def run_learn(args) -> int:
    """`anogan-train learn`: a new version of a memory bundle that has learnt the frames."""
    bundle = read_bundle(args.bundle)
    good = [Frame.from_bytes(read_frame(path), path.read_bytes())
            for path in image_files(args.good)]
    heldout = [read_frame(path) for path in image_files([args.heldout_data])] \
        if args.heldout_data else None  # None: the bundle's own (learn)
    defects = [read_frame(path) for path in image_files([args.defects])] \
        if args.defects else None
    learned = learn(bundle, good, heldout, args.out, defects, args.recall_floor,
                    args.accept_far, args.seed)
    print(f"{bundle.name}: version {learned.version} in {learned.path} (parent "
          f"{bundle.version}): learnt {len(learned.learnt)} frame(s), calibrated on "
          f"{learned.heldout_frames} held-out and {len(learned.calibrating)} confirmed, held "
          f"{len(learned.held)}; threshold {learned.parent_threshold:.4f} → "
          f"{learned.threshold:.4f}, held-out normal FAIL share "
          f"{learned.heldout_fail_share:.3f}"
          + (f"; DEFECT recall {learned.parent_defect_recall:.3f} → "
             f"{learned.defect_recall:.3f}" if learned.defect_recall is not None else ""))
    for sha, score, why in learned.held:
        reason = "over twice the threshold" if why == "far" else \
            "in the regions of a DEFECT example"
        print(f"held (score {score:.4f}, {reason}: confirm again with --accept-far): {sha}")
    return 0


def run_finetune(args) -> int:
    """`anogan-train finetune`: a new version of a whole-frame bundle, trained further."""
    bundle = read_bundle(args.bundle)
    good = [Frame.from_bytes(read_frame(path), path.read_bytes())
            for path in image_files(args.good)]
    done = finetune(bundle, good, args.out, args.run_dir, args.new_run_dir, args.epochs,
                    args.encoder_epochs, args.train_data, args.device, args.calibrate_steps)
    print(f"{bundle.name}: version {done.version} in {done.path} (parent {bundle.version}): "
          f"trained on {len(done.trained)} confirmed frame(s) and the training split, "
          f"calibrated on the held-out split and {len(done.calibrating)} confirmed; "
          f"threshold {done.parent_threshold:.4f} → {done.threshold:.4f}, held-out normal "
          f"FAIL share {done.heldout_fail_share:.3f}; {done.seconds:.0f} s; checkpoint in "
          f"{done.run_dir}")
    return 0
