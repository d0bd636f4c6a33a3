"""Learning confirmed-good frames (trainer/learn.py) on the grass benchmark: a shifted line,
its false rejects before and after a memory bundle learns K confirmed frames of the shift,
and its recall on the defective frames, side by side.

    python -m bench.learn_bench [--bundle bundles/texture] [--data data/texture] [--k 20,40]
        [--live]

For each shift of the normal frames (a line's lamp or material changing): the share of the
test split's normal frames the bundle fails (the calibrated rate, unshifted), the share of
them it fails once shifted, and after learning: the first K training frames, shifted, are
the operators' confirmed-good frames (every 2nd calibrates instead of joining the memory);
the held-out split calibrates as at training. Recall is the share of the test split's
defective frames failing: unshifted under the bundle, shifted under the new version (the
line's defects come under the same lamp). Writes bench/results/<name>.md and .json.

--live adds the same through a running server, never restarted: `anogan-serve
--models-dir` serving the bundle, the shifted frames streamed, K of them confirmed GOOD by
frame id (Feedback, an admin token), CommitLearning, the frames streamed again on the new
version, then Rollback, after which the first scores must come back exactly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anogan_inspect.bundle import read_bundle
from anogan_inspect.datasets import heldout_split, load_dataset, normal_subset
from anogan_inspect.trainer.learn import Frame, frame_scores, learn, rebuild_scorer
from bench.common import ROOT, header, markdown_table


def shifts(width: int) -> dict:
    """Each shift: frames (N, C, H, W) in [0, 1] → shifted, clipped to [0, 1]."""
    ramp = np.linspace(0.75, 1.25, width, dtype=np.float32)[None, None, None, :]
    return {
        "brightness −20 %": lambda x: x * 0.8,
        "brightness +20 %": lambda x: np.clip(x * 1.2, 0.0, 1.0),
        "lighting gradient ±25 %": lambda x: np.clip(x * ramp, 0.0, 1.0),
    }


def fail_share(scorer, frames: np.ndarray, threshold: float, scale: float,
               channels: int) -> float:
    scores, _ = frame_scores(scorer, list(frames), scale, channels)
    return float(np.mean(scores > threshold))


def run(bundle_path: Path, data: Path, ks: list[int]) -> list[dict]:
    bundle = read_bundle(bundle_path)
    scale, channels = bundle.tiling.scale, bundle.channels
    train = normal_subset(load_dataset(data, split="train"))
    training = bundle.manifest["training"]
    _, heldout_idx = heldout_split(len(train), training["holdout"], training["seed"])
    heldout = list(train.images[heldout_idx])
    test = load_dataset(data, split="test")
    good, defects = test.images[~test.is_anomaly], test.images[test.is_anomaly]
    parent, _ = rebuild_scorer(bundle)
    threshold = bundle.threshold
    calibrated = fail_share(parent, good, threshold, scale, channels)
    recall = fail_share(parent, defects, threshold, scale, channels)
    rows = []
    for (name, shift), k in itertools.product(shifts(good.shape[-1]).items(), ks):
        confirmed = [Frame(shift(frame[None])[0], f"{i:064x}")
                     for i, frame in enumerate(train.images[:k])]
        with tempfile.TemporaryDirectory() as tmp:
            started = time.time()
            learned = learn(bundle, confirmed, heldout, Path(tmp) / "v2")
            seconds = time.time() - started
            new, _ = rebuild_scorer(read_bundle(learned.path))
            rows.append({
                "shift": name, "K": k, "learnt": len(learned.learnt),
                "calibrating": len(learned.calibrating), "held": len(learned.held),
                "normal FAIL, calibrated": calibrated,
                "normal FAIL, shifted": fail_share(parent, shift(good), threshold, scale,
                                                   channels),
                "normal FAIL, shifted, learnt": fail_share(new, shift(good),
                                                           learned.threshold, scale, channels),
                "normal FAIL, unshifted, learnt": fail_share(new, good, learned.threshold,
                                                             scale, channels),
                "recall, before": recall,
                "recall, shifted, learnt": fail_share(new, shift(defects), learned.threshold,
                                                      scale, channels),
                "threshold": threshold, "threshold, learnt": learned.threshold,
                "learn seconds": seconds,
            })
    return rows


def live_rows(bundle_path: Path, data: Path, ks: list[int]) -> list[dict]:
    """Each shift and K through a running server (see the module's docstring)."""
    import shutil

    import grpc

    from anogan.v1 import inspection_pb2 as pb
    from anogan.v1 import inspection_pb2_grpc as pb_grpc
    from anogan_inspect.clients.launcher import ServerProcess
    from anogan_inspect.clients.sources import SourceFrame
    from anogan_inspect.clients.stream_client import frame_message

    test = load_dataset(data, split="test")
    train = normal_subset(load_dataset(data, split="train"))
    good, defects = test.images[~test.is_anomaly], test.images[test.is_anomaly]
    boss = (("authorization", "Bearer bench-admin"),)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "admin").write_text("bench-admin\n")
        models = tmp / "models"
        shutil.copytree(bundle_path, models / "line")
        server = ServerProcess([], tmp / "server.log", "--models-dir", str(models),
                               "--models-poll", "0.2", "--admin-token-file",
                               str(tmp / "admin"), "--learn-after", "0", cwd=ROOT)
        try:
            with server.channel() as channel:
                stub = pb_grpc.InspectionServiceStub(channel)

                def stream(frames: np.ndarray, prefix: str) -> list:
                    def requests():
                        yield pb.StreamInspectRequest(config=pb.InspectionConfig(model="line"))
                        for i, frame in enumerate(frames):
                            pixels = (frame.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
                            yield pb.StreamInspectRequest(frame=frame_message(
                                SourceFrame(f"{prefix}-{i}", pixels, None), i))
                    return [r.result for r in stub.StreamInspect(requests(), timeout=600)]

                def fail_share(results) -> float:
                    return float(np.mean([r.verdict == pb.VERDICT_FAIL for r in results]))

                calibrated = stream(good, "good")
                recall = stream(defects, "defect")
                for (name, shift), k in itertools.product(shifts(good.shape[-1]).items(), ks):
                    before = stream(shift(good), "shifted")
                    stream(shift(train.images[:k]), f"confirm-{k}")  # the line sees them
                    for i in range(k):
                        stub.Feedback(pb.FeedbackRequest(
                            model="line", frame_id=f"confirm-{k}-{i}",
                            label=pb.OPERATOR_LABEL_GOOD), metadata=boss, timeout=60)
                    started = time.time()
                    committed = stub.CommitLearning(pb.CommitLearningRequest(model="line"),
                                                    metadata=boss, timeout=600)
                    seconds = time.time() - started
                    after = stream(shift(good), "shifted")
                    recall_after = stream(shift(defects), "defect")
                    unshifted = stream(good, "good")
                    stub.Rollback(pb.RollbackRequest(model="line"), metadata=boss, timeout=600)
                    again = stream(shift(good), "shifted")
                    rows.append({
                        "shift": name, "K": k, "version": committed.model_version,
                        "frames learnt": committed.frames_learnt,
                        "normal FAIL, calibrated": fail_share(calibrated),
                        "normal FAIL, shifted": fail_share(before),
                        "normal FAIL, shifted, learnt": fail_share(after),
                        "normal FAIL, unshifted, learnt": fail_share(unshifted),
                        "recall, before": fail_share(recall),
                        "recall, shifted, learnt": fail_share(recall_after),
                        "commit seconds": round(seconds, 1),
                        "rollback scores exact": [r.score for r in again] ==
                        [r.score for r in before],
                    })
        except grpc.RpcError as err:
            raise SystemExit(f"learn_bench --live: {err.code().name}: {err.details()}; "
                             f"server log: {(tmp / 'server.log').read_text()[-2000:]}") from err
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learn_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "texture")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "texture")
    parser.add_argument("--k", default="20,40",
                        help="confirmed-good frames per shift (several: comma-separated)")
    parser.add_argument("--name", default="cpu-learn", help="bench/results/NAME.md and .json")
    parser.add_argument("--live", action="store_true",
                        help="also through a running server: Feedback, CommitLearning, "
                             "Rollback")
    args = parser.parse_args(argv)
    meta = header(["python", "-m", "bench.learn_bench", *(argv or sys.argv[1:])])
    ks = [int(k) for k in args.k.split(",")]
    rows = run(args.bundle, args.data, ks)
    live = live_rows(args.bundle, args.data, ks) if args.live else []
    out = ROOT / "bench" / "results"
    (out / f"{args.name}.json").write_text(json.dumps({**meta, "bundle": str(args.bundle),
                                                       "data": str(args.data), "rows": rows,
                                                       "live": live}, indent=2) + "\n")
    table = markdown_table(rows)
    live_table = ("\n## Through a running server (Feedback, CommitLearning, Rollback)\n\n"
                  + markdown_table(live)) if live else ""
    (out / f"{args.name}.md").write_text(
        f"# Learning confirmed-good frames: {args.bundle.name} on {args.data.name}\n\n"
        f"`{meta['command']}` on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"{meta['date']}, {meta['machine']['git_describe']}\n\n{table}{live_table}")
    print(table + live_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
