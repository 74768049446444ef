"""Competition bundles run the way Codabench's compute worker runs them (local_bench/bundle_*.py): real bundles
built here (competition.yaml version 2 with folders and with inner zips, the legacy Codalab layout), real
submissions, real subprocesses, one clock per step, process trees killed at the limit; `subbench bundle make`
round trip against `subbench score`.

The programs are small stdlib-only scripts (each run costs a Python start-up, ~0.1 s).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_zip
from subbench import api
from subbench.local_bench.bundle_result import FAILURES, BundleScore, failure_exit_code
from subbench.local_bench.bundle_spec import BundleFileError, BundleKeyError, BundleSelectionError, open_bundle
from subbench.local_bench.bundle_worker import app_mode, replace_legacy_metadata_command
from subbench.local_bench.safezip import ZipSlipError, ZipSymlinkError
from test_runner import PERFECT, _alive_with, fixture_images
from test_score import ALMOST, npz

DATA = [1, 2, 3, 4]
TRUTH = [1, 0, 1, 0]
MODEL = "def predict(x):\n    return x % 2\n"          # accuracy 1.0
HALF = "def predict(x):\n    return 1\n"                # accuracy 0.5

INGEST = """
import json, os, sys
inp, out, sub = sys.argv[1:4]
sys.path.append(sub)
from model import predict
xs = json.load(open(os.path.join(inp, "data.json")))
json.dump([predict(x) for x in xs], open(os.path.join(out, "predictions.json"), "w"))
print("ingestion cwd", os.getcwd(), "unbuffered", os.environ.get("PYTHONUNBUFFERED"))
"""
INGEST_META = "command: python3 /app/program/ingestion.py /app/input_data /app/output /app/ingested_program\n"

SCORE = """
import json, os, sys
inp, out = sys.argv[1:3]
truth = json.load(open(os.path.join(inp, "ref", "truth.json")))
pred = json.load(open(os.path.join(inp, "res", "predictions.json")))
acc = sum(a == b for a, b in zip(truth, pred)) / len(truth)
json.dump({"accuracy": acc, "n": len(truth)}, open(os.path.join(out, "scores.json"), "w"))
open(os.path.join(out, "detailed_results.html"), "w").write("<p>accuracy %s</p>" % acc)
"""
SCORE_META = "command: python $program/score.py $input $output\n"   # Codalab variables: the worker replaces them

SLEEPER = """
import subprocess, sys, time
# a child in its own session (setsid) and a grandchild: the whole tree must go at the limit
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]])
time.sleep(300)
"""


# ------------------------------------------------------------------------------------------------ builders
def write_tree(root: Path, files: dict) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def zip_tree(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return dest


def programs(ingestion=INGEST, ingestion_meta=INGEST_META, scoring=SCORE, scoring_meta=SCORE_META,
             truth=TRUTH) -> dict:
    parts = {"input_data": {"data.json": json.dumps(DATA)}, "reference_data": {"truth.json": json.dumps(truth)},
             "scoring_program": {"score.py": scoring}}
    if scoring_meta is not None:
        parts["scoring_program"]["metadata.yaml"] = scoring_meta
    if ingestion is not None:
        parts["ingestion_program"] = {"ingestion.py": ingestion}
        if ingestion_meta is not None:
            parts["ingestion_program"]["metadata"] = ingestion_meta
    return parts


def v2_bundle(tmp: Path, name: str = "bundle", *, inner_zips: bool = False, as_zip: bool = True, limit=30,
              extra_tasks: int = 0, columns=None, phase_extra=None, top_extra=None, **kw) -> Path:
    folder = tmp / f"{name}_src"
    parts = programs(**kw)
    task = {"index": 0, "name": "Task A"}
    for kind, files in parts.items():
        if inner_zips:
            sub = write_tree(tmp / f"{name}_{kind}", files)
            (folder / "zips").mkdir(parents=True, exist_ok=True)
            zip_tree(sub, folder / "zips" / f"{kind}.zip")
            task[kind] = f"zips/{kind}.zip"
        else:
            write_tree(folder / kind, files)
            task[kind] = kind
    tasks = [task] + [{**task, "index": i + 1, "name": f"Task {i + 1}"} for i in range(extra_tasks)]
    spec = {"version": 2, "title": "Test competition", "image": "logo.png", "terms": "terms.md",
            "docker_image": "codalab/codalab-legacy:py39", "enable_detailed_results": True, "tasks": tasks,
            "phases": [{"index": 0, "name": "Development", "start": "2024-01-01", "execution_time_limit": limit,
                        "tasks": [t["index"] for t in tasks], **(phase_extra or {})}],
            "leaderboards": [{"index": 0, "title": "Results", "key": "main", "columns": columns or [
                {"index": 0, "title": "Accuracy", "key": "accuracy", "sorting": "desc", "precision": 3},
                {"index": 1, "title": "Images", "key": "n", "precision": 0}]}],
            **(top_extra or {})}
    write_tree(folder, {"competition.yaml": yaml.safe_dump(spec, sort_keys=False), "logo.png": b"\x89PNG",
                        "terms.md": "terms"})
    return zip_tree(folder, tmp / f"{name}.zip") if as_zip else folder


LEGACY_YAML = """
title: Legacy competition
description: a Codalab 1.5 bundle
image: logo.png
has_registration: False
html:
  overview: overview.html
  terms: terms.html
