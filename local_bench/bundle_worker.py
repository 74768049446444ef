"""One submission through a competition bundle, the way Codabench runs it: the prediction step, then the
scoring step (each a worker `Run`, subbench.local_bench.bundle_step), the leaderboard columns filled from the
scores, the result saved; a phase's tasks and every phase through subbench.local_bench.bundle_phase.

The worker source read: codalab/codabench `compute_worker/compute_worker.py` at 006d55f6 (see bundle_step for
what is mirrored, function by function); the site's part (`SubmissionSerializer.update`): the scoring step runs
once the prediction step reports "Scoring", whatever the prediction step's exit codes; only a failed step stops
the submission.
"""

from __future__ import annotations

import functools
import hashlib
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from subbench.errors import SubbenchError
from subbench.local_bench.bundle_mounts import app_mode
from subbench.local_bench.bundle_phase import run_all_phases, run_phase
from subbench.local_bench.bundle_result import BundleScore, BundleStatus, ColumnScore
from subbench.local_bench.bundle_spec import (COMPUTATIONS, Bundle, BundleFileError, BundlePhase,
                                              BundleSelectionError, BundleTask, open_bundle)
from subbench.local_bench.bundle_step import Step, SubmissionException, fmt_limit
from subbench.local_bench.netns import require_network_isolation

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ the submission
def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def map_columns(bundle: Bundle, scores) -> tuple[list[ColumnScore], list[str]]:
    """The bundle's leaderboard columns with the values the scores give them (upload_submission_scores keeps the
    keys that are column keys; a computed `avg` column averages the columns at its computation_indexes)."""
    warnings: list[str] = []
    table = scores if isinstance(scores, dict) else {}
    cols: list[ColumnScore] = []
    for lb in bundle.leaderboards:
        board = []
        for c in lb.columns:
            cs = ColumnScore(lb.title, c.key, c.title, c.index, c.sorting, c.precision, c.hidden)
            if c.key in table:
                v = table[c.key]
                try:
                    cs.value, cs.present = float(v), not isinstance(v, bool)
                    if not math.isfinite(cs.value):
                        warnings.append(f"score {c.key!r} is {v!r}: the server stores scores as decimals, which "
                                        "cannot hold it; the column stays empty")
                        cs.value, cs.present = None, False
                except (TypeError, ValueError):
                    warnings.append(f"score {c.key!r} is {v!r}, not a number: the server stores scores as decimals "
                                    "and refuses it")
                if isinstance(v, bool):
                    cs.value = None
            board.append(cs)
        for c, cs in zip(lb.columns, board):
            if c.computation and not cs.present:
                wanted = {int(i) for i in (c.computation_indexes or [])}
                parts = [x.value for x in board if x.index in wanted]
                how = COMPUTATIONS.get(str(c.computation))
                if how is not None and parts and all(p is not None for p in parts):
                    cs.value, cs.present = float(how(parts)), True
                cs.computed = str(c.computation)
        cols += board
    if scores is not None and not isinstance(scores, dict):
        warnings.append(f"the scores file holds a {type(scores).__name__}, not a mapping of column keys to "
                        "numbers: the server stores no score")
    missing = [c.key for c in cols if not c.present and not c.computed and c.key not in table]
    if missing and isinstance(scores, dict):
        warnings.append(f"leaderboard column key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"missing from the scores (keys written: {', '.join(map(repr, scores)) or 'none'}): the "
                        "server leaves those columns empty")
    extra = [k for k in table if k not in {c.key for c in cols}]
    if extra:
        warnings.append(f"score key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} match no leaderboard "
                        "column: the server drops them")
    return cols, warnings


