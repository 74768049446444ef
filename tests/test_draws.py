"""Several corruption draws: how many (auto within a time budget), and intervals whose coverage is checked by
simulation here on images with known per-image chances of being right (the bench checks them against keras_cv)."""

from __future__ import annotations

import numpy as np
import pytest

from subbench.errors import SubbenchError
from subbench.local_bench.draws import MAX_DRAWS, choose_draws, draw_spread
from subbench.local_bench.evaluate import ScoreOptions, evaluate
from subbench.profile import load_profile


def test_choose_draws_fits_the_budget():
    assert choose_draws("auto", 10.0, budget_s=120) == (MAX_DRAWS, pytest.approx(choose_draws("auto", 10.0)[1]))
    assert choose_draws("auto", 50.0, budget_s=120)[0] == 3            # 2 more draws fit 120 s
    assert choose_draws("auto", 500.0, budget_s=120)[0] == 1
    assert choose_draws(4, 500.0)[0] == 4 and "as asked" in choose_draws(4, 500.0)[1]


def _population(n, rng):
    """Per-image chances of being right, the shape a corrupted set gives: many sure, many fragile."""
    return np.clip(rng.beta(0.6, 0.4, n), 0, 1)


@pytest.mark.parametrize("k", [1, 4])
def test_intervals_cover_what_they_claim(k):
    rng = np.random.default_rng(0)
    pool = _population(200_000, rng)                       # the distribution's expected accuracy: pool.mean()
    n, reps, hidden = 400, 300, 2500
    hit_expected = hit_next = hit_hidden = 0
    for _ in range(reps):
        p = rng.choice(pool, n)
        correct = rng.random((k, n)) < p
        d = draw_spread(correct, list(range(k)), hidden_size=hidden)
        hit_expected += d.ci95[0] <= pool.mean() <= d.ci95[1]
        nxt = (rng.random(n) < p).mean()                   # one more draw of the same images
        hit_next += d.next_draw_ci95[0] <= nxt <= d.next_draw_ci95[1]
        server = (rng.random(hidden) < rng.choice(pool, hidden)).mean()   # other images, one draw
        hit_hidden += d.hidden_ci95[0] <= server <= d.hidden_ci95[1]
    assert 0.91 <= hit_expected / reps <= 0.985
    assert 0.91 <= hit_hidden / reps <= 0.99
    # with one draw the next-draw interval uses the bound a(1-a): conservative, never too narrow
    assert (0.91 <= hit_next / reps <= 0.985) if k > 1 else hit_next / reps >= 0.95


def test_spread_and_mean():
    correct = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    d = draw_spread(correct, [5, 6, 7])
    assert d.per_draw == pytest.approx([0.5, 0.25, 0.75]) and d.mean == pytest.approx(0.5)
    assert d.spread == pytest.approx(0.25) and d.seeds == [5, 6, 7] and d.hidden_ci95 is None
    # within-image variance: images 2 and 3 vary (2/3 and 1/3 right), unbiased over 3 draws
    assert d.within_variance == pytest.approx(np.mean([0, 2 / 9, 2 / 9, 0]) * 3 / 2)


def test_bad_draws_are_named_errors(tmp_path):
    profile = load_profile()
    for bad in (0, -1, "many", True):
        with pytest.raises(SubbenchError, match="not a number of draws"):
            evaluate(tmp_path / "x.zip", None, profile, ScoreOptions(draws=bad))
    with pytest.raises(SubbenchError, match="needs --simulate-hidden"):
        evaluate(tmp_path / "x.zip", None, profile, ScoreOptions(draws=3))
