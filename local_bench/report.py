"""The HTML views of the results: one self-contained fragment per result (figures embedded as base64 PNGs, CSS
scoped under `.sbr`, no script, no network), shown inline by Jupyter/Colab through `_repr_html_` and wrapped into
report.html by `save`.

A score's view is built from the typed `Score` (plus, when it holds them, the scored images and predictions for
the grid of misclassified images); its words and the formatting of its numbers live here only. Figures are drawn with matplotlib's object API (`Figure` + Agg canvas), which needs no
display and no global pyplot state.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from subbench.results import CSS  # one stylesheet for every result's view

MAX_GRID = 40
GRID_COLS = 8


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(src: str, alt: str) -> str:
    return f'<img class="fig" src="{src}" alt="{html.escape(alt)}">'


def confusion_png(cm, class_names) -> str:
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.6 + 0.7 * k))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
    ax.set_title("confusion matrix (rows: true, columns: predicted)")
    return _png(fig)


def per_class_png(per_class: dict) -> str:
    from matplotlib.figure import Figure

    names = list(per_class)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 1.0 * len(names)), 3.2))
    ax = fig.add_subplot()
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [getattr(per_class[n], key) for n in names], width=0.27, label=key)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.25)
    ax.legend(loc="upper right", ncols=3)
    ax.set_title("per-class precision, recall, F1")
    return _png(fig)


def grid_png(images, y_true, y_pred, class_names, max_items: int = MAX_GRID) -> str | None:
    from matplotlib.figure import Figure

    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:max_items]
    if len(wrong) == 0:
        return None
    cols = min(GRID_COLS, len(wrong))
    rows = int(np.ceil(len(wrong) / cols))
    fig = Figure(figsize=(1.5 * cols, 1.75 * rows))
    for j, i in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, j + 1)
        img = images[i]
        ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
        ax.set_title(f"T {class_names[int(y_true[i])][:12]}\nP {class_names[int(y_pred[i])][:12]}", fontsize=7)
        ax.axis("off")
    return _png(fig)


def clean_vs_corrupted_png(clean, corrupted, class_names) -> str:
    """Bars of accuracy and per-class recall, clean against corrupted (two `Metrics`)."""
    from matplotlib.figure import Figure

    names = ["overall"] + list(class_names)
    a = [clean.accuracy] + [clean.per_class[n].recall for n in class_names]
    b = [corrupted.accuracy] + [corrupted.per_class[n].recall for n in class_names]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.9 * len(names)), 3.2))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, a, width=0.4, label="clean")
    ax.bar(x + 0.2, b, width=0.4, label="corrupted")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("accuracy / recall")
    ax.legend(loc="upper right", ncols=2)
    ax.set_title("clean vs simulated hidden set")
    return _png(fig)


def robustness_png(rob) -> str:
    from matplotlib.figure import Figure

    names = list(rob.accuracy)
    sevs = [str(s) for s in rob.severities]
    mat = np.array([[rob.accuracy[n].get(s, np.nan) for s in sevs] for n in names])
    fig = Figure(figsize=(1.2 + 0.8 * len(sevs), 0.6 + 0.35 * len(names)))
    ax = fig.add_subplot()
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(sevs)), sevs)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    for (r, c), v in np.ndenumerate(mat):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_title("accuracy per corruption and severity")
    return _png(fig)


def _fmt(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _time_bar(timing) -> str:
    stages = timing.stages
    limit = timing.time_limit_s
    proj = timing.projection
    projected = proj.projected_s if proj else None
    total = max([limit or 0, projected or 0, timing.elapsed_s or 0, 1e-9])
    segs, left = [], 0.0
    for name in ("start", "import", "init", "predict"):
        if name in stages:
            w = 100.0 * stages[name] / total
            segs.append(f'<div class="seg {name}" style="left:{left:.3f}%;width:{w:.3f}%" '
                        f'title="{name} {stages[name]:.2f} s"></div>')
            left += w
    if projected and projected * 100.0 / total > left:
        segs.append(f'<div class="seg projected" style="left:{left:.3f}%;width:{projected * 100.0 / total - left:.3f}%"'
                    f' title="projected for {proj.hidden_size} images"></div>')
    if limit:
        segs.append(f'<div style="position:absolute;left:calc({100.0 * limit / total:.3f}% - 2px);top:0;height:100%;'
                    f'width:2px;background:#c62828" title="time limit {limit:g} s"></div>')
    legend = "".join(f'<span><i class="seg {n}" style="position:static"></i>{n} {stages[n]:.2f} s</span>'
                     for n in ("start", "import", "init", "predict") if n in stages)
    if projected:
        legend += (f'<span><i class="seg projected" style="position:static"></i>projected for '
                   f'{proj.hidden_size} images: {projected:.1f} s</span>')
    if limit:
        legend += f'<span><i style="background:#c62828"></i>limit {limit:g} s</span>'
    return f'<div class="bar" id="time-bar">{"".join(segs)}</div><div class="legend">{legend}</div>'


def _kv_table(rows) -> str:
    return ("<table>" + "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td></tr>" for a, b in rows)
            + "</table>")


def _timing_section(score) -> str:
    timing = score.timing
    rows = [("elapsed (one wall clock, process start to exit)", f"{timing.elapsed_s:.2f} s")]
    if timing.time_limit_s:
        rows.append(("time limit", f"{timing.time_limit_s:g} s"))
        rows.append(("margin (limit − elapsed)", f"{timing.margin_s or 0:.2f} s"))
    if timing.per_image_ms is not None:
        rows.append(("per image (predict)", f"{timing.per_image_ms:.3f} ms"))
    proj = timing.projection
    if proj:
        rows.append((f"projected for {proj.hidden_size} images on a server {proj.server_speed:g}× this "
                     "machine's speed", f"{proj.projected_s:.1f} s"
                     + (f" (margin {proj.margin_s:.1f} s)" if proj.margin_s is not None else "")))
    mem = score.peak_memory_mb
    rows.append(("peak resident memory", f"{mem:.0f} MB" if mem else "–"))
    if score.memory_limit_mb:
        rows.append(("memory limit", f"{score.memory_limit_mb:g} MB"))
    return "<h2>Time budget</h2>" + _time_bar(timing) + _kv_table(rows)


def _metrics_section(score) -> str:
    m = score.metrics
    parts = ["<h2>Confusion matrix</h2>" + _img(confusion_png(m.confusion_matrix, score.class_names),
                                                "confusion matrix"),
             "<h2>Per class</h2>" + _img(per_class_png(m.per_class), "per-class bars")]
    table = ["<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    for name, c in m.per_class.items():
        table.append(f"<tr><td>{html.escape(name)}</td><td>{c.precision:.3f}</td><td>{c.recall:.3f}</td>"
                     f"<td>{c.f1:.3f}</td><td>{c.support}</td></tr>")
    parts.append("".join(table) + "</table>")
    if score.images is not None and score.labels is not None and score.predictions is not None:
        grid = grid_png(score.images, score.labels, score.predictions, score.class_names)
        n_wrong = int((np.asarray(score.labels) != np.asarray(score.predictions)).sum())
        parts.append(f"<h2>Misclassified images ({n_wrong}, first {min(n_wrong, MAX_GRID)} shown; "
                     "T true, P predicted)</h2>")
        parts.append(_img(grid, "misclassified images") if grid else "<p>None: every image is right.</p>")
    return "".join(parts)


def _clean_section(score) -> str:
    clean = score.clean
    if clean.metrics is None:
        return (f'<h2>Clean vs simulated hidden set</h2><div class="warn">the clean run failed: '
                f'{html.escape(str(clean.status))} {html.escape(clean.message)}</div>')
    return ("<h2>Clean vs simulated hidden set</h2>"
            f"<p>clean accuracy <b id=\"clean\">{clean.metrics.accuracy:.4f}</b>, corrupted "
            f"({html.escape(str(score.scored_on.simulate_hidden))}) <b>{score.metrics.accuracy:.4f}</b>, gap "
            f"<b id=\"gap\">{clean.gap:+.4f}</b></p>"
            + _img(clean_vs_corrupted_png(clean.metrics, score.metrics, score.class_names), "clean vs corrupted"))


def _robustness_section(rob) -> str:
    from subbench.local_bench.scorer import RCE_FORMULA

    if not _is_ok(rob.status):
        return (f'<h2>Robustness suite</h2><div class="warn">the suite run failed: {html.escape(str(rob.status))} '
                f'{html.escape(rob.message)}</div>')
    rce = rob.relative_corruption_error
    return ("<h2>Robustness suite</h2>"
            f"<p>clean accuracy {rob.clean_accuracy:.4f}; mean corruption accuracy (mCA) "
            f"<b>{rob.mean_corruption_accuracy:.4f}</b>; relative corruption error (rCE) "
            f"<b>{'undefined' if rce is None else f'{rce:.3f}'}</b>, on {rob.n} images per "
            f"corruption and severity.<br><small>{html.escape(RCE_FORMULA)}</small></p>"
            + _img(robustness_png(rob), "robustness heatmap") + _breakdown_views().suite_ranking_section(rob))


def _breakdown_views():
    """The breakdown views (report_breakdown imports this module's helpers, so it is imported late)."""
    from subbench.local_bench import report_breakdown

    return report_breakdown


def _is_ok(status) -> bool:
    return str(status) == "ok"


def _subtitle(score) -> str:
    so = score.scored_on
    part = f"held-out split (from {so.split_source})" if so.part == "holdout" else "every image"
    text = f"profile {score.profile} · {score.created} · {so.n} images of {so.data}, {part}"
    return text + (f" · simulated hidden set ({so.simulate_hidden}, seed {so.seed})" if so.simulate_hidden else "")


def render_fragment(score) -> str:
    """The report of a `Score` as one self-contained <div> (what report.html and a notebook show)."""
    ok = _is_ok(score.status)
    key = score.leaderboard_key
    parts = [f'<div class="sbr"><style>{CSS}</style>',
             f"<h1>subbench score: {html.escape(score.name)}</h1><p class=\"sub\">{html.escape(_subtitle(score))}</p>"]
    score_text = f"{score.value:.4f}" if isinstance(score.value, (int, float)) else "–"
    ci = score.metrics.accuracy_ci95 if score.metrics else None
    ci_text = f"95% interval {ci[0]:.4f} – {ci[1]:.4f} (bootstrap, n = {score.n})" if ok and ci else ""
    parts.append(f'<div class="headline"><div><div class="sub">{html.escape(key)}</div>'
                 f'<p class="score" id="score">{score_text}</p><div class="ci" id="ci">{ci_text}</div></div>'
                 f'<div><div class="sub">status</div><span class="status {"ok" if ok else "bad"}" id="status">'
                 f'{html.escape(str(score.status))}</span></div>')
    if ok:
        parts.append(f'<div><div class="sub">balanced accuracy</div><b>{_fmt(score.metrics.balanced_accuracy)}</b>'
                     f'</div><div><div class="sub">macro F1</div><b>{_fmt(score.metrics.macro_f1)}</b></div>')
        if score.clean and score.clean.metrics:
            parts.append(f'<div><div class="sub">clean</div><b>{_fmt(score.clean.metrics.accuracy)}</b></div>')
    parts.append("</div>")
    if not ok:
        parts.append(f'<div class="warn"><b>{html.escape(str(score.status))}</b>: {html.escape(score.message)}</div>')
    for w in score.warnings:
        parts.append(f'<div class="warn{" loud" if w.startswith("LEAKAGE") else ""}">{html.escape(w)}</div>')
    parts.append(_timing_section(score))
    if ok and score.metrics:
        parts.append(_metrics_section(score))
    if ok and score.clean:
        parts.append(_clean_section(score))
    if ok and score.breakdown:
        parts.append(_breakdown_views().breakdown_section(score.breakdown))
        parts.append(_breakdown_views().explanations_section(score.explanations))
    if score.robustness:
        parts.append(_robustness_section(score.robustness))
    if score.stderr_tail and not ok:
        parts.append("<h2>Last lines of the submission's stderr</h2>")
        parts.append(f"<pre>{html.escape(score.stderr_tail)}</pre>")
    parts.append('<h2>Environment and data</h2><table class="kv">')
    so = score.to_dict()["scored_on"]
    for k, v in list(score.environment.items()) + [(f"data: {k}", v) for k, v in so.items()]:
        parts.append(f"<tr><td>{html.escape(str(k))}</td><td>"
                     f"{html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</td></tr>")
    parts.append("</table></div>")
    return "\n".join(parts)


def render_leaderboard(board, title: str = "Local leaderboard") -> str:
    """A leaderboard (`Leaderboard`, `BundleLeaderboard`: `.table()` and `.warning`) as a scoped HTML table."""
    rows = board.table()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    warn = f'<div class="warn">{html.escape(board.warning)}</div>' if board.warning else ""
    paired = "".join(_breakdown_views().paired_section(p.a, p.b, p.ops) for p in getattr(board, "paired", []))
    return (f'<div class="sbr"><style>{CSS}</style><h2>{html.escape(title)}</h2>{warn}'
            f'<table id="leaderboard"><tr>{head}</tr>{body}</table>{paired}</div>')


def render_check(report) -> str:
    """A `CheckReport` as a scoped HTML list of checks, failures with their cause and hint."""
    items = []
    for r in report.results:
        hint = f"<br><i>hint: {html.escape(r.hint)}</i>" if r.hint else ""
        if r.ok and r.details.get("warning"):   # passed, with what is odd (an edited zip: the run decides)
            items.append(f'<tr><td class="warned">WARN</td><td>{html.escape(r.name)}</td>'
                         f"<td>{html.escape(r.cause)}{hint}</td></tr>")
        elif r.ok:
            items.append(f'<tr><td class="pass">PASS</td><td>{html.escape(r.name)}</td><td></td></tr>')
        else:
            items.append(f'<tr><td class="fail">FAIL</td><td>{html.escape(r.name)}</td>'
                         f"<td>{html.escape(r.cause)}{hint}</td></tr>")
    warned = sum(1 for r in report.results if r.ok and r.details.get("warning"))
    verdict = "checks failed" if not report.ok else "all checks passed" + (
        f", {warned} warning{'s' if warned > 1 else ''}" if warned else "")
    return (f'<div class="sbr"><style>{CSS}</style><h2>subbench check: {html.escape(str(report.zip_path))}</h2>'
            f'<p class="sub">{report.env} environment: {html.escape(report.python)}</p>'
            f'<p class="{"pass" if report.ok else "fail"}" id="verdict">{verdict}</p>'
            f'<table class="kv">{"".join(items)}</table></div>')
