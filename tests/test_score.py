"""Scoring: metrics against hand computations, data selection from the manifest's split (leakage, mismatch),
and `evaluate` end to end on real zips (in-process; the CLI itself is in test_score_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_zip
from subbench.data.split import split_document, write_split
from subbench.datasets import load_dataset
from subbench.errors import DataError, SubbenchError
from subbench.local_bench import scorer
from subbench.corrupt import apply_preset, iter_suite
from subbench.local_bench.evaluate import ScoreOptions, evaluate, write_outputs
from subbench.local_bench.results import STATUS_EXIT_CODES, Leaderboard, ResultNotFoundError, Score, Status
from subbench.profile import load_profile
from test_runner import PERFECT, fixture_images

PROFILE = load_profile()
# Perfect except that class 3 is always called 4: on fixture_images (labels k % 8) 1 image in 8 is wrong.
ALMOST = PERFECT.replace("return X[:, 0, 0, 0].astype(np.int64) % 8",
                         "y = X[:, 0, 0, 0].astype(np.int64) % 8\n        y[y == 3] = 4\n        return y")


def npz(tmp_path, images, labels, name="data.npz"):
    path = tmp_path / name
    np.savez(path, images=images, labels=labels)
    return path


FAST = ScoreOptions(cross_cwd=False)


# ------------------------------------------------------------------------------------------------- metrics
def test_classification_scores_match_hand_computation():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2, 0, 2])
    s = scorer.classification_scores(y_true, y_pred, ["a", "b", "c"])
    assert s["accuracy"] == 6 / 8 and s["correct"] == 6 and s["n"] == 8
    # recalls 1/2, 2/2, 3/4 -> balanced accuracy is their mean
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.75) / 3)
    assert s["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert s["per_class"]["c"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7), "support": 4}
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (1 + 2 / 3), 6 / 7]
    assert s["macro_f1"] == pytest.approx(np.mean(f1))
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 3]]
    lo, hi = s["accuracy_ci95"]
    assert lo < 0.75 < hi
    json.dumps(s)


def test_bootstrap_interval_matches_index_resampling():
    """The binomial draw is the distribution of index resampling: both give the same interval (to MC noise)."""
    rng = np.random.default_rng(1)
    correct = rng.random(500) < 0.83
    lo, hi = scorer.accuracy_interval(int(correct.sum()), len(correct), n_boot=4000, seed=3)
    idx = rng.integers(0, len(correct), (4000, len(correct)))
    ref_lo, ref_hi = np.quantile(correct[idx].mean(1), [0.025, 0.975])
    assert abs(lo - ref_lo) < 0.006 and abs(hi - ref_hi) < 0.006
    assert scorer.accuracy_interval(415, 500, seed=3) == scorer.accuracy_interval(415, 500, seed=3)
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.83 * 0.17 / 500), abs=0.01)


def test_robustness_summary_formula():
    acc = {("noise", 1): 0.9, ("noise", 2): 0.8, ("blur", 1): 0.7, ("blur", 2): 0.6}
    r = scorer.robustness_summary(0.95, acc)
    assert r["mean_corruption_accuracy"] == pytest.approx(0.75)
    assert r["relative_corruption_error"] == pytest.approx((0.25 - 0.05) / 0.05)
    assert r["per_corruption_mean"] == {"noise": pytest.approx(0.85), "blur": pytest.approx(0.65)}
    assert r["accuracy"]["blur"] == {"1": 0.7, "2": 0.6}
    assert scorer.robustness_summary(1.0, acc)["relative_corruption_error"] is None


def test_projection():
    p = scorer.project_time({"start": 1, "import": 2, "init": 3, "predict": 10}, 100, 2500, 600, server_speed=2)
    assert p["per_image_ms"] == pytest.approx(100)
    assert p["projected_local_s"] == pytest.approx(6 + 250)
    assert p["projected_s"] == pytest.approx(128) and p["fits"] and p["margin_s"] == pytest.approx(472)
    assert not scorer.project_time({"predict": 10}, 10, 2500, 600)["fits"]


# ------------------------------------------------------------------------------------------------- evaluate
def test_good_zip_scores_the_expected_accuracy(tmp_path):
    images, labels = fixture_images(64)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": ALMOST})
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, FAST, echo=lambda _: None)
    assert ev.status is Status.ok and ev.ok and ev.exit_code == 0
    m = ev.metrics
    assert ev.value == m.accuracy == pytest.approx(7 / 8) and ev.n == 64 and m.correct == 56
    assert m.per_class["immature granulocyte"].recall == 0.0
    assert m.per_class["lymphocyte"].precision == pytest.approx(0.5)
    assert m.confusion_matrix[3][4] == 8
    t = ev.timing
    assert set(t.stages) == {"start", "import", "init", "predict"}
    assert t.margin_s == pytest.approx(PROFILE.time_limit_s - t.elapsed_s)
    assert t.projection.hidden_size == PROFILE.hidden_size
    assert ev.environment["loaded_numpy"] == np.__version__ and ev.environment["cwd_mode"] == PROFILE.cwd
    assert ev.scored_on.part == "all" and not ev.scored_on.leakage.checked

    s = ev.to_dict()
    assert list(s)[:2] == ["accuracy", "schema"]  # the leaderboard key first, like a Codabench scores.json
    assert s["schema"] == 3 and s["status"] == "ok" and s["metrics"]["per_class"]["lymphocyte"]["support"] == 8
    assert "title" not in s and "subtitle" not in s  # no display strings in the data
    out = write_outputs(ev, tmp_path / "out")
    written = json.loads((out / "scores.json").read_text())
    assert written["accuracy"] == pytest.approx(7 / 8)
    back = Score.load(out)
    assert back.status is Status.ok and back.metrics == ev.metrics and back.timing == ev.timing
    assert back.to_dict() == s
    assert np.load(out / "predictions.npy").tolist() == ev.predictions.tolist()
    html = (out / "report.html").read_text()
    assert 'id="score">0.8750<' in html and "data:image/png;base64," in html
    with pytest.raises(SubbenchError):
        write_outputs(ev, out)  # exists, no --force
    write_outputs(ev, out, force=True)


def test_failed_run_is_a_status_not_an_error(tmp_path):
    images, labels = fixture_images(16)
    zip_path = write_zip(tmp_path / "bad.zip", {"model.py": "import numpy as np\nclass Model:\n    def predict(self, X):"
                                                            "\n        return np.eye(8)[X[:, 0, 0, 0] % 8]\n"})
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, FAST, echo=lambda _: None)
    assert ev.status is Status.Output_Shape_Error and ev.value is None and ev.metrics is None
    assert ev.exit_code == STATUS_EXIT_CODES["Output_Shape_Error"] == 14
    out = write_outputs(ev, tmp_path / "out")
    html = (out / "report.html").read_text()
    assert "Output_Shape_Error" in html and "argmax" in html


def _manifest(split: dict) -> str:
    return json.dumps({"format": 1, "profile": PROFILE.name, "split": split})


def test_manifest_split_scores_the_holdout_and_flags_leakage(tmp_path):
    images, labels = fixture_images(48)
    # The split depends on the labels only: find a held-out image and a training image of its class, then make
    # the held-out one a copy of the training one (leakage), and split the data written to disk.
    first = split_document(load_dataset(npz(tmp_path, images, labels), PROFILE), 0.25, seed=0)
    h = first["holdout"][0]
    t = next(i for i in first["train"] if labels[i] == labels[h])
    images[h] = images[t]
    data = npz(tmp_path, images, labels)
    split = split_document(load_dataset(data, PROFILE), 0.25, seed=0, data_path=str(data))
    assert split["holdout"] == first["holdout"]
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT, "manifest.json": _manifest(split)})
    ev = evaluate(zip_path, data, PROFILE, FAST, echo=lambda _: None)
    assert ev.status == "ok" and ev.n == 12 and ev.value == 1.0
    np.testing.assert_array_equal(ev.labels, labels[split["holdout"]])
    assert ev.scored_on.part == "holdout" and ev.scored_on.split_source == "the zip's manifest"
    assert ev.scored_on.leakage.checked and ev.leaked == 1
    leaks = [w for w in ev.warnings if w.startswith("LEAKAGE")]
    assert len(leaks) == 1 and "1 of 12" in leaks[0]

    # No --data: the path recorded in the manifest is used.
    assert evaluate(zip_path, None, PROFILE, FAST, echo=lambda _: None).n == 12
    # --all scores everything and says how much of it was trained on.
    ev_all = evaluate(zip_path, data, PROFILE, ScoreOptions(cross_cwd=False, use_all=True), echo=lambda _: None)
    assert ev_all.n == 48 and ev_all.leaked == 37


@pytest.mark.parametrize("fingerprint", [True, False])
def test_other_data_than_the_split_s_is_refused(tmp_path, fingerprint):
    images, labels = fixture_images(48)
    data = npz(tmp_path, images, labels)
    split = split_document(load_dataset(data, PROFILE), 0.25, seed=0, data_path=str(data))
    if not fingerprint:  # a manifest that only has the training hashes
        del split["data_fingerprint"], split["n"]
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT, "manifest.json": _manifest(split)})
    other, other_labels = fixture_images(48, seed=7)
    other_npz = npz(tmp_path, other, other_labels, "other.npz")
    with pytest.raises(DataError, match="other data" if fingerprint else "not the data"):
        evaluate(zip_path, other_npz, PROFILE, FAST, echo=lambda _: None)
    # --all does not use the split's indices, so other data is fine (and nothing of it was trained on).
    ev = evaluate(zip_path, other_npz, PROFILE, ScoreOptions(cross_cwd=False, use_all=True), echo=lambda _: None)
    assert ev.n == 48 and ev.scored_on.leakage.checked and ev.leaked == 0


def test_split_file_option(tmp_path):
    images, labels = fixture_images(40)
    data = npz(tmp_path, images, labels)
    split = tmp_path / "split.json"
    write_split(split, load_dataset(data, PROFILE), 0.25, seed=1, data_path=str(data))
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    ev = evaluate(zip_path, data, PROFILE, ScoreOptions(cross_cwd=False, split=str(split)), echo=lambda _: None)
    assert ev.n == 10 and ev.scored_on.split_source == "--split" and ev.leaked == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SubbenchError, match="not a subbench split"):
        evaluate(zip_path, data, PROFILE, ScoreOptions(cross_cwd=False, split=str(bad)), echo=lambda _: None)


def test_cross_cwd_check_warns_when_only_one_working_directory_works(tmp_path):
    images, labels = fixture_images(16)
    src = PERFECT.replace("        pass", "        open('offset.txt').read()")
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": src, "offset.txt": "0"})
    data = npz(tmp_path, images, labels)
    ev = evaluate(zip_path, data, PROFILE, ScoreOptions(cwd="submission"), echo=lambda _: None)
    assert ev.status == "ok" and ev.cwd_check.status is Status.Init_Error
    assert any("fails with --cwd program" in w for w in ev.warnings)
    ev = evaluate(zip_path, data, PROFILE, ScoreOptions(cwd="program"), echo=lambda _: None)
    assert ev.status == "Init_Error" and any("works with --cwd submission" in w for w in ev.warnings)


def test_bad_options_are_named_errors(tmp_path):
    images, labels = fixture_images(8)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    with pytest.raises(SubbenchError, match="not a preset"):
        evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, ScoreOptions(simulate_hidden="fog"))
    with pytest.raises(DataError, match="no --data"):
        evaluate(zip_path, None, PROFILE, FAST)
    nested = write_zip(tmp_path / "nested.zip", {"sub/model.py": PERFECT})
    with pytest.raises(SubbenchError, match="not at the zip's root"):
        evaluate(nested, npz(tmp_path, images, labels), PROFILE, FAST)


def test_simulated_hidden_set_with_clean_too(tmp_path):
    images, labels = fixture_images(24)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="an2dl", clean_too=True, seed=3, draws=3)
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, opts, echo=lambda _: None)
    assert ev.status == "ok"
    np.testing.assert_array_equal(ev.images, apply_preset(images, preset="an2dl", seed=3, cache=True))
    # The perfect model reads pixel (0,0,0): the corrupted copy changes it, the clean one does not. The figure is
    # the mean over the draws of seeds 3, 4, 5.
    per_draw = [float(((apply_preset(images, preset="an2dl", seed=s, cache=False)[:, 0, 0, 0].astype(np.int64) % 8)
                       == labels).mean()) for s in (3, 4, 5)]
    assert ev.draws.seeds == [3, 4, 5] and ev.draws.per_draw == pytest.approx(per_draw)
    expected = float(np.mean(per_draw))
    assert ev.value == pytest.approx(expected) and expected < 0.9
    assert ev.metrics.accuracy_ci95 == ev.draws.ci95
    assert ev.clean.status is Status.ok and ev.clean.metrics.accuracy == 1.0
    assert ev.clean.gap == pytest.approx(1.0 - expected)
    assert 'id="gap"' in ev._repr_html_()


def test_robustness_suite(tmp_path):
    images, labels = fixture_images(16)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    opts = ScoreOptions(cross_cwd=False, simulate_hidden="suite", suite_size=16)
    ev = evaluate(zip_path, npz(tmp_path, images, labels), PROFILE, opts, echo=lambda _: None)
    rob = ev.robustness
    expected = {(name, int(sev)): float(((arr[:, 0, 0, 0].astype(np.int64) % 8) == labels).mean())
                for name, sev, arr in iter_suite(images, seed=0)}
    got = {(name, int(sev)): acc for name, row in rob.accuracy.items() for sev, acc in row.items()}
    assert got == pytest.approx(expected)
    assert rob.mean_corruption_accuracy == pytest.approx(np.mean(list(expected.values())))
    assert Score.from_dict(ev.to_dict()).robustness == rob


# ------------------------------------------------------------------------------------------------- compare
def test_compare_ranks_results(tmp_path):
    images, labels = fixture_images(32)
    data = npz(tmp_path, images, labels)
    for name, src in (("perfect", PERFECT), ("almost", ALMOST),
                      ("broken", "class Model:\n    def predict(self, X):\n        raise RuntimeError('x')\n")):
        ev = evaluate(write_zip(tmp_path / f"{name}.zip", {"model.py": src}), data, PROFILE, FAST,
                      echo=lambda _: None)
        write_outputs(ev, tmp_path / name)
    board = Leaderboard.from_scores([(n, Score.load(tmp_path / n)) for n in ("broken", "almost", "perfect")])
    assert [r.name for r in board.rows] == ["perfect", "almost", "broken"]
    assert [r.status for r in board.rows] == [Status.ok, Status.ok, Status.Predict_Error]
    assert [r.rank for r in board.rows] == [1, 2, 3] and board.comparable and board.warning is None
    table = str(board)
    assert "1.0000" in table and "0.8750" in table and "Predict_Error" in table
    assert 'id="leaderboard"' in board._repr_html_() and "0.8750" in board._repr_html_()
    assert board.to_dict()["rows"][0]["status"] == "ok"
    with pytest.raises(ResultNotFoundError):
        Score.load(tmp_path)
