"""Prometheus metrics and score drift of one server process (`anogan-serve --metrics-port`).

Per frame, the service records its final result (counts by model, version, verdict, stage
and mode; errors by code; latency histograms). What the engines, fast paths and streams
hold now is read when Prometheus scrapes (a collector over `ServedModel.stats()` and the
service's counters), so serving pays nothing for it. Each process has its own registry and
endpoint: with `--workers N`, worker i serves on the metrics port + i.

Drift: every fast-path score (FAST and CASCADE frames) and every SEARCH-mode score at a
calibrated budget goes into a rolling window per model and kind of score, compared with
the held-out normal scores the bundle carries (the quantiles in its manifest's
`threshold.scores`): the live share above the threshold beside the held-out one, and the
population stability index (PSI) over the bins those quantiles cut (0-p50, p50-p90,
p90-p95, p95-p99, above p99: 50/40/5/4/1 % of held-out normal frames). PSI above about
0.25 is the usual sign that the scores no longer come from the same population: the
parts, the light or the camera changed, or the defect rate did.
"""

from __future__ import annotations

import collections
import logging
import math

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from anogan.v1 import inspection_pb2 as pb

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DRIFT_WINDOW = 1000  # frames per rolling window
QUANTILE_BINS = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))


class Drift:
    """A rolling window of live scores against a held-out normal score distribution."""

    def __init__(self, heldout: dict, threshold: float, heldout_fail_share: float,
                 window: int = DRIFT_WINDOW):
        self.edges = np.array([heldout[key] for key, _ in QUANTILE_BINS], dtype=np.float64)
        shares = np.diff([0.0, *(q for _, q in QUANTILE_BINS), 1.0])
        self.expected = shares
        self.threshold, self.heldout_fail_share = threshold, heldout_fail_share
        self.scores: collections.deque[float] = collections.deque(maxlen=window)

    @classmethod
    def from_calibration(cls, calibration: dict | None) -> Drift | None:
        """From a manifest threshold entry ({"value", "heldout_fpr", "scores": {...}});
        None when it carries no held-out quantiles."""
        scores = (calibration or {}).get("scores") or {}
        if not all(key in scores for key, _ in QUANTILE_BINS):
            return None
        return cls(scores, float(calibration["value"]),
                   float(calibration.get("heldout_fpr", calibration.get("target_fpr", 0.0))))

    def add(self, score: float) -> None:
        self.scores.append(float(score))

    def snapshot(self) -> tuple[int, float, float]:
        """(frames in the window, their share above the threshold, PSI); NaN when empty."""
        live = np.fromiter(list(self.scores), dtype=np.float64)
        if not len(live):
            return 0, math.nan, math.nan
        counts = np.bincount(np.searchsorted(self.edges, live, side="right"),
                             minlength=len(self.expected))
        actual = np.maximum(counts / len(live), 1e-4)  # an empty bin counts as 0.01 %
        psi = float(np.sum((actual - self.expected) * np.log(actual / self.expected)))
        return len(live), float(np.mean(live > self.threshold)), psi


