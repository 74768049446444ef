"""Run a submission the way Codabench's compute worker does, in a fresh process, and say how it ended.

Followed from codalab/codabench `compute_worker/compute_worker.py` (class `Run`):
- a temporary run folder per submission with `program/` (the ingestion program), `ingested_program/` (the
  submission), `input_data/` and `output/` — the folders the worker binds to /app/program,
  /app/ingested_program, /app/input_data and /app/output of the container;
- the container's working directory is /app/program (`working_dir="/app/program"`), i.e. `cwd_mode="program"`;
  the AN2DL course template loads `weights.keras` relative to the working directory and worked on that server,
  so profiles can name `cwd = "submission"` instead (see profiles/an2dl-2024.toml);
- `PYTHONUNBUFFERED=1` in the environment (the worker's `environment=["PYTHONUNBUFFERED=1"]`);
- one `signal.alarm(execution_time_limit)` over the whole run — start-up, imports, Model() and predict — after
  which the containers are removed by force: here the whole process tree is SIGKILLed and the status is
  `Execution_Time_Limit_Exceeded`, with the stages the run reached;
- the run folder is deleted afterwards (`clean_up`), and `output/metadata` records exitCode/elapsedTime.
The ingestion program itself (`_ingestion.py`) follows Codabench's example bundles; see its docstring.

Memory: `RLIMIT_AS` cannot be used with TensorFlow (measured here: a Keras process maps 2.8 GB of address space
to hold 0.8 GB resident, so any useful cap kills healthy runs) and `RLIMIT_DATA` turns an overrun into a random
allocator abort. A container's memory limit is a cgroup charging resident pages and the OOM killer's SIGKILL,
so that is what is emulated: the resident set of the process tree is polled and the tree is SIGKILLed when it
passes the limit. A MemoryError, `std::bad_alloc`, a TensorFlow ResourceExhausted error or a SIGKILL that the
runner did not send (the kernel's OOM killer) are named Out_Of_Memory as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

STATUSES = ("ok", "Import_Error", "Init_Error", "Predict_Error", "Output_Shape_Error",
            "Output_Value_Error", "Execution_Time_Limit_Exceeded", "Out_Of_Memory")
STAGES = ("start", "import", "init", "predict")
CWD_MODES = ("submission", "program")

POLL_S = 0.05           # how often the child is checked (exit, time, resident memory of known processes)
TREE_SCAN_S = 0.5       # how often /proc is scanned for new processes in the tree (costlier than a poll)
STDERR_TAIL_LINES = 25
_RUN_TOKEN_VAR = "SUBBENCH_RUN_TOKEN"  # inherited by every descendant: finds double-forked orphans at clean-up
_OOM_PATTERNS = re.compile(r"MemoryError|std::bad_alloc|ResourceExhaustedError|OOM when allocating|"
                           r"Cannot allocate memory|out of memory", re.IGNORECASE)


@dataclass
class RunResult:
    status: str
    predictions: np.ndarray | None     # (N,) int64 when status == "ok"
    stages: dict[str, float]           # seconds per stage reached: start, import, init, predict
    elapsed_s: float                   # one wall clock over the whole process
    peak_memory_mb: float | None
    stderr_tail: str                   # last lines of the submission's stderr
    message: str                       # one-line cause for non-ok statuses
    python: str
    cwd: str
    run_dir: str
    cwd_mode: str = "submission"
    time_limit_s: float | None = None
    memory_limit_mb: float | None = None
    n: int = 0
    returncode: int | None = None
    stage_reached: str = "start"       # the stage running when the process ended or was killed
    set_predictions: dict[str, np.ndarray] = field(default_factory=dict)  # every set, validated (ok runs)
    set_seconds: dict[str, float] = field(default_factory=dict)           # predict time per set
    versions: dict[str, str] = field(default_factory=dict)  # python/numpy/tensorflow/keras the child loaded

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def per_image_s(self) -> float | None:
        if "predict" not in self.stages or not self.n:
            return None
        return self.stages["predict"] / self.n


def check_predictions(pred: np.ndarray, n: int, n_classes: int) -> tuple[str, str, np.ndarray | None]:
    """(status, message, labels): the output contract, predictions (N,) integer labels in 0..n_classes-1."""
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[0] == n and pred.shape[1] > 1:
        kind = "one-hot" if np.isin(pred, (0, 1)).all() else "probabilities"
        return ("Output_Shape_Error", f"predict returned {kind} of shape {pred.shape} "
                f"(probabilities/one-hot); return argmax labels: np.argmax(p, axis=1) of shape ({n},)", None)
    if pred.ndim != 1:
        return ("Output_Shape_Error", f"predict returned shape {pred.shape}, expected ({n},): one integer label "
                "per image (flatten/argmax it)", None)
    if len(pred) != n:
        return ("Output_Shape_Error", f"predict returned {len(pred)} labels for {n} images; return one per image",
                None)
    if pred.dtype == bool or not (np.issubdtype(pred.dtype, np.integer) or np.issubdtype(pred.dtype, np.floating)):
        return ("Output_Value_Error", f"predict returned dtype {pred.dtype}; return integer class labels", None)
    if np.issubdtype(pred.dtype, np.floating):
        if not np.isfinite(pred).all():
            bad = int((~np.isfinite(pred)).sum())
            return ("Output_Value_Error", f"predict returned {bad} non-finite values (NaN/inf); "
                    "check the model's outputs", None)
        frac = pred != np.round(pred)
        if frac.any():
            return ("Output_Value_Error", f"predict returned non-integer values (e.g. {pred[frac][0]:.4g}); "
                    "return integer class labels, not scores", None)
    if n and (pred.min() < 0 or pred.max() > n_classes - 1):
        return ("Output_Value_Error", f"labels span {pred.min():g}..{pred.max():g}, outside 0..{n_classes - 1}; "
                "check the class order/count", None)
    return "ok", "", pred.astype(np.int64)


# --------------------------------------------------------------------------------------------------- process tree
def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # after "pid (comm) "
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[3])


class _ProcessTree:
    """The child and its descendants (by parent link or session), their resident memory, and killing them all."""

    def __init__(self, root: int, token: str):
        self.root = root
        self.token = token
        self.pids = {root}
        self.has_proc = os.path.isdir(f"/proc/{os.getpid()}")
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20

    def scan(self) -> None:
        if not self.has_proc:
            return
        links: dict[int, tuple[int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _proc_stat(int(name))
                if st:
                    links[int(name)] = st
        found = {p for p, (_, sid) in links.items() if sid == self.root}
        frontier = set(found | {self.root})
        while frontier:
            frontier = {p for p, (ppid, _) in links.items() if ppid in frontier and p not in found}
            found |= frontier
        self.pids |= found

    def rss_mb(self) -> float | None:
        if not self.has_proc:
            return None
        total, alive = 0, set()
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1])
                alive.add(pid)
            except (OSError, IndexError, ValueError):
                pass
        self.pids = alive | {self.root}
        return total * self.page_mb

    def _token_pids(self) -> set[int]:
        """Processes whose environment carries this run's token: descendants that double-forked or setsid()."""
        found = set()
        if not self.has_proc:
            return found
        needle = f"{_RUN_TOKEN_VAR}={self.token}".encode()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(name))
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL the process group, every known descendant and every process holding the token."""
        try:
            os.killpg(self.root, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(20):
            self.scan()
            victims = {p for p in (self.pids | self._token_pids()) if p != os.getpid() and _proc_stat(p)}
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)

    def survivors(self) -> set[int]:
        return {p for p in self._token_pids() if _proc_stat(p)}


# --------------------------------------------------------------------------------------------------- the run
def ingestion_source() -> Path:
    return Path(str(resources.files("subbench.local_bench") / "_ingestion.py"))


def _child_env(token: str) -> dict[str, str]:
    env = dict(os.environ)
    # The server's image has no user PYTHONPATH: a submission must not import files that are not in the zip.
    for var in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"   # compute_worker.py: environment=["PYTHONUNBUFFERED=1"]
    env[_RUN_TOKEN_VAR] = token
    return env


def _prepare_submission(submission, dest: Path, profile) -> None:
    """Copy an extracted folder, or safely extract a zip, into ingested_program/: the user's files stay untouched."""
    src = Path(submission)
    if src.is_file():
        from subbench.profile import load_profile

        from .safezip import safe_extract
        safe_extract(src, dest, profile or load_profile(None))
    else:
        shutil.copytree(src, dest, symlinks=False)


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(times: dict, sets: dict, t0: float, t_end: float) -> tuple[dict[str, float], str]:
    """Seconds per stage reached, from the child's wall-clock marks; a stage cut short ends at t_end."""
    order = [("start", "ready"), ("import", "imported"), ("init", "initialized")]
    stages: dict[str, float] = {}
    last = t0
    for name, mark in order:
        if mark in times:
            stages[name] = max(0.0, times[mark] - last)
            last = times[mark]
        else:
            stages[name] = max(0.0, t_end - last)
            return stages, name
    total = 0.0
    for info in sets.values():
        total += max(0.0, info.get("end", t_end) - info["start"])
    stages["predict"] = total if sets else max(0.0, t_end - last)
    return stages, ("done" if "finished" in times else "predict")


