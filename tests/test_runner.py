"""The runner: real zips, real subprocesses, one zip per status (local_bench/runner.py); the process-tree
supervisor on real process trees (local_bench/proctree.py); the status classifier and the stderr filter on plain
values (local_bench/classify.py, local_bench/stderr_filter.py).

The submissions are small hand-written model.py files (numpy only, so each run costs ~0.3 s, not a TensorFlow
import); a real Keras zip runs in test_score_cli.py (test_keras_template_zip_scores_like_the_model_in_process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_zip
from subbench.local_bench.classify import STATUSES, classify
from subbench.local_bench.proctree import ProcessTree, StartError, run_tree
from subbench.local_bench.runner import RunSpec, check_predictions, execute, run_sets, run_submission
from subbench.local_bench.stderr_filter import is_startup_noise, summarize

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



# ------------------------------------------------------------------------------------------------- run spec
def test_run_spec_is_frozen_and_checks_the_cwd_mode(tmp_path):
    spec = RunSpec(model_zip(tmp_path, PERFECT), n_classes=N_CLASSES, time_limit_s=30)
    with pytest.raises(AttributeError):
        spec.time_limit_s = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="cwd_mode"):
        RunSpec(tmp_path, n_classes=N_CLASSES, cwd_mode="home")
    images, labels = fixture_images(8)
    res = execute(spec, [("a", images), ("b", images[:3])])
    assert res.ok, res.message + res.stderr_tail
    np.testing.assert_array_equal(res.set_predictions["b"], labels[:3])


# ------------------------------------------------------------------------------------------------- process tree
def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_tree_at_the_time_limit_is_killed_whole(tmp_path):
    t0 = time.time()
    ended = run_tree(_sh("sleep 100.7171 & sleep 100.7272 & wait"), time_limit_s=1.0)
    assert ended.killed_for == "time" and ended.returncode == -signal.SIGKILL
    assert 1.0 <= ended.elapsed_s <= 2.0 and time.time() - t0 < 3.0
    time.sleep(0.1)
    assert _alive_with("100.7171") == [] and _alive_with("100.7272") == []


def test_tree_left_in_the_background_is_killed_when_the_root_exits():
    ended = run_tree(_sh("sleep 100.7373 & exit 4"), time_limit_s=30)
    assert ended.killed_for is None and ended.returncode == 4 and ended.elapsed_s < 5
    time.sleep(0.1)
    assert _alive_with("100.7373") == []


def test_tree_finds_a_daemon_that_left_the_session():
    # Double fork + setsid: neither the process group nor the parent links reach it; the token does.
    daemon = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        os.execvp('sleep', ['sleep', '100.7474'])\n    os._exit(0)\nos.wait()\n")
    ended = run_tree([sys.executable, "-c", daemon], time_limit_s=30)
    assert ended.returncode == 0 and ended.killed_for is None
    time.sleep(0.1)
    assert _alive_with("100.7474") == []


def test_tree_over_the_memory_limit_is_killed_and_its_peak_counts_children():
    # The memory is held by a grandchild: the limit is over the whole tree, not the root alone.
    hog = ("import time, numpy as np\nblocks = []\nfor _ in range(40):\n"
           "    blocks.append(np.ones(16 << 20, np.uint8)); time.sleep(0.02)\ntime.sleep(100.7575)\n")
    ended = run_tree(_sh(f"{sys.executable} -c '{hog}' 100.7575; true"), time_limit_s=30, memory_limit_mb=200)
    assert ended.killed_for == "memory" and ended.returncode == -signal.SIGKILL
    assert ended.peak_rss_mb > 200
    time.sleep(0.1)
    assert _alive_with("100.7575") == []


def test_tree_interrupted_by_the_caller_is_killed_and_reaped():
    calls = []

    def interrupt(now):
        calls.append(now)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tree(_sh("sleep 100.7676 & sleep 100.7777"), on_poll=interrupt)
    time.sleep(0.1)
    assert _alive_with("100.7676") == [] and _alive_with("100.7777") == []


def test_a_command_that_cannot_start(tmp_path):
    with pytest.raises(StartError, match="cannot start"):
        run_tree([str(tmp_path / "no-python")])
    res = run(tmp_path, PERFECT, python=str(tmp_path / "no-python"))
    assert res.status == "Import_Error" and res.message.startswith("cannot start")


def test_process_tree_kill_all_on_a_tree_it_did_not_start():
    proc = subprocess.Popen(_sh("sleep 100.7878 & sleep 100.7979"), start_new_session=True)
    try:
        time.sleep(0.2)
        tree = ProcessTree(proc.pid)
        tree.scan()
        assert len(tree.pids) >= 2 and tree.rss_mb() > 0
        tree.kill_all()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert _alive_with("100.7878") == [] and _alive_with("100.7979") == []
    finally:
        proc.kill()


# ------------------------------------------------------------------------------------------------- classify
def _labels(n=4):
    return np.arange(n) % N_CLASSES


def _classify(**kw):
    base = dict(returncode=0, n_classes=N_CLASSES, stage_reached="done", outputs=[("test", 4, _labels())])
    return classify(**{**base, **kw})


def test_classify_ok():
    verdict = _classify()
    assert verdict.status == "ok" and verdict.message == ""
    np.testing.assert_array_equal(verdict.labels["test"], _labels())
    assert _classify(outputs=[("test", 4, _labels().astype(float))]).labels["test"].dtype == np.int64


def test_classify_import_error():
    err = {"stage": "import", "type": "ModuleNotFoundError", "message": "No module named 'torch'"}
    verdict = _classify(returncode=1, stage_reached="import", error=err, outputs=[])
    assert verdict.status == "Import_Error"
    assert verdict.message == "ModuleNotFoundError: No module named 'torch' (in from model import Model)"
    # A death before the import finished, without an error record, is an import error too.
    assert _classify(returncode=1, stage_reached="start", outputs=[]).status == "Import_Error"


def test_classify_init_error():
    err = {"stage": "init", "type": "FileNotFoundError", "message": "weights.keras"}
    assert _classify(returncode=1, stage_reached="init", error=err).status == "Init_Error"
    verdict = _classify(returncode=-signal.SIGSEGV, stage_reached="init")
    assert verdict.status == "Init_Error" and "SIGSEGV during init" in verdict.message


def test_classify_predict_error():
    err = {"stage": "predict", "type": "ValueError", "message": "bad input\nsecond line"}
    verdict = _classify(returncode=1, stage_reached="predict", error=err)
    assert verdict.status == "Predict_Error" and verdict.message == "ValueError: bad input (in predict)"
    verdict = _classify(returncode=3, stage_reached="predict")
    assert verdict.status == "Predict_Error" and "code 3" in verdict.message
    verdict = _classify(stage_reached="done", outputs=[("test", 4, None)])
    assert verdict.status == "Predict_Error" and "without writing all predictions" in verdict.message


def test_classify_output_shape_error():
    verdict = _classify(outputs=[("test", 4, np.eye(8)[_labels()])])
    assert verdict.status == "Output_Shape_Error" and "argmax" in verdict.message
    err = {"stage": "output", "type": "ShapeMismatch", "message": "chunks returned arrays of different shapes"}
    assert _classify(returncode=1, stage_reached="predict", error=err).status == "Output_Shape_Error"
    two = _classify(outputs=[("clean", 4, _labels()), ("noisy", 4, _labels()[:3])])
    assert two.status == "Output_Shape_Error" and two.message.startswith("set noisy: ")


def test_classify_output_value_error():
    verdict = _classify(outputs=[("test", 4, np.full(4, 9))])
    assert verdict.status == "Output_Value_Error" and "outside 0..7" in verdict.message
    verdict = _classify(outputs=[("test", 4, "cannot reshape")])
    assert verdict.status == "Output_Value_Error" and "unreadable: cannot reshape" in verdict.message
    err = {"stage": "output", "type": "NotNumeric", "message": "predict returned list of Python objects"}
    assert _classify(returncode=1, stage_reached="predict", error=err).status == "Output_Value_Error"


def test_classify_execution_time_limit_exceeded():
    verdict = _classify(returncode=-signal.SIGKILL, killed_for="time", stage_reached="predict", elapsed_s=2.04,
                        time_limit_s=2, images_done=16, images_total=40,
                        error={"stage": "predict", "type": "ValueError", "message": "late"})
    assert verdict.status == "Execution_Time_Limit_Exceeded"
    assert verdict.message == "killed during predict at the 2 s limit (elapsed 2.0 s, 16/40 images predicted)"
    assert "images" not in _classify(killed_for="time", stage_reached="import", time_limit_s=2).message


def test_classify_out_of_memory():
    verdict = _classify(returncode=-signal.SIGKILL, killed_for="memory", stage_reached="predict",
                        peak_memory_mb=312.4, memory_limit_mb=300)
    assert verdict.status == "Out_Of_Memory" and "312 MB > limit 300 MB during predict" in verdict.message
    sigkill = _classify(returncode=-signal.SIGKILL, stage_reached="predict")  # not sent by the runner
    assert sigkill.status == "Out_Of_Memory" and "SIGKILL" in sigkill.message
    err = {"stage": "predict", "type": "MemoryError", "message": ""}
    assert _classify(returncode=1, stage_reached="predict", error=err).status == "Out_Of_Memory"
    abort = _classify(returncode=-signal.SIGABRT, stage_reached="init",
                      stderr="terminate called after throwing an instance of 'std::bad_alloc'")
    assert abort.status == "Out_Of_Memory"


def test_classify_covers_every_status():
    seen = {
        _classify().status,
        _classify(returncode=1, stage_reached="import").status,
        _classify(returncode=1, stage_reached="init").status,
        _classify(returncode=1, stage_reached="predict").status,
        _classify(outputs=[("test", 4, _labels()[:2])]).status,
        _classify(outputs=[("test", 4, np.full(4, -1))]).status,
        _classify(killed_for="time", stage_reached="init", time_limit_s=1).status,
        _classify(killed_for="memory", stage_reached="init", memory_limit_mb=1).status,
    }
    assert seen == set(STATUSES)
    with pytest.raises(ValueError):
        _classify(killed_for="cpu")


# ------------------------------------------------------------------------------------------------- stderr tail
TF_CHATTER = [
    "2024-11-14 10:12:33.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different computation "
    "orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "2024-11-14 10:12:33.130000: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:485] Unable to register "
    "cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "E0000 00:00:1731579153.123456   12345 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
    "register factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1731579153.130001   12345 cuda_blas.cc:1418] Unable to register cuBLAS factory: Attempting to "
    "register factory for plugin cuBLAS when one has already been registered",
    "2024-11-14 10:12:34.001: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not "
    "find TensorRT",
    "I0000 00:00:1731579154.5   12345 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "W0000 00:00:1731579155.2   12345 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    "E0000 00:00:1731579155.9   12345 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "oneDNN custom operations are on. You may see slightly different numerical results.",
    "Could not find cuda drivers on your machine, GPU will not be used.",
]

OWN_LINES = [
    "Traceback (most recent call last):",
    '  File "/app/ingested_program/model.py", line 9, in predict',
    "    return self.model.predict(X)",
    "ValueError: Input 0 of layer \"functional\" is incompatible with the layer",
    "F0000 00:00:1731579155.9   12345 check_op.cc:12] Check failed: ptr != nullptr",
    "2024-11-14 10:12:40.5: W tensorflow/core/framework/op_kernel.cc:1828] OP_REQUIRES failed at "
    "matmul_op.cc:79 : RESOURCE_EXHAUSTED: OOM when allocating tensor with shape[64,1024]",
    "I tried to load the weights",
    "WARNING:absl:Compiled the loaded model, but the compiled metrics have yet to be built.",
]


@pytest.mark.parametrize("line", TF_CHATTER)
def test_startup_chatter_is_noise(line):
    assert is_startup_noise(line)


@pytest.mark.parametrize("line", OWN_LINES)
def test_the_submission_s_lines_are_kept(line):
    assert not is_startup_noise(line)


def test_summarize_ends_with_the_submission_s_error():
    text = "\n".join(TF_CHATTER[:3] + OWN_LINES[:4] + TF_CHATTER[3:] + ["", ""])
    tail = summarize(text)
    assert tail.splitlines() == OWN_LINES[:4]
    assert summarize(text, lines=2).splitlines() == OWN_LINES[2:4]
    assert summarize("\n".join(TF_CHATTER)) == ""


CHATTY_CRASH = """
import os, signal, sys, traceback
CHATTER = {chatter!r}
class Model:
    def predict(self, X):
        try:
            raise RuntimeError("the submission's own error")
        except RuntimeError:
            traceback.print_exc()
        sys.stderr.write(CHATTER)            # what TensorFlow logs from C++ as the process goes down
        sys.stderr.flush()
        os.kill(os.getpid(), signal.{sig})
"""


@pytest.mark.parametrize("sig, status", [("SIGKILL", "Out_Of_Memory"), ("SIGTERM", "Predict_Error")])
def test_stderr_tail_ends_with_the_traceback_not_tensorflow_s_chatter(tmp_path, sig, status):
    chatter = "\n".join(TF_CHATTER) + "\n"
    res = run(tmp_path, CHATTY_CRASH.format(chatter=chatter, sig=sig))
    assert res.status == status, res.message + res.stderr_tail
    assert res.stderr_tail.splitlines()[-1] == "RuntimeError: the submission's own error"
    assert res.stderr_tail.splitlines()[0] == "Traceback (most recent call last):"
    assert "cuInit" not in res.stderr_tail
    # The whole stderr is kept, chatter included.
    assert "failed call to cuInit" in res.stderr and res.stderr.rstrip().endswith("GPU will not be used.")
