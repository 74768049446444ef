"""Why a score falls on the simulated hidden set: accuracy per op of the corruption, per magnitude bin, and the
errors each op costs; the suite's corruption errors against a baseline model (mCE); two models op by op.

Inputs are per-image facts only: which scored images the model got right, and what the simulator drew for each
(`subbench.corrupt.record.DrawRecord`), so the same functions serve a fresh score and folders read back.

Definitions (also in `COST_DEFINITION`, carried in scores.json):
- accuracy with / without an op: over the images that drew it at least once / never; 95% interval as the
  headline's (scorer.accuracy_interval);
- errors attributable to an op (excess errors): n_with x (accuracy without - accuracy with), the errors the
  images that drew it made beyond what images without it made; as points of the overall accuracy, x 100 / N.
  Ops overlap on an image (each image draws several), so the points do not add up to the drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from subbench.corrupt.record import DrawRecord, magnitude_unit

from subbench.local_bench import scorer

MAGNITUDE_BINS = 3           # tertiles of the magnitudes drawn
MIN_BIN = 10                 # a bin with fewer images is merged into its neighbour
COST_DEFINITION = ("points = 100 x n_with x (accuracy without the op - accuracy with it) / N: the errors the "
                   "images that drew the op made beyond those that did not, as accuracy points; ops overlap on an "
                   "image, so the points do not sum to the drop")
MCE_DEFINITION = ("CE_c = sum over severities of E(c,s) / sum over severities of E_baseline(c,s), E = 1 - "
                  "accuracy; mCE = mean over corruptions of CE_c (Hendrycks & Dietterich, ImageNet-C)")


@dataclass
class MagnitudeBin:
    lo: float
    hi: float
    n: int
    accuracy: float
    ci95: tuple[float, float]


@dataclass
class OpBreakdown:
    op: str                          # "augmix.solarize", "randaugment.brightness", ...
    n_with: int
    accuracy_with: float | None
    ci95_with: tuple[float, float] | None
    n_without: int
    accuracy_without: float | None
    ci95_without: tuple[float, float] | None
    errors_with: int                 # errors among the images that drew it
    excess_errors: float             # n_with x (accuracy without - accuracy with)
    points: float                    # excess_errors as accuracy points of the whole set
    magnitude_unit: str | None = None
    bins: list[MagnitudeBin] = field(default_factory=list)


@dataclass
class Breakdown:
    """The simulated hidden score by op, costliest first."""
    preset: str
    seed: int
    n: int
    accuracy: float
    errors: int
    ops: list[OpBreakdown]
    draws: int = 1                   # n counts (image, draw) pairs: images x draws
    definition: str = COST_DEFINITION

    def top(self, k: int = 3) -> list[OpBreakdown]:
        """The k costliest ops among those with images on both sides."""
        return [o for o in self.ops if o.n_with and o.n_without][:k]


def _acc(correct: np.ndarray) -> tuple[float | None, tuple[float, float] | None]:
    n = int(correct.size)
    if n == 0:
        return None, None
    c = int(correct.sum())
    return c / n, scorer.accuracy_interval(c, n)


def _bins(correct: np.ndarray, mags: np.ndarray) -> list[MagnitudeBin]:
    """Accuracy per magnitude tertile of the images that drew the op (edges from their own magnitudes)."""
    if mags.size < 2 * MIN_BIN or np.all(mags == mags[0]):
        return []
    edges = np.unique(np.quantile(mags, np.linspace(0, 1, MAGNITUDE_BINS + 1)))
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        last = hi == edges[-1]
        sel = (mags >= lo) & ((mags <= hi) if last else (mags < hi))
        if sel.sum() < MIN_BIN and out:        # merge a thin bin into the previous one
            prev = out.pop()
            sel |= (mags >= prev.lo) & (mags < lo)
            lo = prev.lo
        acc, ci = _acc(correct[sel])
        out.append(MagnitudeBin(float(lo), float(hi), int(sel.sum()), acc, ci))
    return out


def op_breakdown(correct: np.ndarray, record: DrawRecord, j: int) -> OpBreakdown:
    drew = record.drew[:, j]
    with_, without = correct[drew], correct[~drew]
    acc_w, ci_w = _acc(with_)
    acc_wo, ci_wo = _acc(without)
    excess = float(with_.size * (acc_wo - acc_w)) if acc_w is not None and acc_wo is not None else 0.0
    op = record.ops[j]
    unit = magnitude_unit(op)
    mags = record.magnitude[drew, j]
    bins = _bins(with_, mags) if unit and not np.isnan(mags).all() else []
    return OpBreakdown(op=op, n_with=int(with_.size), accuracy_with=acc_w, ci95_with=ci_w,
                       n_without=int(without.size), accuracy_without=acc_wo, ci95_without=ci_wo,
                       errors_with=int((~with_).sum()), excess_errors=excess,
                       points=100.0 * excess / max(1, correct.size), magnitude_unit=unit, bins=bins)


def breakdown(labels, predictions, record: DrawRecord, draws: int = 1) -> Breakdown:
    """The breakdown of one scored set whose images were corrupted with `record`'s draws, in order (with several
    draws: labels and predictions of draw 0, then draw 1, ..., as the record's rows)."""
    correct = np.asarray(labels) == np.asarray(predictions)
    if correct.shape[0] != record.n:
        raise ValueError(f"{correct.shape[0]} predictions for a record of {record.n} images")
    ops = [op_breakdown(correct, record, j) for j in range(len(record.ops))]
    ops.sort(key=lambda o: -o.points)
    return Breakdown(preset=record.preset, seed=record.seed, n=int(correct.size),
                     accuracy=float(correct.mean()) if correct.size else float("nan"),
                     errors=int((~correct).sum()), ops=ops, draws=int(draws))


