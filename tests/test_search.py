"""The latent search: batching gives each image the score it gets alone; best-only; slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anogan_inspect.networks import PRESETS, Discriminator, FeatureExtractor, Generator
from anogan_inspect.search import (
    ScoringModels,
    SearchConfig,
    SlotTable,
    random_start,
    score_parts,
    search,
)


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    generator, discriminator = Generator(cfg), Discriminator(cfg)
    # Put the generator's BatchNorm statistics somewhere non-trivial, then freeze.
    generator.train()
    with torch.no_grad():
        generator(torch.randn(64, cfg.latent_dim))
    return ScoringModels(generator, FeatureExtractor(discriminator), cfg.latent_dim).prepare()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_prepare_freezes_and_sets_eval(models):
    for net in (models.generator, models.features):
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())


def test_batch_gives_each_image_its_alone_score(models):
    x, z0 = images(6), random_start(6, models.latent_dim, seed=3)
    cfg = SearchConfig(steps=15, lr=0.05)
    together = search(models, x, z0, cfg, batch_size=6)
    for i in range(6):
        alone = search(models, x[i:i + 1], z0[i:i + 1], cfg, batch_size=1)
        np.testing.assert_allclose(together.score[i], alone.score[0], rtol=1e-4)
        np.testing.assert_allclose(together.z[i], alone.z[0], rtol=1e-3, atol=1e-4)


def test_continuous_refill_matches_one_big_batch(models):
    """A table smaller than the input refills slots as searches finish: same scores."""
    x, z0 = images(10), random_start(10, models.latent_dim, seed=4)
    cfg = SearchConfig(steps=8, lr=0.05)
    wide = search(models, x, z0, cfg, batch_size=10)
    narrow = search(models, x, z0, cfg, batch_size=3)
    np.testing.assert_allclose(wide.score, narrow.score, rtol=1e-4)
    assert (narrow.steps == 8).all()


def test_score_is_best_seen_and_never_above_start(models):
    x, z0 = images(4), random_start(4, models.latent_dim, seed=5)
    cfg = SearchConfig(steps=20, lr=0.05)
    with torch.no_grad():
        fx = models.features(x)
        start, residual, feature = score_parts(models, x, fx, z0, cfg.lam)
    result = search(models, x, z0, cfg)
    assert (result.score <= start.numpy() + 1e-4).all()
    assert (result.score < start.numpy()).any(), "20 Adam steps should improve something"
    # The score is the formula at the best z, with its parts consistent.
    np.testing.assert_allclose(result.score, 0.9 * result.residual + 0.1 * result.feature,
                               rtol=1e-5)
    with torch.no_grad():
        at_best, _, _ = score_parts(models, x, fx, torch.as_tensor(result.z), cfg.lam)
    np.testing.assert_allclose(at_best.numpy(), result.score, rtol=1e-4)
    np.testing.assert_allclose(start.numpy(), (0.9 * residual + 0.1 * feature).numpy(),
                               rtol=1e-5)


def test_per_slot_budgets_and_removal(models):
    table = SlotTable(models, SearchConfig(steps=5), capacity=4, image_shape=(1, 16, 16))
    table.admit(images(3), random_start(3, models.latent_dim), [1, 3, 2], ["a", "b", "c"])
    finished = [r.tag for r in table.step()]
    assert finished == ["a"] and table.n == 2
    assert table.remove(lambda tag: tag == "c") == 1
    assert table.tags == ["b"]
    steps = {}
    while table.n:
        steps.update({r.tag: r.steps for r in table.step()})
    assert steps == {"b": 3}


def test_early_stopping_stops_a_converged_slot(models):
    cfg = SearchConfig(steps=1000, lr=0.0, patience=3)  # lr 0: no improvement after step 1
    result = search(models, images(2), random_start(2, models.latent_dim), cfg)
    assert (result.steps == 4).all()


def test_admitting_past_capacity_is_refused(models):
    table = SlotTable(models, SearchConfig(), capacity=2, image_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="do not fit"):
        table.admit(images(3), random_start(3, models.latent_dim), [1] * 3, range(3))


def test_step_counts_are_integers_past_float32s_2_to_the_24(models):
    """A float32 count stops at 2^24 (2^24 + 1 rounds back down): such a budget would never
    finish. Counts are integers."""
    table = SlotTable(models, SearchConfig(steps=5), 2, (1, 16, 16))
    budget = 2 ** 24 + 3
    table.admit(images(2), random_start(2, models.latent_dim), [budget, 5], ["big", "small"])
    table.step_count[0] = table.steps_run[0] = 2 ** 24  # as if it had run that long
    finished = [r for _ in range(3) for r in table.step()]
    assert [(r.tag, r.steps) for r in finished] == [("big", budget)]
