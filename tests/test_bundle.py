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
from subbench.local_bench.bundle_mounts import app_mode
from subbench.local_bench.bundle_step import replace_legacy_metadata_command
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


LEGACY_IGNORED = "start_date: 2020-01-01\norganizer_notes: kept by Codalab, ignored by Codabench\n"


def legacy_bundle(tmp: Path, extra: str = "") -> Path:
    folder = tmp / "legacy_src"
    parts = programs(ingestion_meta=LEGACY_INGEST_META, scoring=LEGACY_SCORE)
    folder.mkdir(parents=True)
    for kind, files in parts.items():
        zip_tree(write_tree(tmp / f"legacy_{kind}", files), folder / f"{kind}.zip")
    zip_tree(write_tree(tmp / "legacy_final", {"truth.json": json.dumps([1, 1, 1, 1])}),
             folder / "reference_final.zip")
    write_tree(folder, {"competition.yaml": LEGACY_YAML + extra, "logo.png": b"\x89PNG", "overview.html": "o",
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
    assert data["leaderboard_key"] == "accuracy" and data["accuracy"] == 1.0
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
    r = score(sub, bundle)     # both tasks, as child submissions
    assert r.status == "Finished" and r.value == 0.5 and [c.task["index"] for c in r.children] == [0, 1]
    r1 = score(sub, bundle, task=1)
    assert any("has 2 tasks" in w and "--task ran task 1 alone" in w for w in r1.warnings)
    assert r1.ok and r1.task["index"] == 1 and r1.value == 0.5
    with pytest.raises(BundleSelectionError, match="task 5 is not a task"):
        score(sub, bundle, task=5)
    with pytest.raises(BundleSelectionError, match="no phase 'Final'"):
        score(sub, bundle, phase="Final")


def test_legacy_layout_phases_zips_scores_txt_and_missing_column(tmp_path):
    bundle = legacy_bundle(tmp_path, extra=LEGACY_IGNORED)
    sub = submission(tmp_path, {"model.py": MODEL})
    r = score(sub, bundle)
    assert r.status == "Finished", (r.message, r.warnings)
    # keys the v1 unpacker ignores: the bundle runs without a flag, each key named in a warning
    assert any("'organizer_notes', 'start_date'" in w and "(it ignores them)" in w for w in r.warnings
               if w.startswith("competition.yaml has keys"))
    with pytest.raises(BundleKeyError, match="'organizer_notes'"):
        score(sub, bundle, strict=True)
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
    text = "\n".join(info.lines())
    assert "needs (task 1): a code submission" in text and "scored on" in text and "reference_final.zip" in text
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
    # the scoring program then crashes on the missing predictions: the current worker fails on its exit code
    assert not r2.ok and r2.failure == "Scoring_Program_Failed" and r2.failed_step == "scoring"
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
    assert r.status == "Failed" and r.failure == "Scoring_Program_Failed" and r.failed_step == "scoring"
    assert r.message == "Child task failed or non-zero return code"
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
    # the server ignores a key it does not know: a warning naming it; --strict makes it an error
    ok = run_cli("score", str(sub), "--bundle", str(typo))
    assert ok.returncode == 0 and "warning: phases[0] has key 'execution_time_limt'" in ok.stderr, ok.stderr
    res = run_cli("score", str(sub), "--bundle", str(typo), "--strict")
    assert res.returncode == 2 and "error: BundleKeyError" in res.stderr and "'execution_time_limt'" in res.stderr
    assert "hint:" in res.stderr and "without --strict" in res.stderr and "Traceback" not in res.stderr
    assert run_cli("bundle", "inspect", str(typo), "--strict").returncode == 2
    old = run_cli("score", str(sub), "--bundle", str(typo), "--ignore-unknown-keys")   # the deprecated spelling
    assert old.returncode == 0 and "execution_time_limt" in old.stderr
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
    assert without.failure == "Scoring_Program_Failed"
    assert any("imports subbench_tinypkg, not installed in" in w for w in without.warnings)
    res, data = cli_json(str(sub), "--bundle", str(bundle), "--python", python)
    assert res.returncode == 0 and data["accuracy"] == 0.42 and data["python"] == python


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
    assert via["accuracy"] == direct["accuracy"] == pytest.approx(0.875)
    assert via["scores"]["balanced_accuracy"] == pytest.approx(direct["metrics"]["balanced_accuracy"])
    assert via["scores"]["macro_f1"] == pytest.approx(direct["metrics"]["macro_f1"])
    assert "<h1>accuracy 0.8750</h1>" in (tmp_path / "out" / "detailed_results.html").read_text()
    # the same status names as `subbench score`: probabilities instead of labels
    probs = write_zip(tmp_path / "probs.zip", {"model.py": PERFECT.replace(
        "return X[:, 0, 0, 0].astype(np.int64) % 8", "return np.eye(8)[X[:, 0, 0, 0].astype(np.int64) % 8]")})
    r = api.score_bundle(probs, bundle)
    assert r.failure in ("Scores_Not_Found", "Scoring_Program_Failed")
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
                                "--draws", "1", "--no-cross-cwd", "--json", env=env).stdout)
    _, via = cli_json(str(sub), "--bundle", str(bundle), env=env)
    assert via["accuracy"] == direct["accuracy"]


