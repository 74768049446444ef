"""`score --explain N`: Grad-CAM of the misclassified images of the costliest ops, beside their clean originals.

For each of the score's top ops (`Breakdown.top`), up to N images of the first draw (the server emulation) that
drew the op and were misclassified; all of them explained in one fresh process of the zip (`explain.explain_zip`),
then one grid per op. A zip whose model cannot be explained (no keras.Model inside, a failing run) gives a
warning, never a failed score.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from subbench.errors import SubbenchError
from subbench.local_bench.results import OpExplanation, Score

TOP_OPS = 3


def _picks(score: Score, n: int) -> list[tuple[str, np.ndarray]]:
    """(op, indices into the scored set) for the top ops: misclassified on draw 0 and drew the op."""
    wrong = np.asarray(score.labels) != np.asarray(score.predictions)
    first = score.record.drew[:len(score.labels)]          # the record's first rows are draw 0's
    out = []
    for o in score.breakdown.top(TOP_OPS):
        idx = np.flatnonzero(wrong & first[:, score.record.column(o.op)])[:n]
        out.append((o.op, idx))
    return out


def explain_top_ops(score: Score, zip_path, n: int, python: str, profile,
                    echo: Callable[[str], None]) -> tuple[list[OpExplanation], list[str]]:
    """The grids of `score`'s top ops; (explanations, warnings)."""
    from subbench.local_bench.explain import explain_grid_png, explain_zip

    if n <= 0 or score.breakdown is None or score.record is None:
        return [], []
    picks = _picks(score, n)
    union = np.unique(np.concatenate([idx for _, idx in picks])) if picks else np.array([], int)
    if union.size == 0:
        return [], []
    echo(f"explaining {union.size} misclassified images of the {len(picks)} costliest ops (Grad-CAM)")
    try:
        expl = explain_zip(zip_path, score.images[union], score.labels[union], n=None, python=python,
                           profile=profile, echo=echo)
    except SubbenchError as exc:
        return [], [f"--explain: no heat maps ({exc.name}: {exc.cause})"]
    where = {int(i): j for j, i in enumerate(union)}
    out = []
    for op, idx in picks:
        rows = [where[int(i)] for i in idx]
        true, pred = score.labels[idx], np.asarray([expl.items[r].predicted for r in rows], int)
        png = explain_grid_png(score.clean_images[idx] if score.clean_images is not None else None,
                               score.images[idx], expl.heat[rows], true, pred, score.class_names) if rows else ""
        out.append(OpExplanation(op=op, indices=[int(i) for i in idx], true=[int(t) for t in true],
                                 predicted=[int(p) for p in pred], method=expl.method, layer=expl.layer,
                                 message="" if rows else "no misclassified image drew it", png=png or ""))
    return out, list(expl.warnings)
