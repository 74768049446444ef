"""`subbench score` and `subbench compare` as a user runs them: the real command in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_zip
from subbench import server_env
from subbench.errors import ServerEnvError
from subbench.local_bench.evaluate import ScoreOptions, evaluate, write_outputs
from subbench.manifest import probe_input
from subbench.profile import load_profile
from test_runner import PERFECT, SLEEPER, fixture_images
from test_score import ALMOST, npz

PROFILE = load_profile()


def test_score_writes_outputs_and_refuses_to_overwrite(tmp_path):
    images, labels = fixture_images(40)
    data = npz(tmp_path, images, labels)
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": ALMOST})
    out = tmp_path / "out"
    res = run_cli("score", str(zip_path), "--data", str(data), "-o", str(out), "--json", "--no-cross-cwd",
                  "--hidden-size", "1000", "--server-speed", "2")
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout)
    assert scores["status"] == "ok" and scores["accuracy"] == pytest.approx(0.875)
    assert scores["timing"]["projection"]["hidden_size"] == 1000
    assert scores["timing"]["projection"]["server_speed"] == 2.0
    assert json.loads((out / "scores.json").read_text())["accuracy"] == scores["accuracy"]
    assert (out / "report.html").stat().st_size > 10_000
    assert "import" in res.stderr and "predict" in res.stderr  # a line per stage

    before = (out / "scores.json").stat().st_mtime_ns
    again = run_cli("score", str(zip_path), "--data", str(data), "-o", str(out))
    assert again.returncode == 2 and "OutputExistsError" in again.stderr and "--force" in again.stderr
    assert (out / "scores.json").stat().st_mtime_ns == before


def test_failed_status_sets_the_exit_code_and_shows_the_stderr_tail(tmp_path):
    images, labels = fixture_images(8)
    zip_path = write_zip(tmp_path / "slow.zip", {"model.py": SLEEPER.format(pids=str(tmp_path / "p.txt"))})
    res = run_cli("score", str(zip_path), "--data", str(npz(tmp_path, images, labels)), "--time-limit", "2",
                  "--no-cross-cwd")
    assert res.returncode == 16, res.stdout + res.stderr
    assert "Execution_Time_Limit_Exceeded" in res.stdout
    bad = write_zip(tmp_path / "bad.zip", {"model.py": "import numpy as np\nclass Model:\n    def predict(self, X):\n"
                                                      "        return np.full(len(X), 9)\n"})
    res = run_cli("score", str(bad), "--data", str(npz(tmp_path, images, labels)), "--no-cross-cwd")
    assert res.returncode == 15 and "Output_Value_Error" in res.stdout and "outside 0..7" in res.stdout


def test_bad_input_is_a_named_error_and_writes_nothing(tmp_path):
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((2, 96, 96, 3), np.uint8))
    res = run_cli("score", str(zip_path), "--data", str(bad), "-o", str(tmp_path / "out"))
    assert res.returncode == 2 and "DataError" in res.stderr and "hint:" in res.stderr
    assert not (tmp_path / "out").exists()


def test_compare_folders_and_zips(tmp_path):
    images, labels = fixture_images(32)
    data = npz(tmp_path, images, labels)
    perfect = write_zip(tmp_path / "perfect.zip", {"model.py": PERFECT})
    almost = write_zip(tmp_path / "almost.zip", {"model.py": ALMOST})
    write_outputs(evaluate(almost, data, PROFILE, ScoreOptions(cross_cwd=False), echo=lambda _: None),
                  tmp_path / "almost")
    res = run_cli("compare", str(tmp_path / "almost"), str(perfect), "--data", str(data), "--no-cross-cwd")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "perfect.zip" in lines[2] and "1.0000" in lines[2]
    assert "almost" in lines[3] and "0.8750" in lines[3]


def test_keras_template_zip_scores_like_the_model_in_process(tmp_path, tiny_keras_file):
    """A real Keras model in the course-style layout (template model.py + weights.keras beside it)."""
    import keras

    images = probe_input(PROFILE, 12)
    model = keras.models.load_model(tiny_keras_file, compile=False)
    labels = model.predict(images.astype("float32"), verbose=0).argmax(1)
    labels[:3] = (labels[:3] + 1) % 8  # three wrong on purpose: accuracy 0.75
    template = Path(__file__).resolve().parents[1] / "submission_template" / "model.py"
    zip_path = write_zip(tmp_path / "keras.zip", {"model.py": template.read_text(),
                                                  "weights.keras": tiny_keras_file.read_bytes()})
    res = run_cli("score", str(zip_path), "--data", str(npz(tmp_path, images, labels)), "--json", "--chunk", "5",
                  "--no-cross-cwd")
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["environment"]["loaded_keras"] == keras.__version__
    assert scores["timing"]["stages"]["init"] > 0.1  # TensorFlow really loaded the model in the child
    assert "predict scored" in res.stderr  # the chunk progress bar


@pytest.mark.server_env
def test_score_in_the_server_environment(tmp_path, tiny_keras_file):
    """`--env server` runs a zip made by `subbench build` under TF 2.17.0 / Keras 3.4.1 and predicts what the
    local environment predicts."""
    try:
        python = server_env.resolve_python("server", PROFILE)
    except ServerEnvError:
        assert run_cli("env", "create", timeout=1200).returncode == 0
        python = server_env.resolve_python("server", PROFILE)
    images = probe_input(PROFILE, 8)
    zip_path = tmp_path / "sub.zip"
    assert run_cli("build", "--from", str(tiny_keras_file), "-o", str(zip_path)).returncode == 0
    data = npz(tmp_path, images, np.arange(8) % 8)
    runs = {}
    for env in ("server", "local"):
        res = run_cli("score", str(zip_path), "--data", str(data), "--env", env, "--json", "--no-cross-cwd",
                      "-o", str(tmp_path / env))
        assert res.returncode == 0, res.stderr
        runs[env] = json.loads(res.stdout)
    server = runs["server"]["environment"]
    assert server["python"] == python
    assert server["loaded_keras"] == PROFILE.server_keras and server["loaded_tensorflow"] == PROFILE.server_tensorflow
    np.testing.assert_array_equal(np.load(tmp_path / "server" / "predictions.npy"),
                                  np.load(tmp_path / "local" / "predictions.npy"))


def test_missing_server_environment_is_a_named_error(tmp_path):
    zip_path = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    images, labels = fixture_images(8)
    env = {k: v for k, v in os.environ.items() if k != server_env.ENV_OVERRIDE}
    env["SUBBENCH_CACHE"] = str(tmp_path / "empty-cache")
    res = subprocess.run([sys.executable, "-m", "subbench.cli", "score", str(zip_path), "--data",
                          str(npz(tmp_path, images, labels)), "--env", "server"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "ServerEnvError" in res.stderr and "subbench env create" in res.stderr


DOWNLOADS_AT_INIT = ("import urllib.request\nimport numpy as np\nclass Model:\n    def __init__(self):\n"
                     "        urllib.request.urlopen('http://example.com/weights.h5', timeout=5)\n"
                     "    def predict(self, X):\n        return np.zeros(len(X), int)\n")


def test_no_network_runs_the_zip_cut_off_and_names_the_download(tmp_path):
    """--no-network on the profile's run: a zip that needs nothing from the network scores as before; one that
    downloads at Model() fails with Init_Error, and the message says it tried to reach the network."""
    from subbench.local_bench.netns import network_isolation

    images, labels = fixture_images(8)
    data = npz(tmp_path, images, labels)
    good = write_zip(tmp_path / "sub.zip", {"model.py": PERFECT})
    downloader = write_zip(tmp_path / "dl.zip", {"model.py": DOWNLOADS_AT_INIT})
    if not network_isolation()[0]:
        res = run_cli("score", str(good), "--data", str(data), "--no-network")
        assert res.returncode == 2 and "--no-network cannot be applied" in res.stderr
        return
    res = run_cli("score", str(good), "--data", str(data), "--no-network", "--no-cross-cwd")
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("score", str(downloader), "--data", str(data), "--no-network", "--no-cross-cwd")
    assert res.returncode == 12 and "Init_Error" in res.stdout, res.stdout + res.stderr
    assert "tried to reach the network" in res.stdout and "--no-network cut it off" in res.stdout