def test_failure_exit_codes_are_fixed():
    assert [failure_exit_code(f) for f in FAILURES] == list(range(20, 28)) and failure_exit_code(None) == 0


EXIT3 = SCORE.replace('open(os.path.join(out, "detailed_results.html"), "w")',
                      'sys.exit(3)\nopen(os.path.join(out, "detailed_results.html"), "w")')


def test_scoring_program_exiting_non_zero_fails_even_with_scores_like_the_current_worker(tmp_path):
    sub = submission(tmp_path, {"model.py": MODEL})
    res, data = cli_json(str(sub), "--bundle", str(v2_bundle(tmp_path, scoring=EXIT3)))
    assert res.returncode == failure_exit_code("Scoring_Program_Failed") == 26, res.stderr
    assert data["status"] == "Failed" and data["failed_step"] == "scoring"
    assert data["message"] == "Child task failed or non-zero return code"
    assert data["scores"] is None and data["accuracy"] is None            # push_scores never ran
    assert data["steps"][-1]["programs"][0]["exit_code"] == 3 and data["steps"][-1]["metadata"] is None
    assert any("wrote scores.json but exited with code 3" in w for w in data["warnings"])
    assert "Traceback" not in res.stderr
    # a non-zero exit in the prediction step does not stop the submission: the scoring step decides
    ingest = INGEST + "\nsys.exit(4)\n"
    r = score(sub, v2_bundle(tmp_path, "ing4", ingestion=ingest))
    assert r.ok and r.value == 1.0
    assert any("exited with code 4 in the prediction step" in w for w in r.warnings)


def test_a_bundle_run_writes_scores_json_read_by_score_load_and_compare_and_old_files_still_read(tmp_path):
    from subbench.local_bench.results import Score
    from subbench.results import SCHEMA_VERSION

    bundle = v2_bundle(tmp_path)
    out = tmp_path / "out"
    res = run_cli("score", str(submission(tmp_path, {"model.py": MODEL})), "--bundle", str(bundle), "-o", str(out))
    assert res.returncode == 0 and f"wrote {out / 'scores.json'}" in res.stdout, res.stderr
    assert not (out / "bundle_score.json").exists()
    doc = json.loads((out / "scores.json").read_text())
    assert list(doc)[:2] == ["accuracy", "schema"] and doc["leaderboard_key"] == "accuracy" and doc["accuracy"] == 1.0
    assert doc["schema"] == SCHEMA_VERSION and doc["kind"] == "bundle" and "value" not in doc
    loaded = Score.load(out)
    assert isinstance(loaded, BundleScore) and loaded.value == 1.0 and loaded.ok
    # a folder of an older subbench: bundle_score.json with its value field
    old = tmp_path / "old"
    old.mkdir()
    legacy = {**doc, "schema": 2, "value": 0.5, "accuracy": None}
    (old / "bundle_score.json").write_text(json.dumps(legacy))
    assert BundleScore.load(old).value == 0.5 and Score.load(old / "bundle_score.json").value == 0.5
    res = run_cli("compare", str(out), str(old))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2].split()[:4] == ["1", "out", "Finished", "1.000"]