class _Progress:
    """A line per stage, or a tqdm bar over images when predictions come in chunks."""

    def __init__(self, enabled: bool, chunked: bool, echo: Callable[[str], None]):
        self.enabled, self.chunked, self.echo = enabled, chunked, echo
        self.reported: set[str] = set()
        self.bars: dict[str, object] = {}

    def update(self, state: dict | None, t0: float, names: list[str]) -> None:
        if not self.enabled or not state:
            return
        times = state.get("times", {})
        last = t0
        for name, mark in (("start", "ready"), ("import", "imported"), ("init", "initialized")):
            if mark in times:
                if name not in self.reported:
                    self.reported.add(name)
                    self.echo(f"  {name:<8}{times[mark] - last:8.2f} s")
                last = times[mark]
        for key, info in state.get("sets", {}).items():
            set_name = names[int(key)] if int(key) < len(names) else key
            if self.chunked:
                bar = self.bars.get(set_name)
                if bar is None:
                    from tqdm import tqdm
                    bar = self.bars[set_name] = tqdm(total=info["total"], desc=f"  predict {set_name}",
                                                     unit="img", leave=True, file=sys.stderr)
                bar.update(info["done"] - bar.n)  # type: ignore[attr-defined]
            if "end" in info and f"predict:{key}" not in self.reported:
                self.reported.add(f"predict:{key}")
                if set_name in self.bars:
                    self.bars.pop(set_name).close()  # type: ignore[attr-defined]
                self.echo(f"  predict {set_name}: {info['total']} images in {info['end'] - info['start']:.2f} s")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()  # type: ignore[attr-defined]