def run_bundle(bundle: Bundle, submission: Path, phase: BundlePhase, task: BundleTask, python: str,
               time_limit: float | None, workdir: Path, echo: Echo, memory_limit_mb: float | None = None,
               no_network: bool = False) -> BundleScore:
    """Both steps of one submission; the kept logs and outputs are under workdir/keep (BundleScore.artifacts)."""
    _check_runnable(task)
    limit = float(time_limit) if time_limit is not None else float(bundle.effective_time_limit(phase))
    mode, why = app_mode()
    keep = workdir / "keep"
    keep.mkdir(parents=True)
    warnings = list(bundle.warnings)
    if mode == "rewrite":
        warnings.append(f"/app paths in the commands were rewritten to the local run folder ({why}); paths written "
                        "inside the programs' code do not resolve")
    result = _new_result(bundle, submission, phase, task, limit, python, mode, keep)

    def step(name: str) -> Step:
        made = Step(workdir / "run" / name, name, task, limit, python, mode, bundle.docker_image, echo,
                    memory_limit_mb)
        made.no_network = no_network
        return made

    try:
        echo(f"prediction step: {task.name or 'task ' + str(task.index)} (limit {fmt_limit(limit)} s, "
             f"/app paths: {mode})")
        pred = step("prediction")
        if not _run_step(pred, result, warnings, keep, submission=submission):
            return result
        for r in pred.runs:
            if r.action == "ran" and r.exit_code not in (0, None):
                warnings.append(f"the {r.role} exited with code {r.exit_code} in the prediction step; the server "
                                "goes on to the scoring step anyway")
        echo(f"scoring step (limit {fmt_limit(limit)} s)")
        score = step("scoring")
        _run_step(score, result, warnings, keep, prediction_output=pred.output_dir)
        warnings += _keep_detailed(score, keep, result, bundle)
        return result
    finally:
        result.columns, col_warnings = map_columns(bundle, result.scores)
        warnings += col_warnings
        if result.columns:
            result.leaderboard_key, result.value = result.columns[0].key, result.columns[0].value
        result.warnings = list(dict.fromkeys(warnings))


def _run_step(step: Step, result: BundleScore, warnings: list[str], keep: Path, **prepare) -> bool:
    """One worker Run (prepare, start, the scores for the scoring step, push_output) into `result`; False when
    it failed (result then holds the failure). The step's warnings, result and kept files are recorded either
    way."""
    metadata = None
    try:
        step.prepare(**prepare)
        step.start()
        if step.is_scoring:
            scores, result.scores_file = step.push_scores()
            result.scores = scores if isinstance(scores, (dict, list, str, int, float)) or scores is None \
                else str(scores)
        metadata = step.push_output()
        return True
    except SubmissionException as exc:
        result.status, result.failure, result.message, result.failed_step = \
            BundleStatus.Failed, exc.failure, exc.message, step.step
        return False
    finally:
        warnings += step.warnings
        result.steps.append(step.result(metadata))
        _keep(step, keep)


def _check_runnable(task: BundleTask) -> None:
    """A task a local run can run: defined in the bundle, every program and data set inside it."""
    if task.server_key:
        raise BundleFileError(f"task {task.index} is referenced by key {task.server_key}: it is defined on the "
                              "server, not in the bundle", "a local run needs the task's programs in the bundle")
    for kind in ("scoring_program", "ingestion_program", "input_data", "reference_data"):
        ref = task.get(kind)
        if ref is not None and not ref.usable:
            raise BundleFileError(ref.note or f"{kind} {ref.name!r} is not in the bundle",
                                  "a local run needs every program and data set of the task inside the bundle")
    if task.get("scoring_program") is None:
        raise BundleFileError(f"task {task.index} has no scoring program", "submissions to it cannot be scored")


def _new_result(bundle: Bundle, submission: Path, phase: BundlePhase, task: BundleTask, limit: float,
                python: str, mode: str, keep: Path) -> BundleScore:
    from subbench import __version__

    return BundleScore(
        status=BundleStatus.Finished, failure=None, message="", failed_step=None, value=None, leaderboard_key=None,
        columns=[], scores=None, scores_file=None, steps=[], time_limit_s=limit, python=python, app_paths=mode,
        bundle={"path": bundle.source, "sha256": _sha256(Path(bundle.source)), "title": bundle.title,
                "version": bundle.version, "docker_image": bundle.docker_image},
        phase={"index": phase.index, "name": phase.name}, task={"index": task.index, "name": task.name},
        submission={"path": str(submission), "sha256": _sha256(submission)},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), subbench_version=__version__, artifacts=keep)


