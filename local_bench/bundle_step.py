"""One step of a bundle run the way Codabench's compute worker runs it: a worker `Run` (the prediction step or
the scoring step) with its run folder, its two containers under one clock, its scores and output.

Mirrored from codalab/codabench `compute_worker/compute_worker.py` (function by function, named in each
docstring below):
- `Run.prepare`: per step, the bundles land in a fresh run folder: `program/` (the submission in the prediction
  step, the scoring program in the scoring step), `ingestion_program/` (prediction step, or scoring step when the
  task has `ingestion_only_during_scoring`), `input_data/` (same rule as the site's `_send_to_compute_worker`),
  `input/ref` (reference data, scoring) and `input/res` (the prediction step's output, scoring);
- `Run.start`: both containers of a step ("program" and "ingestion") run at once, under one wall clock
  (`signal.alarm(execution_time_limit)`); at the limit the whole step fails with "Execution Time Limit exceeded.
  Limit was N seconds" and every container is removed (here: the whole process tree SIGKILLed by
  proctree.run_tree, nothing left running); the clock starts when the step's containers start (after the
  bundles are fetched and the image pulled), one clock per step; since PR #2030 (v1.24, on the production
  server from v1.25, March 2026) a scoring program that exits non-zero fails the submission with "Child task
  failed or non-zero return code" before any score is pushed;
- `_run_program_directory`: `metadata.yaml`, else `metadata`; no metadata: a submission is copied to the output
  (results-only submissions), an ingestion program is an error; no `command`: an error for an ingestion program,
  a warning otherwise; the command goes through `replace_legacy_metadata_command` and runs with working
  directory /app/program and `PYTHONUNBUFFERED=1`, split like docker-py splits a string command (shlex, no shell);
  the volumes: /app/program, /app/output, /app/ingested_program (ingestion), /app/shared and /app/input (scoring),
  /app/input_data (when the step has input data);
- `Run.push_scores`: `scores.json`, else `scores.txt` (YAML), else "Could not find scores file, did the scoring
  program output it?"; a scores.json that does not parse is "Could not decode scores json properly, ...";
- `Run.push_output`: `output/metadata` with exitCode, elapsedTime, ingestionExitCode, ingestionElapsedTime
  (yaml.dump), refused when the programs wrote a `metadata` file themselves;
- `get_detailed_results_file_path`: `detailed_results.html`, else the first `*.html` of the scoring output;
- the site (`SubmissionSerializer.update`): the scoring step runs once the prediction step reports "Scoring",
  whatever the prediction step's exit codes; only a failed step (an exception above) stops the submission.

The worker source read: codalab/codabench `compute_worker/compute_worker.py` at 006d55f6 (docker-py APIClient,
asyncio, one alarm per Run); the exit-code rule of PR #2030 is taken from the PR and its follow-up #2303 (the
scoring step checks the gathered result of the "program" container only), as the stored source predates it.

Differences from the worker, on purpose: no docker image (the programs run in the interpreter the user picks;
`python`/`python3` in a command is that interpreter, and a missing module is reported as such); the network
is this machine's, as the worker leaves it on (`--no-network`: a network namespace per program); no GPU request, no /app/data mount (the worker host's private data); the logs of a program killed at the time limit
are kept (the worker loses them); a scores.txt that is not valid YAML is a named failure (the worker raises an
unhandled exception and the submission stays "Scoring"); scores.txt is read with YAML's safe loader.
"""


from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from subbench.local_bench.bundle_mounts import APP_MODE_VAR, AppView, BundleRunError, under_tmp
from subbench.local_bench.bundle_result import ProgramRun, StepResult
from subbench.local_bench.bundle_spec import BundleTask, copy_tree, materialize, safe_extract_archive
from subbench.local_bench.classify import OOM_PATTERNS
from subbench.local_bench.netns import cut_off_note, net_prefix, network_failure
from subbench.local_bench.proctree import StartError, run_tree
from subbench.local_bench.stderr_filter import summarize

SCORING_EXIT_MESSAGE = "Child task failed or non-zero return code"   # Run.start, codabench PR #2030
STDERR_TAIL = 20
PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?$")
MISSING_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([A-Za-z_][\w.]*)'?")

Echo = Callable[[str], None]


