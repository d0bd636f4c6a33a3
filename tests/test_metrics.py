"""The numpy metrics the client reports, against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from anogan_inspect.metrics import auroc, confusion, confusion_table, roc_curve


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_curve_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(200) < 0.3
    scores = np.round(rng.normal(truth * 0.8, 1.0), 1)  # rounded: many ties
    assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    fpr, tpr = roc_curve(scores, truth)
    sk_fpr, sk_tpr, _ = sk_roc_curve(truth, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_auroc_extremes_and_one_class():
    truth = np.array([0, 0, 1, 1], dtype=bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), truth) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), truth) == 0.0
    assert auroc(np.ones(4), truth) == 0.5
    with pytest.raises(ValueError, match="both anomalous and normal"):
        auroc(np.ones(3), np.zeros(3, dtype=bool))


def test_confusion_counts_and_table():
    counts = confusion(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert counts == {"true_positive": 2, "false_positive": 1, "true_negative": 1,
                      "false_negative": 1}
    assert confusion_table(counts).splitlines() == [
        "           verdict FAIL  verdict PASS",
        "anomalous             2             1",
        "normal                1             1",
    ]
