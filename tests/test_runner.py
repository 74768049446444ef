"""The runner: real zips, real subprocesses, one zip per status (local_bench/runner.py).

The submissions are small hand-written model.py files (numpy only, so each run costs ~0.3 s, not a TensorFlow
import); a real Keras zip runs in test_score_cli.py (test_keras_template_zip_scores_like_the_model_in_process).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_zip
from subbench.local_bench.runner import check_predictions, run_sets, run_submission

N_CLASSES = 8

# The label of each fixture image is written into its first pixel, so a model can predict it perfectly.
PERFECT = """
import numpy as np
class Model:
    def __init__(self):
        pass
    def predict(self, X):
        return X[:, 0, 0, 0].astype(np.int64) % 8
"""


def fixture_images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    labels = np.arange(n) % N_CLASSES
    images[:, 0, 0, 0] = labels
    return images, labels


def model_zip(tmp_path: Path, source: str, name: str = "sub.zip", extra: dict | None = None) -> Path:
    return write_zip(tmp_path / name, {"model.py": source, **(extra or {})})


def run(tmp_path, source, images=None, **kw):
    if images is None:
        images, _ = fixture_images()
    return run_submission(model_zip(tmp_path, source), images, n_classes=N_CLASSES, **kw)


def _alive_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(name))
    return found


# ------------------------------------------------------------------------------------------------- ok
def test_good_zip_predicts_the_fixture_perfectly_and_reports_stages(tmp_path):
    images, labels = fixture_images()
    res = run(tmp_path, PERFECT, images)
    assert res.status == "ok", res.message + res.stderr_tail
    np.testing.assert_array_equal(res.predictions, labels)
    assert res.predictions.dtype == np.int64
    assert set(res.stages) == {"start", "import", "init", "predict"}
    assert all(v >= 0 for v in res.stages.values())
    assert sum(res.stages.values()) <= res.elapsed_s + 0.05
    assert res.peak_memory_mb and 5 < res.peak_memory_mb < 2000
    assert res.n == len(images) and res.versions["numpy"] == np.__version__
    assert not Path(res.run_dir).exists(), "the temp run folder is removed"


def test_peak_memory_is_the_submission_s_not_the_caller_s(tmp_path):
    """A caller holding 1 GB (as `subbench score` with TensorFlow and data loaded does) must not show up in
    the submission's peak: Linux's maxrss survives fork+exec."""
    ballast = np.ones(2**30, np.uint8)       # touched pages: resident in this process
    res = run(tmp_path, PERFECT)
    assert res.status == "ok" and int(ballast[::4096].sum()) == 2**18
    assert 5 < res.peak_memory_mb < 500


def test_run_folder_layout_is_codabench_s_and_user_files_are_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    # The submission writes next to itself and into the working directory: neither may reach the user's folder.
    (folder / "model.py").write_text(PERFECT.replace(
        "        pass", "        import os\n        open(os.path.join(os.path.dirname(__file__), 'junk.txt'), 'w')"
                       ".write(os.getcwd())\n        self.cwd = os.getcwd()"))
    before = sorted(p.name for p in folder.iterdir())
    images, _ = fixture_images(8)
    res = run_submission(folder, images, n_classes=N_CLASSES, keep_run_dir=True, cwd_mode="program")
    assert res.status == "ok", res.message + res.stderr_tail
    root = Path(res.run_dir)
    try:
        assert {p.name for p in root.iterdir()} >= {"program", "ingested_program", "input_data", "output"}
        assert (root / "program" / "ingestion.py").is_file()
        assert (root / "ingested_program" / "junk.txt").read_text() == str(root / "program")
        assert "exitCode: 0" in (root / "output" / "metadata").read_text()
        assert (root / "output" / "predictions.npy").is_file()
    finally:
        import shutil
        shutil.rmtree(root)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_chunks_feed_predict_in_pieces(tmp_path):
    images, labels = fixture_images(50)
    src = PERFECT.replace("        return", "        assert len(X) <= 16, len(X)\n        return")
    res = run(tmp_path, src, images, chunk=16)
    assert res.status == "ok", res.message + res.stderr_tail
    np.testing.assert_array_equal(res.predictions, labels)
    assert run(tmp_path, src, images).status == "Predict_Error"  # one call of 50 breaks the assert


def test_sets_are_streamed_through_one_process(tmp_path):
    images, labels = fixture_images(24)
    src = PERFECT.replace("        pass", "        import os\n        self.pid = os.getpid()")
    produced = []

    def gen():
        for k in range(4):
            produced.append(k)
            yield f"set{k}", images[: 6 * (k + 1)]

    res = run_sets(model_zip(tmp_path, src), gen(), stream=True, n_classes=N_CLASSES)
    assert res.status == "ok", res.message + res.stderr_tail
    assert list(res.set_predictions) == ["set0", "set1", "set2", "set3"]
    for k in range(4):
        np.testing.assert_array_equal(res.set_predictions[f"set{k}"], labels[: 6 * (k + 1)])
    assert set(res.set_seconds) == set(res.set_predictions)


# ------------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("source, needle", [
    ("import not_a_module_on_the_server\n", "ModuleNotFoundError"),
    ("class Model(:\n", "SyntaxError"),
    ("class NotModel:\n    pass\n", "AttributeError"),
])
def test_import_errors(tmp_path, source, needle):
    res = run(tmp_path, source)
    assert res.status == "Import_Error"
    assert needle in res.message and needle in res.stderr_tail
    assert res.stage_reached == "import" and "predict" not in res.stages


def test_init_error_names_the_missing_weights(tmp_path):
    src = ("import os\nclass Model:\n    def __init__(self):\n"
           "        open(os.path.join(os.path.dirname(__file__), 'weights.keras'), 'rb')\n"
           "    def predict(self, X):\n        return X[:, 0, 0, 0]\n")
    res = run(tmp_path, src)
    assert res.status == "Init_Error"
    assert "FileNotFoundError" in res.message and "weights.keras" in res.stderr_tail
    assert set(res.stages) == {"start", "import", "init"}


def test_init_with_an_argument_is_an_init_error(tmp_path):
    res = run(tmp_path, "class Model:\n    def __init__(self, path):\n        pass\n")
    assert res.status == "Init_Error" and "TypeError" in res.message


def test_predict_error(tmp_path):
    res = run(tmp_path, "class Model:\n    def predict(self, X):\n        raise ValueError('bad input ' + str(X.dtype))\n")
    assert res.status == "Predict_Error"
    assert "ValueError: bad input uint8" in res.message


def test_process_exit_inside_predict_is_a_predict_error(tmp_path):
    res = run(tmp_path, "import os\nclass Model:\n    def predict(self, X):\n        os._exit(3)\n")
    assert res.status == "Predict_Error" and "code 3" in res.message


@pytest.mark.parametrize("body, status, needle", [
    ("np.eye(8)[X[:, 0, 0, 0] % 8]", "Output_Shape_Error", "argmax"),                   # one-hot
    ("np.full((len(X), 8), 0.125)", "Output_Shape_Error", "probabilities"),            # probabilities
    ("np.zeros(len(X) - 1, np.int64)", "Output_Shape_Error", "39 labels for 40"),      # wrong length
    ("np.zeros((len(X), 1), np.int64)", "Output_Shape_Error", "(40, 1)"),
    ("np.full(len(X), np.nan)", "Output_Value_Error", "non-finite"),
    ("np.full(len(X), 8)", "Output_Value_Error", "outside 0..7"),
    ("np.full(len(X), -1)", "Output_Value_Error", "outside 0..7"),
    ("np.full(len(X), 0.37)", "Output_Value_Error", "non-integer"),
    ("np.array(['a'] * len(X))", "Output_Value_Error", "dtype"),
    ("[[1, 2], [3]]", "Output_Value_Error", "not a regular array"),
])
def test_output_checks(tmp_path, body, status, needle):
    res = run(tmp_path, f"import numpy as np\nclass Model:\n    def predict(self, X):\n        return {body}\n")
    assert res.status == status, res.message + res.stderr_tail
    assert needle in res.message


def test_integer_valued_floats_and_lists_are_accepted(tmp_path):
    images, labels = fixture_images()
    res = run(tmp_path, "class Model:\n    def predict(self, X):\n        return [float(v % 8) for v in X[:, 0, 0, 0]]\n",
              images)
    assert res.status == "ok", res.message
    np.testing.assert_array_equal(res.predictions, labels)


def test_chunks_of_different_shapes_are_a_shape_error(tmp_path):
    src = ("import numpy as np\nclass Model:\n    def __init__(self):\n        self.calls = 0\n"
           "    def predict(self, X):\n        self.calls += 1\n"
           "        return np.zeros(len(X)) if self.calls == 1 else np.zeros((len(X), 8))\n")
    res = run(tmp_path, src, chunk=16)
    assert res.status == "Output_Shape_Error" and "different shapes" in res.message


SLEEPER = """
import os, subprocess, time
PIDS = {pids!r}
class Model:
    def predict(self, X):
        child = subprocess.Popen(["sleep", "300.5151"])         # same process group
        pid = os.fork()
        if pid == 0:                                             # a daemon: double fork + setsid
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.execvp("sleep", ["sleep", "301.5151"])
            os._exit(0)
        os.waitpid(pid, 0)
        with open(PIDS, "w") as f:
            f.write(str(child.pid))
        time.sleep(300)
