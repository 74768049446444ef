"""The simulated hidden score broken down by op: the simulator's per-image record, the breakdown's figures, the
suite's mCE, two models paired op by op, and the whole path through `evaluate`, scores.json, the folder read
back, the terminal summary, report.html and `compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_zip
from subbench.corrupt import an2dl, apply_preset
from subbench.corrupt.record import an2dl_record, op_names
from subbench.errors import SubbenchError
from subbench.local_bench.breakdown import breakdown, corruption_errors, paired_ops, suite_ranking
from subbench.local_bench.evaluate import ScoreOptions, evaluate, write_outputs
from subbench.local_bench.results import Leaderboard, Robustness, Score, Status
from subbench.profile import load_profile
from test_runner import PERFECT, fixture_images
from test_score import ALMOST, npz

PROFILE = load_profile()


# ------------------------------------------------------------------------------------------------ the record
def test_record_rows_depend_only_on_seed_and_index():
    small, big = an2dl_record(10, 4), an2dl_record(300, 4)
    np.testing.assert_array_equal(small.drew, big.drew[:10])
    np.testing.assert_array_equal(small.magnitude, big.magnitude[:10])
    assert not np.array_equal(an2dl_record(10, 5).drew, small.drew)
    assert small.ops == op_names() and len(small.ops) == 18


def test_record_frequencies_follow_keras_cv_defaults():
    """keras_cv 0.9's policies, computed by hand: RandAugment applies each of 3 slots with rate 10/11 and picks
    one of 10 ops; AugMix runs 3 chains of depth 1..3, each step one of 8 ops."""
    r = an2dl_record(20000, 0)
    freq = dict(zip(r.ops, r.drew.mean(0)))
    ra = 1 - (1 - (10 / 11) / 10) ** 3
    no_op_in_chain = np.mean([(7 / 8) ** d for d in (1, 2, 3)])
    am = 1 - no_op_in_chain ** 3
    for op, f in freq.items():
        assert f == pytest.approx(am if op.startswith("augmix.") else ra, abs=0.012), op
    # magnitudes in the ops' own units and ranges
    col = r.column("randaugment.solarize")
    thr = r.magnitude[r.drew[:, col], col]
    assert 0 <= thr.min() and thr.max() <= 255 and abs(np.median(thr) - 127.5) < 8
    sev = r.magnitude[:, :8][r.drew[:, :8]]
    assert 0.01 <= sev.min() and sev.max() <= 0.3
    assert np.isnan(r.magnitude[:, r.column("randaugment.equalize")]).all()
    # AugMix's shares: the chains' weights times (1 - the original's), never above it
    w = r.weight[:, :8]
    assert (w >= 0).all() and (w.max(1) <= 1 - an2dl.draw(20000, 0).mix_weight + 1e-6).all()


def test_record_leaves_the_corrupted_bytes_unchanged():
    images, _ = fixture_images(16)
    before = apply_preset(images, preset="an2dl", seed=2, cache=False)
    rec = an2dl_record(len(images), 2)
    np.testing.assert_array_equal(apply_preset(images, preset="an2dl", seed=2, cache=False), before)
    assert set(rec.per_image(0)) == {rec.ops[j] for j in np.flatnonzero(rec.drew[0])}


# ------------------------------------------------------------------------------------------------ the figures
def test_breakdown_puts_the_op_that_breaks_the_model_first():
    rec = an2dl_record(3000, 1)
    j = rec.column("randaugment.solarize")
    labels = np.zeros(3000, int)
    preds = np.where(rec.drew[:, j], 1, 0)          # wrong exactly on the images that drew solarize
    b = breakdown(labels, preds, rec)
    top = b.ops[0]
    assert top.op == "randaugment.solarize" and b.top(1) == [top]
    assert top.accuracy_with == 0 and top.accuracy_without == 1 and top.errors_with == b.errors
    assert top.points == pytest.approx(100 * rec.drew[:, j].mean())
    assert top.ci95_with == (0.0, 0.0) and len(top.bins) == 3 and sum(x.n for x in top.bins) == top.n_with
    # an op independent of the errors costs about nothing
    other = next(o for o in b.ops if o.op == "augmix.rotate")
    assert abs(other.points) < 3
    with pytest.raises(ValueError):
        breakdown(labels[:10], preds[:10], rec)


def test_magnitude_bins_show_a_magnitude_effect():
    rec = an2dl_record(4000, 3)
    j = rec.column("randaugment.brightness")
    mag = np.nan_to_num(rec.magnitude[:, j])
    preds = np.where(rec.drew[:, j] & (mag > 80), 1, 0)  # only strong brightness breaks it
    bins = next(o for o in breakdown(np.zeros(4000, int), preds, rec).ops if o.op.endswith("brightness")).bins
    assert bins[0].accuracy == 1.0 and bins[-1].accuracy < 0.2 and bins[0].hi <= bins[-1].lo


def test_mce_against_a_baseline():
    model = Robustness(Status.ok, clean_accuracy=0.9, accuracy={"fog": {"1": 0.8, "2": 0.4},
                                                                "blur": {"1": 0.7, "2": 0.7}},
                       per_corruption_mean={"blur": 0.7, "fog": 0.6})
    base = Robustness(Status.ok, accuracy={"fog": {"1": 0.6, "2": 0.2}, "blur": {"1": 0.7, "2": 0.7},
                                           "snow": {"1": 0.5}})
    ce, mce = corruption_errors(model, base)
    assert ce == {"fog": pytest.approx(0.8 / 1.2), "blur": pytest.approx(1.0)}
    assert mce == pytest.approx((0.8 / 1.2 + 1.0) / 2)
    assert suite_ranking(model) == [("fog", pytest.approx(30.0)), ("blur", pytest.approx(20.0))]


def test_paired_ops_counts_and_exact_test():
    rec = an2dl_record(2000, 0)
    j = rec.column("augmix.solarize")
    a = np.ones(2000, bool)
    b = ~rec.drew[:, j]                                  # b fails exactly on solarize
    rows = paired_ops(a, b, rec)
    top = rows[0]
    assert top.op == "augmix.solarize" and top.only_a == rec.drew[:, j].sum() and top.only_b == 0
    assert top.p_value < 1e-10
    assert all(r.only_b == 0 for r in rows)


# ------------------------------------------------------------------------------------------------ end to end
def _scored(tmp_path, name, src, images, labels, **kw):
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="an2dl", seed=1, **kw)
    s = evaluate(write_zip(tmp_path / f"{name}.zip", {"model.py": src}), npz(tmp_path, images, labels),
                 PROFILE, opts, echo=lambda _: None)
    write_outputs(s, tmp_path / name)
    return s


def test_score_carries_the_breakdown_through_files_report_and_compare(tmp_path):
    from subbench.cli.score import summary_lines

    images, labels = fixture_images(48)
    s = _scored(tmp_path, "perfect", PERFECT, images, labels)
    b = s.breakdown
    k = s.draws.k
    assert k == 8 and s.draw_predictions.shape == (8, 48)      # auto: a fast model gets the most draws
    assert b is not None and b.n == 48 * k and b.draws == k and b.errors == round(48 * k * (1 - s.value))
    assert [o.points for o in b.ops] == sorted((o.points for o in b.ops), reverse=True)
    data = json.loads((tmp_path / "perfect" / "scores.json").read_text())
    assert data["breakdown"]["ops"][0]["op"] == b.ops[0].op
    back = Score.load(tmp_path / "perfect")
    assert back.breakdown == b and back.record is not None
    np.testing.assert_array_equal(back.record.drew[:48], an2dl_record(48, 1).drew)
    np.testing.assert_array_equal(back.record.drew[48:96], an2dl_record(48, 2).drew)
    np.testing.assert_array_equal(back.draw_predictions, s.draw_predictions)
    text = "\n".join(summary_lines(s))
    assert "costliest ops" in text and b.top(1)[0].op in text
    page = (tmp_path / "perfect" / "report.html").read_text()
    assert 'id="breakdown"' in page and b.ops[0].op in page
    _scored(tmp_path, "almost", ALMOST, images, labels)
    board = Leaderboard.from_scores([(n, Score.load(tmp_path / n)) for n in ("perfect", "almost")])
    assert len(board.paired) == 1 and board.paired[0].n == 48
    assert "same 48 images" in str(board) and 'class="paired"' in board.html()
    # two score folders of the same name (runs/a/result, runs/b/result): told apart, each paired as itself
    import shutil

    import subbench

    for run, name in (("a", "perfect"), ("b", "almost")):
        shutil.copytree(tmp_path / name, tmp_path / "runs" / run / "result")
    same_name = subbench.compare([tmp_path / "runs" / "a" / "result", tmp_path / "runs" / "b" / "result"])
    assert [r.name for r in same_name.rows] == [{"perfect": "a/result", "almost": "b/result"}[r.name]
                                                for r in board.rows]
    assert [(o.only_a, o.only_b) for o in same_name.paired[0].ops] == [(o.only_a, o.only_b)
                                                                        for o in board.paired[0].ops]
    assert sum(o.only_a + o.only_b for o in same_name.paired[0].ops) > 0
    # one draw: the breakdown of exactly the server emulation's predictions
    one = _scored(tmp_path, "one", PERFECT, images, labels, draws=1)
    assert one.draws.k == 1 and one.breakdown.n == 48 and one.value == (one.predictions == labels).mean()


def test_no_breakdown_without_the_an2dl_preset(tmp_path):
    images, labels = fixture_images(16)
    opts = ScoreOptions(cross_cwd=False)
    s = evaluate(write_zip(tmp_path / "p.zip", {"model.py": PERFECT}), npz(tmp_path, images, labels), PROFILE,
                 opts, echo=lambda _: None)
    assert s.breakdown is None and s.record is None


def test_suite_ranking_and_mce_baseline(tmp_path):
    images, labels = fixture_images(16)
    data = npz(tmp_path, images, labels)
    base_opts = ScoreOptions(cross_cwd=False, simulate_hidden="suite", suite_size=16)
    base = evaluate(write_zip(tmp_path / "a.zip", {"model.py": ALMOST}), data, PROFILE, base_opts,
                    echo=lambda _: None)
    write_outputs(base, tmp_path / "base")
    assert list(base.robustness.drop_points) == [k for k, _ in suite_ranking(base.robustness)]
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="suite", suite_size=16, mce_baseline=str(tmp_path / "base"))
    s = evaluate(write_zip(tmp_path / "p.zip", {"model.py": PERFECT}), data, PROFILE, opts, echo=lambda _: None)
    ce, mce = corruption_errors(s.robustness, base.robustness)
    assert s.robustness.mce == pytest.approx(mce) and s.robustness.corruption_error == pytest.approx(ce)
    assert 'id="mce"' in s.html()
    with pytest.raises(SubbenchError, match="needs --simulate-hidden=suite"):
        evaluate(tmp_path / "p.zip", data, PROFILE, ScoreOptions(mce_baseline=str(tmp_path / "base")))
    plain = evaluate(tmp_path / "p.zip", data, PROFILE, ScoreOptions(cross_cwd=False), echo=lambda _: None)
    write_outputs(plain, tmp_path / "plain")
    with pytest.raises(SubbenchError, match="no robustness suite"):
        evaluate(tmp_path / "p.zip", data, PROFILE,
                 ScoreOptions(simulate_hidden="suite", mce_baseline=str(tmp_path / "plain")))


# ------------------------------------------------------------------------------------------------ --explain
@pytest.fixture(scope="module")
def keras_zip(tmp_path_factory):
    import subbench
    from conftest import tiny_model

    out = tmp_path_factory.mktemp("explain") / "tiny.zip"
    return subbench.package(tiny_model(), out)


def test_explain_draws_heat_maps_of_the_costliest_ops(tmp_path, keras_zip):
    images, labels = fixture_images(40)
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="an2dl", draws=1, explain=2)
    s = evaluate(keras_zip, npz(tmp_path, images, labels), PROFILE, opts, echo=lambda _: None)
    assert s.ok and len(s.explanations) == 3, s.warnings
    top = [o.op for o in s.breakdown.top(3)]
    for e in s.explanations:
        assert e.op in top and 1 <= len(e.indices) <= 2 and e.method == "gradcam" and e.png.startswith("data:image")
        j = s.record.column(e.op)
        for i, t in zip(e.indices, e.true):          # misclassified images that drew the op, true labels kept
            assert s.record.drew[i, j] and s.predictions[i] != labels[i] and t == labels[i]
    page = s.page()
    assert page.count("heat maps for") == 3
    saved = Score.from_dict(json.loads(s.to_json()))
    assert [e.indices for e in saved.explanations] == [e.indices for e in s.explanations]
    with pytest.raises(SubbenchError, match="--explain needs"):
        evaluate(keras_zip, npz(tmp_path, images, labels), PROFILE, ScoreOptions(explain=2))


def test_explain_of_a_zip_without_a_keras_model_is_a_warning(tmp_path):
    images, labels = fixture_images(24)
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="an2dl", draws=1, explain=2)
    s = evaluate(write_zip(tmp_path / "p.zip", {"model.py": PERFECT}), npz(tmp_path, images, labels), PROFILE,
                 opts, echo=lambda _: None)
    assert s.ok and s.explanations == [] and any(w.startswith("--explain: no heat maps") for w in s.warnings)