FAILING_SCORE = "import sys\nsys.stderr.write('cannot score this task\\n')\nsys.exit(2)\n"


def test_multi_task_phase_runs_every_task_as_a_child_and_a_failed_task_hides_no_other(tmp_path):
    folder = v2_bundle(tmp_path, as_zip=False, extra_tasks=2, limit=20, columns=[
        {"index": 0, "title": "Accuracy", "key": "accuracy", "precision": 3},
        {"index": 1, "title": "Images", "key": "n", "precision": 0},
        {"index": 2, "title": "Mean", "key": "mean", "computation": "avg", "computation_indexes": [0, 1]},
        {"index": 3, "title": "Sum", "key": "total", "computation": "sum", "computation_indexes": [0, 1]},
        {"index": 4, "title": "Min", "key": "low", "computation": "min", "computation_indexes": [0, 1]},
        {"index": 5, "title": "Max", "key": "high", "computation": "max", "computation_indexes": [0, 1]}])
    write_tree(folder / "scoring_bad", {"score.py": FAILING_SCORE, "metadata.yaml": SCORE_META})
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    spec["tasks"][1]["scoring_program"] = "scoring_bad"
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sub = submission(tmp_path, {"model.py": MODEL})
    out = tmp_path / "out"
    res, data = cli_json(str(sub), "--bundle", str(folder), "-o", str(out))
    assert res.returncode == failure_exit_code("Scoring_Program_Failed"), res.stderr    # the first failed child
    assert "Traceback" not in res.stderr
    assert data["status"] == "Finished" and data["accuracy"] == 1.0     # the parent, as the server shows it
    kids = data["children"]
    assert [(k["task"]["index"], k["status"], k["failure"]) for k in kids] == [
        (0, "Finished", None), (1, "Failed", "Scoring_Program_Failed"), (2, "Finished", None)]
    rows = {(c["task"], c["key"]): c["value"] for c in data["columns"]}
    assert rows[(0, "accuracy")] == rows[(2, "accuracy")] == 1.0 and rows[(1, "accuracy")] is None
    assert rows[(0, "mean")] == rows[(2, "mean")] == 2.5                 # avg over computation_indexes 0, 1
    assert (rows[(0, "total")], rows[(0, "low")], rows[(0, "high")]) == (5.0, 1.0, 4.0)
    assert rows[(1, "mean")] is None                                      # a failed task: nothing to compute
    assert any("1 of 3 child submissions failed: task 1" in w for w in data["warnings"])
    # each child its own run folder and logs, kept under the parent's folder
    assert "cannot score this task" in (out / "task-1" / "scoring" / "logs" / "scoring_stderr.txt").read_text()
    assert (out / "task-2" / "prediction" / "output" / "predictions.json").exists()
    assert kids[2]["steps"][1]["programs"][0]["stderr"].startswith("task-2/scoring/logs/")
    loaded = BundleScore.load(out)
    assert [c.ok for c in loaded.children] == [True, False, True]
    assert 'class="child"' in (out / "report.html").read_text()
    assert "task 1 (Task 1): Failed (Scoring_Program_Failed" in res.stderr


# ------------------------------------------------------------------------------------------------ corpus
BOMB = "version: 2\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "title: *i\n"