class SubmissionException(Exception):
    """The worker's SubmissionException: the step fails, the submission is Failed with this message."""

    def __init__(self, message: str, failure: str):
        super().__init__(message)
        self.message, self.failure = message, failure


def replace_legacy_metadata_command(command, kind, is_scoring, ingestion_only_during_scoring=False):
    """compute_worker.replace_legacy_metadata_command, verbatim: Codalab's $variables to the container's paths."""
    vars_to_replace = [
        ("$input", "/app/input_data" if kind == "ingestion" else "/app/input"),
        ("$output", "/app/output"),
        ("$program", "/app/ingestion_program" if ingestion_only_during_scoring and is_scoring else "/app/program"),
        ("$ingestion_program", "/app/program"),
        ("$hidden", "/app/input/ref"),
        ("$shared", "/app/shared"),
        ("$submission_program", "/app/ingested_program"),
        # for v1.8 compatibility
        ("$tmp", "/app/output"),
        ("$predictions", "/app/input/res" if is_scoring else "/app/output"),
    ]
    for var_string, var_replacement in vars_to_replace:
        command = command.replace(var_string, var_replacement)
    return command


def read_metadata(program_dir: Path, kind: str) -> tuple[str, str | None, str]:
    """(action, command, note) for a program folder, as `_run_program_directory` decides before running it.

    action: "absent" (no folder), "copy" (no metadata, kind program), "no_command", "run".
    Raises SubmissionException for an ingestion program without metadata or without command."""
    import yaml

    if not program_dir.exists():
        return "absent", None, f"{program_dir.name} not found, no program to execute"
    if (program_dir / "metadata.yaml").exists():
        metadata_path = "metadata.yaml"
    elif (program_dir / "metadata").exists():
        metadata_path = "metadata"
    elif kind == "program":
        return "copy", None, ("Program directory missing metadata, assuming it's going to be handled by ingestion: "
                              "its files were copied to the output")
    else:
        raise SubmissionException("Program directory missing 'metadata.yaml/metadata'", "Missing_Metadata")
    note = ""
    try:
        metadata = yaml.load((program_dir / metadata_path).read_text(encoding="utf-8", errors="replace"),
                             Loader=yaml.FullLoader)
        command = metadata.get("command") if isinstance(metadata, dict) else None
    except yaml.YAMLError as exc:
        command, note = None, f"Error parsing YAML file: {exc}".replace("\n", " ")
    if not command and kind == "ingestion":
        raise SubmissionException("Program directory missing 'command' in metadata", "Missing_Command")
    if not command:
        return "no_command", None, (note + "; " if note else "") + (
            f"{metadata_path} has no command, continuing anyway (may be meant to be consumed by an ingestion program)")
    return "run", str(command), note


# ------------------------------------------------------------------------------------------------ interpreter
def _write_shims(folder: Path, python: str) -> Path:
    """`python`, `python3`, `python3.X` that exec the chosen interpreter (first on PATH for the programs)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"python", "python3"}
    m = re.search(r"python(\d+\.\d+)$", Path(python).name)
    if m:
        names.add(f"python{m.group(1)}")
    for name in names:
        shim = folder / name
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} \"$@\"\n")
        shim.chmod(0o755)
    return folder


def _child_env(shims: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "VIRTUAL_ENV", APP_MODE_VAR):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"   # create_container(..., environment=["PYTHONUNBUFFERED=1"])
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    return env


def _docker_exit_code(returncode: int) -> int:
    """A container's StatusCode: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _missing_module(stderr: str) -> str | None:
    found = MISSING_MODULE.findall(stderr)
    return found[-1].split(".")[0] if found else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (1 << 16)))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return summarize(text, STDERR_TAIL)