"""


def test_time_limit_kills_the_whole_tree_within_two_seconds(tmp_path):
    pids_file = tmp_path / "pids.txt"
    limit = 2.0
    t0 = time.time()
    res = run(tmp_path, SLEEPER.format(pids=str(pids_file)), time_limit_s=limit)
    wall = time.time() - t0
    assert res.status == "Execution_Time_Limit_Exceeded"
    assert limit <= res.elapsed_s <= limit + 2.0
    assert wall <= limit + 2.0 + 1.0  # + copying/extracting the zip before the clock starts
    assert res.stage_reached == "predict" and set(res.stages) == {"start", "import", "init", "predict"}
    assert "2 s limit" in res.message and "0/40 images" in res.message
    assert pids_file.exists(), "the sleeper got to spawn its children before the limit"
    time.sleep(0.2)
    assert _alive_with("300.5151") == [] and _alive_with("301.5151") == [], "orphans left behind"


def test_time_limit_counts_imports_and_init(tmp_path):
    src = "import time\ntime.sleep(30)\nclass Model:\n    pass\n"
    res = run(tmp_path, src, time_limit_s=1.5)
    assert res.status == "Execution_Time_Limit_Exceeded"
    assert res.stage_reached == "import" and "predict" not in res.stages
    assert res.elapsed_s < 3.5


HOG = """
import time
import numpy as np
class Model:
    def predict(self, X):
        blocks = []
        for _ in range(48):                        # up to 1.5 GB (np.ones touches every page), ~1.5 GB/s
            blocks.append(np.ones(32 << 20, np.uint8))
            time.sleep(0.02)
        return np.zeros(len(X), np.int64)