def _spec(folder: Path, change) -> None:
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    change(spec)
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.mark.parametrize("case, error, words", [
    ("missing", "BundleFileError", "competition.yaml is missing from zip"),
    ("empty", "BundleKeyError", "competition.yaml is not a mapping of keys"),
    ("a list", "BundleKeyError", "competition.yaml is not a mapping of keys"),
    ("phase without tasks", "BundleKeyError", "Phases must contain at least one task to be valid"),
    ("missing program", "BundleFileError", 'Cannot find dataset: \\"nowhere\\"'),
    ("alias bomb", "BundleKeyError", "an alias bomb"),
])
def test_broken_competition_yaml_is_a_named_error_and_writes_nothing(tmp_path, case, error, words):
    folder = v2_bundle(tmp_path, as_zip=False)
    yml = folder / "competition.yaml"
    {"missing": lambda: yml.unlink(), "empty": lambda: yml.write_text(""),
     "a list": lambda: yml.write_text("- version: 2\n- tasks: []\n"),
     "phase without tasks": lambda: _spec(folder, lambda s: s["phases"][0].update(tasks=[])),
     "missing program": lambda: _spec(folder, lambda s: s["tasks"][0].update(scoring_program="nowhere")),
     "alias bomb": lambda: yml.write_text(BOMB)}[case]()
    out = tmp_path / "out"
    t0 = time.time()
    res = run_cli("score", str(submission(tmp_path, {"model.py": MODEL})), "--bundle", str(folder), "-o", str(out))
    assert res.returncode == 2 and f"error: {error}" in res.stderr and "hint:" in res.stderr, res.stderr
    assert words.replace("\\", "") in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and time.time() - t0 < 30


@pytest.mark.parametrize("scores, finished, accuracy", [
    ("'{\"accuracy\": NaN, \"n\": 4}'", True, None),
    ("json.dumps({'accuracy': 0.5, 'n': 4, 'junk': 'x' * (40 << 20)})", True, 0.5),
])
def test_odd_scores_files_get_the_servers_outcome(tmp_path, scores, finished, accuracy):
    scoring = f"import json, os, sys\nopen(os.path.join(sys.argv[2], 'scores.json'), 'w').write({scores})\n"
    res, data = cli_json(str(submission(tmp_path, {"model.py": MODEL})), "--bundle",
                         str(v2_bundle(tmp_path, scoring=scoring)), "-o", str(tmp_path / "out"))
    assert (data["status"] == "Finished") is finished and data["accuracy"] == accuracy, res.stderr
    assert "Traceback" not in res.stderr
    if accuracy is None:
        assert any("score 'accuracy' is nan" in w and "column stays empty" in w for w in data["warnings"])
        assert not any("missing from the scores" in w for w in data["warnings"])
    else:
        assert any("'junk' match no leaderboard column" in w for w in data["warnings"])


HOG = """
import subprocess, sys, time
# the memory is in a child process: the limit covers the whole tree
subprocess.run([sys.executable, "-c", "b = bytearray(400 << 20); import time; time.sleep(30)", sys.argv[1]])
"""


def test_memory_limit_applies_to_the_programs_whole_tree_named_out_of_memory(tmp_path):
    marker = f"subbench-bundle-hog-{uuid.uuid4().hex}"
    bundle = v2_bundle(tmp_path, limit=60, ingestion=HOG,
                       ingestion_meta=f"command: python3 /app/program/ingestion.py {marker}\n")
    sub = submission(tmp_path, {"model.py": MODEL})
    t0 = time.time()
    res, data = cli_json(str(sub), "--bundle", str(bundle), "--memory-limit", "150", timeout=120)
    assert res.returncode == failure_exit_code("Out_Of_Memory") == 27, res.stderr
    assert data["failure"] == "Out_Of_Memory" and data["failed_step"] == "prediction"
    assert "passed the memory limit of 150 MB" in data["message"] and "the worker itself sets none" in data["message"]
    assert data["steps"][0]["programs"][-1]["out_of_memory"] and time.time() - t0 < 30
    assert _alive_with(marker) == [] and "Traceback" not in res.stderr
    # without the option, like the worker: no limit
    ok = score(sub, v2_bundle(tmp_path, "nolimit"))
    assert ok.ok


