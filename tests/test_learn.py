"""A memory bundle learns confirmed-good frames as a new version (trainer/learn.py): the
parent untouched, the lineage recorded, the guards held, the CLI's errors one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anogan_inspect.bundle import (
    check_memory_parity,
    load_memory_scorer,
    read_bundle,
    sha256_file,
    verify_checksums,
)
from anogan_inspect.datasets import heldout_split, load_dataset, normal_subset
from anogan_inspect.memory import frames_input
from anogan_inspect.trainer.cli import main as train_main
from anogan_inspect.trainer.learn import (
    FAR_FACTOR,
    DefectGuard,
    Frame,
    LearnError,
    frame_scores,
    learn,
    rebuild_scorer,
)


def brighter(frames: np.ndarray) -> np.ndarray:
    """The line's lamp changed: every frame 20 % brighter."""
    return np.clip(frames * 1.2, 0.0, 1.0).astype(np.float32)


def texture_frames(texture_data) -> dict[str, np.ndarray]:
    """The texture benchmark's normal training frames, normal and defective test frames."""
    train = normal_subset(load_dataset(texture_data, split="train"))
    test = load_dataset(texture_data, split="test")
    return {"train": train.images, "good": test.images[~test.is_anomaly],
            "defects": test.images[test.is_anomaly]}


@pytest.fixture(scope="module")
def frames(texture_data):
    return texture_frames(texture_data)


def heldout_of(bundle, frames) -> list[np.ndarray]:
    training = bundle.manifest["training"]
    _, idx = heldout_split(len(frames["train"]), training["holdout"], training["seed"])
    return list(frames["train"][idx])


