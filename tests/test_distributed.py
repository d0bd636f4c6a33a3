"""Distributed training (trainer/distributed.py): torchrun, two CPU processes, gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anogan_inspect.bundle import read_bundle, verify_checksums
from anogan_inspect.trainer.distributed import Distributed
from tests.conftest import TRAIN_CSV


def test_each_rank_trains_on_its_own_share_of_every_epoch():
    ranks = [Distributed(rank, 3, rank, "gloo") for rank in range(3)]
    for epoch in (0, 1):
        shares = [job.order(100, epoch, seed=0) for job in ranks]
        assert all(len(share) == 34 for share in shares)  # 100 padded to 3 × 34
        assert set(torch.cat(shares).tolist()) == set(range(100))
    assert not torch.equal(ranks[0].order(100, 0, 0), ranks[0].order(100, 1, 0))


@pytest.mark.slow
def test_torchrun_two_processes_write_one_bundle(tmp_path):
    """`torchrun --nproc-per-node 2 --no-python anogan-train train ...` on the CPU: two
    ranks train (gloo), rank 0 alone checkpoints and writes the bundle."""
    out, run_dir = tmp_path / "bundle", tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--no-python", str(Path(sys.executable).parent / "anogan-train"),
               "train", "--data", str(TRAIN_CSV), "--normal-labels", "7,8",
               "--preset", "tiny", "--epochs", "2", "--encoder-epochs", "1", "--steps", "10",
               "--calibrate-steps", "10", "--out", str(out), "--run-dir", str(run_dir),
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 (gloo)" in proc.stderr and "rank 1 of 2 (gloo)" in proc.stderr
    bundle = read_bundle(out)
    verify_checksums(bundle)
    training = bundle.manifest["training"]
    assert training["processes"] == 2
    phases = [(h["phase"], h["epoch"]) for h in training["final_losses"]]
    assert phases == [("gan", 2), ("encoder", 1)]
    assert (run_dir / "checkpoint.pt").is_file()
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "encoder_epoch_001.png", "gan_epoch_001.png", "gan_epoch_002.png"]
    assert json.loads((out / "manifest.json").read_text())["name"] == "bundle"