competition_docker_image: codalab/codalab-legacy:py3
phases:
  1:
    phasenumber: 1
    label: Development
    start_date: 2020-01-01
    execution_time_limit: 40
    ingestion_program: ingestion_program.zip
    input_data: input_data.zip
    reference_data: reference_data.zip
    scoring_program: scoring_program.zip
  2:
    phasenumber: 2
    label: Final
    start_date: 2021-01-01
    execution_time_limit: 900
    ingestion_program: ingestion_program.zip
    input_data: input_data.zip
    reference_data: reference_final.zip
    scoring_program: scoring_program.zip
leaderboard:
  leaderboards:
    RESULTS: &RESULTS
      label: Results
      rank: 1
  columns:
    acc:
      leaderboard: *RESULTS
      label: Accuracy
      rank: 1
      numeric_format: 3
    time_s:
      leaderboard: *RESULTS
      label: Time
      rank: 2
"""
LEGACY_INGEST_META = "command: python $program/ingestion.py $input $output $submission_program\n"
LEGACY_SCORE = """
import json, os, sys
inp, out = sys.argv[1:3]
truth = json.load(open(os.path.join(inp, "ref", "truth.json")))
pred = json.load(open(os.path.join(inp, "res", "predictions.json")))
acc = sum(a == b for a, b in zip(truth, pred)) / len(truth)
open(os.path.join(out, "scores.txt"), "w").write("acc: %s\\n" % acc)
"""


def legacy_bundle(tmp: Path) -> Path:
    folder = tmp / "legacy_src"
    parts = programs(ingestion_meta=LEGACY_INGEST_META, scoring=LEGACY_SCORE)
    folder.mkdir(parents=True)
    for kind, files in parts.items():
        zip_tree(write_tree(tmp / f"legacy_{kind}", files), folder / f"{kind}.zip")
    zip_tree(write_tree(tmp / "legacy_final", {"truth.json": json.dumps([1, 1, 1, 1])}),
             folder / "reference_final.zip")
    write_tree(folder, {"competition.yaml": LEGACY_YAML, "logo.png": b"\x89PNG", "overview.html": "o",
                        "terms.html": "t"})
    return zip_tree(folder, tmp / "legacy.zip")


def submission(tmp: Path, files: dict, name: str = "sub.zip") -> Path:
    return write_zip(tmp / name, files)


def score(sub, bundle, **kw) -> BundleScore:
    return api.score_bundle(sub, bundle, **kw)


def cli_json(*args, **kw):
    res = run_cli("score", *args, "--json", **kw)
    return res, (json.loads(res.stdout) if res.stdout.strip().startswith("{") else None)


# ------------------------------------------------------------------------------------------------ bundle formats
def test_v2_folders_ingestion_and_code_submission_like_the_worker(tmp_path):
    bundle = v2_bundle(tmp_path, as_zip=False)
    sub = submission(tmp_path, {"model.py": MODEL})
    out = tmp_path / "out"
    res, data = cli_json(str(sub), "--bundle", str(bundle), "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert data["status"] == "Finished" and data["failure"] is None and data["kind"] == "bundle"
    assert data["leaderboard_key"] == "accuracy" and data["value"] == 1.0
    assert [(c["key"], c["value"], c["present"]) for c in data["columns"]] == [("accuracy", 1.0, True),
                                                                                ("n", 4.0, True)]
    pred, scoring = data["steps"]
    # prediction: the submission has no metadata, so the worker copies it to the output; the ingestion program runs
    roles = {p["role"]: p for p in pred["programs"]}
    assert roles["submission"]["action"] == "copied" and roles["ingestion program"]["action"] == "ran"
    assert roles["ingestion program"]["command"] == INGEST_META.split(": ", 1)[1].strip()
    assert set(pred["output_files"]) == {"model.py", "predictions.json", "metadata"}
    meta = yaml.safe_load((out / "prediction" / "output" / "metadata").read_text())
    assert meta["exitCode"] is None and meta["ingestionExitCode"] == 0
    assert meta["elapsedTime"] == meta["ingestionElapsedTime"] > 0   # push_output: program time, else ingestion's
    stdout = (out / "prediction" / "logs" / "prediction_ingestion_stdout.txt").read_text()
    assert "unbuffered 1" in stdout
    if data["app_paths"] == "namespace":
        assert "ingestion cwd /app/program" in stdout                 # working_dir="/app/program"
    # scoring: $program/$input/$output replaced like replace_legacy_metadata_command
    assert scoring["programs"][0]["command"] == "python /app/program/score.py /app/input /app/output"
    smeta = yaml.safe_load((out / "scoring" / "output" / "metadata").read_text())
    assert smeta["exitCode"] == 0 and smeta["ingestionExitCode"] is None
    assert (out / "scoring" / "logs" / "scoring_stderr.txt").exists()
    assert data["detailed_results"] == "detailed_results.html"
    assert "accuracy 1.0" in (out / "detailed_results.html").read_text()
    report = (out / "report.html").read_text()
    assert 'href="detailed_results.html"' in report and "Accuracy" in report and 'class="sbr"' in report
    loaded = BundleScore.load(out)
    assert loaded.value == 1.0 and loaded.read(loaded.detailed_results).startswith("<p>accuracy")


def test_v2_inner_zips_in_a_zipped_bundle_and_task_selection(tmp_path):
    bundle = v2_bundle(tmp_path, inner_zips=True, extra_tasks=1)
    sub = submission(tmp_path, {"model.py": HALF})
    r = score(sub, bundle)
    assert r.status == "Finished" and r.value == 0.5 and r.task == {"index": 0, "name": "Task A"}
    assert any("has 2 tasks" in w and "--task" in w for w in r.warnings)
    r1 = score(sub, bundle, task=1)
    assert r1.ok and r1.task["index"] == 1 and r1.value == 0.5
    with pytest.raises(BundleSelectionError, match="task 5 is not a task"):
        score(sub, bundle, task=5)
    with pytest.raises(BundleSelectionError, match="no phase 'Final'"):
        score(sub, bundle, phase="Final")


def test_legacy_layout_phases_zips_scores_txt_and_missing_column(tmp_path):
    bundle = legacy_bundle(tmp_path)
    sub = submission(tmp_path, {"model.py": MODEL})
    r = score(sub, bundle)
    assert r.status == "Finished", (r.message, r.warnings)
    assert r.bundle["version"] == "1" and r.bundle["docker_image"] == "codalab/codalab-legacy:py3"
    assert r.phase == {"index": 0, "name": "Development"} and r.time_limit_s == 40
    assert r.scores_file == "scores.txt" and r.scores == {"acc": 1.0}
    assert r.leaderboard_key == "acc" and r.value == 1.0
    assert [c.key for c in r.columns] == ["acc", "time_s"] and not r.columns[1].present
    assert any("'time_s' missing from the scores" in w for w in r.warnings)
    ingest = r.program("prediction", "ingestion program")
    assert ingest.command == "python /app/program/ingestion.py /app/input_data /app/output /app/ingested_program"
    final = score(sub, bundle, phase="Final")
    # the Final phase says 900 s; without a competition queue the worker caps it at 600 s
    assert final.phase["name"] == "Final" and final.value == 0.5 and final.time_limit_s == 600
    info = api.bundle_inspect(bundle)
    assert info.runnable and [p.effective_time_limit for p in info.phases] == [40, 600]
    assert info.docker_image == "codalab/codalab-legacy:py3"


def test_task_without_ingestion_runs_the_submissions_metadata_command(tmp_path):
    bundle = v2_bundle(tmp_path, ingestion=None)
    predict = ("import json, os, sys\nxs = json.load(open(os.path.join(sys.argv[1], 'data.json')))\n"
               "json.dump([x % 2 for x in xs], open(os.path.join(sys.argv[2], 'predictions.json'), 'w'))\n")
    sub = submission(tmp_path, {"metadata": "command: python3 /app/program/predict.py /app/input_data /app/output\n",
                                "predict.py": predict})
    r = score(sub, bundle)
    assert r.ok and r.value == 1.0
    prog = r.program("prediction", "submission")
    assert prog.action == "ran" and prog.exit_code == 0 and r.steps[0].metadata["exitCode"] == 0
    assert r.steps[0].metadata["ingestionExitCode"] is None
    # Codalab's $input is /app/input for a submission, which the worker does not mount in the prediction step
    legacy = submission(tmp_path, {"metadata": "command: python3 $program/predict.py $input $output\n",
                                   "predict.py": predict}, "legacy_sub.zip")
    r2 = score(legacy, bundle)
    assert not r2.ok and r2.failure == "Scores_Not_Found"
    assert "/app/input, which the worker does not mount" in r2.program("prediction", "submission").note
    assert r2.program("prediction", "submission").exit_code == 1


def test_results_only_submission_is_copied_to_the_output(tmp_path):
    bundle = v2_bundle(tmp_path, ingestion=None)
    sub = submission(tmp_path, {"predictions.json": json.dumps([1, 0, 0, 0])})
    r = score(sub, bundle)
    assert r.ok and r.value == 0.75
    assert r.program("prediction", "submission").action == "copied"
    assert r.steps[0].metadata == {"exitCode": None, "elapsedTime": None, "ingestionExitCode": None,
                                   "ingestionElapsedTime": None}


# ------------------------------------------------------------------------------------------------ failures
def test_missing_command_in_the_ingestion_metadata_fails_the_prediction_step(tmp_path):
    bundle = v2_bundle(tmp_path, ingestion_meta="description: no command here\n")
    sub = submission(tmp_path, {"model.py": MODEL})
    res, data = cli_json(str(sub), "--bundle", str(bundle))
    assert res.returncode == failure_exit_code("Missing_Command") == 22
    assert data["status"] == "Failed" and data["failed_step"] == "prediction"
    assert data["message"] == "Program directory missing 'command' in metadata"
    assert [s["step"] for s in data["steps"]] == ["prediction"]          # no scoring step
    nometa = v2_bundle(tmp_path, "nometa", ingestion_meta=None)
    r = score(sub, nometa)
    assert r.failure == "Missing_Metadata" and r.message == "Program directory missing 'metadata.yaml/metadata'"


def test_scoring_program_that_crashes_or_writes_no_scores(tmp_path):
    sub = submission(tmp_path, {"model.py": MODEL})
    crash = v2_bundle(tmp_path, "crash", scoring="import not_a_module_subbench_xyz\n")
    r = score(sub, crash)
    assert r.status == "Failed" and r.failure == "Scores_Not_Found" and r.failed_step == "scoring"
    assert r.message == "Could not find scores file, did the scoring program output it?"
    prog = r.program("scoring", "scoring program")
    assert prog.exit_code == 1 and "ModuleNotFoundError" in prog.stderr_tail
    assert prog.missing_module == "not_a_module_subbench_xyz"
    assert any(w.startswith("the scoring program imports not_a_module_subbench_xyz, not installed in ")
               and w.endswith("the competition's image is codalab/codalab-legacy:py39") for w in r.warnings)
    assert r.steps[0].metadata["ingestionExitCode"] == 0 and r.steps[1].metadata is None
    assert all(not c.present for c in r.columns) and r.value is None
    silent = v2_bundle(tmp_path, "silent", scoring="print('scored nothing')\n")
    r = score(sub, silent)
    assert r.failure == "Scores_Not_Found" and r.program("scoring", "scoring program").exit_code == 0
    garbled = v2_bundle(tmp_path, "garbled",
                        scoring="import os, sys\nopen(os.path.join(sys.argv[2], 'scores.json'), 'w').write('{oops')\n")
    r = score(sub, garbled)
    assert r.failure == "Scores_Not_Decodable"
    assert r.message.startswith("Could not decode scores json properly, it contains an error.\n")


def test_scoring_program_without_metadata_is_copied_to_the_output_and_scores_nothing(tmp_path):
    r = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, scoring_meta=None), out=tmp_path / "o")
    assert r.failure == "Scores_Not_Found" and r.program("scoring", "scoring program").action == "copied"
    assert (tmp_path / "o" / "scoring" / "output" / "score.py").exists()


SHARED_INGEST = """
import json, os, sys
sub, inp, shared = sys.argv[1:4]
sys.path.append(sub)
from model import predict
xs = json.load(open(os.path.join(inp, 'data.json')))
json.dump([predict(x) for x in xs], open(os.path.join(shared, 'tmp.json'), 'w'))
os.replace(os.path.join(shared, 'tmp.json'), os.path.join(shared, 'predictions.json'))
"""
SHARED_SCORE = """
import json, os, sys, time
shared, inp, out = sys.argv[1:4]
for _ in range(200):
    if os.path.exists(os.path.join(shared, 'predictions.json')):
        break
    time.sleep(0.05)