class Metrics:
    """The process's Prometheus registry: per-frame counters and histograms, and a
    collector for what is read at scrape time."""

    def __init__(self, service, models: dict):
        self.registry = CollectorRegistry()
        self.frames = Counter(
            "anogan_frames", "Frames answered with a score, by verdict and the stage that "
            "decided it", ["model", "version", "mode", "stage", "verdict"],
            registry=self.registry)
        self.errors = Counter("anogan_frame_errors", "Frames answered with an error, by "
                              "gRPC status code", ["model", "code"], registry=self.registry)
        self.queue = Histogram("anogan_frame_queue_seconds", "Time a frame waited for the "
                               "fast path and a search slot", ["model"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compute = Histogram("anogan_frame_compute_seconds", "Time a frame was computed "
                                 "on, by the stage that decided it (fast: the fast path; "
                                 "search: fast path and search)", ["model", "stage"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.total = Histogram("anogan_frame_seconds", "From a frame's arrival at the server "
                               "to its result: decoding, queueing, computing", ["model", "mode"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(service, models))
        self._server = None

    def observe(self, result: pb.InspectionResult, seconds: float) -> None:
        """Count one final result (a score or an error)."""
        if result.HasField("error"):
            self.errors.labels(result.model, _code_name(result.error.code)).inc()
            return
        mode = pb.Mode.Name(result.mode).removeprefix("MODE_").lower()
        stage = pb.Stage.Name(result.stage).removeprefix("STAGE_").lower()
        verdict = pb.Verdict.Name(result.verdict).removeprefix("VERDICT_").lower()
        self.frames.labels(result.model, result.model_version, mode, stage, verdict).inc()
        self.queue.labels(result.model).observe(result.queue_time.ToNanoseconds() / 1e9)
        self.compute.labels(result.model, stage).observe(
            result.compute_time.ToNanoseconds() / 1e9)
        self.total.labels(result.model, mode).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """The /metrics endpoint on a thread of its own; the port it listens on."""
        self._server, _ = start_http_server(port, host.strip("[]") or "0.0.0.0",
                                            registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# A served model's series: its name, version, and the first 12 hex digits of its manifest's
# sha256 (--models-dir models; empty for --bundle ones).
MODEL_LABELS = ["model", "version", "manifest"]


class _Collector:
    """Gauges and counters read from the engines, fast paths and service at scrape time."""

    def __init__(self, service, models: dict):
        self.service, self.models = service, models

    def collect(self):
        gauge = lambda name, text, labels=(): GaugeMetricFamily(  # noqa: E731
            name, text, labels=list(labels))
        counter = lambda name, text: CounterMetricFamily(  # noqa: E731
            name, text, labels=MODEL_LABELS)
        service = self.service
        streams = gauge("anogan_streams_open", "StreamInspect calls open")
        streams.add_metric([], len(service._readers))
        in_flight = gauge("anogan_frames_in_flight", "Frames being scored, all streams")
        in_flight.add_metric([], service.frames_in_flight)
        held = gauge("anogan_bytes_in_flight_bytes", "Bytes held by frames being decoded "
                     "and scored (--max-bytes-in-flight)")
        held.add_metric([], service.bytes_in_flight)
        unsent = gauge("anogan_results_unsent", "Frames whose final result waits for its "
                       "client to read")
        unsent.add_metric([], service.results_unsent)
        yield from (streams, in_flight, held, unsent)

        model_gauges = {
            "active_slots": gauge("anogan_search_slots_active", "Searches in slots now",
                                  MODEL_LABELS),
            "slot_capacity": gauge("anogan_search_slots", "Search slots", MODEL_LABELS),
            "queued_searches": gauge("anogan_search_queue_depth", "Searches waiting for a "
                                     "slot", MODEL_LABELS),
        }
        model_counters = {
            "search_batches": counter("anogan_search_steps", "Engine steps run"),
            "search_slot_steps": counter("anogan_search_slot_steps", "Slot-steps run: the "
                                         "engine's batch sizes summed (mean batch: its rate "
                                         "over anogan_search_steps_total's)"),
            "searches_completed": counter("anogan_searches_completed", "Searches finished"),
            "searches_cancelled": counter("anogan_searches_cancelled", "Searches dropped "
                                          "with their stream"),
            "fast_batches": counter("anogan_fast_batches", "Fast-path batches run"),
            "fast_frames": counter("anogan_fast_frames", "Frames (or tiles) through the fast "
                                   "path (mean batch: its rate over "
                                   "anogan_fast_batches_total's)"),
            "memory_frames": counter("anogan_memory_frames", "Frames scored by a memory "
                                     "model's memory scorer"),
        }
        memory = gauge("anogan_device_memory_bytes", "Memory torch holds on a CUDA device",
                       [*MODEL_LABELS, "device"])
        drift_frames = gauge("anogan_drift_window_frames", "Frames in the drift window",
                             [*MODEL_LABELS, "score"])
        drift_share = gauge("anogan_drift_fail_share", "Share of the drift window's scores "
                            "above the threshold", [*MODEL_LABELS, "score"])
        heldout_share = gauge("anogan_drift_heldout_fail_share", "Share of the bundle's "
                              "held-out normal frames above the threshold",
                              [*MODEL_LABELS, "score"])
        drift_psi = gauge("anogan_drift_psi", "Population stability index of the drift "
                          "window's scores against the held-out normal scores",
                          [*MODEL_LABELS, "score"])
        # Every version still working: those serving new calls, and those --models-dir
        # replaced that open streams still hold (each version's counters are its own).
        # (copies: --models-dir may swap one now, on the event loop). A version rewritten in
        # place (anogan-train calibrate keeps it) stays apart by its manifest's digest.
        serving = [*self.models.items(), *((m.name, m) for m in list(service.retired))]
        for name, model in serving:
            stats = model.stats()
            labels = [name, model.bundle.version, (model.fingerprint or "")[:12]]
            for key, family in model_gauges.items():
                family.add_metric(labels, stats[key])
            for key, family in model_counters.items():
                family.add_metric(labels, stats[key])
            for lane in model.lanes:
                if lane.device.type == "cuda":
                    import torch
                    memory.add_metric([*labels, str(lane.device)],
                                      torch.cuda.memory_allocated(lane.device))
            for kind, drift in model.drift.items():
                frames, share, psi = drift.snapshot()
                drift_frames.add_metric([*labels, kind], frames)
                drift_share.add_metric([*labels, kind], share)
                heldout_share.add_metric([*labels, kind], drift.heldout_fail_share)
                drift_psi.add_metric([*labels, kind], psi)
        yield from model_gauges.values()
        yield from model_counters.values()
        yield from (memory, drift_frames, drift_share, heldout_share, drift_psi)


def _code_name(code: int) -> str:
    from grpc import StatusCode
    return next((c.name for c in StatusCode if c.value[0] == code), str(code))