def test_the_rebuilt_scorer_scores_as_the_bundles_program(tiny_memory_bundle, frames):
    bundle = read_bundle(tiny_memory_bundle)
    scorer, cfg = rebuild_scorer(bundle)
    assert cfg.extractor == "disc" and scorer.memory.shape[0] == bundle.memory["rows"]
    program = load_memory_scorer(bundle)
    x = frames_input(frames["good"][:3], 1.0, 1)
    with torch.no_grad():
        for ours, theirs in zip(scorer(x), program(x), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_brighter_line_is_learnt_as_a_new_version_beside_the_parent(tiny_memory_bundle,
                                                                        frames, tmp_path):
    bundle = read_bundle(tiny_memory_bundle)
    parent_files = {name: sha256_file(bundle.path / name) for name in bundle.manifest["files"]}
    scorer, _ = rebuild_scorer(bundle)
    shifted = brighter(frames["good"])
    before, _ = frame_scores(scorer, list(shifted), 1.0, 1)
    assert np.mean(before > bundle.threshold) >= 0.5  # the shift fails normal frames

    good = [Frame(f, f"{i:064x}") for i, f in enumerate(brighter(frames["train"]))]
    learned = learn(bundle, good, heldout_of(bundle, frames), tmp_path / "v2")
    assert learned.held == []  # none scored beyond FAR_FACTOR × the threshold
    assert len(learned.learnt) + len(learned.calibrating) == len(good)
    assert learned.calibrating == [good[i].sha256 for i in range(1, len(good), 2)]

    # The parent is as it was; the new version is a whole, verified bundle
    assert {n: sha256_file(bundle.path / n) for n in bundle.manifest["files"]} == parent_files
    new = read_bundle(tmp_path / "v2")
    verify_checksums(new)
    assert check_memory_parity(new, load_memory_scorer(new)) <= 1e-4
    lineage = new.manifest["lineage"]
    assert lineage["generation"] == 1 and lineage["parent"] == {
        "version": bundle.version, "manifest_sha256": sha256_file(bundle.path / "manifest.json")}
    assert lineage["learnt"] == learned.learnt and new.version == learned.version != bundle.version
    assert new.threshold == learned.threshold == new.memory["image_threshold"]
    for name in ("generator", "features", "encoder"):  # the GAN is the parent's
        for kind in ("torch", "onnx"):
            file = bundle.manifest["networks"][name][kind]
            assert new.manifest["files"][file] == bundle.manifest["files"][file]

    # It has learnt: the brighter frames it never saw score lower than under the parent
    after, _ = frame_scores(rebuild_scorer(new)[0], list(shifted), 1.0, 1)
    assert after.mean() < before.mean()

    # A second step names the first as its parent
    again = learn(new, good[:5], heldout_of(bundle, frames), tmp_path / "v3")
    third = read_bundle(again.path)
    assert third.manifest["lineage"]["generation"] == 2
    assert third.manifest["lineage"]["parent"]["version"] == new.version


def test_a_frame_far_beyond_the_threshold_is_held_until_confirmed_again(tiny_memory_bundle,
                                                                        frames, tmp_path):
    bundle = read_bundle(tiny_memory_bundle)
    scorer, _ = rebuild_scorer(bundle)
    odd = np.ones_like(frames["train"][0])  # a white frame: nothing like the texture
    score, _ = frame_scores(scorer, [odd], 1.0, 1)
    assert score[0] > FAR_FACTOR * bundle.threshold
    good = [Frame(f, f"{i:064x}") for i, f in enumerate(frames["train"][:5])]
    good.append(Frame(odd, "f" * 64))
    learned = learn(bundle, good, heldout_of(bundle, frames), tmp_path / "held")
    assert [(sha, why) for sha, _, why in learned.held] == [("f" * 64, "far")]
    assert "f" * 64 not in learned.learnt + learned.calibrating
    assert read_bundle(learned.path).manifest["lineage"]["held"] == ["f" * 64]
    confirmed = learn(bundle, good, heldout_of(bundle, frames), tmp_path / "confirmed",
                      accept_far=True)
    assert confirmed.held == [] and "f" * 64 in confirmed.learnt + confirmed.calibrating
    with pytest.raises(LearnError, match="nothing to learn: 1 frame"):
        learn(bundle, [Frame(odd, "f" * 64)], heldout_of(bundle, frames), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def failing_not_far(bundle, defects: np.ndarray) -> int:
    """The defective frame that fails most, but not beyond FAR_FACTOR × the threshold
    (only the defect guard holds it)."""
    scores, _ = frame_scores(rebuild_scorer(bundle)[0], list(defects), 1.0, 1)
    near = int(np.argmax(np.where(scores <= FAR_FACTOR * bundle.threshold, scores, -1)))
    assert bundle.threshold < scores[near] <= FAR_FACTOR * bundle.threshold
    return near


def test_a_frame_in_the_regions_of_a_kept_defect_is_held(tiny_memory_bundle, frames,
                                                        tmp_path):
    """One operator keeps a frame as DEFECT, another confirms it GOOD: it is held, as any
    frame failing where a kept defect lies; passing frames are not."""
    bundle = read_bundle(tiny_memory_bundle)
    scorer, _ = rebuild_scorer(bundle)
    defects = frames["defects"]
    near = failing_not_far(bundle, defects)
    guard = DefectGuard(scorer, bundle.threshold, bundle.manifest["memory"]["pixel_threshold"],
                        1.0, 1)
    assert not guard.covers(defects[near])  # no DEFECT kept yet
    assert 0 < guard.add(defects[near]) < DefectGuard.GRID ** 2 // 4  # its regions only
    assert guard.covers(defects[near])
    assert not guard.covers(np.rot90(defects[near], 2, axes=(1, 2)).copy())  # elsewhere
    good = [Frame(f, f"{i:064x}") for i, f in enumerate(frames["train"][:6])]
    good.append(Frame(defects[near], "d" * 64))
    learned = learn(bundle, good, heldout_of(bundle, frames), tmp_path / "v2",
                    defects=[defects[near]])
    assert [(sha, why) for sha, _, why in learned.held] == [("d" * 64, "defect")]
    assert len(learned.learnt) + len(learned.calibrating) == 6


def test_a_version_under_the_recall_floor_is_not_written(tiny_memory_bundle, frames,
                                                        tmp_path):
    bundle = read_bundle(tiny_memory_bundle)
    good = [Frame(f, f"{i:064x}") for i, f in enumerate(frames["train"][:6])]
    with pytest.raises(LearnError, match=r"not promoted: the new version fails [0-9.]+ of the "
                                         r"\d+ DEFECT examples, under the floor 1\.010"):
        learn(bundle, good, heldout_of(bundle, frames), tmp_path / "v2",
              defects=list(frames["defects"]), recall_floor=1.01)
    assert list(tmp_path.iterdir()) == []


def write_pngs(folder, images: np.ndarray) -> list:
    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"frame-{i:03d}.png"
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_anogan_train_learn_on_files(tiny_memory_bundle, frames, tmp_path, capsys):
    paths = write_pngs(tmp_path / "confirmed", brighter(frames["train"][:8]))
    out = tmp_path / "v2"
    assert train_main(["learn", "--bundle", str(tiny_memory_bundle), "--out", str(out),
                       str(tmp_path / "confirmed")]) == 0
    printed = capsys.readouterr().out
    new = read_bundle(out)
    assert f"version {new.version} in {out} (parent {read_bundle(tiny_memory_bundle).version})" \
        in printed
    assert "learnt 4 frame(s), calibrated on" in printed
    # Frames are named by the sha256 of the file's bytes
    hashes = [sha256_file(p) for p in paths]
    lineage = new.manifest["lineage"]
    assert sorted(lineage["learnt"] + lineage["calibrating"]) == sorted(hashes)
    # A version is written once
    assert train_main(["learn", "--bundle", str(tiny_memory_bundle), "--out", str(out),
                       str(paths[0])]) == 2
    assert f"{out} exists: a version is written once" in capsys.readouterr().err


def test_a_bundle_without_a_memory_cannot_learn(tiny_bundle, tmp_path, capsys):
    png = write_pngs(tmp_path / "one", np.zeros((1, 1, 16, 16), np.float32))[0]
    assert train_main(["learn", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "v2"),
                       str(png)]) == 2
    assert "not a memory bundle: only a memory learns frames without retraining" in \
        capsys.readouterr().err


def test_the_bundle_keeps_its_held_out_frames_to_calibrate_new_versions(tiny_memory_bundle,
                                                                         frames):
    bundle = read_bundle(tiny_memory_bundle)
    kept = bundle.heldout_frames()
    expected = np.stack(heldout_of(bundle, frames))
    assert kept.shape == expected.shape and np.abs(kept - expected).max() <= 0.5 / 255


def test_a_bundle_that_keeps_no_held_out_frames_calibrates_on_its_training_split(
        tiny_memory_bundle, frames, tmp_path, monkeypatch):
    """Bundles written before they kept heldout.npy: learn (for the CLI and the server)
    calibrates on the held-out split of the training data the manifest names."""
    from anogan_inspect.bundle import Bundle

    bundle = read_bundle(tiny_memory_bundle)
    good = [Frame(f, f"{i:064x}") for i, f in enumerate(brighter(frames["train"][:6]))]
    given = learn(bundle, good, heldout_of(bundle, frames), tmp_path / "given")
    monkeypatch.setattr(Bundle, "heldout_frames", lambda self: None)
    found = learn(bundle, good, None, tmp_path / "found")
    assert found.heldout_frames == given.heldout_frames == len(heldout_of(bundle, frames))
    assert found.threshold == pytest.approx(given.threshold, rel=1e-6)


def test_the_recent_frames_are_bounded_by_count_and_bytes(monkeypatch):
    from types import SimpleNamespace

    from anogan.v1 import inspection_pb2 as pb
    from anogan_inspect.server import learning as live

    monkeypatch.setattr(live, "RECENT_BYTES", 3000)
    recent = live.Learning(SimpleNamespace(), None, None, None, 0, 4, None)
    memory = SimpleNamespace(name="m", fingerprint="abc",
                             bundle=SimpleNamespace(memory={}, tiling={}))
    tiled = SimpleNamespace(name="w", fingerprint="abc",
                            bundle=SimpleNamespace(memory=None, tiling={}))
    scored, failed = pb.InspectionResult(score=1.0), pb.InspectionResult(error={"code": 3})

    def frame(i: int, size: int) -> pb.Frame:
        return pb.Frame(frame_id=f"f{i}", raw=pb.RawImage(data=bytes(size)))

    for i in range(3):
        recent.remember(memory, frame(i, 100), scored)
    recent.remember(memory, frame(9, 100), failed)  # an error result: nothing to judge
    recent.remember(tiled, frame(8, 100), scored)  # a model that does not learn
    recent.remember(memory, pb.Frame(raw=pb.RawImage(data=bytes(10))), scored)  # no id
    assert [key for key in recent.recent] == [("m", "f0"), ("m", "f1"), ("m", "f2")]
    for i in range(3, 6):  # by count: the last 4
        recent.remember(memory, frame(i, 100), scored)
    assert [key[1] for key in recent.recent] == ["f2", "f3", "f4", "f5"]
    recent.remember(memory, frame(6, 1450), scored)  # by bytes: the newest stay
    recent.remember(memory, frame(7, 1450), scored)
    assert [key[1] for key in recent.recent] == ["f6", "f7"]
    assert recent.recent_bytes == sum(f.ByteSize() for f, _ in recent.recent.values()) <= 3000