def test_phase_all_runs_every_phase_in_order_with_its_own_limits_and_data(tmp_path):
    bundle = legacy_bundle(tmp_path)
    sub = submission(tmp_path, {"model.py": MODEL})
    out = tmp_path / "out"
    res, data = cli_json(str(sub), "--bundle", str(bundle), "--phase", "all", "-o", str(out))
    assert res.returncode == 0, res.stderr
    rows = data["children"]
    assert [(r["phase"]["name"], r["time_limit_s"], r["value"]) for r in rows] == [("Development", 40, 1.0),
                                                                                  ("Final", 600, 0.5)]
    assert {(c["phase"], c["key"]): c["value"] for c in data["columns"]}[(1, "acc")] == 0.5
    assert (out / "phase-1" / "scoring" / "output" / "scores.txt").exists()
    assert "phase 1 (Final): Finished" in res.stderr
    assert [r.phase["index"] for r in BundleScore.load(out).children] == [0, 1]
    with pytest.raises(BundleSelectionError, match="--task cannot be given with --phase all"):
        score(sub, bundle, phase="all", task=0)


DOWNLOADER = INGEST.replace("from model import predict", """from model import predict
import urllib.request
urllib.request.urlopen("http://example.com/weights.h5", timeout=5)   # a download at Model(), as submissions do""")


def test_no_network_cuts_the_programs_off_and_names_the_download(tmp_path):
    from subbench.local_bench.netns import network_isolation

    sub = submission(tmp_path, {"model.py": MODEL})
    bundle = v2_bundle(tmp_path, ingestion=DOWNLOADER)
    if not network_isolation()[0]:
        res = run_cli("score", str(sub), "--bundle", str(bundle), "--no-network")
        assert res.returncode == 2 and "--no-network cannot be applied" in res.stderr
        return
    res, data = cli_json(str(sub), "--bundle", str(bundle), "--no-network", timeout=120)
    assert data["status"] == "Failed" and "Traceback" not in res.stderr.split("last lines")[0]
    assert any("tried to reach the network" in w and "--no-network cut it off" in w for w in data["warnings"])
    # the programs that need no network run as before
    assert score(sub, v2_bundle(tmp_path, "plain"), no_network=True).ok


def test_python_api_returns_the_typed_result_that_renders_inline(tmp_path):
    import subbench

    r = subbench.score_bundle(submission(tmp_path, {"model.py": MODEL}), v2_bundle(tmp_path))
    assert isinstance(r, subbench.BundleScore) and r.ok and r.value == 1.0
    page = r._repr_html_()
    assert 'class="sbr"' in page and 'id="score">1.000<' in page and 'id="status">Finished<' in page


