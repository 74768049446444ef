"""A multi-task phase run the way Codabench runs it: the submission becomes a parent with one child submission per
task of the phase (`tasks.run_submission` creates a child per task and sends each to a worker on its own), each
child has its own run folder, its own time limit and its own status.

Mirrored from codalab/codabench:
- `api/views/submissions.upload_submission_scores`: a child's scores whose keys are leaderboard column keys are
  added to the child and to its parent (`submission.parent.scores.add(score)`, then `calculate_scores`), so the
  parent's leaderboard row holds every task's scores, and a computed column (avg over `computation_indexes`) is
  evaluated on the scores of each task;
- `competitions/models.Submission.check_child_submission_statuses`: the parent becomes Finished once every child
  is done (Finished, Failed or Cancelled): a failed task shows in its own child, not in the parent's status.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from subbench.local_bench.bundle_result import BundleScore, BundleStatus
from subbench.local_bench.bundle_spec import Bundle, BundlePhase


def run_phase(bundle: Bundle, submission: Path, phase: BundlePhase, python: str, time_limit: float | None,
              workdir: Path, echo, run_task) -> BundleScore:
    """Every task of the phase as a child submission (`run_task` runs one: bundle_worker.run_bundle); the parent
    holds them, their columns (each tagged with its task) and the status the server shows."""
    keep = workdir / "keep"
    keep.mkdir(parents=True)
    children = []
    for index in phase.tasks:
        task = bundle.tasks[index]
        echo(f"task {index} ({task.name or 'unnamed'}): child submission {len(children) + 1} of {len(phase.tasks)}")
        child = run_task(bundle, submission, phase, task, python, time_limit, workdir / f"task-{index}", echo)
        _adopt(child, keep, f"task-{index}")
        children.append(child)
    return _parent(children, keep, phase)


def run_all_phases(bundle: Bundle, submission: Path, python: str, time_limit: float | None, workdir: Path, echo,
                   run_task) -> BundleScore:
    """`--phase all`: each phase in order, with its own tasks, limits and data, as a submission to each phase
    would be run; a row per phase (the phase's own result, a parent when it has several tasks)."""
    keep = workdir / "keep"
    keep.mkdir(parents=True)
    rows = []
    for phase in bundle.phases:
        echo(f"phase {phase.index} ({phase.name}): tasks {phase.tasks}")
        where = workdir / f"phase-{phase.index}"
        row = run_phase(bundle, submission, phase, python, time_limit, where, echo, run_task) \
            if len(phase.tasks) > 1 else run_task(bundle, submission, phase, bundle.tasks[phase.tasks[0]], python,
                                                  time_limit, where, echo)
        _adopt(row, keep, f"phase-{phase.index}", tag_task=len(phase.tasks) > 1)
        for c in row.columns:
            c.phase = phase.index
        rows.append(row)
    first = rows[0]
    lead = next((c for c in first.columns), None)
    return BundleScore(
        status=BundleStatus.Finished if all(r.ok for r in rows) else BundleStatus.Failed, failure=None, message="",
        failed_step=None, value=lead.value if lead else None, leaderboard_key=lead.key if lead else None,
        columns=[c for r in rows for c in r.columns], scores=None, scores_file=None, steps=[], bundle=first.bundle,
        phase={"index": None, "name": "all", "phases": [p.index for p in bundle.phases]}, task={"index": None},
        time_limit_s=first.time_limit_s, python=first.python, app_paths=first.app_paths,
        submission=first.submission, warnings=[f"phase {r.phase.get('index')}: {w}" for r in rows for w in r.warnings],
        created=first.created, subbench_version=first.subbench_version, children=rows, artifacts=keep)


def _adopt(child: BundleScore, keep: Path | None, prefix: str, tag_task: bool = True) -> None:
    """Move a child's kept files under the parent's folder and point its relative paths (its own children's too)
    there."""
    if keep is not None and child.artifacts is not None and Path(child.artifacts).is_dir():
        shutil.move(str(child.artifacts), str(keep / prefix))
    for grandchild in child.children:
        _adopt(grandchild, None, prefix, tag_task=False)
    for step in child.steps:
        step.output = f"{prefix}/{step.output}" if step.output else None
        for p in step.programs:
            p.stdout = f"{prefix}/{p.stdout}" if p.stdout else None
            p.stderr = f"{prefix}/{p.stderr}" if p.stderr else None
    if child.detailed_results:
        child.detailed_results = f"{prefix}/{child.detailed_results}"
    if tag_task:
        for c in child.columns:
            c.task = child.task.get("index")
    child.artifacts = None


def _parent(children: list[BundleScore], keep: Path, phase: BundlePhase) -> BundleScore:
    first = children[0]
    columns = [c for child in children for c in child.columns]
    failed = [f"task {c.task.get('index')} ({c.failure}: {c.message})" for c in children if c.failure]
    warnings = [f"task {c.task.get('index')}: {w}" for c in children for w in c.warnings]
    if failed:
        warnings.insert(0, f"{len(failed)} of {len(children)} child submissions failed: {'; '.join(failed)}; the "
                           "server shows the parent Finished with the other tasks' scores")
    lead = next((c for c in first.columns), None)
    return BundleScore(
        status=BundleStatus.Finished, failure=None, message="", failed_step=None,
        value=lead.value if lead else None, leaderboard_key=lead.key if lead else None, columns=columns,
        scores=None, scores_file=None, steps=[], bundle=first.bundle,
        phase={"index": phase.index, "name": phase.name}, task={"index": None, "name": None, "tasks": phase.tasks},
        time_limit_s=first.time_limit_s, python=first.python, app_paths=first.app_paths,
        submission=first.submission, warnings=list(dict.fromkeys(warnings)), created=first.created,
        subbench_version=first.subbench_version, children=children, artifacts=keep)
