"""Run a submission through a competition bundle the way Codabench's compute worker does: the prediction step,
then the scoring step, each a worker `Run` with its own run folder and time limit.

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

The /app paths: commands run against the local run folder. Where Linux allows it (`unshare --mount`, plus a user
namespace when not root), each program runs in a private mount namespace whose /app/... are the run folder's
(see _appns.py), so paths written inside the programs' code work too; elsewhere the /app/... paths of the command
are rewritten to the run folder's and the result says so (`app_paths = "rewrite"`). `SUBBENCH_APP_PATHS=rewrite`
forces the rewrite.

Differences from the worker, on purpose: no docker image (the programs run in the interpreter the user picks;
`python`/`python3` in a command is that interpreter, and a missing module is reported as such); the network
is this machine's, as the worker leaves it on (`--no-network`: a network namespace per program); no GPU request, no /app/data mount (the worker host's private data); the logs of a program killed at the time limit
are kept (the worker loses them); a scores.txt that is not valid YAML is a named failure (the worker raises an
unhandled exception and the submission stays "Scoring"); scores.txt is read with YAML's safe loader.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from subbench.errors import SubbenchError
from subbench.local_bench.bundle_result import BundleScore, BundleStatus, ColumnScore, ProgramRun, StepResult
from subbench.local_bench.bundle_phase import run_all_phases, run_phase
from subbench.local_bench.bundle_spec import (Bundle, BundleError, BundleFileError, BundlePhase,
                                              BundleSelectionError, BundleTask,
                                              copy_tree, materialize, open_bundle, safe_extract_archive)
from subbench.local_bench.classify import OOM_PATTERNS
from subbench.local_bench.netns import net_prefix, network_failure, require_network_isolation
from subbench.local_bench.proctree import StartError, run_tree
from subbench.local_bench.stderr_filter import summarize

SCORING_EXIT_MESSAGE = "Child task failed or non-zero return code"   # Run.start, codabench PR #2030
# Column.computation over the columns at computation_indexes (leaderboards/models.py: avg; sum, min, max too).
COMPUTATIONS = {"avg": lambda v: sum(v) / len(v), "sum": sum, "min": min, "max": max}
APP_MODE_VAR = "SUBBENCH_APP_PATHS"       # "rewrite" forces the rewrite, "namespace" refuses to fall back
STDERR_TAIL = 20
PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?$")
MISSING_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([A-Za-z_][\w.]*)'?")
APP_PATH = re.compile(r"/app/(ingested_program|ingestion_program|input_data|program|output|shared|input|data)"
                      r"(?![\w])")

Echo = Callable[[str], None]


class SubmissionException(Exception):
    """The worker's SubmissionException: the step fails, the submission is Failed with this message."""

    def __init__(self, message: str, failure: str):
        super().__init__(message)
        self.message, self.failure = message, failure


class BundleRunError(BundleError):
    """The bundle cannot be run here (not a failure of the submission)."""


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


# ------------------------------------------------------------------------------------------------ /app paths
def _appns_script() -> Path:
    return Path(str(resources.files("subbench.local_bench") / "_appns.py"))