"""


def test_memory_hog_is_out_of_memory(tmp_path):
    res = run(tmp_path, HOG, memory_limit_mb=300)
    assert res.status == "Out_Of_Memory", res.message
    assert "limit 300 MB" in res.message
    # How far past the limit the hog gets depends on how loaded the machine is (polled every 50 ms).
    assert res.peak_memory_mb > 300
    # Without the limit the same zip runs: the limit, not the zip, made it fail.
    assert run(tmp_path, HOG).status == "ok"


def test_memory_error_is_out_of_memory(tmp_path):
    src = "import numpy as np\nclass Model:\n    def predict(self, X):\n        return np.ones(1 << 62, np.uint8)\n"
    res = run(tmp_path, src)
    assert res.status == "Out_Of_Memory" and "MemoryError" in res.message


def test_sigkill_not_sent_by_the_runner_is_out_of_memory(tmp_path):
    # What the kernel's OOM killer does to a container's process: SIGKILL.
    src = "import os, signal\nclass Model:\n    def predict(self, X):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
    res = run(tmp_path, src)
    assert res.status == "Out_Of_Memory" and "SIGKILL" in res.message


def test_a_crash_by_another_signal_keeps_its_stage(tmp_path):
    src = "import os, signal\nclass Model:\n    def __init__(self):\n        os.kill(os.getpid(), signal.SIGSEGV)\n"
    res = run(tmp_path, src)
    assert res.status == "Init_Error" and "SIGSEGV" in res.message


# ------------------------------------------------------------------------------------------------- cwd
CWD_RELATIVE = """
import numpy as np
class Model:
    def __init__(self):
        self.offset = int(open("offset.txt").read())      # relative to the working directory
    def predict(self, X):
        return (X[:, 0, 0, 0].astype(np.int64) + self.offset) % 8
"""


def test_working_directory_modes(tmp_path):
    images, labels = fixture_images(16)
    zip_path = model_zip(tmp_path, CWD_RELATIVE, extra={"offset.txt": "0"})
    ok = run_submission(zip_path, images, n_classes=N_CLASSES, cwd_mode="submission")
    assert ok.status == "ok" and ok.cwd.endswith("ingested_program")
    bad = run_submission(zip_path, images, n_classes=N_CLASSES, cwd_mode="program")
    assert bad.status == "Init_Error" and "offset.txt" in bad.message and bad.cwd.endswith("program")


# ------------------------------------------------------------------------------------------------- checks
def test_check_predictions_unit():
    assert check_predictions(np.array([0, 7, 3]), 3, 8)[0] == "ok"
    assert check_predictions(np.array([0.0, 7.0, 3.0]), 3, 8)[2].dtype == np.int64
    assert check_predictions(np.array([True, False, True]), 3, 8)[0] == "Output_Value_Error"
    assert check_predictions(np.zeros((3, 8)), 3, 8)[0] == "Output_Shape_Error"
    assert check_predictions(np.zeros(0, np.int64), 0, 8)[0] == "ok"
    assert check_predictions(np.int64(3), 1, 8)[0] == "Output_Shape_Error"