# ------------------------------------------------------------------------------------------------ the server's rules
# codalab/codabench unpackers/v2.py (8239d01), v1.py (02694da), base_unpacker.py (c7aeccf), the competition and
# leaderboard serializers: what the upload accepts is read, what it refuses is a named error with its message.
def _v2_case(tmp_path, change, name="case"):
    folder = v2_bundle(tmp_path, name, as_zip=False)
    _spec(folder, change)
    return folder


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update(version=2.0), "A suitable version could not be found"),
    (lambda s: s["phases"][0].pop("start"), "start: This field may not be null."),
    (lambda s: s["phases"][0].update(start="the first of May"), "is not a date Codabench can read"),
    (lambda s: s["phases"][0].update(execution_time_limit=30.5), "execution_time_limit: A valid integer is required."),
    (lambda s: s["phases"][0].update(execution_time_limit=-5), "greater than or equal to 0"),
    (lambda s: s["phases"][0].update(max_submissions="many"), "max_submissions: A valid integer is required."),
    (lambda s: s["phases"][0].update(auto_migrate_to_this_phase=True),
     "You cannot auto migrate in a competition with one phase"),
    (lambda s: s["phases"].append({**s["phases"][0], "index": 1, "name": "Final", "start": "2024-06-01"}),
     "Phase: Development must have an end time because it has a phase after it."),
    (lambda s: s["phases"].append({**s["phases"][0], "index": 1, "name": "Final", "start": "2024-01-15"})
     or s["phases"][0].update(end="2024-02-01"), "Phases must be sequential. Phase: Finalstarts before"),
    (lambda s: s["phases"].append({**s["phases"][0], "index": 1, "name": "Final", "start": "2024-02-01"})
     or s["phases"][0].update(end="2024-02-01"), "Phases dates conflict. Phase: Final should start after"),
    (lambda s: s["phases"][0].update(public_data="public.zip"), 'Cannot find dataset: "public.zip"'),
    (lambda s: s.update(solutions=[{"index": 0, "tasks": [0], "path": "solution"}]), 'Cannot find dataset: "solution"'),
    (lambda s: s.update(enable_detailed_results="maybe"), "enable_detailed_results: Must be a valid boolean."),
    (lambda s: s.update(auto_run_submissions=None), "auto_run_submissions: This field may not be null."),
    (lambda s: s["tasks"][0].update(ingestion_only_during_scoring="sometimes"), "Must be a valid boolean."),
    (lambda s: s.update(leaderboards=[]), "Competitions require at least 1 leaderboard"),
    (lambda s: s["leaderboards"][0].pop("key"), "key: This field is required."),
    (lambda s: s["leaderboards"][0].update(title="x" * 65), "no more than 64 characters"),
    (lambda s: s["leaderboards"][0].update(submission_rule="Best"), '"Best" is not a valid choice.'),
    (lambda s: s["leaderboards"][0].update(columns=[]), "Leaderboards require at least 1 column"),
    (lambda s: s["leaderboards"][0]["columns"][1].update(index=0), "Columns must have unique indexes!"),
    (lambda s: s["leaderboards"][0]["columns"][1].update(key="accuracy"), "Columns must have unique keys!"),
    (lambda s: s["leaderboards"][0]["columns"][0].pop("title"), "title: This field is required."),
    (lambda s: s["leaderboards"][0]["columns"][0].pop("index"), "index: This field is required."),
    (lambda s: s["leaderboards"][0]["columns"][0].update(sorting="descending"), '"descending" is not a valid choice.'),
    (lambda s: s["leaderboards"][0]["columns"][0].update(computation="median", computation_indexes=[1]),
     '"median" is not a valid choice.'),
    (lambda s: s["leaderboards"][0]["columns"][0].update(computation="avg"),
     "Column with computation must have at least 1 column selected"),
    (lambda s: s["leaderboards"][0]["columns"][0].update(computation_indexes=[1]),
     "Cannot add computation columns without a computation function set"),
    (lambda s: s["leaderboards"][0]["columns"][0].update(computation="avg", computation_indexes=[0, 1]),
     "Column with index 0 referencing itself"),
    (lambda s: s["leaderboards"][0]["columns"][0].update(computation="avg", computation_indexes=[7]),
     "Column index 7 does not exist in available indexes [0, 1]"),
    (lambda s: s.update(fact_sheet=["a question"]), "fact_sheet: Not valid JSON"),
    (lambda s: s.update(fact_sheet={"q": {"key": "q", "type": "text", "title": "Q"}}), "fact_sheet: Missing"),
    (lambda s: s.update(fact_sheet={"q": {"key": "r", "type": "text", "title": "Q", "selection": [""],
                                          "is_required": "false", "is_on_leaderboard": "false"}}),
     "key:r  does not match JSON key:q"),
    (lambda s: s.update(fact_sheet={"q": {"key": "q", "type": "radio", "title": "Q", "selection": [""],
                                          "is_required": "false", "is_on_leaderboard": "false"}}),
     "radio is not a valid question type"),
])
def test_v2_values_the_server_refuses_are_named_errors_with_its_message(tmp_path, change, words):
    folder = _v2_case(tmp_path, change)
    with pytest.raises((BundleKeyError, BundleFileError)) as err:
        open_bundle(folder, tmp_path / "w")
    assert words in str(err.value), str(err.value)


