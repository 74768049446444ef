"""`subbench build --from`: the zip's contents, export for the server's Keras, atomic and --force writes."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

from conftest import run_cli, tiny_model
from subbench.builder.package import package_files, package_models
from subbench.errors import ExportError, OutputExistsError
from subbench.keras_compat import find_problems, load_key_table
from subbench.profile import load_profile

PROFILE = load_profile()


def test_zip_contents_and_manifest(tiny_keras_file, tmp_path):
    out = tmp_path / "sub.zip"
    res = run_cli("build", "--from", str(tiny_keras_file), "--tta", "d4", "-o", str(out))
    assert res.returncode == 0, res.stderr
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        config = json.loads(zf.read("model_config.json"))
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        saved = json.loads(zipfile.ZipFile(zf.open("weights.keras")).read("config.json"))
    assert names == {"model.py", "model_config.json", "weights.keras", "manifest.json"}
    assert config["tta"] == ["identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose",
                             "antitranspose"]
    assert manifest["target"] == {"tensorflow": "2.17.0", "keras": "3.4.1", "keys_table_keras": "3.4.1"}
    assert manifest["classes"][3] == "immature granulocyte" and manifest["profile"] == "an2dl-2024"
    assert manifest["saved_with"]["keras"].startswith("3.")
    assert "BatchNormalization.renorm" in manifest["models"][0]["dropped_keys"]
    assert len(manifest["probe"]["probabilities"]["weights.keras"]) == manifest["probe"]["shape"][0]
    # the shipped config is clean for the server's Keras
    assert find_problems(saved, load_key_table(PROFILE)) == []


def test_refuses_to_overwrite_without_force(tiny_keras_file, tmp_path):
    out = tmp_path / "sub.zip"
    out.write_bytes(b"user's precious file")
    res = run_cli("build", "--from", str(tiny_keras_file), "-o", str(out))
    assert res.returncode == 2 and "OutputExistsError" in res.stderr and "--force" in res.stderr
    assert out.read_bytes() == b"user's precious file"
    res = run_cli("build", "--from", str(tiny_keras_file), "-o", str(out), "--force")
    assert res.returncode == 0 and zipfile.is_zipfile(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.zip"]  # no temp files left behind


def test_non_default_key_the_server_lacks_is_a_named_error(tmp_path):
    import keras

    inp = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(4, 3, strides=4)(inp)
    x = keras.layers.BatchNormalization(renorm=True, name="bn_renorm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(8, activation="softmax")(x))
    path = tmp_path / "renorm.keras"
    model.save(path)
    res = run_cli("build", "--from", str(path), "-o", str(tmp_path / "sub.zip"))
    assert res.returncode == 2
    assert "ExportError" in res.stderr and "bn_renorm" in res.stderr and "renorm" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "sub.zip").exists()


def test_mixed_precision_model_exports_float32(tmp_path, keras_policy):
    keras_policy("mixed_float16")
    model = tiny_model()
    keras_policy("float32")                       # only the model is built under the mixed policy
    res = package_models([model], tmp_path / "sub.zip", PROFILE, echo=lambda *_: None)
    assert res.manifest["models"][0]["float32_from_mixed"] is True
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        saved = json.loads(zipfile.ZipFile(zf.open("weights.keras")).read("config.json"))
    assert "mixed" not in json.dumps(saved)


def test_wrong_number_of_classes(tmp_path):
    with pytest.raises(ExportError, match="8 classes"):
        package_models([tiny_model(num_classes=5)], tmp_path / "s.zip", PROFILE, echo=lambda *_: None)
    assert not (tmp_path / "s.zip").exists()


def test_missing_model_file(tmp_path):
    res = run_cli("build", "--from", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "s.zip"))
    assert res.returncode == 2 and "ExportError" in res.stderr and "does not exist" in res.stderr


def test_no_models_given(tmp_path):
    res = run_cli("build", "-o", str(tmp_path / "s.zip"))
    assert res.returncode == 2 and "--from" in res.stderr


def test_ensemble_weights_recorded(tmp_path):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    tiny_model().save(a)
    tiny_model(activation="softmax").save(b)
    res = package_files([a, b], tmp_path / "e.zip", PROFILE, ensemble_weights=[3, 1], echo=lambda *_: None)
    with zipfile.ZipFile(tmp_path / "e.zip") as zf:
        config = json.loads(zf.read("model_config.json"))
    assert config["models"] == [{"file": "weights.keras", "weight": 3.0}, {"file": "weights_1.keras", "weight": 1.0}]
    assert res.manifest["outputs"] == "probabilities"
    with pytest.raises(ExportError):
        package_files([a, b], tmp_path / "e2.zip", PROFILE, ensemble_weights=[1.0], echo=lambda *_: None)


def test_output_exists_error_before_any_work(tmp_path, tiny_keras_file):
    out = tmp_path / "s.zip"
    out.write_text("x")
    with pytest.raises(OutputExistsError):
        package_files([tiny_keras_file], out, PROFILE)
    assert np.array_equal(np.frombuffer(out.read_bytes(), np.uint8), np.frombuffer(b"x", np.uint8))
