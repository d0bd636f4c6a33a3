"""`anogan-train`: train → calibrate → export a bundle, and evaluate a bundle on labelled data."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from anogan_inspect.configs import (
    AGGREGATES,
    BASELINES,
    EXTRACTORS,
    GAN_LOSSES,
    GRIDS,
    NORMS,
    PRESETS,
    SAMPLERS,
    SCORE_MODES,
    MemoryConfig,
    SearchConfig,
    TrainConfig,
)
from anogan_inspect.help_format import HelpFormatter

# Training defaults per preset: the seed's recipe for "seed", a few CPU minutes for "default".
PRESET_TRAINING = {
    "default": {"epochs": TrainConfig.epochs, "encoder_epochs": TrainConfig.encoder_epochs,
                "batch_size": TrainConfig.batch_size},
    "seed": {"epochs": 30, "encoder_epochs": 30, "batch_size": 16},
    "tiny": {"epochs": 2, "encoder_epochs": 2, "batch_size": 32},
}
# Search budgets a whole-frame bundle gets a threshold for (besides its own --steps).
CALIBRATED_BUDGETS = [10, 25, 50, 100, 200]
SCORE_DESCRIPTION = """Score image files offline, as the server would.

The same decoding, preprocessing, search and threshold as the server; one JSON line per
image (file, score, verdict, stage, and for tiled bundles tiles and tiles searched), so
any figure the server gives can be reproduced without it (to the cascade's margin: the
server's fast path runs on ONNX Runtime, this on the torch programs)."""
DEVICE_HELP = "cpu, cuda (cuda:N), or auto: cuda when present"
PROMOTE_DESCRIPTION = """Serve VERSION from MODELS/NAME, the folder of a model that anogan-serve
--models-dir MODELS follows: VERSION's files are written there and its manifest last, so a
running server loads and verifies it beside the version serving, then gives it new calls
(open streams finish on theirs; no restart, no frame lost). Both versions are kept under
MODELS/.versions/NAME/<version>/, so `anogan-train rollback` can serve the parent again."""
LEARN_DESCRIPTION = """Write a new version of a memory bundle that has learnt the confirmed GOOD
frames: their features join the memory (reduced again by the coreset to its size), and
the thresholds are calibrated again on the held-out normal frames and every 2nd confirmed
frame. The manifest's `lineage` names the parent and the sha256 of every frame. The parent
is left as it is: serve it again to roll back. A frame the parent scores beyond twice its
threshold, or that lands in the regions of the --defects examples, is held unless
--accept-held."""
FINETUNE_DESCRIPTION = """Write a new version of a whole-frame bundle trained further on the
confirmed GOOD frames (memory bundles: `learn`): its run's checkpoint resumes for --epochs
more GAN epochs and --encoder-epochs more encoder epochs on its training split and the
confirmed frames, and the thresholds are calibrated again on the held-out split and every
2nd confirmed frame (which it does not train on). The manifest's `lineage` names the parent
and the sha256 of every frame; the new checkpoint goes into a new run folder, which the
manifest names for the next finetune. The parent is left as it is."""


def parse_labels(text: str | None) -> list[int] | None:
    """'7,8' → [7, 8]."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"labels must be integers separated by commas: {text!r}") from err


def parse_names(choices: tuple[str, ...]):
    """An argparse type: 'a,b' → ['a', 'b'], each one of `choices` ('none': [])."""
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        if names == ["none"]:
            return []
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)} (choose from {', '.join(choices)}, or none)")
        return names
    return parse


def per_preset(key: str) -> str:
    """'default: 150, seed: 30, tiny: 2': a value of each preset, for help texts."""
    values = {name: (getattr(PRESETS[name], key) if hasattr(PRESETS[name], key)
                     else PRESET_TRAINING[name][key]) for name in sorted(PRESETS)}
    return "(default: the preset's; " + ", ".join(f"{n} {v}" for n, v in values.items()) + ")"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anogan-train", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on normal images and export a bundle",
                           formatter_class=HelpFormatter)
    data = train.add_argument_group("data and output")
    data.add_argument("--data", required=True, type=Path,
                      help="MNIST-style CSV (.csv/.csv.gz), image folder (MVTec ok) or .npy")
    data.add_argument("--normal-labels", type=parse_labels,
                      help="CSV labels that are normal, e.g. 7,8 (CSV only)")
    data.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    data.add_argument("--name", help="model name in the manifest (default: --out's name)")
    data.add_argument("--run-dir", type=Path,
                      help="checkpoints and sample grids (default: runs/<name>)")
    data.add_argument("--resume", action="store_true", help="continue from run-dir's checkpoint")
    model = train.add_argument_group("model", "the networks' sizes: a preset, then overrides")
    model.add_argument("--preset", choices=sorted(PRESETS), default="default",
                       help="network and training sizes: default (32×32, a few CPU minutes), "
                            "seed (the original walkthrough's 64×64 DCGAN), tiny (tests)")
    for field in ("image_size", "channels", "latent_dim", "width"):
        model.add_argument(f"--{field.replace('_', '-')}", type=int,
                           help=f"override the preset {per_preset(field)}")
    model.add_argument("--disc-norm", choices=NORMS,
                       help=f"override the preset {per_preset('disc_norm')}")
    model.add_argument("--no-encoder", action="store_true",
                       help="skip the encoder (the bundle then serves SEARCH only)")
    training = train.add_argument_group("training")
    training.add_argument("--epochs", type=int, help=f"GAN epochs {per_preset('epochs')}")
    training.add_argument("--encoder-epochs", type=int,
                          help=f"encoder epochs {per_preset('encoder_epochs')}")
    training.add_argument("--batch-size", type=int,
                          help=f"training batch {per_preset('batch_size')}")
    training.add_argument("--samples-per-epoch", type=int, default=0,
                          help="tiles (or images) drawn at random for each GAN and encoder "
                               "epoch (default: 0, all of them)")
    training.add_argument("--lr-g", type=float, default=TrainConfig.lr_g,
                          help="generator's Adam learning rate")
    training.add_argument("--lr-d", type=float, default=TrainConfig.lr_d,
                          help="discriminator's Adam learning rate")
    training.add_argument("--gan-loss", choices=GAN_LOSSES, default=TrainConfig.gan_loss,
                          help="bce: the original DCGAN loss; wgan-gp: a Wasserstein critic "
                               "with a gradient penalty, one G step per --critic-steps "
                               "(f-AnoGAN)")
    training.add_argument("--critic-steps", type=int, default=TrainConfig.critic_steps,
                          help="wgan-gp: critic updates per generator update")
    training.add_argument("--no-bn-recalibration", action="store_true",
                          help="keep G's BatchNorm running statistics from training "
                               "(ablation)")
    calibration = train.add_argument_group(
        "calibration", "thresholds from held-out normal images: the share of normal images "
                       "that fail is what they set")
    calibration.add_argument("--holdout", type=float, default=0.15,
                             help="fraction of normal images held out for calibration")
    calibration.add_argument("--quantile", type=float,
                             help="threshold at this quantile of held-out normal scores "
                                  "(default: 0.95; 0.99 for a memory bundle)")
    calibration.add_argument("--target-fpr", type=float,
                             help="the same as --quantile 1-FPR (overrides --quantile)")
    calibration.add_argument("--calibrate-steps", type=parse_labels,
                             default=CALIBRATED_BUDGETS,
                             help="search budgets to calibrate a threshold for, besides "
                                  "--steps (whole-frame bundles; a server refuses other "
                                  "budgets unless told to use the nearest)")
    calibration.add_argument("--require-fit", action="store_true",
                             help="refuse to write a bundle when the generator does not "
                                  "reproduce held-out normal data better than the mean "
                                  "training image (default: a loud warning)")
    _add_search_options(calibration, calibrating=True)
    tiles = train.add_argument_group(
        "tiles", "full-resolution frames: learn from tiles of the frames instead of whole "
                 "frames squeezed to the model's size; the server and evaluate tile the same "
                 "way (the manifest's `tiling`)")
    tiles.add_argument("--patch-size", type=int,
                       help="tile side in pixels of the scaled frame; also the model's image "
                            "size (default: off, whole frames)")
    tiles.add_argument("--stride", type=int,
                       help="pixels between tiles (default: half the patch size)")
    tiles.add_argument("--scale", type=float, default=1.0,
                       help="resize frames by this factor before tiling (1: native pixels)")
    tiles.add_argument("--aggregate", choices=AGGREGATES, default="max",
                       help="frame score from its tiles: max (the exact cascade clears "
                            "tiles one by one) or topk (mean of the --top-k highest)")
    tiles.add_argument("--top-k", type=int, default=3, help="tiles averaged by --aggregate topk")
    tiles.add_argument("--pixel-quantile", type=float, default=0.999,
                       help="regions: the anomaly-map threshold is this quantile of the "
                            "held-out normal frames' map values")
    memory = train.add_argument_group(
        "memory", "texture-grade detection (needs --patch-size): score every location of a "
                  "frame by its distance to a memory of normal features; the memory score "
                  "decides the verdict, the GAN trained on tiles supplies the features "
                  "(disc) and what a region should look like (docs/textures.md)")
    memory.add_argument("--memory", choices=EXTRACTORS,
                        help="build a memory with this extractor: disc (the discriminator's "
                             "trunk), pixels (raw patches, the baseline), backbone (--backbone)")
    memory.add_argument("--layers", type=parse_labels, default=list(MemoryConfig.layers),
                        help="disc: trunk blocks whose features are joined, 0 = the first")
    memory.add_argument("--neighbourhood", type=int, default=MemoryConfig.aggregate,
                        help="features averaged over k×k neighbours (1: none)")
    memory.add_argument("--memory-grid", choices=GRIDS, default=MemoryConfig.grid,
                        help="disc: join the layers on the first's grid (fine) or the last's "
                             "(coarse: 4× fewer locations per block, for speed)")
    memory.add_argument("--memory-size", type=int, default=MemoryConfig.size,
                        help="rows kept in the memory")
    memory.add_argument("--memory-sampler", choices=SAMPLERS, default=MemoryConfig.sampler,
                        help="coreset (greedy k-center, PatchCore's) or random")
    memory.add_argument("--augment", action="store_true",
                        help="build the memory from the frames and a photometric copy of them "
                             "(gain, offset, lighting gradient), as a line varies")
    memory.add_argument("--map-smoothing", type=float, default=MemoryConfig.smoothing,
                        help="Gaussian σ of the memory's anomaly map, frame pixels")
    memory.add_argument("--edge-margin", type=int, default=MemoryConfig.edge_margin,
                        help="calibrate map values this close to a frame's edges, pixels, "
                             "per distance to them, on training frames (0: none)")
    memory.add_argument("--pixel-patch", type=int, default=MemoryConfig.patch,
                        help="pixels: patch side")
    memory.add_argument("--pixel-step", type=int, default=MemoryConfig.step,
                        help="pixels: pixels between patches")
    memory.add_argument("--standardize-patches", action="store_true",
                        help="pixels: remove each patch's mean and contrast")
    memory.add_argument("--backbone", type=Path,
                        help="backbone: a torch.export program (.pt2) of a pretrained network, "
                             "image batch → feature map; nothing is downloaded")
    _add_run_options(train.add_argument_group("run"))

    evaluate = sub.add_parser("evaluate", help="score a labelled set with a bundle",
                              formatter_class=HelpFormatter)
    evaluate.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    evaluate.add_argument("--data", required=True, type=Path,
                          help="labelled data: MNIST-style CSV (with --normal-labels and "
                               "--anomaly-labels), MVTec-layout folder (test split) or .npy")
    evaluate.add_argument("--normal-labels", type=parse_labels,
                          help="CSV labels that are normal, e.g. 7,8")
    evaluate.add_argument("--anomaly-labels", type=parse_labels,
                          help="CSV labels that are anomalous, e.g. 2")
    evaluate.add_argument("--out", type=Path, help="report directory (default: reports/<name>)")
    search = evaluate.add_argument_group("search", "the latent search (the bundle's by default)")
    search.add_argument("--start", choices=("encoder", "random"),
                        help="search start (default: encoder when the bundle has one)")
    _add_search_options(search, calibrating=False)
    memory = evaluate.add_argument_group("memory bundles")
    memory.add_argument("--baselines", type=parse_names(BASELINES),
                        default=["pixels", "latent-fast"],
                        help="methods scored beside the memory, of "
                             f"{', '.join(BASELINES)} (default: pixels,latent-fast; "
                             "latent-search takes minutes); 'none' for none")
    memory.add_argument("--train-data", type=Path,
                        help="the training frames the pixels baseline is built from "
                             "(default: the manifest's training data)")
    _add_run_options(evaluate.add_argument_group("run"))

    recalibrate = sub.add_parser(
        "calibrate", formatter_class=HelpFormatter,
        help="recalibrate a bundle's fast-path threshold on its held-out normal images",
        description="Recompute the fast-path threshold and the per-budget search thresholds "
                    "of an existing bundle (bundles written before they had them) on the "
                    "held-out split its training used, and rewrite the manifest in place "
                    "(atomically). The data, labels, seed and held-out share default to the "
                    "manifest's; the held-out count must match. A bundle without an encoder "
                    "has no fast path: it is refused.")
    recalibrate.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    recalibrate.add_argument("--data", type=Path, help="training data (default: the manifest's)")
    recalibrate.add_argument("--normal-labels", type=parse_labels,
                             help="CSV normal labels (default: the manifest's)")
    recalibrate.add_argument("--quantile", type=float,
                             help="threshold quantile (default: the search threshold's)")
    recalibrate.add_argument("--calibrate-steps", type=parse_labels, default=CALIBRATED_BUDGETS,
                             help="search budgets to calibrate (whole-frame bundles)")
    recalibrate.add_argument("--device", default="auto", help=DEVICE_HELP)

    learn = sub.add_parser(
        "learn", formatter_class=HelpFormatter,
        help="a memory bundle learns frames operators confirmed GOOD, as a new version",
        description=LEARN_DESCRIPTION)
    learn.add_argument("good", nargs="+", type=Path, metavar="FILE_OR_FOLDER",
                       help="the confirmed GOOD frames: PNG/JPEG files, or folders of them")
    learn.add_argument("--bundle", required=True, type=Path, help="the memory bundle")
    learn.add_argument("--out", required=True, type=Path,
                       help="folder of the new version (must not exist)")
    learn.add_argument("--heldout-data", type=Path,
                       help="normal frames to calibrate on: a folder of images (default: "
                            "the bundle's own held-out frames; for a bundle written without "
                            "them, the held-out split of the manifest's training data)")
    learn.add_argument("--defects", type=Path, metavar="FOLDER",
                       help="DEFECT examples operators kept: the new version's recall on "
                            "them is reported, and held to --recall-floor")
    learn.add_argument("--recall-floor", type=float,
                       help="with --defects: write no version that fails fewer of them "
                            "than this share")
    learn.add_argument("--accept-held", "--accept-far", dest="accept_far",
                       action="store_true",
                       help="learn the frames otherwise held too (their second "
                            "confirmation): those the parent scores beyond twice its "
                            "threshold, or in the regions of the --defects examples")
    learn.add_argument("--seed", type=int, default=0, help="the coreset's random seed")

    finetune = sub.add_parser(
        "finetune", formatter_class=HelpFormatter,
        help="a whole-frame bundle trains further on frames operators confirmed GOOD, as a "
             "new version", description=FINETUNE_DESCRIPTION)
    finetune.add_argument("good", nargs="+", type=Path, metavar="FILE_OR_FOLDER",
                          help="the confirmed GOOD frames: PNG/JPEG files, or folders of them")
    finetune.add_argument("--from", dest="bundle", required=True, type=Path, metavar="BUNDLE",
                          help="the whole-frame bundle")
    finetune.add_argument("--out", required=True, type=Path,
                          help="folder of the new version (must not exist)")
    finetune.add_argument("--run-dir", type=Path,
                          help="the run the bundle was trained in (its checkpoint.pt; "
                               "default: the one its manifest names)")
    finetune.add_argument("--new-run-dir", type=Path,
                          help="where the new version's checkpoint goes (default: the run "
                               "folder's name with -gN)")
    finetune.add_argument("--train-data", type=Path,
                          help="the bundle's training data (default: the path its manifest "
                               "names), split as at training")
    finetune.add_argument("--epochs", type=int, default=2, help="more GAN epochs")
    finetune.add_argument("--calibrate-steps", type=parse_labels,
                          help="search budgets to calibrate a threshold for, besides the "
                               "bundle's own (default: the parent's)")
    finetune.add_argument("--encoder-epochs", type=int, default=1, help="more encoder epochs")
    finetune.add_argument("--device", default="cpu", help=DEVICE_HELP)

    promote = sub.add_parser(
        "promote", formatter_class=HelpFormatter,
        help="serve a bundle version from a models folder (anogan-serve --models-dir)",
        description=PROMOTE_DESCRIPTION)
    promote.add_argument("version", type=Path, metavar="VERSION",
                         help="the bundle folder to serve, e.g. one `learn` wrote")
    promote.add_argument("--to", required=True, type=Path, metavar="MODELS/NAME",
                         help="the served model's folder in anogan-serve's --models-dir")
    rollback = sub.add_parser(
        "rollback", formatter_class=HelpFormatter,
        help="serve again the parent of the version a models folder serves",
        description="Promote the parent that the served version's lineage names, kept "
                    "under MODELS/.versions/NAME/ when it was replaced.")
    rollback.add_argument("--to", required=True, type=Path, metavar="MODELS/NAME",
                          help="the served model's folder in anogan-serve's --models-dir")

    score = sub.add_parser("score", help="score image files offline, as the server would",
                           formatter_class=HelpFormatter, description=SCORE_DESCRIPTION)
    score.add_argument("images", nargs="+", type=Path, metavar="FILE_OR_FOLDER",
                       help="PNG/JPEG files, or folders of them")
    score.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    score.add_argument("--mode", choices=SCORE_MODES, default="cascade",
                       help="as the server's: cascade (the fast path, then the search where "
                            "it does not pass), search, or fast")
    score.add_argument("--out", type=Path, help="write the JSON lines here (default: stdout)")
    score.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def _add_search_options(parser, calibrating: bool) -> None:
    """The search to calibrate with (train) or to evaluate with (the bundle's by default)."""
    base = SearchConfig()
    default = (lambda value: f"{value:g}") if calibrating else (lambda value: "the bundle's")
    parser.add_argument("--steps", type=int,
                        help=f"latent-search steps (default: {default(base.steps)})")
    parser.add_argument("--search-lr", type=float,
                        help=f"Adam learning rate on z (default: {default(base.lr)})")
    parser.add_argument("--search-batch", type=int, default=64, help="searches run at once")


def _add_run_options(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from anogan_inspect.trainer import commands  # torch, once the command line is read

    return commands.run(args)


if __name__ == "__main__":
    sys.exit(main())
