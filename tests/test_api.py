"""The Python API (`import subbench`) through real TensorFlow, real zips and real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import subbench
from conftest import run_cli, tiny_model
from subbench.errors import ProfileError, SubbenchError
from subbench.profile import load_profile

PROFILE = load_profile()


@pytest.fixture(scope="module")
def cells():
    from subbench.data.synthetic import cell_like_images

    images, labels = cell_like_images(48, seed=5)
    return images, labels.reshape(-1).astype(np.int64)


def test_import_subbench_loads_no_tensorflow():
    code = ("import sys, subbench; assert callable(subbench.score) and subbench.Score.__name__ == 'Score'; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert set(subbench.__all__) >= {"load_data", "package", "train", "check", "score", "compare", "corrupt",
                                     "augment_fn", "hidden_set_augmentation", "datasets"}
    with pytest.raises(AttributeError):
        subbench.no_such_thing


def test_package_an_in_memory_model_then_check_score_compare(tmp_path, cells):
    images, labels = cells
    model = tiny_model()
    built = subbench.package(model, tmp_path / "sub.zip", tta="flips", echo=None)
    assert os.fspath(built) == str(tmp_path / "sub.zip") and built.tta_views == ["identity", "hflip", "vflip"]
    assert built.models[0]["file"] == "weights.keras" and built.outputs == "probabilities"
    assert "weights.keras" in built._repr_html_()
    with pytest.raises(SubbenchError, match="already exists"):
        subbench.package(model, tmp_path / "sub.zip", echo=None)

    report = subbench.check(built)                       # the path-like result goes straight in
    assert report.ok, report.failures
    assert [r.name for r in report.results][:2] == ["zip", "layout"] and "live-run" in report.failures + [
        r.name for r in report.results]
    assert 'id="verdict"' in report._repr_html_() and "all checks passed" in report._repr_html_()
    assert json.loads(report.to_json())["ok"] is True

    s = subbench.score(built, data=(images, labels), cross_cwd=False)
    assert s.status == "ok" and s.n == 48 and 0.0 <= s.value <= 1.0
    # The tiny model's own predictions, computed here, are what the subprocess returned.
    expected = np.argmax(sum(model.predict(v, verbose=0) for v in (images, images[:, :, ::-1], images[:, ::-1])),
                         axis=1)
    np.testing.assert_array_equal(s.predictions, expected)
    assert s.value == pytest.approx(float((expected == labels).mean()))
    assert 'id="score"' in s._repr_html_() and f"{s.value:.4f}" in s._repr_html_()

    hidden = subbench.score(built, data=(images, labels), simulate_hidden="an2dl", clean_too=True, cross_cwd=False)
    assert hidden.clean.metrics.accuracy == pytest.approx(s.value)
    assert hidden.clean.gap == pytest.approx(s.value - hidden.value)
    saved = hidden.save(tmp_path / "hidden")
    assert {p.name for p in saved.iterdir()} == {"scores.json", "report.html", "predictions.npy", "per_image.npz"}

    board = subbench.compare({"clean": s, "hidden": tmp_path / "hidden"})
    assert {r.name for r in board.rows} == {"clean", "hidden"} and not board.comparable  # simulated vs not
    assert board.rows[0].score >= board.rows[1].score
    assert "not directly comparable" in board._repr_html_()


def test_package_refuses_what_the_server_would_not_take(tmp_path):
    import keras

    inp = keras.Input((64, 64, 3))
    wrong = keras.Model(inp, keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(inp)))
    with pytest.raises(SubbenchError, match="competition sends"):
        subbench.package(wrong, tmp_path / "w.zip", echo=None)
    with pytest.raises(SubbenchError, match="no models"):
        subbench.package([], tmp_path / "w.zip", echo=None)
    assert not (tmp_path / "w.zip").exists()


def test_train_on_arrays_then_score_the_recorded_split(tmp_path, cells):
    images, labels = cells
    with pytest.raises(SubbenchError, match="unknown recipe fields"):
        subbench.train("cpu", data=(images, labels), out=tmp_path / "x.zip", epoch=1, echo=None)
    result = subbench.train("cpu", data=(images, labels), out=tmp_path / "t.zip", epochs=1, batch_size=16,
                            augment="none", val_corrupt=None, tta="none", progressive=0, holdout=0.25,
                            echo=None)
    assert result.zip_path.is_file() and result.epochs_trained == 1 and len(result.history) == 1
    assert "loss" in result.history[0].values and result.val_accuracy is not None
    assert result.build_dir == tmp_path / "t.build"
    # The split was recorded without a path (arrays): scoring needs the data again, and only the held-out part.
    with pytest.raises(SubbenchError, match="no --data"):
        subbench.score(result)
    s = subbench.score(result, data=(images, labels), cross_cwd=False)
    assert s.n == 12 and s.scored_on.part == "holdout" and s.scored_on.leakage.checked and s.leaked == 0


def test_corrupt_and_augment_fn(cells):
    images, _ = cells
    a = subbench.corrupt(images[:4], "an2dl", seed=1)
    assert a.dtype == np.uint8 and a.shape == (4, 96, 96, 3) and not np.array_equal(a, images[:4])
    np.testing.assert_array_equal(a, subbench.corrupt(images[:4], "an2dl", seed=1))
    np.testing.assert_array_equal(a, subbench.augment_fn("an2dl")(images[:4], seed=1))
    blur = subbench.corrupt(images[:2], "motion_blur", severity=3)
    assert blur.shape == (2, 96, 96, 3)
    with pytest.raises(SubbenchError, match="needs a severity"):
        subbench.corrupt(images[:2], "motion_blur")
    with pytest.raises(SubbenchError, match="severity applies"):
        subbench.corrupt(images[:2], "an2dl", severity=2)
    with pytest.raises(SubbenchError, match="no preset or corruption named 'fog'"):
        subbench.corrupt(images[:2], "fog")


def test_load_data_npz_and_folder(tmp_path, cells):
    from PIL import Image

    images, labels = cells
    np.savez(tmp_path / "d.npz", images=images, labels=labels.reshape(-1, 1))
    x, y = subbench.load_data(tmp_path / "d.npz")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    for i in range(3):
        folder = tmp_path / "cells" / PROFILE.class_names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    x, y = subbench.load_data(tmp_path / "cells")
    assert x.shape == (3, 96, 96, 3) and sorted(y.tolist()) == sorted(labels[:3].tolist())
    with pytest.raises(SubbenchError, match="uint8"):
        subbench.score(tmp_path / "nothing.zip", data=(images.astype(np.float32), labels))


def test_unknown_metric_in_a_profile_is_a_profile_error(tmp_path):
    text = PROFILE.source.read_text().replace('metric = "accuracy"', 'metric = "top5"')
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ProfileError, match="'top5' is not a metric"):
        load_profile(tmp_path / "p.toml")
    res = run_cli("check", "x.zip", "--profile", str(tmp_path / "p.toml"), cwd=tmp_path)
    assert res.returncode == 2 and "ProfileError" in res.stderr and "Traceback" not in res.stderr


def test_cli_score_json_is_the_api_score(tmp_path, cells):
    images, labels = cells
    built = subbench.package(tiny_model(), tmp_path / "sub.zip", echo=None)
    np.savez(tmp_path / "d.npz", images=images, labels=labels.reshape(-1, 1))
    res = run_cli("score", str(built), "--data", str(tmp_path / "d.npz"), "--json", "--no-cross-cwd", "-q")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == 3 and list(doc)[0] == "accuracy"
    api = subbench.score(built, data=tmp_path / "d.npz", cross_cwd=False)
    assert doc["accuracy"] == api.value and doc["metrics"]["confusion_matrix"] == api.metrics.confusion_matrix
    with zipfile.ZipFile(built) as zf:
        assert "model.py" in zf.namelist()
