"""Eval-mode networks that are good: an ablation of the two training choices behind them.

    python -m bench.ablation [--epochs 60] [--steps 100]

Trains the default config three ways on MNIST 7/8 (the discriminator's normalisation,
and whether G's BatchNorm statistics are re-estimated after training), then scores the
300 test digits in eval mode, from random z and from E(x), and writes
bench/results/ablation.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys

from anogan_inspect.trainer.cli import main as train_main
from bench.common import ROOT, TEST_CSV, TRAIN_CSV, header, markdown_table, write_json

VARIANTS = {
    "LayerNorm D, G BN re-estimated (default)": [],
    "BatchNorm D (the seed's), G BN re-estimated": ["--disc-norm", "batch"],
    "BatchNorm D, G BN as left by training": ["--disc-norm", "batch", "--no-bn-recalibration"],
    "LayerNorm D, G BN as left by training": ["--no-bn-recalibration"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    work = ROOT / "runs" / "ablation"
    rows = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        bundle = work / f"variant{i}"
        assert train_main(["train", "--data", str(TRAIN_CSV), "--normal-labels", "7,8",
                           "--epochs", str(args.epochs), "--encoder-epochs", str(args.epochs),
                           "--steps", "5", "--out", str(bundle), "--run-dir",
                           str(work / f"run{i}"), *extra]) == 0
        row = {"variant": name}
        for start in ("random", "encoder"):
            out = work / f"report{i}-{start}"
            assert train_main(["evaluate", "--bundle", str(bundle), "--data", str(TEST_CSV),
                               "--normal-labels", "7,8", "--anomaly-labels", "2",
                               "--steps", str(args.steps), "--start", start,
                               "--out", str(out)]) == 0
            report = json.loads((out / "report.json").read_text())
            row[f"auroc_search_from_{start}"] = report["search"]["auroc"]
            row["auroc_fast_path"] = report["fast"]["auroc"]
        rows.append(row)
    meta = header()
    table = markdown_table(rows)
    write_json(ROOT / "bench" / "results" / "ablation.json", {**meta, "rows": rows,
                                                               "epochs": args.epochs,
                                                               "steps": args.steps})
    (ROOT / "bench" / "results" / "ablation.md").write_text(
        f"# Eval-mode ablation\n\n- date: {meta['date']}\n- command: `{meta['command']}`\n"
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores\n"
        f"- default config (32×32, width 32), {args.epochs} GAN and encoder epochs, "
        f"eval-mode search of {args.steps} steps (lr 0.01) on the 300 test digits\n\n"
        + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
