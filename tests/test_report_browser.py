"""report.html opened in headless Chromium (Debian's `chromium`): it renders, every embedded image decodes,
nothing reaches the console, and the DOM shows the score.

How: Chromium runs with `--dump-dom` (the DOM after the load event) and `--enable-logging=stderr --v=0` (every
console message is logged as a `CONSOLE` line). A small probe script is put at the top of a copy of the report:
it records uncaught errors and failed resources and, on load, writes what it saw into a body attribute that
--dump-dom returns. The report itself has no script. A deliberately broken page proves the probe catches errors.
Skipped only where chromium is absent and CI is not set; in CI (CI=true) a missing chromium fails the test.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import write_zip
from subbench.local_bench import scorer
from subbench.local_bench.evaluate import ScoreOptions, evaluate, write_outputs
from subbench.local_bench.results import Score
from subbench.profile import load_profile
from test_runner import fixture_images
from test_score import ALMOST, npz

PROFILE = load_profile()
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || "error"));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var el = document.getElementById("score");
  document.body.setAttribute("data-check", JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length,
    errors: window.__errors,
    score: el ? el.textContent : null,
    status: (document.getElementById("status") || {}).textContent || null
  }));
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed (CI installs it: apt-get install -y chromium)")
    pytest.skip("chromium is not installed")


def open_in_chromium(page, tmp_path) -> tuple[dict, list[str]]:
    """(what the probe saw, console lines) for an HTML file."""
    probed = tmp_path / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--dump-dom", probed.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    match = re.search(r'<body[^>]*data-check="([^"]*)"', res.stdout)
    assert match, "the page did not finish loading: " + res.stdout[:500]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(match.group(1))), console


def test_probe_catches_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head></head><body><p id="score">0.5</p>'
                   '<img src="data:image/png;base64,AAAA"><script>console.error("boom"); undefined_fn();</script>'
                   "</body></html>")
    seen, console = open_in_chromium(bad, tmp_path)
    assert seen["broken"] == 1 and any("undefined_fn" in e for e in seen["errors"])
    assert any("boom" in line for line in console)


def test_report_renders_without_errors_and_shows_the_score(tmp_path):
    images, labels = fixture_images(48)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": ALMOST})
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, ScoreOptions(cross_cwd=False),
                  echo=lambda _: None)
    assert ev.status == "ok"
    out = write_outputs(ev, tmp_path / "out")
    seen, console = open_in_chromium(out / "report.html", tmp_path)
    assert console == []
    assert seen["errors"] == [] and seen["broken"] == 0
    assert seen["images"] == 3  # confusion matrix, per-class bars, misclassified grid
    assert seen["score"] == f"{ev.value:.4f}" == "0.8750"
    assert seen["status"] == "ok"


def test_report_with_clean_gap_and_robustness_sections(tmp_path):
    """The sections a --clean-too / suite run adds, filled from real metric computations, given as a scores.json
    of the first (unversioned) layout: Score.from_dict reads it."""
    images, labels = fixture_images(48)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(48) < 0.3, (labels + 1) % 8, labels)
    scores = scorer.classification_scores(labels, noisy, PROFILE.class_names)
    scores.update({"status": "ok", "leaderboard_key": "accuracy", "class_names": list(PROFILE.class_names),
                   "timing": {"stages": {"start": 0.2, "import": 1.0, "init": 2.0, "predict": 3.0},
                              "elapsed_s": 6.3, "time_limit_s": 600.0, "margin_s": 593.7, "per_image_ms": 62.5,
                              "projection": scorer.project_time({"start": 0.2, "import": 1.0, "init": 2.0,
                                                                 "predict": 3.0}, 48, 2500, 600.0)},
                   "scored_on": {"simulate_hidden": "an2dl", "n": 48, "part": "all", "data": "x.npz",
                                 "n_data": 48}, "message": None, "profile": "an2dl-2024"})
    clean = scorer.classification_scores(labels, labels, PROFILE.class_names)
    clean["gap"] = clean["accuracy"] - scores["accuracy"]
    scores["clean"] = clean
    acc = {(name, sev): float(((rng.random(48) < 0.1 * sev) == 0).mean())
           for name in ("gaussian_noise", "defocus_blur") for sev in range(1, 6)}
    scores["robustness"] = {**scorer.robustness_summary(1.0, acc), "n": 48}
    page = tmp_path / "report.html"
    score = Score.from_dict(scores)
    score.images, score.labels, score.predictions = images, labels, noisy
    assert score.clean.metrics.accuracy == 1.0 and score.robustness.n == 48
    page.write_text(score.page(), encoding="utf-8")
    seen, console = open_in_chromium(page, tmp_path)
    assert console == [] and seen["errors"] == [] and seen["broken"] == 0
    assert seen["images"] == 5 and seen["score"] == f"{scores['accuracy']:.4f}"
    assert "relative corruption error" in page.read_text()


def test_report_shows_the_breakdown_and_heat_maps_in_chromium(tmp_path):
    """A --simulate-hidden --explain report: the table of ops, the bar chart and one Grad-CAM grid per top op
    render and decode in the browser."""
    import subbench
    from conftest import tiny_model

    images, labels = fixture_images(40)
    zip_path = subbench.package(tiny_model(), tmp_path / "tiny.zip")
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="an2dl", draws=2, explain=2)
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, opts, echo=lambda _: None)
    assert ev.ok and len(ev.explanations) == 3
    out = write_outputs(ev, tmp_path / "out")
    seen, console = open_in_chromium(out / "report.html", tmp_path)
    assert console == [] and seen["errors"] == [] and seen["broken"] == 0
    # confusion matrix, per-class bars, misclassified grid, the ops' bar chart, three heat-map grids
    assert seen["images"] == 7
    page = (out / "report.html").read_text()
    assert 'id="breakdown"' in page and all(e.op in page for e in ev.explanations)
