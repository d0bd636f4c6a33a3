"""Score drift (server/monitoring.py) against a known distribution."""

import math

import numpy as np

from anogan_inspect.server.monitoring import Drift


def calibration(rng) -> dict:
    """A manifest threshold entry for scores ~ N(200, 50): its quantiles, threshold p95."""
    heldout = rng.normal(200.0, 50.0, 100_000)
    scores = {key: float(np.quantile(heldout, q))
              for key, q in (("p50", .5), ("p90", .9), ("p95", .95), ("p99", .99))}
    return {"value": scores["p95"], "heldout_fpr": 0.05, "scores": scores}


def test_drift_is_quiet_on_the_heldout_population_and_loud_on_a_shifted_one():
    rng = np.random.default_rng(0)
    entry = calibration(rng)
    same, shifted = Drift.from_calibration(entry), Drift.from_calibration(entry)
    assert same.snapshot()[0] == 0 and math.isnan(same.snapshot()[2])
    for score in rng.normal(200.0, 50.0, 1500):
        same.add(score)
    for score in rng.normal(250.0, 50.0, 1000):  # the parts look one sigma worse
        shifted.add(score)
    frames, share, psi = same.snapshot()
    assert frames == 1000  # the window keeps the last 1,000
    assert abs(share - 0.05) < 0.03 and psi < 0.05
    frames, share, psi = shifted.snapshot()
    assert share > 0.2 and psi > 0.25


def test_drift_needs_the_heldout_quantiles():
    assert Drift.from_calibration({"value": 1.0, "scores": {"p50": 0.5}}) is None
    assert Drift.from_calibration(None) is None