def fmt_limit(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


# ------------------------------------------------------------------------------------------------ one step
class Step:
    """One worker `Run`: its run folder, its two containers, its outcome."""

    def __init__(self, root: Path, step: str, task: BundleTask, time_limit: float, python: str, mode: str,
                 image: str, echo: Echo, memory_limit_mb: float | None = None):
        self.root, self.step, self.task, self.time_limit = root, step, task, time_limit
        self.memory_limit_mb = memory_limit_mb   # per program, its whole process tree (the worker sets none)
        self.no_network = False                  # set by run_bundle: each program in its own network namespace
        self.is_scoring = step == "scoring"
        self.python, self.mode, self.image, self.echo = python, mode, image, echo
        self.program_dir = root / "program"
        self.ingestion_dir = root / "ingestion_program"
        self.input_data = root / "input_data"
        self.input_dir = root / "input"
        self.output_dir = root / "output"
        self.shared = root / "shared"
        self.logs = root / "logs"
        self.runs: list[ProgramRun] = []
        self.elapsed_s = 0.0
        self.has_input_data = False
        self.warnings: list[str] = []

    # Run.prepare
    def prepare(self, submission: Path | None = None, prediction_output: Path | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        t, only_scoring = self.task, self.task.ingestion_only_during_scoring
        if self.is_scoring:
            materialize(t.files["scoring_program"], self.program_dir)
        else:
            self.program_dir.mkdir()
            if submission.is_dir():
                copy_tree(submission, self.program_dir)
            else:
                safe_extract_archive(submission, self.program_dir, what="submission")
        ing = t.get("ingestion_program")
        if ing is not None and only_scoring == self.is_scoring:
            materialize(ing, self.ingestion_dir)
        data = t.get("input_data")
        if data is not None and (not self.is_scoring or only_scoring):
            materialize(data, self.input_data)
            self.has_input_data = True
        if self.is_scoring:
            ref = t.get("reference_data")
            if ref is not None:
                materialize(ref, self.input_dir / "ref")
            copy_tree(prediction_output, self.input_dir / "res")  # the prediction result, zipped and unzipped
            self.input_dir.mkdir(exist_ok=True)

    def _mounts(self, kind: str) -> dict[str, Path]:
        """The volumes `_run_program_directory` binds for this container (all but /app/data)."""
        mounts = {"/app/program": self.program_dir if kind == "program" else self.ingestion_dir,
                  "/app/output": self.output_dir}
        if kind == "ingestion":
            if self.task.ingestion_only_during_scoring and self.is_scoring:
                mounts["/app/ingested_program"] = self.input_dir / "res"
            else:
                mounts["/app/ingested_program"] = self.program_dir
        if self.is_scoring:
            mounts["/app/shared"] = self.shared
            mounts["/app/input"] = self.input_dir
        if self.has_input_data:
            mounts["/app/input_data"] = self.input_data
        return mounts

    def _role(self, kind: str) -> str:
        if kind == "ingestion":
            return "ingestion program"
        return "scoring program" if self.is_scoring else "submission"

    def _log(self, kind: str, stream: str) -> Path:
        # The worker's detailed output names: prediction_stdout, prediction_ingestion_stderr, scoring_stdout, ...
        return self.logs / f"{self.step}{'_ingestion' if kind == 'ingestion' else ''}_{stream}.txt"

    # Run.start + _run_program_directory
    def start(self) -> None:
        plans = []
        for kind, folder in (("program", self.program_dir), ("ingestion", self.ingestion_dir)):
            action, command, note = read_metadata(folder, kind)  # may raise SubmissionException
            run = ProgramRun(kind=kind, role=self._role(kind), action=action, note=note)
            if action == "copy":
                shutil.copytree(folder, self.output_dir, symlinks=False)
                run.action = "copied"
            elif action == "run":
                run.command = replace_legacy_metadata_command(command, kind, self.is_scoring,
                                                              self.task.ingestion_only_during_scoring)
                plans.append(run)
            if action != "absent" or kind == "program":
                self.runs.append(run)
        self.output_dir.mkdir(exist_ok=True)
        if self.is_scoring:
            self.shared.mkdir(exist_ok=True)
        env = _child_env(_write_shims(self.root / ".subbench" / "bin", self.python))
        outcomes: dict[int, BaseException] = {}
        stop = threading.Event()
        t0 = time.time()
        deadline = t0 + self.time_limit  # one clock over both containers: signal.alarm(execution_time_limit)
        threads = [threading.Thread(target=self._run_one, args=(run, argv, env, deadline, outcomes, stop), daemon=True)
                   for run in plans for argv in [self._argv(run)] if argv is not None]
        try:
            for th in threads:
                th.start()
            for th in threads:
                while th.is_alive():
                    th.join(0.2)
        except BaseException:  # Ctrl-C: every tree is killed before this propagates
            stop.set()
            for th in threads:
                th.join()
            raise
        finally:
            self.elapsed_s = time.time() - t0
        for run in plans:
            if id(run) in outcomes:
                raise outcomes[id(run)]
        if any(r.killed for r in plans):
            raise SubmissionException(f"Execution Time Limit exceeded. Limit was {fmt_limit(self.time_limit)} seconds",
                                      "Execution_Time_Limit_Exceeded")
        if any(r.out_of_memory for r in plans):
            raise SubmissionException(f"Out of memory: the {', '.join(r.role for r in plans if r.out_of_memory)} "
                                      f"passed the memory limit of {fmt_limit(self.memory_limit_mb)} MB "
                                      "(--memory-limit; the worker itself sets none)", "Out_Of_Memory")
        self._check_scoring_exit_code()

    def _check_scoring_exit_code(self) -> None:
        """Run.start since codalab/codabench PR #2030 (v1.24, production from v1.25): in the scoring step a scoring
        program that exits non-zero fails the submission before push_scores, whatever it wrote. Only the scoring
        program is checked (not an ingestion program running beside it, not the prediction step)."""
        prog = next((r for r in self.runs if r.kind == "program" and r.action == "ran"), None)
        if not self.is_scoring or prog is None or prog.exit_code in (0, None):
            return
        written = [n for n in ("scores.json", "scores.txt") if (self.output_dir / n).exists()]
        if written:
            self.warnings.append(f"the scoring program wrote {written[0]} but exited with code {prog.exit_code}: the "
                                 "server fails the submission and stores no score")
        raise SubmissionException(SCORING_EXIT_MESSAGE, "Scoring_Program_Failed")

    def _argv(self, run: ProgramRun) -> list[str] | None:
        view = AppView(self.mode, self._mounts(run.kind), self.root / ".subbench" / f"nsroot-{run.kind}",
                       under_tmp([self.root, Path(self.python).parent.parent]))
        unmounted = view.unmounted(run.command)
        if unmounted:
            run.note = (run.note + "; " if run.note else "") + (
                f"the command names {', '.join(unmounted)}, which the worker does not mount for the "
                f"{run.role} in the {self.step} step")
        try:
            args = shlex.split(run.command)  # docker-py's split_command: a string command is shlex-split, no shell
        except ValueError as exc:
            run.action, run.exit_code = "ran", 127
            run.note = (run.note + "; " if run.note else "") + f"the command cannot be split ({exc})"
            return None
        if args and PYTHON_NAME.match(Path(args[0]).name):
            if "/" in args[0]:
                run.note = (run.note + "; " if run.note else "") + (
                    f"{args[0]} (the image's interpreter) ran as {self.python}")
            args[0] = self.python
        run.argv = (net_prefix() if self.no_network else []) + view.argv(args)
        return run.argv

    def _run_one(self, run: ProgramRun, argv: list[str], env: dict, deadline: float, outcomes: dict,
                 stop: threading.Event) -> None:
        out_path, err_path = self._log(run.kind, "stdout"), self._log(run.kind, "stderr")
        run.action = "ran"

        def on_poll(_now: float) -> None:
            if stop.is_set():
                raise KeyboardInterrupt  # run_tree kills the whole tree, then this propagates

        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                cwd = self.program_dir if run.kind == "program" else self.ingestion_dir
                ended = run_tree(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                                 time_limit_s=max(0.0, deadline - time.time()), on_poll=on_poll,
                                 memory_limit_mb=self.memory_limit_mb)
            run.exit_code = _docker_exit_code(ended.returncode)
            run.elapsed_s = ended.elapsed_s
            run.killed = ended.killed_for == "time"
            run.out_of_memory = ended.killed_for == "memory"
        except StartError as exc:
            run.exit_code, run.elapsed_s = 127, 0.0
            err_path.write_text(f"{exc}\n")
        except BaseException as exc:  # interrupted: the tree is already killed by run_tree; re-raised by start()
            outcomes[id(run)] = exc
        run.stdout = str(out_path.relative_to(self.root.parent))
        run.stderr = str(err_path.relative_to(self.root.parent))
        run.stderr_tail = _tail(err_path)
        text = err_path.read_text(encoding="utf-8", errors="replace") if err_path.exists() else ""
        if "appns: " in text and run.exit_code == 125:
            outcomes[id(run)] = BundleRunError(f"the private /app mounts failed: {text.strip().splitlines()[-1]}",
                                               f"set {APP_MODE_VAR}=rewrite to rewrite the paths instead")
        self._diagnose(run, text)

    def _diagnose(self, run: ProgramRun, text: str) -> None:
        """Warnings that name why a program failed, from its exit code and stderr `text`: the network cut off, a
        kernel OOM kill, a module missing."""
        found = network_failure(text) if self.no_network else None
        if found:
            self.warnings.append(cut_off_note(f"the {run.role}", found))
        oom = OOM_PATTERNS.search(text) if run.exit_code not in (0, None) else None
        if not run.out_of_memory and (oom or run.exit_code == 128 + signal.SIGKILL and not run.killed):
            why = (f"it ran out of memory ({oom.group(0)})" if oom else
                   "it was killed by SIGKILL (exit code 137), not by subbench: on Linux that is the kernel's OOM "
                   "killer when this machine's memory runs out (`dmesg` tells)")
            self.warnings.append(f"Out_Of_Memory? the {run.role} exited with code {run.exit_code}: {why}. The "
                                 "worker reports only the exit code, and whether it happens there depends on its "
                                 "machine's memory; --memory-limit MB fails it as Out_Of_Memory at a set size")
        module = _missing_module(text)
        if module:
            run.missing_module = module
            ingested = self._mounts(run.kind).get("/app/ingested_program")
            if ingested is not None and ((ingested / f"{module}.py").exists() or (ingested / module).is_dir()):
                self.warnings.append(f"the {run.role} could not import the submission's module {module} (the "
                                     "submission is at /app/ingested_program)")
            else:
                self.warnings.append(f"the {run.role} imports {module}, not installed in {self.python}; the "
                                     f"competition's image is {self.image}")

    # Run.push_scores
    def push_scores(self) -> tuple[object, str]:
        import yaml

        json_path, txt_path = self.output_dir / "scores.json", self.output_dir / "scores.txt"
        if json_path.exists():
            try:
                return json.loads(json_path.read_text(encoding="utf-8")), "scores.json"
            except json.JSONDecodeError as e:
                raise SubmissionException(f"Could not decode scores json properly, it contains an error.\n{e.msg}",
                                          "Scores_Not_Decodable") from None
        if txt_path.exists():
            try:
                return yaml.safe_load(txt_path.read_text(encoding="utf-8")), "scores.txt"
            except yaml.YAMLError as e:
                raise SubmissionException(f"scores.txt is not valid YAML ({e}); the worker crashes on it and the "
                                          "submission stays in status Scoring".replace("\n", " "),
                                          "Scores_Not_Decodable") from None
        raise SubmissionException("Could not find scores file, did the scoring program output it?",
                                  "Scores_Not_Found")

    # Run.push_output
    def push_output(self) -> dict:
        import yaml

        by_kind = {r.kind: r for r in self.runs if r.action == "ran"}
        prog, ing = by_kind.get("program"), by_kind.get("ingestion")
        prog_status = {
            "exitCode": prog.exit_code if prog else None,
            "elapsedTime": (prog.elapsed_s if prog else None) or (ing.elapsed_s if ing else None),
            "ingestionExitCode": ing.exit_code if ing else None,
            "ingestionElapsedTime": ing.elapsed_s if ing else None,
        }
        metadata_path = self.output_dir / "metadata"
        if metadata_path.exists():
            raise SubmissionException("Error, the output directory already contains a metadata file. This file is "
                                      "used to store exitCode and other data, do not write to this file manually.",
                                      "Metadata_Exists")
        metadata_path.write_text(yaml.dump(prog_status, default_flow_style=False))
        return prog_status

    def detailed_results(self) -> Path | None:
        """get_detailed_results_file_path: detailed_results.html, else the first *.html of the output."""
        default = self.output_dir / "detailed_results.html"
        if default.exists():
            return default
        html_files = sorted(self.output_dir.glob("*.html"))
        return html_files[0] if html_files else None

    def result(self, metadata: dict | None) -> StepResult:
        files = sorted(str(p.relative_to(self.output_dir)) for p in self.output_dir.rglob("*") if p.is_file()) \
            if self.output_dir.exists() else []
        return StepResult(self.step, float(self.time_limit), self.elapsed_s, self.runs, metadata,
                          f"{self.step}/output" if self.output_dir.exists() else None, files)