pred = json.load(open(os.path.join(shared, 'predictions.json')))
truth = json.load(open(os.path.join(inp, 'ref', 'truth.json')))
acc = sum(a == b for a, b in zip(truth, pred)) / len(truth)
json.dump({'accuracy': acc, 'n': len(pred)}, open(os.path.join(out, 'scores.json'), 'w'))
"""


def test_ingestion_only_during_scoring_runs_beside_the_scoring_program(tmp_path):
    folder = v2_bundle(tmp_path, as_zip=False, ingestion=SHARED_INGEST, scoring=SHARED_SCORE,
                       ingestion_meta="command: python3 /app/program/ingestion.py /app/ingested_program "
                                      "/app/input_data /app/shared\n",
                       scoring_meta="command: python3 /app/program/score.py /app/shared /app/input /app/output\n")
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    spec["tasks"][0]["ingestion_only_during_scoring"] = True
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    r = score(submission(tmp_path, {"model.py": MODEL}), folder)
    assert r.ok and r.value == 1.0, (r.message, r.warnings)
    pred, scoring = r.steps
    assert [p.role for p in pred.programs] == ["submission"] and pred.programs[0].action == "copied"
    roles = {p.role: p for p in scoring.programs}
    assert roles["scoring program"].exit_code == 0 and roles["ingestion program"].exit_code == 0
    assert scoring.metadata["ingestionExitCode"] == 0 and scoring.metadata["exitCode"] == 0
    # the worker's $program is /app/ingestion_program in that case, which it does not mount
    (folder / "scoring_program" / "metadata.yaml").write_text("command: python3 $program/score.py /app/shared "
                                                              "/app/input /app/output\n")
    r = score(submission(tmp_path, {"model.py": MODEL}), folder)
    assert not r.ok and "/app/ingestion_program, which the worker does not mount" in \
        r.program("scoring", "scoring program").note


def test_scores_txt_yaml_is_read_when_there_is_no_scores_json(tmp_path):
    scoring = ("import os, sys\nopen(os.path.join(sys.argv[2], 'scores.txt'), 'w').write('accuracy: 0.25\\n"
               "n: 4\\nextra: 1\\n')\n")
    bundle = v2_bundle(tmp_path, scoring=scoring)
    r = score(submission(tmp_path, {"model.py": MODEL}), bundle)
    assert r.ok and r.scores_file == "scores.txt" and r.value == 0.25
    assert any("'extra' match no leaderboard column" in w for w in r.warnings)


def test_output_metadata_written_by_a_program_fails_like_push_output(tmp_path):
    ingestion = INGEST + "\nopen(os.path.join(out, 'metadata'), 'w').write('mine')\n"
    r = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, ingestion=ingestion))
    assert r.failure == "Metadata_Exists" and r.failed_step == "prediction"
    assert r.message.startswith("Error, the output directory already contains a metadata file.")


@pytest.mark.parametrize("step", ["prediction", "scoring"])
def test_timeout_in_each_step_kills_the_whole_tree(tmp_path, step):
    marker = f"subbench-bundle-sleeper-{uuid.uuid4().hex}"
    kw = ({"ingestion": SLEEPER, "ingestion_meta": f"command: python3 /app/program/ingestion.py {marker}\n"}
          if step == "prediction" else {"scoring": SLEEPER, "scoring_meta": f"command: python3 $program/score.py "
                                                                            f"{marker}\n"})
    bundle = v2_bundle(tmp_path, limit=2, **kw)
    sub = submission(tmp_path, {"model.py": MODEL})
    t0 = time.time()
    res, data = cli_json(str(sub), "--bundle", str(bundle), timeout=120)
    took = time.time() - t0
    assert res.returncode == failure_exit_code("Execution_Time_Limit_Exceeded") == 20, res.stderr
    assert data["failure"] == "Execution_Time_Limit_Exceeded" and data["failed_step"] == step
    assert data["message"] == "Execution Time Limit exceeded. Limit was 2 seconds"
    killed = [p for s in data["steps"] for p in s["programs"] if p["killed"]]
    assert len(killed) == 1 and killed[0]["exit_code"] == 137 and 1.9 < killed[0]["elapsed_s"] < 5
    assert [s["step"] for s in data["steps"]][-1] == step and data["steps"][-1]["metadata"] is None
    assert took < 30
    assert _alive_with(marker) == []                      # the sleeper, its setsid child and its grandchild


def test_time_limit_option_overrides_the_phase(tmp_path):
    marker = f"subbench-bundle-sleeper-{uuid.uuid4().hex}"
    bundle = v2_bundle(tmp_path, limit=600, ingestion=SLEEPER,
                       ingestion_meta=f"command: python3 /app/program/ingestion.py {marker}\n")
    r = score(submission(tmp_path, {"model.py": MODEL}), bundle, time_limit=1)
    assert r.failure == "Execution_Time_Limit_Exceeded" and r.message.endswith("Limit was 1 seconds")
    assert _alive_with(marker) == []


def test_detailed_results_falls_back_to_the_first_html_file(tmp_path):
    scoring = SCORE.replace("detailed_results.html", "zz_details.html")
    r = score(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path, scoring=scoring,
                                                                  top_extra={"enable_detailed_results": False}),
              out=tmp_path / "out")
    assert r.detailed_results == "detailed_results.html"
    assert (tmp_path / "out" / "detailed_results.html").read_text().startswith("<p>accuracy")
    assert any("does not set enable_detailed_results" in w for w in r.warnings)


# ------------------------------------------------------------------------------------------------ /app paths
HARDCODED = INGEST.replace("inp, out, sub = sys.argv[1:4]",
                           "inp, out, sub = '/app/input_data', '/app/output', '/app/ingested_program'")


@pytest.mark.skipif(app_mode()[0] != "namespace", reason="no private mount namespace here: " + app_mode()[1])
def test_paths_written_in_the_programs_code_resolve_in_the_private_namespace(tmp_path):
    bundle = v2_bundle(tmp_path, ingestion=HARDCODED, ingestion_meta="command: python3 /app/program/ingestion.py\n")
    sub = submission(tmp_path, {"model.py": MODEL})
    r = score(sub, bundle)
    assert r.ok and r.app_paths == "namespace" and r.value == 1.0
    assert not Path("/app/input_data").exists()                   # nothing mounted outside the namespace


def test_rewrite_mode_rewrites_commands_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBBENCH_APP_PATHS", "rewrite")
    sub = submission(tmp_path, {"model.py": MODEL})
    r = score(sub, v2_bundle(tmp_path))
    assert r.ok and r.app_paths == "rewrite" and r.value == 1.0
    assert any("rewritten to the local run folder" in w for w in r.warnings)
    argv = r.program("prediction", "ingestion program").argv
    assert argv[0] == sys.executable and not any(a.startswith("/app/") for a in argv)
    hard = score(sub, v2_bundle(tmp_path, "hard", ingestion=HARDCODED,
                                ingestion_meta="command: python3 /app/program/ingestion.py\n"))
    assert not hard.ok and "No module named 'model'" in hard.program("prediction", "ingestion program").stderr_tail
    assert any("could not import the submission's module model" in w for w in hard.warnings)
    info = api.bundle_inspect(v2_bundle(tmp_path, "hard2", ingestion=HARDCODED))
    assert any("names /app paths in its code (ingestion.py)" in w for w in info.warnings)


def test_replace_legacy_metadata_command_matches_the_worker():
    cmd = "$program/run $input $output $hidden $shared $submission_program $ingestion_program $tmp $predictions"
    assert replace_legacy_metadata_command(cmd, "ingestion", False) == (
        "/app/program/run /app/input_data /app/output /app/input/ref /app/shared /app/ingested_program "
        "/app/program /app/output /app/output")
    assert replace_legacy_metadata_command(cmd, "program", True, ingestion_only_during_scoring=True) == (
        "/app/ingestion_program/run /app/input /app/output /app/input/ref /app/shared /app/ingested_program "
        "/app/program /app/output /app/input/res")


# ------------------------------------------------------------------------------------------------ reading bundles
def test_named_errors_for_missing_and_unknown_keys_and_files(tmp_path):
    sub = submission(tmp_path, {"model.py": MODEL})
    typo = v2_bundle(tmp_path, "typo", phase_extra={"execution_time_limt": 5})
    res = run_cli("score", str(sub), "--bundle", str(typo))
    assert res.returncode == 2 and "error: BundleKeyError" in res.stderr and "'execution_time_limt'" in res.stderr
    assert "hint:" in res.stderr and "Traceback" not in res.stderr
    ok = run_cli("score", str(sub), "--bundle", str(typo), "--ignore-unknown-keys")
    assert ok.returncode == 0 and "execution_time_limt" in ok.stderr
    res = run_cli("score", str(sub), "--bundle", str(typo), "--data", "x.npz")
    assert res.returncode == 2 and "error: BundleOptionError: --data does not apply with --bundle" in res.stderr
    folder = v2_bundle(tmp_path, "broken", as_zip=False)
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    spec["tasks"][0]["scoring_program"] = "nope"
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleFileError, match='Cannot find dataset: "nope"'):
        open_bundle(folder, tmp_path / "w")
    del spec["tasks"][0]["scoring_program"]
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleKeyError, match='Task "Task A" does not have a scoring program'):
        open_bundle(folder, tmp_path / "w2")
    del spec["leaderboards"]
    spec["tasks"][0]["scoring_program"] = "scoring_program"
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleKeyError, match="Could not find leaderboards"):
        open_bundle(folder, tmp_path / "w3")
    spec["version"] = 3
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleKeyError, match="A suitable version could not be found"):
        open_bundle(folder, tmp_path / "w4")
    nested = zip_tree(tmp_path / "typo_src", tmp_path / "unused.zip")
    wrapped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(nested) as src, zipfile.ZipFile(wrapped, "w") as dst:
        for info in src.infolist():
            dst.writestr("inner/" + info.filename, src.read(info))
    res = run_cli("bundle", "inspect", str(wrapped))
    assert res.returncode == 2 and "competition.yaml is missing from zip" in res.stderr and "cd bundle" in res.stderr


def test_unsafe_bundle_and_submission_are_refused_before_anything_is_written(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("competition.yaml", "version: 2\n")
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(ZipSlipError):
        open_bundle(evil, tmp_path / "work")
    assert not (tmp_path / "escaped.txt").exists()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("model.py")
        info.create_system, info.external_attr = 3, (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ZipSymlinkError):
        score(link, v2_bundle(tmp_path))


def test_inspect_shows_phases_tasks_programs_columns_image_and_missing_modules(tmp_path):
    bundle = v2_bundle(tmp_path, scoring="import json, not_a_module_subbench_xyz\n")
    res = run_cli("bundle", "inspect", str(bundle))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for text in ("competition.yaml version 2", "docker image: codalab/codalab-legacy:py39", "phase 0: Development",
                 "time limit 30 s per step", "task 0: Task A", "ingestion_program: ingestion_program [folder",
                 "command: python $program/score.py $input $output", "not installed here: not_a_module_subbench_xyz",
                 "leaderboard columns: accuracy (Accuracy, desc), n (Images, desc)"):
        assert text in out, text
    js = json.loads(run_cli("bundle", "inspect", str(bundle), "--json").stdout)
    scoring = [d for d in js["tasks"][0]["data"] if d["kind"] == "scoring_program"][0]
    assert scoring["missing_imports"] == ["not_a_module_subbench_xyz"] and "json" not in scoring["imports"]
    bad = v2_bundle(tmp_path, "bad", ingestion_meta="other: 1\n")
    res = run_cli("bundle", "inspect", str(bad))
    assert res.returncode == 1 and "MISSING for a local run" in res.stdout and "no command" in res.stdout


def test_compare_ranks_bundle_results_by_the_bundles_columns(tmp_path):
    bundle = v2_bundle(tmp_path)
    good, half = tmp_path / "good", tmp_path / "half"
    score(submission(tmp_path, {"model.py": HALF}, "half.zip"), bundle, out=half)
    score(submission(tmp_path, {"model.py": MODEL}, "good.zip"), bundle, out=good)
    res = run_cli("compare", str(half), str(good))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "Accuracy" in lines[0] and "Images" in lines[0]
    assert lines[2].split()[:4] == ["1", "good", "Finished", "1.000"]
    assert lines[3].split()[:4] == ["2", "half", "Finished", "0.500"]
    board = api.compare_bundles([good, half])
    assert board.comparable and board.rows[0].values["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------------ environments
def _tiny_wheel(folder: Path) -> Path:
    files = {"subbench_tinypkg/__init__.py": b"VALUE = 0.42\n",
             "subbench_tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: subbench-tinypkg\nVersion: 1.0\n",
             "subbench_tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                     b"Tag: py3-none-any\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()] + ["subbench_tinypkg-1.0.dist-info/RECORD,,"]
    path = folder / "subbench_tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr("subbench_tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_env_create_requirements_makes_a_cached_interpreter_for_old_bundles(tmp_path):
    wheel = _tiny_wheel(tmp_path)
    req = tmp_path / "requirements.txt"
    req.write_text(f"--no-index\n./{wheel.name}\n")
    env = {"SUBBENCH_CACHE": str(tmp_path / "cache")}
    res = run_cli("env", "create", "--requirements", str(req), env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    python = res.stdout.strip().splitlines()[-1].removeprefix("python: ")
    assert Path(python).exists() and str(tmp_path / "cache" / "envs") in python
    again = run_cli("env", "create", "--requirements", str(req), env=env)
    assert "environment exists" in again.stdout and again.stdout.strip().endswith(python)
    listed = run_cli("env", "list", env=env)
    assert "requirements.txt" in listed.stdout
    scoring = ("import json, os, sys, subbench_tinypkg\n"
               "json.dump({'accuracy': subbench_tinypkg.VALUE}, open(os.path.join(sys.argv[2], 'scores.json'), 'w'))\n")
    bundle = v2_bundle(tmp_path, scoring=scoring)
    sub = submission(tmp_path, {"model.py": MODEL})
    without = score(sub, bundle)
    assert without.failure == "Scores_Not_Found"
    assert any("imports subbench_tinypkg, not installed in" in w for w in without.warnings)
    res, data = cli_json(str(sub), "--bundle", str(bundle), "--python", python)
    assert res.returncode == 0 and data["value"] == 0.42 and data["python"] == python


# ------------------------------------------------------------------------------------------------ bundle make
def test_bundle_make_round_trip_gives_the_same_accuracy_as_subbench_score(tmp_path):
    images, labels = fixture_images(40)
    data = npz(tmp_path, images, labels)
    sub = write_zip(tmp_path / "sub.zip", {"model.py": ALMOST})
    env = {"SUBBENCH_CACHE": str(tmp_path / "cache")}
    res = run_cli("bundle", "make", "--data", str(data), "-o", str(tmp_path / "an2dl-local.zip"), env=env)
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "an2dl-local.zip"
    info = api.bundle_inspect(bundle)
    assert info.runnable and info.docker_image == "tensorflow/tensorflow:2.17.0"
    assert info.phases[0].execution_time_limit == 600 and info.columns[0].key == "accuracy"
    direct = json.loads(run_cli("score", str(sub), "--data", str(data), "--no-cross-cwd", "--json", env=env).stdout)
    res, via = cli_json(str(sub), "--bundle", str(bundle), "-o", str(tmp_path / "out"), env=env)
    assert res.returncode == 0, res.stderr
    assert direct["status"] == "ok" and via["status"] == "Finished"
    assert via["value"] == direct["accuracy"] == pytest.approx(0.875)
    assert via["scores"]["balanced_accuracy"] == pytest.approx(direct["metrics"]["balanced_accuracy"])
    assert via["scores"]["macro_f1"] == pytest.approx(direct["metrics"]["macro_f1"])
    assert "<h1>accuracy 0.8750</h1>" in (tmp_path / "out" / "detailed_results.html").read_text()
    # the same status names as `subbench score`: probabilities instead of labels
    probs = write_zip(tmp_path / "probs.zip", {"model.py": PERFECT.replace(
        "return X[:, 0, 0, 0].astype(np.int64) % 8", "return np.eye(8)[X[:, 0, 0, 0].astype(np.int64) % 8]")})
    r = api.score_bundle(probs, bundle)
    assert r.failure == "Scores_Not_Found"
    assert "Output_Shape_Error: predict returned one-hot" in r.program("scoring", "scoring program").stderr_tail


def test_bundle_make_simulated_hidden_set_matches_score_simulate_hidden(tmp_path):
    images, labels = fixture_images(24)
    data = npz(tmp_path, images, labels)
    sub = write_zip(tmp_path / "sub.zip", {"model.py": ALMOST})
    env = {"SUBBENCH_CACHE": str(tmp_path / "cache")}
    bundle = tmp_path / "hidden.zip"
    res = run_cli("bundle", "make", "--data", str(data), "--simulate-hidden", "--seed", "3", "-o", str(bundle),
                  env=env)
    assert res.returncode == 0, res.stderr
    direct = json.loads(run_cli("score", str(sub), "--data", str(data), "--simulate-hidden", "--seed", "3",
                                "--no-cross-cwd", "--json", env=env).stdout)
    _, via = cli_json(str(sub), "--bundle", str(bundle), env=env)
    assert via["value"] == direct["accuracy"]


def test_failure_exit_codes_are_fixed():
    assert [failure_exit_code(f) for f in FAILURES] == list(range(20, 26)) and failure_exit_code(None) == 0
