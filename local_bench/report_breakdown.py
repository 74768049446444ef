"""The HTML views of why a score falls: the simulated hidden score by op (table + bar chart), the suite's sorted
corruptions and mCE, the Grad-CAM grids of the costliest ops, and two models compared op by op.

Same conventions as `report` (self-contained fragments, figures as base64 PNGs drawn with matplotlib's object API).
"""

from __future__ import annotations

import html

import numpy as np

from subbench.local_bench.report import _fmt, _img, _png

TABLE_OPS = 18        # every op of the an2dl preset


def _ci(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "–"


def ops_png(b, k: int = 10) -> str:
    """Horizontal bars: accuracy points each op costs, costliest on top."""
    from matplotlib.figure import Figure

    ops = b.ops[:k][::-1]
    fig = Figure(figsize=(7.0, 0.45 * len(ops) + 1.0))
    ax = fig.add_subplot()
    y = np.arange(len(ops))
    pts = [o.points for o in ops]
    ax.barh(y, pts, color=["#c62828" if p > 0 else "#90a4ae" for p in pts])
    ax.set_yticks(y, [o.op for o in ops], fontsize=8)
    ax.set_xlabel("accuracy points attributable (excess errors over images without the op)")
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_title("what costs the simulated hidden score")
    return _png(fig)


def _bins_text(o) -> str:
    if not o.bins:
        return "–"
    return "<br>".join(f"{b.lo:.3g}–{b.hi:.3g}: {b.accuracy:.3f} (n {b.n})" for b in o.bins)


def breakdown_section(b) -> str:
    rows = []
    for o in b.ops[:TABLE_OPS]:
        rows.append(f"<tr><td>{html.escape(o.op)}</td><td>{o.points:+.1f}</td><td>{o.errors_with}</td>"
                    f"<td>{_fmt(o.accuracy_with, 3)}</td><td>{_ci(o.ci95_with)}</td><td>{o.n_with}</td>"
                    f"<td>{_fmt(o.accuracy_without, 3)}</td><td>{_ci(o.ci95_without)}</td><td>{o.n_without}</td>"
                    f"<td>{html.escape(o.magnitude_unit or '–')}</td><td>{_bins_text(o)}</td></tr>")
    head = ("<tr><th>op</th><th>points</th><th>errors with</th><th>accuracy with</th><th>95%</th><th>n</th>"
            "<th>accuracy without</th><th>95%</th><th>n</th><th>magnitude</th><th>accuracy by magnitude</th></tr>")
    return ("<h2>What breaks it: the simulated hidden score by op</h2>"
            f"<p>{b.errors} errors on {b.n // b.draws} images"
            + (f" x {b.draws} draws" if b.draws > 1 else "") + f" ({b.preset}, seeds from {b.seed}). "
            "Each image draws several ops; "
            f"<small>{html.escape(b.definition)}</small></p>"
            + _img(ops_png(b), "accuracy points by op")
            + f'<table id="breakdown">{head}{"".join(rows)}</table>')


def suite_ranking_section(rob) -> str:
    if not rob.drop_points:
        return ""
    from subbench.local_bench.breakdown import MCE_DEFINITION

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:+.1f}</td>"
                   f"<td>{_fmt(rob.corruption_error.get(k), 3)}</td></tr>" for k, v in rob.drop_points.items())
    mce = (f"<p>mCE <b id=\"mce\">{rob.mce:.3f}</b> against {html.escape(str(rob.mce_baseline))} (below 1: more "
           f"robust than the baseline).<br><small>{html.escape(MCE_DEFINITION)}</small></p>"
           if rob.mce is not None else "<p>mCE: give a baseline model's suite folder (--mce-baseline).</p>")
    return ("<h3>Corruptions, costliest first</h3>" + mce
            + '<table id="suite-ranking"><tr><th>corruption</th><th>points lost (mean over severities)</th>'
              f"<th>CE vs baseline</th></tr>{rows}</table>")


def explanations_section(explanations) -> str:
    if not explanations:
        return ""
    parts = ["<h2>What the model looked at: Grad-CAM of misclassified images of the costliest ops</h2>"]
    for e in explanations:
        parts.append(f"<h3>{html.escape(e.op)}: {len(e.indices)} misclassified images "
                     f"({html.escape(e.method)}{', layer ' + html.escape(e.layer) if e.layer else ''})</h3>")
        parts.append(_img(e.png, f"heat maps for {e.op}") if e.png else f"<p>{html.escape(e.message)}</p>")
    return "".join(parts)


def paired_section(name_a: str, name_b: str, paired) -> str:
    rows = "".join(f"<tr><td>{html.escape(p.op)}</td><td>{p.n}</td><td>{p.only_a}</td><td>{p.only_b}</td>"
                   f"<td>{p.p_value:.3g}</td></tr>" for p in paired)
    return (f"<h3>{html.escape(name_a)} vs {html.escape(name_b)}, op by op (same images, same draws)</h3>"
            f'<table class="paired"><tr><th>op</th><th>image-draw pairs</th><th>right by {html.escape(name_a)} only</th>'
            f"<th>right by {html.escape(name_b)} only</th><th>p (sign test over images)</th></tr>{rows}</table>")