# ------------------------------------------------------------------------------------------------ the suite
def suite_ranking(robustness) -> list[tuple[str, float]]:
    """(corruption, points lost against clean, mean over severities), costliest first."""
    clean = robustness.clean_accuracy or 0.0
    drops = {name: 100.0 * (clean - mean) for name, mean in robustness.per_corruption_mean.items()}
    return sorted(drops.items(), key=lambda kv: -kv[1])


def corruption_errors(robustness, baseline) -> tuple[dict[str, float], float | None]:
    """({corruption: CE_c}, mCE) of a suite result against a baseline model's suite result (ImageNet-C's
    definition); corruptions or severities missing from the baseline, or with zero baseline error, are left out."""
    ce = {}
    for name, row in robustness.accuracy.items():
        base = baseline.accuracy.get(name) or {}
        common = [s for s in row if s in base]
        e_base = sum(1.0 - base[s] for s in common)
        if common and e_base > 0:
            ce[name] = sum(1.0 - row[s] for s in common) / e_base
    return ce, (float(np.mean(list(ce.values()))) if ce else None)


# ------------------------------------------------------------------------------------------------ two models
@dataclass
class PairedOp:
    op: str
    n: int                 # (image, draw) pairs that drew the op, the same for both models
    only_a: int            # of them, right by the first model only
    only_b: int            # right by the second model only
    p_value: float         # sign test over images (exact McNemar when there is one draw)


def paired_ops(correct_a, correct_b, record: DrawRecord, n_images: int | None = None) -> list[PairedOp]:
    """Per op, on the (image, draw) pairs that drew it: how many the first model gets right and the second not,
    and the reverse; sorted by the size of the difference. The p-value takes images as the units (the draws of
    one image are not independent): per image, the sign of (right by a only) - (right by b only) over its draws
    with the op, and an exact two-sided binomial test on the signs; with one draw that is exact McNemar."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n_images = n_images or len(a)
    out = []
    for j, op in enumerate(record.ops):
        sel = record.drew[:, j]
        wa, wb = a & ~b & sel, b & ~a & sel
        d = (wa.astype(np.int64) - wb).reshape(-1, n_images).sum(0)
        pos, neg = int((d > 0).sum()), int((d < 0).sum())
        p = binomtest(pos, pos + neg, 0.5).pvalue if pos + neg else 1.0
        out.append(PairedOp(op, int(sel.sum()), int(wa.sum()), int(wb.sum()), float(p)))
    out.sort(key=lambda r: -abs(r.only_a - r.only_b))
    return out


@dataclass
class PairedComparison:
    a: str
    b: str
    n: int
    ops: list[PairedOp]


MAX_PAIRS = 4


def pooled_correct(s) -> np.ndarray:
    """A score's per-(draw, image) correctness in its record's row order."""
    if s.draw_predictions is not None:
        return np.tile(s.labels, len(s.draw_predictions)) == np.asarray(s.draw_predictions).ravel()
    return np.asarray(s.labels) == np.asarray(s.predictions)


def paired_comparisons(named) -> list[PairedComparison]:
    """The first of `named` [(name, Score)] (the leaderboard's leader) against each other one, op by op, where
    both were scored on the same images with the same draws (their per-image records are here and agree)."""
    def usable(s):
        return s.record is not None and s.labels is not None and s.predictions is not None and s.ok

    named = [(n, s) for n, s in named if usable(s)]
    if len(named) < 2:
        return []
    (name_a, a), out = named[0], []
    for name_b, b in named[1:MAX_PAIRS + 1]:
        same = (b.record.seed == a.record.seed and b.record.ops == a.record.ops
                and np.array_equal(b.labels, a.labels) and np.array_equal(b.record.drew, a.record.drew))
        if same:
            out.append(PairedComparison(name_a, name_b, int(len(a.labels)),
                                        paired_ops(pooled_correct(a), pooled_correct(b), a.record,
                                                   n_images=len(a.labels))))
    return out


def paired_text(p: PairedComparison, k: int = 3) -> str:
    """The k ops where the two models differ most, as the terminal shows them."""
    lines = [f"{p.a} vs {p.b} on the same {p.n} images and draws, ops where they differ most "
             "(image-draw pairs right by one only; sign test over images):"]
    for o in p.ops[:k]:
        lines.append(f"  {o.op:<24} {p.a} only {o.only_a:>4} · {p.b} only {o.only_b:>4} · p {o.p_value:.3g}"
                     f"  ({o.n} drew it)")
    return "\n".join(lines)