def test_v2_values_the_server_coerces_are_read_as_it_reads_them(tmp_path):
    def change(s):
        s.update(enable_detailed_results="false", fact_sheet={"q": {
            "key": "q", "type": "text", "title": "Q", "selection": [""], "is_required": "false",
            "is_on_leaderboard": "false"}}, pages=[{"title": "Overview", "file": "terms.md"}])
        s["tasks"][0]["ingestion_only_during_scoring"] = "no"
        s["phases"][0].update(execution_time_limit="45", max_submissions="10", end="2024-03-01")
        s["phases"].append({**s["phases"][0], "index": 1, "name": "Final", "start": "2024-03-02", "end": None,
                            "execution_time_limit": 50.0})
        s["leaderboards"][0].update(primary_index="0", hidden="False")
        s["leaderboards"][0]["columns"][0].update(precision="3", hidden="no")
    b = open_bundle(_v2_case(tmp_path, change), tmp_path / "w", strict=True)
    assert b.enable_detailed_results is False and b.tasks[0].ingestion_only_during_scoring is False
    assert [(p.name, p.execution_time_limit) for p in b.phases] == [("Development", 45), ("Final", 50)]
    assert b.leaderboards[0].primary_index == 0 and b.columns[0].precision == 3 and b.columns[0].hidden is False
    assert not b.warnings, b.warnings


def test_v2_keys_the_unpacker_ignores_are_named_and_pages_terms_logo_problems_warn(tmp_path):
    def change(s):
        s["phases"][0]["max_submissions_per_person"] = 3      # the dump's name; the unpacker reads max_submissions
        s["whitelist_emails"] = ["a@b.c"]
        s["leaderboards"].append({**s["leaderboards"][0], "key": "second"})
        s.update(pages=[{"title": "Overview", "file": "overview.md"}], terms="empty.md", image="nologo.png")
    folder = _v2_case(tmp_path, change)
    (folder / "empty.md").write_text("")
    b = open_bundle(folder, tmp_path / "w")
    text = "\n".join(b.warnings)
    assert "'max_submissions_per_person'" in text and "'whitelist_emails'" in text
    assert "Unable to find page: overview.md" in text and "empty.md is empty, it must contain content." in text
    assert "Unable to find image: nologo.png" in text and "attaches only the first" in text
    with pytest.raises(BundleKeyError, match="whitelist_emails"):
        open_bundle(folder, tmp_path / "w2", strict=True)
    no_pages = _v2_case(tmp_path, lambda s: s.pop("pages", None), "nopages")
    assert any("no `pages:` list" in w for w in open_bundle(no_pages, tmp_path / "w3").warnings)


def test_v1_rules_of_the_v15_unpacker(tmp_path):
    sub = submission(tmp_path, {"model.py": MODEL})
    b = open_bundle(legacy_bundle(tmp_path), tmp_path / "w")
    # a legacy phase ends the day before the next one starts; the last one at end_date (none here)
    assert [(p.start, p.end) for p in b.phases] == [("2020-01-01", "2020-12-31"), ("2021-01-01", None)]
    for extra, words in [("version: 2.0\n", "A suitable version could not be found"),
                         ("leaderboard:\n  leaderboards:\n    R:\n      rank: 1\n  columns:\n    acc:\n"
                          "      leaderboard: {label: R}\n", "has no 'label'"),
                         ("leaderboard:\n  leaderboards:\n    R:\n      label: R\n  columns:\n    acc:\n"
                          "      label: Accuracy\n", "names no leaderboard"),
                         ("leaderboard:\n  leaderboards:\n    R:\n      label: R\n  columns:\n    acc:\n"
                          "      leaderboard: {label: R}\n      sort: biggest\n", '"biggest" is not a valid choice.'),
                         ("leaderboard:\n  leaderboards:\n    R:\n      label: R\n    S:\n      label: S\n  columns:\n"
                          "    acc:\n      leaderboard: {label: R}\n", "Leaderboards require at least 1 column")]:
        (tmp_path / "legacy_src").exists() and __import__("shutil").rmtree(tmp_path / "legacy_src")
        bundle = legacy_bundle(tmp_path, extra=extra)
        with pytest.raises(BundleKeyError) as err:
            score(sub, bundle)
        assert words in str(err.value), (extra, str(err.value))
    __import__("shutil").rmtree(tmp_path / "legacy_src")
    text = LEGACY_YAML.replace("    start_date: 2021-01-01\n", "")
    folder = tmp_path / "nostart"
    write_tree(folder, {"competition.yaml": text})
    with pytest.raises(BundleKeyError, match="start_date: This field may not be null."):
        open_bundle(folder, tmp_path / "w5")