def run_submission(submission_dir, images, *, n_classes, python=sys.executable, time_limit_s=600.0,
                   memory_limit_mb=None, cwd_mode="submission", chunk=None, run_dir=None,
                   progress=False, keep_run_dir=False) -> RunResult:
    """Run `Model().predict(images)` from an extracted submission folder (or a zip) in a fresh process."""
    return run_sets(submission_dir, [("test", np.asarray(images))], n_classes=n_classes, python=python,
                    time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb, cwd_mode=cwd_mode, chunk=chunk,
                    run_dir=run_dir, progress=progress, keep_run_dir=keep_run_dir)


def run_sets(submission_dir, sets: Iterable[tuple[str, np.ndarray]], *, n_classes: int, stream: bool = False,
             python: str = sys.executable, time_limit_s: float | None = 600.0,
             memory_limit_mb: float | None = None, cwd_mode: str = "submission", chunk: int | None = None,
             run_dir=None, progress=False, keep_run_dir: bool = False, module: str = "model",
             class_name: str = "Model", profile=None, echo: Callable[[str], None] | None = None) -> RunResult:
    """One process, one Model(), several named image sets predicted in order (e.g. clean + a robustness suite).

    With `stream=True`, `sets` may be a generator producing sets while the process predicts: each is written
    to input_data/ (at most two ahead) and deleted once predicted, so disk and memory stay bounded by two sets;
    waiting for a set counts against the time limit. The first set's labels are `RunResult.predictions`; all
    are in `set_predictions` (by name), with their predict times in `set_seconds`.
    `run_dir` given: that folder is used and kept; otherwise a temp folder, removed unless `keep_run_dir`.
    """
    if cwd_mode not in CWD_MODES:
        raise ValueError(f"cwd_mode must be one of {CWD_MODES}, not {cwd_mode!r}")
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    if memory_limit_mb is not None and not os.path.isdir("/proc/self"):
        echo("warning: no /proc on this system: the memory limit cannot be enforced (peak memory is still "
             "reported by the process itself)")
    own_dir = run_dir is None
    root = Path(tempfile.mkdtemp(prefix="subbench-run-")) if own_dir else Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _run(submission_dir, sets, stream, root, n_classes=n_classes, python=str(python),
                    time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb, cwd_mode=cwd_mode, chunk=chunk,
                    progress=progress, module=module, class_name=class_name, profile=profile, echo=echo)
    finally:
        if own_dir and not keep_run_dir:
            shutil.rmtree(root, ignore_errors=True)


