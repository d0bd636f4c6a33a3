"""Operators' verdicts teach a served model, live (Feedback, CommitLearning, Rollback).

Only for models served from `--models-dir` (their versions are written there) and
only with a token of `--admin-token-file`; every accepted call is appended to the audit log
(JSON lines: when, who (the peer and the token's sha256 prefix), what, the version serving
and the version it made). The server keeps the last `--recent-frames` frames it scored,
so a verdict can name a frame by its id.

- GOOD: collected for the next version; a frame the model scored beyond FAR_FACTOR times
  its threshold, or that fails where a kept DEFECT frame's regions lie (DefectGuard), is
  held, and collected when it is confirmed GOOD again (the audit log says why it was held).
- DEFECT: kept; every next version must fail at least `--recall-floor` of the kept ones.
- Once `--learn-after` GOOD frames are collected (or on CommitLearning), the model learns
  them (trainer/learn.py: a new version calibrated again on its held-out frames and a share
  of the collected ones), which is promoted into the models folder (trainer/versions.py):
  the folder's watcher loads and verifies it beside the version serving, then new calls
  get it; open streams finish on theirs.
- Rollback serves the current version's parent again, the same way.

A whole-frame model learns offline, by training (trainer/finetune.py): its GOOD and DEFECT
frames are written to MODELS/.collected/<name>/good/ and defect/ (the bytes received, or a
PNG of raw pixels, named by their sha256) for `anogan-train finetune`, and CommitLearning
says so. Tiled models without a memory do not learn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

import grpc

from anogan.v1 import inspection_pb2 as pb
from anogan_inspect.bundle import BundleError, read_bundle
from anogan_inspect.server.auth import TokenStore, bearer_token
from anogan_inspect.server.frames import FrameError, decode_frame

# MODELS/.collected/<name>/{good,defect}/: a whole-frame model's verdicts, for finetune
COLLECTED = ".collected"

log = logging.getLogger(__name__)

LABELS = {pb.OPERATOR_LABEL_GOOD: "GOOD", pb.OPERATOR_LABEL_DEFECT: "DEFECT"}
# The recent frames hold at most this many bytes in all (their messages), whatever their
# count: the oldest go first.
RECENT_BYTES = 256 << 20


def frame_bytes(frame: pb.Frame) -> bytes:
    """The image bytes a frame carries (raw pixels or the encoded file): what its sha256
    names in the audit log and the manifests."""
    return frame.raw.data if frame.WhichOneof("image") == "raw" else frame.encoded.data


class Learning:
    """The learning state of a server: recent frames, collected GOOD and kept DEFECT
    frames per model, the audit log."""

    def __init__(self, service, admin: TokenStore, audit_log: Path, models_dir: Path | None,
                 learn_after: int, recent_frames: int, recall_floor: float | None,
                 watch_timeout: float = 300.0):
        self.service, self.admin, self.audit_log = service, admin, audit_log
        self.models_dir, self.learn_after = models_dir, learn_after
        self.recent_frames, self.recall_floor = recent_frames, recall_floor
        self.watch_timeout = watch_timeout
        self.recent: OrderedDict[tuple[str, str], tuple[pb.Frame, float]] = OrderedDict()
        self.recent_bytes = 0
        self.collected: dict[str, list] = {}  # model → trainer.learn.Frame
        self.defects: dict[str, list] = {}  # model → pixels (C, H, W)
        self.held: dict[str, set[str]] = {}  # model → sha256 of frames held once
        self.guards: dict[str, tuple[str, object]] = {}  # model → (version, DefectGuard)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- what the service tells us -----------------------------------------------------------

    def learns(self, model) -> bool:
        """A memory or whole-frame model served from the models folder."""
        bundle = model.bundle
        return bool(model.fingerprint) and (bundle.memory is not None or bundle.tiling is None)

    def collected_folder(self, name: str) -> Path:
        """Where a whole-frame model's verdicts are written for anogan-train finetune."""
        return self.models_dir / COLLECTED / name

    def remember(self, model, frame: pb.Frame, result: pb.InspectionResult) -> None:
        """Keep a scored frame, by its id, for a verdict to name it later."""
        if not frame.frame_id or result.HasField("error") or not self.learns(model):
            return
        key = (model.name, frame.frame_id)
        if key in self.recent:
            self.recent_bytes -= self.recent[key][0].ByteSize()
        self.recent[key] = (frame, result.score)
        self.recent_bytes += frame.ByteSize()
        self.recent.move_to_end(key)
        while self.recent and (len(self.recent) > self.recent_frames
                               or self.recent_bytes > RECENT_BYTES):
            old, _ = self.recent.popitem(last=False)[1]
            self.recent_bytes -= old.ByteSize()

    # -- the calls ---------------------------------------------------------------------------

    async def feedback(self, request: pb.FeedbackRequest, context) -> pb.FeedbackResponse:
        who = await self._authorize(context)
        model = await self._model(request.model, context)
        if request.label not in LABELS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "label must be OPERATOR_LABEL_GOOD or OPERATOR_LABEL_DEFECT")
        frame, score = await self._frame(request, model, context)
        try:
            pixels = decode_frame(frame, self.service.limits)
        except FrameError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the frame: {err}")
        from anogan_inspect.trainer.learn import Frame

        sha = hashlib.sha256(frame_bytes(frame)).hexdigest()
        name, version = model.name, model.bundle.version
        response = pb.FeedbackResponse(frame_sha256=sha, model_version=version)
        async with self._lock(name):
            why = None
            if request.label == pb.OPERATOR_LABEL_DEFECT:
                self.defects.setdefault(name, []).append(pixels)
                self.guards.pop(name, None)  # built again with it when next needed
                response.outcome = pb.FEEDBACK_OUTCOME_KEPT
            else:
                why = await self._held_because(model, sha, score, pixels)
                if why:
                    self.held[name].add(sha)  # a second GOOD for it collects it
                    response.outcome = pb.FEEDBACK_OUTCOME_HELD
                else:
                    response.outcome = pb.FEEDBACK_OUTCOME_COLLECTED
                    if model.bundle.memory is not None:
                        self.collected.setdefault(name, []).append(Frame(pixels, sha))
            if model.bundle.memory is None and response.outcome != pb.FEEDBACK_OUTCOME_HELD:
                # a whole-frame model learns offline: the frame is kept on disk
                await asyncio.to_thread(self._write_collected, name, request.label, frame,
                                        pixels, sha)
            response.good_collected = self._good_count(model)
            self._audit(who, context, "Feedback", name, version, frame_sha256=sha,
                        label=LABELS[request.label], note=request.note,
                        outcome=pb.FeedbackOutcome.Name(response.outcome),
                        score=round(float(score), 6), **({"held_because": why} if why else {}))
            if response.outcome == pb.FEEDBACK_OUTCOME_COLLECTED and self.learn_after and \
                    response.good_collected >= self.learn_after and model.bundle.memory:
                committed = await self._commit(model, who, context)
                response.outcome = pb.FEEDBACK_OUTCOME_LEARNT
                response.new_version = committed.model_version
        return response

    async def commit(self, request: pb.CommitLearningRequest, context
                     ) -> pb.CommitLearningResponse:
        who = await self._authorize(context)
        model = await self._model(request.model, context)
        async with self._lock(model.name):
            if not self._good_count(model):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"no GOOD frames collected for {model.name!r}")
            if model.bundle.memory is None:
                folder = self.collected_folder(model.name)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{model.name!r} is a whole-frame model: it learns by training, offline: "
                    f"anogan-train finetune --from {self.models_dir / model.name} --out NEW "
                    f"{folder / 'good'}, then anogan-train promote NEW --to "
                    f"{self.models_dir / model.name}")
            return await self._commit(model, who, context)

    async def rollback(self, request: pb.RollbackRequest, context) -> pb.RollbackResponse:
        who = await self._authorize(context)
        model = await self._model(request.model, context)
        from anogan_inspect.trainer.versions import rollback

        async with self._lock(model.name):
            try:
                replaced, now = await asyncio.to_thread(rollback, self.models_dir / model.name)
            except BundleError as err:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            await self._served(model.name, now, context)
            self._audit(who, context, "Rollback", model.name, replaced, new_version=now)
        return pb.RollbackResponse(model_version=now, replaced_version=replaced)

    # -- helpers -----------------------------------------------------------------------------

    async def _commit(self, model, who: str, context) -> pb.CommitLearningResponse:
        """Learn the collected frames as a new version and serve it (the lock held)."""
        from anogan_inspect.datasets import DatasetError
        from anogan_inspect.trainer.learn import LearnError, learn
        from anogan_inspect.trainer.versions import archive_of, keep, promote

        name = model.name
        served = self.models_dir / name
        archive = archive_of(served)
        work = archive / f".learning-{os.getpid()}-{time.time_ns()}"
        frames = list(self.collected.get(name, []))

        def run():
            learned = learn(read_bundle(served), frames, None, work,
                            self.defects.get(name) or None, self.recall_floor,
                            accept_far=True)  # held frames were confirmed twice to get here
            kept = keep(learned.path, archive)
            shutil.rmtree(learned.path)
            promote(kept, served)
            return learned

        try:
            learned = await asyncio.to_thread(run)
        except ImportError as err:  # a server installed without the exporter
            shutil.rmtree(work, ignore_errors=True)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"writing a version needs the exporter, installed with the "
                                f"train extra (pip install '.[serve,train]'): {err}")
        except (LearnError, BundleError, DatasetError) as err:
            shutil.rmtree(work, ignore_errors=True)
            self._audit(who, context, "CommitLearning", name, model.bundle.version,
                        outcome="REFUSED", reason=str(err))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        self.collected[name] = []
        await self._served(name, learned.version, context)
        self._audit(who, context, "CommitLearning", name, model.bundle.version,
                    new_version=learned.version, frames_learnt=learned.learnt,
                    frames_calibrating=learned.calibrating, threshold=learned.threshold,
                    defect_recall=learned.defect_recall)
        return pb.CommitLearningResponse(model_version=learned.version,
                                         parent_version=model.bundle.version,
                                         frames_learnt=len(learned.learnt),
                                         threshold=learned.threshold)

    async def _served(self, name: str, version: str, context) -> None:
        """Wait until the folder's watcher serves `version` of the model."""
        deadline = time.monotonic() + self.watch_timeout
        while time.monotonic() < deadline:
            model = self.service.models.get(name)
            if model is not None and model.bundle.version == version:
                return
            await asyncio.sleep(0.05)
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"version {version} of {name!r} was written but is not served "
                            f"after {self.watch_timeout:.0f} s: see the server's log")

    async def _authorize(self, context) -> str:
        """The caller's token (its sha256 prefix, for the audit log); PERMISSION_DENIED
        without one of the admin tokens."""
        token = bearer_token(context.invocation_metadata())
        if token is None or not self.admin.accepts(token):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "this call needs a token of anogan-serve --admin-token-file")
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]

    async def _model(self, name: str, context):
        name = name or self.service.default_model
        model = self.service.models.get(name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, self.service._unknown_model(name))
        if not self.learns(model):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{name!r} cannot learn: only memory and whole-frame models "
                                "served from --models-dir learn (their versions are written "
                                "there)")
        return model

    async def _frame(self, request: pb.FeedbackRequest, model, context
                     ) -> tuple[pb.Frame, float]:
        """The frame the verdict names (the recent frame of that id, or the one sent, then
        scored now) and the model's score of it."""
        if request.HasField("frame"):
            options = self.service._options(pb.InspectionConfig(model=model.name))
            result = await self.service._score(request.frame, options, None)
            if result.HasField("error"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the frame: {result.error.message}")
            return request.frame, result.score
        found = self.recent.get((model.name, request.frame_id))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no recent frame {request.frame_id!r} of {model.name!r} (the "
                                f"server keeps the last {self.recent_frames}): send the frame")
        return found

    async def _held_because(self, model, sha: str, score: float, pixels) -> str | None:
        """Why a frame confirmed GOOD is held for a second confirmation ("far": scored
        beyond FAR_FACTOR times the threshold, "defect": failing where a kept DEFECT frame's
        regions lie), or None: collect it (also when it was held once already)."""
        from anogan_inspect.trainer.learn import FAR_FACTOR

        if sha in self.held.setdefault(model.name, set()):
            return None
        threshold = model.bundle.threshold
        if score > FAR_FACTOR * threshold:
            return "far"
        if score > threshold and self.defects.get(model.name) and \
                await asyncio.to_thread(self._covers_defects, model, pixels):
            return "defect"
        return None

    def _covers_defects(self, model, pixels) -> bool:
        """Whether a memory model fails the frame where its kept DEFECT frames' regions lie
        (trainer/learn.py's DefectGuard, built once per version)."""
        if model.bundle.memory is None:
            return False  # a whole-frame model has no regions
        from anogan_inspect.trainer.learn import DefectGuard, rebuild_scorer

        bundle = model.bundle
        version, guard = self.guards.get(model.name, (None, None))
        if version != bundle.version:
            scorer, _ = rebuild_scorer(bundle)
            guard = DefectGuard(scorer, bundle.threshold, bundle.memory["pixel_threshold"],
                                bundle.tiling.scale, bundle.channels)
            for defect in self.defects.get(model.name, []):
                guard.add(defect)
            self.guards[model.name] = (bundle.version, guard)
        return guard.covers(pixels)

    def _good_count(self, model) -> int:
        """GOOD frames collected for the model's next version: in memory, or on disk for a
        whole-frame model."""
        if model.bundle.memory is not None:
            return len(self.collected.get(model.name, []))
        folder = self.collected_folder(model.name) / "good"
        return sum(1 for p in folder.iterdir() if p.suffix != ".tmp") if folder.is_dir() else 0

    def _write_collected(self, name: str, label: int, frame: pb.Frame, pixels, sha: str
                         ) -> Path:
        """The frame as a file under the model's collected folder: the encoded bytes as
        received, or raw pixels as a PNG."""
        import io

        import numpy as np
        from PIL import Image

        folder = self.collected_folder(name) / LABELS[label].lower()
        folder.mkdir(parents=True, exist_ok=True)
        if frame.WhichOneof("image") == "encoded":
            data = frame.encoded.data
            suffix = ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png"
        else:
            image = (np.asarray(pixels).transpose(1, 2, 0) * 255).round().astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format="PNG")
            data, suffix = buffer.getvalue(), ".png"
        path = folder / f"{sha}{suffix}"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _audit(self, who: str, context, call: str, model: str, version: str, **what) -> None:
        """One JSON line, appended and flushed to disk before the call answers."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                 "who": who, "peer": context.peer(), "call": call, "model": model,
                 "version": version, **what}
        with open(self.audit_log, "a") as log_file:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