def _keep_detailed(score: Step, keep: Path, result: BundleScore, bundle: Bundle) -> list[str]:
    """get_detailed_results_file_path's file, kept as detailed_results.html; a warning when the server hides it."""
    detailed = score.detailed_results() if score.output_dir.exists() else None
    if detailed is None:
        return []
    shutil.copyfile(detailed, keep / "detailed_results.html")
    result.detailed_results = "detailed_results.html"
    if bundle.enable_detailed_results:
        return []
    return [f"the scoring program wrote {detailed.name} but the bundle does not set enable_detailed_results: the "
            "server does not show it"]


def _keep(step: Step, keep: Path) -> None:
    """The step's output and logs, kept for the result folder (the run folder itself is deleted, like clean_up)."""
    dest = keep / step.step
    dest.mkdir(parents=True, exist_ok=True)
    if step.logs.exists():
        shutil.copytree(step.logs, dest / "logs", dirs_exist_ok=True)
    if step.output_dir.exists():
        shutil.copytree(step.output_dir, dest / "output", symlinks=True, dirs_exist_ok=True)


def score_with_bundle(submission, bundle_path, phase=None, task=None, python: str | None = None,
                      time_limit: float | None = None, out=None, force: bool = False, strict: bool = False,
                      echo: Echo | None = None, memory_limit_mb: float | None = None,
                      no_network: bool = False) -> BundleScore:
    """Open the bundle, pick the phase and task, run both steps, save to `out` when given.

    memory_limit_mb: the resident memory of each program's whole process tree, in both steps (Out_Of_Memory past
    it); None, like the worker, which sets no memory limit on its containers. no_network: every program in a
    network namespace of its own (loopback only), as on a queue with COMPETITION_CONTAINER_NETWORK_DISABLED=true;
    off by default, like the worker; a NetworkIsolationError where Linux does not allow it."""
    from subbench.atomic import check_writable

    echo = echo or (lambda _line: None)
    submission = Path(submission)
    if not submission.exists():
        raise BundleFileError(f"submission {submission} does not exist", "give the submission zip or folder")
    if out is not None:
        check_writable(Path(out), force)
    python = str(python or sys.executable)
    if not Path(python).exists() and shutil.which(python) is None:
        raise SubbenchError(f"interpreter {python} does not exist", "give --python PATH to a Python interpreter")
    with tempfile.TemporaryDirectory(prefix="subbench-bundle-") as tmp:
        bundle = open_bundle(bundle_path, tmp, strict=strict)
        if no_network:
            require_network_isolation()
        run_task = functools.partial(run_bundle, memory_limit_mb=memory_limit_mb, no_network=no_network)
        if str(phase).lower() == "all":
            if task is not None:
                raise BundleSelectionError("--task cannot be given with --phase all",
                                           "each phase runs its own tasks; pick one phase for --task")
            result = run_all_phases(bundle, submission, python, time_limit, Path(tmp) / "work", echo, run_task)
            return _finish(result, out, force)
        ph = bundle.phase(phase)
        if task is None and len(ph.tasks) > 1:   # the server: a parent with one child submission per task
            result = run_phase(bundle, submission, ph, python, time_limit, Path(tmp) / "work", echo, run_task)
        else:
            tk = bundle.task(ph, task)
            result = run_task(bundle, submission, ph, tk, python, time_limit, Path(tmp) / "work", echo)
            if len(ph.tasks) > 1:
                result.warnings.append(f"phase {ph.index} has {len(ph.tasks)} tasks {ph.tasks}: the server runs "
                                       f"each as a child submission; --task ran task {tk.index} alone")
        return _finish(result, out, force)


def _finish(result: BundleScore, out, force: bool) -> BundleScore:
    """Save to `out` (atomically) while the run's temp folder still holds the kept files."""
    if out is not None:
        result.save(out, force=force)
    else:
        result.artifacts = None
    return result
