"""`subbench check`: a good zip passes; each classic mistake fails with its own name (real zips, real runs)."""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli, tiny_model, write_zip
from subbench.builder.package import package_files, template_source
from subbench.local_bench.check import check_interface, check_live, check_zip
from subbench.profile import load_profile

PROFILE = load_profile()

NUMPY_MODEL = '''
import numpy as np
class Model:
    def __init__(self):
        pass
    def predict(self, X):
        X = np.asarray(X)
        return {body}
'''


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory, tiny_keras_file) -> Path:
    out = tmp_path_factory.mktemp("zips") / "good.zip"
    package_files([tiny_keras_file], out, PROFILE, tta="flips", echo=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def good_files(good_zip) -> dict[str, bytes]:
    with zipfile.ZipFile(good_zip) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def failures(report) -> list[str]:
    return [r.name for r in report.results if not r.ok]


def test_good_zip_passes_every_check(good_zip):
    report = check_zip(good_zip, PROFILE)
    assert report.ok, [(r.name, r.cause) for r in report.results if not r.ok]
    names = [r.name for r in report.results]
    assert names[:4] == ["zip", "layout", "interface", "model-content"]
    live = next(r for r in report.results if r.name == "live-run")
    assert live.details["elapsed_s"] > 0 and live.details["peak_memory_mb"] > 0
    probe = next(r for r in report.results if r.name == "probe")
    assert probe.details["max_abs_diff"] <= probe.details["tolerance"]


def test_cli_exit_codes(good_zip, tmp_path):
    ok = run_cli("check", str(good_zip), "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout
    bad = write_zip(tmp_path / "nested.zip", {"sub/model.py": "class Model: pass"})
    res = run_cli("check", str(bad))
    assert res.returncode == 1
    assert "NestedFolderError" in res.stdout and "hint:" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    usage = run_cli("check", str(good_zip), "--env", "elsewhere")
    assert usage.returncode == 2


def _zip_from(good_files, tmp_path, name, **changes) -> Path:
    files = {k: v for k, v in good_files.items() if k != "manifest.json"}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            files.pop(key, None)
        else:
            files[key] = value
    return write_zip(tmp_path / f"{name}.zip", files)


def test_nested_folder(good_files, tmp_path):
    z = write_zip(tmp_path / "n.zip", {f"my_submission/{k}": v for k, v in good_files.items()})
    assert failures(check_zip(z, PROFILE)) == ["NestedFolderError"]


def test_missing_weights(good_files, tmp_path):
    z = _zip_from(good_files, tmp_path, "missing", weights__keras=None)
    names = failures(check_zip(z, PROFILE))
    assert names[0] == "MissingFile"


def test_missing_weights_course_template_style(tmp_path):
    src = "import keras\nclass Model:\n    def __init__(self):\n        self.m = keras.models.load_model('weights.keras')\n" \
          "    def predict(self, X):\n        return self.m.predict(X).argmax(1)\n"
    z = write_zip(tmp_path / "t.zip", {"model.py": src})
    assert failures(check_zip(z, PROFILE, live=False)) == ["MissingFile"]


def test_init_with_argument(good_files, tmp_path):
    src = template_source().decode().replace("def __init__(self):", "def __init__(self, path):")
    z = _zip_from(good_files, tmp_path, "init", model__py=src)
    assert failures(check_zip(z, PROFILE)) == ["BadInitSignature"]


def test_model_py_importing_subbench(good_files, tmp_path):
    src = "import subbench\n" + template_source().decode()
    z = _zip_from(good_files, tmp_path, "imp", model__py=src)
    assert "ForbiddenImport" in failures(check_zip(z, PROFILE, live=False))


def test_no_model_class(tmp_path):
    z = write_zip(tmp_path / "c.zip", {"model.py": "class Net:\n    pass\n"})
    assert failures(check_zip(z, PROFILE)) == ["NoModelClass"]


@pytest.mark.parametrize("body, expected", [
    ("np.tile(np.eye(8)[0], (len(X), 1))", "Output_Shape_Error"),                 # one-hot
    ("np.full((len(X), 8), 0.125)", "Output_Shape_Error"),                        # probabilities
    ("np.zeros(len(X) + 1, dtype=int)", "Output_Shape_Error"),                    # wrong length
    ("np.full(len(X), np.nan)", "Output_Value_Error"),                            # NaN
    ("np.full(len(X), 8)", "Output_Value_Error"),                                 # out of range
])
def test_bad_predictions(tmp_path, body, expected):
    z = write_zip(tmp_path / "p.zip", {"model.py": NUMPY_MODEL.format(body=body)})
    report = check_zip(z, PROFILE)
    assert failures(report) == [expected]
    bad = next(r for r in report.results if not r.ok)
    assert bad.hint and bad.cause


def test_numpy_only_model_passes(tmp_path):
    z = write_zip(tmp_path / "ok.zip", {"model.py": NUMPY_MODEL.format(body="np.zeros(len(X), dtype=np.int64)")})
    assert check_zip(z, PROFILE).ok


def _model_zip(tmp_path, name, model) -> Path:
    weights = tmp_path / f"{name}.keras"
    model.save(weights)
    cfg = '{"models": [{"file": "weights.keras", "weight": 1}], "tta": ["identity"]}'
    return write_zip(tmp_path / f"{name}.zip", {"model.py": template_source(), "model_config.json": cfg,
                                                "weights.keras": weights.read_bytes()})


def test_lambda_layer(tmp_path):
    import keras

    z = _model_zip(tmp_path, "lambda", tiny_model(extra=keras.layers.Lambda(lambda t: t * 1.0)))
    assert "LambdaLayer" in failures(check_zip(z, PROFILE, live=False))


def test_augmix_layer_inside_model(tmp_path):
    import keras

    z = _model_zip(tmp_path, "augmix", tiny_model(extra=keras.layers.AugMix(value_range=(0, 1))))
    names = failures(check_zip(z, PROFILE, live=False))
    assert "TrainingOnlyLayer" in names and "LayerMissingOnServer" in names


def test_unexported_model_has_keys_the_server_rejects(tmp_path):
    z = _model_zip(tmp_path, "raw", tiny_model())  # saved by today's Keras, not through build
    report = check_zip(z, PROFILE, live=False)
    keys = {r.details["key"] for r in report.results if r.name == "UnsupportedConfigKey"}
    assert {"renorm", "quantization_config"} <= keys


def test_mixed_precision_policy_is_named(tmp_path, keras_policy):
    keras_policy("mixed_float16")
    model = tiny_model()
    keras_policy("float32")                       # only the model is built under the mixed policy
    z = _model_zip(tmp_path, "mixed", model)
    assert "MixedPrecisionPolicy" in failures(check_zip(z, PROFILE, live=False))


def test_a_zip_edited_after_build_is_a_warning_the_run_decides(good_files, tmp_path):
    # the server runs an edited zip like any other: what the manifest recorded no longer proves anything
    files = dict(good_files)
    files["model_config.json"] = good_files["model_config.json"].replace(b'"hflip"', b'"rot90"')
    report = check_zip(write_zip(tmp_path / "edited.zip", files), PROFILE, live=False)
    assert failures(report) == [] and report.ok
    assert len(report.warnings) == 1 and "model_config.json changed" in report.warnings[0]
    assert "probe prediction and the TTA choice" in report.warnings[0] and "the live run decides" in report.warnings[0]
    files["model.py"] = good_files["model.py"] + (b"\n" if isinstance(good_files["model.py"], bytes) else "\n")
    report = check_zip(write_zip(tmp_path / "edited2.zip", files), PROFILE, live=False)
    assert report.ok and "model.py changed" in report.warnings[0]
    # the page says so too: a WARN row with the cause, not a PASS
    from subbench.local_bench.report import render_check

    page = render_check(report)
    assert '<td class="warned">WARN</td><td>FilesEditedAfterBuild</td>' in page and "model.py changed" in page
    assert "all checks passed, 1 warning" in page


def test_zip_slip(good_files, tmp_path):
    z = write_zip(tmp_path / "slip.zip", {**good_files, "../../evil.py": "print('x')"})
    assert failures(check_zip(z, PROFILE)) == ["ZipSlipError"]
    z2 = write_zip(tmp_path / "abs.zip", {**good_files, "/etc/evil": "x"})
    assert failures(check_zip(z2, PROFILE)) == ["ZipSlipError"]
    assert not (tmp_path.parent / "evil.py").exists()


def test_symlink(good_files, tmp_path):
    z = tmp_path / "link.zip"
    write_zip(z, good_files)
    with zipfile.ZipFile(z, "a") as zf:
        info = zipfile.ZipInfo("secrets")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    assert failures(check_zip(z, PROFILE)) == ["ZipSymlinkError"]


def test_zip_bomb(good_files, tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in good_files.items():
            zf.writestr(name, data)
        zf.writestr("padding.bin", b"\0" * (64 * 2**20))
    assert failures(check_zip(z, PROFILE)) == ["ZipBombError"]


def test_not_a_zip(tmp_path):
    f = tmp_path / "sub.zip"
    f.write_bytes(b"this is a text file, not a zip")
    assert failures(check_zip(f, PROFILE)) == ["NotAZipError"]
    truncated = tmp_path / "cut.zip"
    write_zip(tmp_path / "whole.zip", {"model.py": "x" * 5000})
    truncated.write_bytes((tmp_path / "whole.zip").read_bytes()[:-30])
    assert failures(check_zip(truncated, PROFILE)) == ["NotAZipError"]



# ------------------------------------------------------------------------------------------------- interface
def _interface(init: str | None, predict: str | None = "self, X") -> list[str]:
    body = ""
    if init is not None:
        body += f"    def __init__({init}):\n        pass\n"
    if predict is not None:
        body += f"    def predict({predict}):\n        return X\n"
    return [r.name for r in check_interface(f"class Model:\n{body or '    pass'}\n", PROFILE) if not r.ok]


@pytest.mark.parametrize("init", [
    None,                                   # no __init__: object's
    "self",
    "self, path=None",                      # only defaulted parameters: Model() works
    "self, path=None, tta=('identity',)",
    "self, *args, **kwargs",
    "self, *, batch_size=64",
    "*args",                                # self taken by *args
    "self, /, path=None",
])
def test_init_callable_without_arguments_is_accepted(init):
    assert _interface(init) == []


@pytest.mark.parametrize("init", [
    "self, path",                           # a required extra parameter
    "self, path, tta=None",
    "self, *, path",                        # a required keyword-only parameter
    "self, *args, path",
    "",                                     # not even self
])
def test_init_the_server_cannot_call_is_refused(init):
    assert _interface(init) == ["BadInitSignature"]


@pytest.mark.parametrize("predict", [
    "self, X",
    "self, X, batch_size=64",               # extra defaulted parameters
    "self, X=None",
    "self, X, *, verbose=0",
    "self, *args",
    "self, X, *args, **kwargs",
    "self, X, /",
])
def test_predict_callable_with_x_is_accepted(predict):
    assert _interface("self", predict) == []


@pytest.mark.parametrize("predict", [
    "self",                                 # no positional X
    "self, *, X",                           # X only by keyword
    "self, X, batch_size",                  # a required extra parameter
    "self, X, *, batch_size",               # a required keyword-only parameter
    "self, **kwargs",
    "",
])
def test_predict_the_server_cannot_call_is_refused(predict):
    assert _interface("self", predict) == ["BadPredictSignature"]


def test_interface_messages_name_what_is_required():
    init = next(r for r in check_interface("class Model:\n    def __init__(self, path, *, k):\n        pass\n"
                                           "    def predict(self, X):\n        pass\n", PROFILE) if not r.ok)
    assert "['path']" in init.cause and "Model()" in init.cause and init.hint
    predict = next(r for r in check_interface("class Model:\n    def predict(self, X, y):\n        pass\n", PROFILE)
                   if not r.ok)
    assert "['y']" in predict.cause and "predict(X)" in predict.cause
    assert _interface(None, None) == ["NoPredictMethod"]


def test_defaulted_init_zip_passes_the_whole_check(tmp_path):
    src = NUMPY_MODEL.format(body="np.zeros(len(X), dtype=np.int64)").replace(
        "def __init__(self):", "def __init__(self, path=None):").replace(
        "def predict(self, X):", "def predict(self, X, batch_size=64):")
    z = write_zip(tmp_path / "defaults.zip", {"model.py": src})
    report = check_zip(z, PROFILE)
    assert report.ok, [(r.name, r.cause) for r in report.results if not r.ok]


# ------------------------------------------------------------------------------------------------- stderr tail
def test_live_check_stderr_tail_ends_with_the_submission_s_error(tmp_path):
    src = ("import sys\nclass Model:\n    def __init__(self):\n"
           "        sys.stderr.write('I0000 00:00:1731579154.5   12345 cpu_feature_guard.cc:210] This TensorFlow "
           "binary is optimized\\n')\n"
           "        raise OSError('weights.keras is missing')\n"
           "    def predict(self, X):\n        return X\n")
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / "model.py").write_text(src)
    [result] = check_live(folder, PROFILE, sys.executable, 60)
    assert result.name == "Init_Error" and not result.ok
    tail = result.details["stderr_tail"].splitlines()
    assert tail[-1] == "OSError: weights.keras is missing" and not any("cpu_feature_guard" in t for t in tail)
