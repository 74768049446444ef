"""The simulator's random draws as distributions, against keras_cv 0.9's policy read from its source
(aug_mix.py, rand_augment.py, random_augmentation_pipeline.py): fast, deterministic (seeded), and sensitive: with
200,000 images a shift of an op's frequency by 3% of its value, or of a magnitude's mean by 1% of its range,
fails (shown below). An accuracy drift of 0.3 points needs ~100,000 corrupted images a side to see, which
bench/bench_hidden_fidelity.py measures against keras_cv's own layers; these tests catch the sampling drifts that
would cause one, in under a second."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from subbench.corrupt import an2dl
from subbench.corrupt.record import an2dl_record

N = 200_000


@pytest.fixture(scope="module")
def draws():
    return an2dl.draw(N, 7)


def test_augmix_weights_depths_and_severities(draws):
    # Dirichlet(1, 1, 1): each chain's weight is Beta(1, 2); the original's mixing weight is Beta(1, 1)
    assert stats.kstest(draws.chain_weight[:, 0], stats.beta(1, 2).cdf).pvalue > 1e-3
    assert np.allclose(draws.chain_weight.sum(1), 1, atol=1e-6)
    assert stats.kstest(draws.mix_weight, stats.uniform(0, 1).cdf).pvalue > 1e-3
    # chain depth uniform on {1, 2, 3}; op uniform on [0, 8); severity Uniform(0.01, 0.3)
    assert stats.chisquare(np.bincount(draws.depth.ravel(), minlength=4)[1:]).pvalue > 1e-3
    assert stats.chisquare(np.bincount(draws.op.ravel(), minlength=8)).pvalue > 1e-3
    assert stats.kstest(draws.severity.ravel()[:N], stats.uniform(0.01, 0.29).cdf).pvalue > 1e-3


def test_randaugment_slots_ops_and_magnitudes(draws):
    applied = draws.ra_u <= np.float32(an2dl.RA_RATE)
    assert stats.binomtest(int(applied.sum()), applied.size, 10 / 11).pvalue > 1e-3
    assert stats.chisquare(np.bincount(draws.ra_op.ravel(), minlength=10)).pvalue > 1e-3
    # normal factor samplers: N(0, 1) before the policy's mean/stddev/clip; uniform ones U(0, 1)
    assert stats.kstest(draws.ra_z.ravel()[:N], stats.norm.cdf).pvalue > 1e-3
    assert stats.kstest(draws.ra_v.ravel()[:N], stats.uniform.cdf).pvalue > 1e-3
    rec = an2dl_record(N, 7)
    j = rec.column("randaugment.solarize")
    thr = rec.magnitude[rec.drew[:, j], j]
    # one slot's threshold is clip(N(127.5, 38.25), 0, 255); the record keeps the lowest of an image's slots
    slots = ((draws.ra_op == 2) & (draws.ra_u <= np.float32(an2dl.RA_RATE))).sum(1)
    single = rec.drew[:, j] & (slots == 1)
    assert stats.kstest(rec.magnitude[single, j], stats.norm(127.5, 38.25).cdf).pvalue > 1e-3
    assert thr.min() >= 0 and thr.max() <= 255


def test_the_tests_see_a_one_percent_drift():
    """The same checks on draws shifted that much fail: they are sensitive enough."""
    rng = np.random.default_rng(0)
    op = rng.integers(0, 10, N * 3)
    others = np.flatnonzero(op != 2)[: N * 3 // 10 * 3 // 100]
    op[others] = 2                                        # solarize 3% more often than 1/10 of the slots
    assert stats.chisquare(np.bincount(op, minlength=10)).pvalue < 1e-3
    sev = 0.01 + 0.29 * rng.random(N) + 0.29 * 0.01       # severity shifted by 1% of its range
    assert stats.kstest(sev, stats.uniform(0.01, 0.29).cdf).pvalue < 1e-3