def _unshare_prefix() -> list[str] | None:
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return None
    return [exe, "--mount"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[bool, str]:
    """(usable, why not): can a program here see the run folder at /app/... in a private mount namespace?
    Probed once per process: a real namespace, a bind, a chroot and a Python run inside it."""
    prefix = _unshare_prefix()
    if prefix is None:
        return False, "no `unshare` (util-linux) on this system" if sys.platform.startswith("linux") else \
            f"mount namespaces are Linux-only (this is {sys.platform})"
    with tempfile.TemporaryDirectory(prefix="subbench-appns-") as tmp:
        prog = Path(tmp) / "program"
        prog.mkdir()
        (prog / "probe").write_text("ok")
        cmd = prefix + [sys.executable, str(_appns_script()), "--root", str(Path(tmp) / "root"), "--bind",
                        f"/app/program={prog}", "--cwd", "/app/program", "--", sys.executable, "-c",
                        "import os,sys; sys.exit(0 if open('/app/program/probe').read() == 'ok' "
                        "and os.getcwd() == '/app/program' else 3)"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"unshare failed ({exc})"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return False, f"no private mount namespace here ({why})"
    return True, ""


def app_mode() -> tuple[str, str]:
    """("namespace", "") or ("rewrite", why); $SUBBENCH_APP_PATHS=rewrite|namespace forces one."""
    forced = os.environ.get(APP_MODE_VAR, "")
    if forced == "rewrite":
        return "rewrite", f"${APP_MODE_VAR}=rewrite"
    ok, why = namespace_support()
    if not ok and forced == "namespace":
        raise BundleRunError(f"${APP_MODE_VAR}=namespace but {why}", f"unset {APP_MODE_VAR} to allow the rewrite")
    return ("namespace", "") if ok else ("rewrite", why)


@dataclass
class AppView:
    """What one container sees at /app/...: the worker's volumes for it, mounted or rewritten."""
    mode: str                        # namespace | rewrite
    mounts: dict[str, Path]          # "/app/program" -> run folder path
    nsroot: Path                     # where the namespace's root is built (namespace mode)
    keep_in_tmp: tuple = ()          # host folders under /tmp the programs need (the run folder, the interpreter)

    def rewrite(self, text: str) -> str:
        def sub(m):
            target = f"/app/{m.group(1)}"
            return str(self.mounts[target]) if target in self.mounts else m.group(0)
        return APP_PATH.sub(sub, text)

    def unmounted(self, text: str) -> list[str]:
        """The /app/... paths a command names that the worker does not mount for this container."""
        return sorted({f"/app/{m.group(1)}" for m in APP_PATH.finditer(text)} - set(self.mounts))

    def argv(self, args: list[str]) -> list[str]:
        if self.mode == "rewrite":
            return [self.rewrite(a) for a in args]
        binds = []
        for target, host in self.mounts.items():
            binds += ["--bind", f"{target}={host}"]
        keep = os.pathsep.join(str(k) for k in self.keep_in_tmp)
        return (_unshare_prefix() + [sys.executable, str(_appns_script()), "--root", str(self.nsroot)] + binds
                + ["--cwd", "/app/program", "--private-tmp", keep, "--"] + args)


# ------------------------------------------------------------------------------------------------ interpreter
def _under_tmp(paths) -> tuple[Path, ...]:
    """Those of `paths` that lie under /tmp (which the namespace replaces by a tmpfs of its own), resolved."""
    out = []
    for p in paths:
        p = Path(p).resolve()
        if p.is_relative_to("/tmp") and p != Path("/tmp") and p not in out:
            out.append(p)
    return tuple(out)


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


def _fmt_limit(limit: float) -> str:
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
            raise SubmissionException(f"Execution Time Limit exceeded. Limit was {_fmt_limit(self.time_limit)} seconds",
                                      "Execution_Time_Limit_Exceeded")
        if any(r.out_of_memory for r in plans):
            raise SubmissionException(f"Out of memory: the {', '.join(r.role for r in plans if r.out_of_memory)} "
                                      f"passed the memory limit of {_fmt_limit(self.memory_limit_mb)} MB "
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
                       _under_tmp([self.root, Path(self.python).parent.parent]))
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
        if self.no_network and network_failure(text):
            self.warnings.append(f"the {run.role} tried to reach the network ({network_failure(text)}) "
                                 "and --no-network cut it off: on a server without internet (a queue with "
                                 "COMPETITION_CONTAINER_NETWORK_DISABLED=true) it fails the same way; ship what it "
                                 "downloads (e.g. weights fetched at Model()) inside the submission")
        if not run.out_of_memory and (run.exit_code == 128 + signal.SIGKILL and not run.killed
                                      or run.exit_code not in (0, None) and OOM_PATTERNS.search(text)):
            why = (f"it ran out of memory ({OOM_PATTERNS.search(text).group(0)})" if OOM_PATTERNS.search(text) else
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
        echo(f"prediction step: {task.name or 'task ' + str(task.index)} (limit {_fmt_limit(limit)} s, "
             f"/app paths: {mode})")
        pred = step("prediction")
        if not _run_step(pred, result, warnings, keep, submission=submission):
            return result
        for r in pred.runs:
            if r.action == "ran" and r.exit_code not in (0, None):
                warnings.append(f"the {r.role} exited with code {r.exit_code} in the prediction step; the server "
                                "goes on to the scoring step anyway")
        echo(f"scoring step (limit {_fmt_limit(limit)} s)")
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
    off by default, like the worker; a BundleRunError where Linux does not allow it."""
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
