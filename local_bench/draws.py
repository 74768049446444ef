"""Several corruption draws of the same images: how many, their run, and an interval that counts both the images
and the draw.

A simulated hidden score depends on which images were scored and on which ops and magnitudes the corruption drew
for them. One draw's bootstrap over images holds the first source only in part: a second draw on the same images
moves the figure by about as much as that interval's half-width. So the zip predicts K draws of every image
(seeds seed, seed+1, ...; the first is the server emulation, the others one streamed analysis process), and:

- the figure is the mean over draws; `per_draw` and `spread` (their standard deviation) show the draw's part;
- the headline interval (`ci95`) is a percentile bootstrap over images of each image's mean correctness over
  the K draws: it holds the expected accuracy over the hidden set's distribution, images and draws;
- `next_draw_ci95`: where one more draw of these same images falls (what keras_cv's layers, or a second run,
  give on them): ā ± z·sqrt(S·(1 + 1/K)/N), S the mean within-image variance over draws (unbiased, K ≥ 2; with one
  draw its bound ā(1 − ā));
- `hidden_ci95`: where the server's one draw of its own `hidden_size` images falls: ā ± z·sqrt(V_boot + ā(1 − ā)/H).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from subbench.local_bench.scorer import BOOT_SEED, CI_LEVEL, N_BOOT

MAX_DRAWS = 8
DRAWS_BUDGET_S = 120.0     # extra predict time the default (auto) may spend on draws beyond the first
Z95 = 1.959963984540054


@dataclass
class DrawSpread:
    """The simulated hidden score over K corruption draws of the same images."""
    k: int
    seeds: list[int]
    per_draw: list[float]
    mean: float
    spread: float | None                     # standard deviation of per_draw (None with one draw)
    ci95: tuple[float, float]                # bootstrap over images of per-image means: the expected figure
    next_draw_ci95: tuple[float, float]      # one more draw of the same images
    hidden_ci95: tuple[float, float] | None  # the server's one draw of hidden_size images
    hidden_size: int | None = None
    within_variance: float | None = None     # S, mean within-image variance over draws (None with one draw)
    chosen: str = ""                         # why K draws
    method: str = field(default="bootstrap over images of per-image means over draws; see local_bench.draws")


def choose_draws(requested, per_draw_s: float, budget_s: float = DRAWS_BUDGET_S) -> tuple[int, str]:
    """(K, why): a number as given, or 'auto': as many as fit the budget of extra predict time (1..MAX_DRAWS)."""
    if requested not in (None, "auto"):
        return int(requested), "as asked (--draws)"
    extra = int(budget_s // per_draw_s) if per_draw_s > 0 else MAX_DRAWS - 1
    k = max(1, min(MAX_DRAWS, 1 + extra))
    return k, (f"auto: {k} draws, {per_draw_s:.1f} s of predict time each, within {budget_s:g} s beyond the first"
               + (f" (at most {MAX_DRAWS})" if k == MAX_DRAWS else ""))


def _bootstrap_mean(m: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    level: float = CI_LEVEL) -> tuple[tuple[float, float], float]:
    """(percentile interval, variance) of the mean of m over bootstrap resamples of its entries (in blocks, so
    memory stays ~ 100 x N)."""
    rng = np.random.default_rng(seed)
    n = len(m)
    means = np.concatenate([m[rng.integers(0, n, (min(100, n_boot - b), n))].mean(1)
                            for b in range(0, n_boot, 100)])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi)), float(means.var(ddof=1))


def _clip(lo: float, hi: float) -> tuple[float, float]:
    return max(0.0, float(lo)), min(1.0, float(hi))


def draw_spread(correct: np.ndarray, seeds: list[int], hidden_size: int | None = None,
                chosen: str = "") -> DrawSpread:
    """The statistics of a (K, N) bool array: image n right on draw k."""
    correct = np.asarray(correct, bool)
    k, n = correct.shape
    per_draw = correct.mean(1)
    m = correct.mean(0)
    mean = float(m.mean())
    ci, var_boot = _bootstrap_mean(m.astype(np.float64))
    if k >= 2:
        within = float((m * (1 - m) * k / (k - 1)).mean())
    else:
        within = None
    s = within if within is not None else mean * (1 - mean)
    half = Z95 * np.sqrt(s * (1 + 1 / k) / n)
    hidden = None
    if hidden_size:
        hh = Z95 * np.sqrt(var_boot + mean * (1 - mean) / hidden_size)
        hidden = _clip(mean - hh, mean + hh)
    return DrawSpread(k=k, seeds=[int(x) for x in seeds], per_draw=[float(x) for x in per_draw], mean=mean,
                      spread=float(per_draw.std(ddof=1)) if k >= 2 else None, ci95=ci,
                      next_draw_ci95=_clip(mean - half, mean + half), hidden_ci95=hidden, hidden_size=hidden_size,
                      within_variance=within, chosen=chosen)