def _rusage_mb(usage) -> float:
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _run(submission_dir, sets, stream, root: Path, *, n_classes, python, time_limit_s, memory_limit_mb,
         cwd_mode, chunk, progress, module, class_name, profile, echo) -> RunResult:
    program, ingested, input_dir, output = (root / "program", root / "ingested_program", root / "input_data",
                                            root / "output")
    state_dir, logs = root / ".subbench", root / "logs"
    for d in (program, input_dir, output, state_dir, logs):
        d.mkdir(parents=True, exist_ok=True)
    _prepare_submission(submission_dir, ingested, profile)
    shutil.copyfile(ingestion_source(), program / "ingestion.py")

    names: list[str] = []        # set names by index; files are named by index ("0000.npy")
    sizes: list[int] = []
    if stream:
        pending = iter(sets)
    else:
        for k, (name, arr) in enumerate(sets):
            arr = np.asarray(arr)
            np.save(input_dir / f"{k:04d}.npy", arr)
            names.append(name)
            sizes.append(len(arr))
        if not names:
            raise ValueError("no image sets to predict")
    (input_dir / "sets.json").write_text(json.dumps({
        "sets": [{"key": f"{k:04d}", "file": f"{k:04d}.npy"} for k in range(len(names))],
        "stream": stream, "chunk": chunk}))

    stop = threading.Event()
    producer_error: list[BaseException] = []

    def produce():
        # Keep at most two sets on disk ahead of the child; os.replace makes each appear whole.
        try:
            for k, (name, arr) in enumerate(pending):
                while not stop.is_set() and sum(1 for j in range(k) if (input_dir / f"{j:04d}.npy").exists()) >= 2:
                    time.sleep(0.02)
                if stop.is_set():
                    return
                arr = np.asarray(arr)
                tmp = input_dir / f".{k:04d}.tmp.npy"
                np.save(tmp, arr)
                names.append(name)
                sizes.append(len(arr))
                os.replace(tmp, input_dir / f"{k:04d}.npy")
            (input_dir / "END").write_text("")
        except BaseException as exc:  # re-raised after the run (the child meanwhile waits for the next set)
            producer_error.append(exc)
            stop.set()

    cwd = program if cwd_mode == "program" else ingested
    token = uuid.uuid4().hex
    cmd = [python, str(program / "ingestion.py"), "--input", str(input_dir), "--output", str(output),
           "--submission", str(ingested), "--state-dir", str(state_dir), "--module", module,
           "--class-name", class_name]
    result = RunResult("ok", None, {}, 0.0, None, "", "", python, str(cwd), str(root), cwd_mode,
                       time_limit_s, memory_limit_mb)
    show = _Progress(bool(progress), bool(chunk), echo)
    killed_for: str | None = None
    peak_polled, rusage_mb, status_code = 0.0, None, None
    with open(logs / "stdout.txt", "wb") as stdout_f, open(logs / "stderr.txt", "wb") as stderr_f:
        t0 = time.time()
        try:
            proc = subprocess.Popen(cmd, cwd=str(cwd), env=_child_env(token), stdin=subprocess.DEVNULL,
                                    stdout=stdout_f, stderr=stderr_f, start_new_session=True)
        except OSError as exc:
            result.status, result.message = "Import_Error", f"cannot start {python}: {exc}"
            return result
        producer = threading.Thread(target=produce, daemon=True) if stream else None
        if producer:
            producer.start()
        tree = _ProcessTree(proc.pid, token)
        last_scan, t_end = 0.0, t0
        try:
            while True:
                pid, status_code, usage = os.wait4(proc.pid, os.WNOHANG)
                now = time.time()
                if pid:
                    t_end, rusage_mb = now, _rusage_mb(usage)
                    break
                if now - last_scan >= TREE_SCAN_S:
                    tree.scan()
                    last_scan = now
                rss = tree.rss_mb()
                if rss is not None:
                    peak_polled = max(peak_polled, rss)
                if time_limit_s is not None and now - t0 >= time_limit_s:
                    killed_for = "time"
                elif memory_limit_mb is not None and rss is not None and rss > memory_limit_mb:
                    killed_for = "memory"
                if killed_for:
                    t_end = now
                    tree.kill_all()
                    _, status_code, usage = os.wait4(proc.pid, 0)
                    rusage_mb = _rusage_mb(usage)
                    break
                if progress:
                    show.update(_read_json(state_dir / "progress.json"), t0, names)
                time.sleep(POLL_S)
        finally:
            if status_code is None:  # interrupted (e.g. Ctrl-C in the caller): leave nothing behind
                tree.kill_all()
                try:
                    os.waitpid(proc.pid, 0)
                except ChildProcessError:
                    pass
            else:
                # A container ends with everything in it: kill what the submission left in the background.
                tree.kill_all()
            proc.returncode = os.waitstatus_to_exitcode(status_code) if status_code is not None else -9
            stop.set()
            if producer:
                producer.join(timeout=10)
    elapsed = t_end - t0
    state = _read_json(state_dir / "progress.json") or {}
    show.update(state, t0, names)
    show.close()
    returncode = proc.returncode
    # Codabench's worker writes exitCode/elapsedTime into output/metadata (yaml); same keys here.
    (output / "metadata").write_text(f"elapsedTime: {elapsed}\nexitCode: {returncode}\n")

    times, set_info = state.get("times", {}), state.get("sets", {})
    stages, reached = _stages(times, set_info, t0, t_end)
    # getrusage's maxrss survives fork+exec on Linux: a child of a 2 GB process reports >= 2 GB even when the
    # submission itself used 50 MB (measured: 2005 vs 46 MB for one zip, spawned from pytest vs a bare Python).
    # Where /proc is polled (every POLL_S) its figure is the submission's own; rusage is the fallback.
    peaks = [peak_polled] if peak_polled else [v for v in (rusage_mb, state.get("maxrss_mb")) if v]
    result.stages, result.elapsed_s, result.stage_reached, result.returncode = stages, elapsed, reached, returncode
    result.peak_memory_mb = round(max(peaks), 1) if peaks else None
    result.stderr_tail = _tail(logs / "stderr.txt")
    result.versions = state.get("versions", {})
    result.n = sizes[0] if sizes else 0
    result.set_seconds = {names[int(k)]: info["end"] - info["start"] for k, info in set_info.items()
                          if "end" in info and int(k) < len(names)}

    def fail(status: str, message: str) -> RunResult:
        result.status, result.message = status, message
        return result

    where = f"during {reached}" if reached != "done" else "after predicting"
    if killed_for == "time":
        done = sum(i.get("done", 0) for i in set_info.values())
        extra = f", {done}/{sum(sizes)} images predicted" if reached == "predict" else ""
        return fail("Execution_Time_Limit_Exceeded",
                    f"killed {where} at the {time_limit_s:g} s limit (elapsed {elapsed:.1f} s{extra})")
    if killed_for == "memory":
        return fail("Out_Of_Memory", f"resident memory reached {peak_polled:.0f} MB > limit "
                    f"{memory_limit_mb:g} MB {where}; the process tree was killed as the OOM killer would")
    if producer_error:
        raise producer_error[0]
    error = _read_json(state_dir / "error.json")
    if error:
        what = f"{error['type']}: {error['message']}".strip()
        first_line = what.splitlines()[0] if what else error["type"]
        if error["type"] in ("MemoryError", "ResourceExhaustedError") or _OOM_PATTERNS.search(what):
            return fail("Out_Of_Memory", f"{first_line} (during {error['stage']})")
        if error["stage"] == "output":
            return fail("Output_Shape_Error" if error["type"] == "ShapeMismatch" else "Output_Value_Error",
                        first_line)
        stage_text = "from model import Model" if error["stage"] == "import" else f"{error['stage']}"
        return fail({"import": "Import_Error", "init": "Init_Error"}.get(error["stage"], "Predict_Error"),
                    f"{first_line} (in {stage_text})")
    stage_status = {"start": "Import_Error", "import": "Import_Error", "init": "Init_Error"}.get(reached,
                                                                                                 "Predict_Error")
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in {s.value for s in signal.Signals} else str(-returncode)
        if -returncode == signal.SIGKILL or _OOM_PATTERNS.search(result.stderr_tail):
            return fail("Out_Of_Memory", f"the process was killed by {sig} {where}, not by subbench: the kernel's "
                        "out-of-memory killer sends that")
        return fail(stage_status, f"the process died with {sig} {where}")
    if returncode != 0:
        if _OOM_PATTERNS.search(result.stderr_tail):
            return fail("Out_Of_Memory", f"out of memory {where} (exit code {returncode})")
        return fail(stage_status, f"the process exited with code {returncode} {where}")
    if reached != "done" or len(set_info) < len(names):
        return fail(stage_status, f"the process exited (code 0) {where} without writing all predictions")
    for k, (name, n) in enumerate(zip(names, sizes)):
        try:
            raw = np.load(output / f"predictions_{k:04d}.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            return fail("Output_Value_Error", f"predictions for {name} unreadable: {exc}")
        status, message, labels = check_predictions(raw, n, n_classes)
        if status != "ok":
            return fail(status, message if len(names) == 1 else f"set {name}: {message}")
        result.set_predictions[name] = labels
    result.predictions = result.set_predictions[names[0]]
    return result
