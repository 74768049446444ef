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

The parts: a `RunSpec` says what to run and under which limits; this module lays out the run folder, feeds the
image sets and reads back what the run left; `proctree.run_tree` holds the process tree (time and memory
limits, peak memory, the kill); `classify.classify` names the outcome from plain values; `stderr_filter`
makes the stderr tail shown for a failure end with the submission's own error rather than TensorFlow's start-up
chatter (the full stderr stays in `RunResult.stderr`).

Memory: a container's memory limit is a cgroup charging resident pages and the OOM killer's SIGKILL, so that is
what is emulated (see proctree). A MemoryError, `std::bad_alloc`, a TensorFlow ResourceExhausted error or a
SIGKILL that the runner did not send (the kernel's OOM killer) are named Out_Of_Memory as well.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from subbench.local_bench.classify import STAGES, STATUSES, check_predictions, classify
from subbench.local_bench.netns import cut_off_note, net_prefix, network_failure, require_network_isolation
from subbench.local_bench.proctree import POLL_S, TREE_SCAN_S, StartError, run_tree
from subbench.local_bench.stderr_filter import TAIL_LINES as STDERR_TAIL_LINES
from subbench.local_bench.stderr_filter import summarize

__all__ = ["CWD_MODES", "STAGES", "STATUSES", "RunResult", "RunSpec", "check_predictions", "execute",
           "ingestion_source", "run_sets", "run_submission", "POLL_S", "TREE_SCAN_S", "STDERR_TAIL_LINES"]

CWD_MODES = ("submission", "program")
STDERR_KEEP_BYTES = 1 << 20     # the end of stderr kept in RunResult.stderr (a run may print gigabytes)


@dataclass(frozen=True)
class RunSpec:
    """What to run and how: everything but the image sets (which may be a generator)."""
    submission: str | os.PathLike          # an extracted submission folder, or a zip (safely extracted)
    n_classes: int
    python: str = sys.executable           # the interpreter that runs the ingestion program
    time_limit_s: float | None = 600.0     # one wall clock over start-up, imports, Model() and predict
    memory_limit_mb: float | None = None   # resident memory of the whole process tree
    no_network: bool = False               # the process tree in a network namespace of its own (local_bench.netns)
    cwd_mode: str = "submission"           # the child's working directory: ingested_program/ or program/
    chunk: int | None = None               # predict in chunks of this many images (a progress bar per set)
    stream: bool = False                   # sets come from a generator while the child predicts
    module: str = "model"
    class_name: str = "Model"
    profile: object = None                 # for safe extraction of a zip (the default profile when None)
    run_dir: str | os.PathLike | None = None  # given: used and kept; None: a temp folder
    keep_run_dir: bool = False             # keep the temp folder
    progress: bool = False                 # a line per stage (or a bar per chunked set) through echo
    echo: Callable[[str], None] | None = None  # None: stderr

    def __post_init__(self):
        if self.cwd_mode not in CWD_MODES:
            raise ValueError(f"cwd_mode must be one of {CWD_MODES}, not {self.cwd_mode!r}")
        object.__setattr__(self, "python", str(self.python))

    def say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)
        else:
            print(line, file=sys.stderr, flush=True)


@dataclass
class RunResult:
    status: str
    predictions: np.ndarray | None     # (N,) int64 when status == "ok"
    stages: dict[str, float]           # seconds per stage reached: start, import, init, predict
    elapsed_s: float                   # one wall clock over the whole process
    peak_memory_mb: float | None
    stderr_tail: str                   # last lines of the submission's stderr, TensorFlow's start-up chatter left out
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
    stderr: str = ""                   # the whole stderr (its last STDERR_KEEP_BYTES), chatter included

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def per_image_s(self) -> float | None:
        if "predict" not in self.stages or not self.n:
            return None
        return self.stages["predict"] / self.n


# --------------------------------------------------------------------------------------------------- the folder
def ingestion_source() -> Path:
    return Path(str(resources.files("subbench.local_bench") / "_ingestion.py"))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The server's image has no user PYTHONPATH: a submission must not import files that are not in the zip.
    for var in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"   # compute_worker.py: environment=["PYTHONUNBUFFERED=1"]
    return env


def _prepare_submission(submission, dest: Path, profile) -> None:
    """Copy an extracted folder, or safely extract a zip, into ingested_program/: the user's files stay untouched."""
    src = Path(submission)
    if src.is_file():
        from subbench.local_bench.safezip import safe_extract
        from subbench.profile import load_profile

        safe_extract(src, dest, profile or load_profile(None))
    else:
        shutil.copytree(src, dest, symlinks=False)


@dataclass(frozen=True)
class _Folder:
    """Codabench's run folder, plus subbench's own state and logs."""
    root: Path

    @property
    def program(self) -> Path:
        return self.root / "program"

    @property
    def ingested(self) -> Path:
        return self.root / "ingested_program"

    @property
    def input(self) -> Path:
        return self.root / "input_data"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def state(self) -> Path:
        return self.root / ".subbench"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self, spec: RunSpec) -> None:
        for d in (self.program, self.input, self.output, self.state, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        _prepare_submission(spec.submission, self.ingested, spec.profile)
        shutil.copyfile(ingestion_source(), self.program / "ingestion.py")

    def cwd(self, cwd_mode: str) -> Path:
        return self.program if cwd_mode == "program" else self.ingested

    def command(self, spec: RunSpec) -> list[str]:
        return [spec.python, str(self.program / "ingestion.py"), "--input", str(self.input), "--output",
                str(self.output), "--submission", str(self.ingested), "--state-dir", str(self.state),
                "--module", spec.module, "--class-name", spec.class_name]


class _SetFeeder:
    """Writes the image sets into input_data/ as `<k>.npy`: all before the run, or, streamed, from a thread that
    keeps at most two sets on disk ahead of the child (os.replace makes each appear whole)."""

    def __init__(self, input_dir: Path, sets: Iterable[tuple[str, np.ndarray]], stream: bool, chunk: int | None):
        self.input_dir, self.stream = input_dir, stream
        self.names: list[str] = []       # set names by index; files are named by index ("0000.npy")
        self.sizes: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = iter(sets)
        if not stream:
            for k, (name, arr) in enumerate(self._pending):
                arr = np.asarray(arr)
                np.save(input_dir / f"{k:04d}.npy", arr)
                self.names.append(name)
                self.sizes.append(len(arr))
            if not self.names:
                raise ValueError("no image sets to predict")
        (input_dir / "sets.json").write_text(json.dumps({
            "sets": [{"key": f"{k:04d}", "file": f"{k:04d}.npy"} for k in range(len(self.names))],
            "stream": stream, "chunk": chunk}))

    def start(self) -> None:
        if self.stream:
            self._thread = threading.Thread(target=self._produce, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _ahead(self, k: int) -> int:
        return sum(1 for j in range(k) if (self.input_dir / f"{j:04d}.npy").exists())

    def _produce(self) -> None:
        try:
            for k, (name, arr) in enumerate(self._pending):
                while not self._stop.is_set() and self._ahead(k) >= 2:
                    time.sleep(0.02)
                if self._stop.is_set():
                    return
                arr = np.asarray(arr)
                tmp = self.input_dir / f".{k:04d}.tmp.npy"
                np.save(tmp, arr)
                self.names.append(name)
                self.sizes.append(len(arr))
                os.replace(tmp, self.input_dir / f"{k:04d}.npy")
            (self.input_dir / "END").write_text("")
        except BaseException as exc:  # re-raised after the run (the child meanwhile waits for the next set)
            self.error = exc
            self._stop.set()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_end(path: Path, limit: int = STDERR_KEEP_BYTES) -> str:
    """The file's text, or its last `limit` bytes after a note saying how much was left out."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if size > limit:
        text = f"[... the first {size - limit} bytes of stderr left out ...]\n" + text.split("\n", 1)[-1]
    return text


def _read_outputs(output: Path, names: list[str], sizes: list[int]) -> list[tuple[str, int, object]]:
    """Each set's predictions as the child saved them; a str saying why one is unreadable, None if absent."""
    outputs: list[tuple[str, int, object]] = []
    for k, (name, n) in enumerate(zip(names, sizes)):
        path = output / f"predictions_{k:04d}.npy"
        if not path.exists():
            outputs.append((name, n, None))
            continue
        try:
            outputs.append((name, n, np.load(path, allow_pickle=False)))
        except (OSError, ValueError) as exc:
            outputs.append((name, n, str(exc)))
    return outputs


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


# --------------------------------------------------------------------------------------------------- the run
def execute(spec: RunSpec, sets: Iterable[tuple[str, np.ndarray]]) -> RunResult:
    """One process, one Model(), the named image sets predicted in order; the run folder per `spec.run_dir`."""
    if spec.memory_limit_mb is not None and not os.path.isdir("/proc/self"):
        spec.say("warning: no /proc on this system: the memory limit cannot be enforced (peak memory is still "
                 "reported by the process itself)")
    own_dir = spec.run_dir is None
    root = Path(tempfile.mkdtemp(prefix="subbench-run-")) if own_dir else Path(spec.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _run(spec, sets, _Folder(root))
    finally:
        if own_dir and not spec.keep_run_dir:
            shutil.rmtree(root, ignore_errors=True)


def _run(spec: RunSpec, sets, folder: _Folder) -> RunResult:
    folder.create(spec)
    feeder = _SetFeeder(folder.input, sets, spec.stream, spec.chunk)
    cwd = folder.cwd(spec.cwd_mode)
    result = RunResult("ok", None, {}, 0.0, None, "", "", spec.python, str(cwd), str(folder.root), spec.cwd_mode,
                       spec.time_limit_s, spec.memory_limit_mb)
    show = _Progress(spec.progress, bool(spec.chunk), spec.say)
    progress_file = folder.state / "progress.json"
    with open(folder.logs / "stdout.txt", "wb") as stdout_f, open(folder.logs / "stderr.txt", "wb") as stderr_f:
        t_start = time.time()

        def on_poll(_now: float) -> None:
            if spec.progress:
                show.update(_read_json(progress_file), t_start, feeder.names)

        try:
            command = (net_prefix() if spec.no_network else []) + folder.command(spec)
            ended = run_tree(command, cwd=cwd, env=_child_env(), stdout=stdout_f, stderr=stderr_f,
                             time_limit_s=spec.time_limit_s, memory_limit_mb=spec.memory_limit_mb,
                             on_start=feeder.start, on_poll=on_poll)
        except StartError as exc:
            result.status, result.message = "Import_Error", f"cannot start {spec.python}: {exc.__cause__ or exc}"
            return result
        finally:
            feeder.stop()
    returncode = ended.returncode
    state = _read_json(progress_file) or {}
    show.update(state, ended.started, feeder.names)
    show.close()
    # Codabench's worker writes exitCode/elapsedTime into output/metadata (yaml); same keys here.
    (folder.output / "metadata").write_text(f"elapsedTime: {ended.elapsed_s}\nexitCode: {returncode}\n")

    names, sizes = feeder.names, feeder.sizes
    set_info = state.get("sets", {})
    reached = _record_measures(result, ended, state, folder, names, sizes)
    if ended.killed_for is None and feeder.error is not None:
        raise feeder.error
    verdict = classify(
        returncode=returncode, n_classes=spec.n_classes, stage_reached=reached, killed_for=ended.killed_for,
        error=_read_json(folder.state / "error.json"), outputs=_read_outputs(folder.output, names, sizes),
        stderr=result.stderr_tail, elapsed_s=ended.elapsed_s, time_limit_s=spec.time_limit_s,
        memory_limit_mb=spec.memory_limit_mb, peak_memory_mb=ended.peak_rss_mb,
        images_done=sum(i.get("done", 0) for i in set_info.values()), images_total=sum(sizes))
    result.status, result.message = verdict.status, verdict.message
    found = network_failure(result.stderr) if spec.no_network and not verdict.ok else None
    if found:
        result.message += f" ({cut_off_note('it', found)})"
    if verdict.ok:
        result.set_predictions = dict(verdict.labels)
        result.predictions = result.set_predictions[names[0]]
    return result


def _record_measures(result: RunResult, ended, state: dict, folder: _Folder, names, sizes) -> str:
    """Into `result`: the stages' times, the exit code, peak memory, stderr, versions, per-set seconds; returns
    the stage the submission reached."""
    set_info = state.get("sets", {})
    stages, reached = _stages(state.get("times", {}), set_info, ended.started, ended.ended)
    # getrusage's maxrss survives fork+exec on Linux: a child of a 2 GB process reports >= 2 GB even when the
    # submission itself used 50 MB (measured: 2005 vs 46 MB for one zip, spawned from pytest vs a bare Python).
    # Where /proc is polled (every POLL_S) its figure is the submission's own; rusage is the fallback.
    peaks = [ended.peak_rss_mb] if ended.peak_rss_mb else [v for v in (ended.rusage_maxrss_mb,
                                                                        state.get("maxrss_mb")) if v]
    result.stages, result.elapsed_s, result.stage_reached = stages, ended.elapsed_s, reached
    result.returncode = ended.returncode
    result.peak_memory_mb = round(max(peaks), 1) if peaks else None
    result.stderr = _read_end(folder.logs / "stderr.txt")
    result.stderr_tail = summarize(result.stderr)
    result.versions = state.get("versions", {})
    result.n = sizes[0] if sizes else 0
    result.set_seconds = {names[int(k)]: info["end"] - info["start"] for k, info in set_info.items()
                          if "end" in info and int(k) < len(names)}
    return reached


def run_submission(submission_dir, images, *, n_classes, python=sys.executable, time_limit_s=600.0,
                   memory_limit_mb=None, cwd_mode="submission", chunk=None, run_dir=None,
                   progress=False, keep_run_dir=False) -> RunResult:
    """Run `Model().predict(images)` from an extracted submission folder (or a zip) in a fresh process."""
    return run_sets(submission_dir, [("test", np.asarray(images))], n_classes=n_classes, python=python,
                    time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb, cwd_mode=cwd_mode, chunk=chunk,
                    run_dir=run_dir, progress=progress, keep_run_dir=keep_run_dir)


def run_sets(submission_dir, sets: Iterable[tuple[str, np.ndarray]], *, n_classes: int, stream: bool = False,
             python: str = sys.executable, time_limit_s: float | None = 600.0,
             memory_limit_mb: float | None = None, no_network: bool = False, cwd_mode: str = "submission", chunk: int | None = None,
             run_dir=None, progress=False, keep_run_dir: bool = False, module: str = "model",
             class_name: str = "Model", profile=None, echo: Callable[[str], None] | None = None) -> RunResult:
    """One process, one Model(), several named image sets predicted in order (e.g. clean + a robustness suite).

    With `stream=True`, `sets` may be a generator producing sets while the process predicts: each is written
    to input_data/ (at most two ahead) and deleted once predicted, so disk and memory stay bounded by two sets;
    waiting for a set counts against the time limit. The first set's labels are `RunResult.predictions`; all
    are in `set_predictions` (by name), with their predict times in `set_seconds`.
    `run_dir` given: that folder is used and kept; otherwise a temp folder, removed unless `keep_run_dir`.
    no_network: run it without network access (local_bench.netns; NetworkIsolationError where Linux cannot).
    """
    if no_network:
        require_network_isolation()
    spec = RunSpec(submission=submission_dir, n_classes=n_classes, python=python, time_limit_s=time_limit_s,
                   memory_limit_mb=memory_limit_mb, no_network=no_network, cwd_mode=cwd_mode, chunk=chunk, stream=stream, module=module,
                   class_name=class_name, profile=profile, run_dir=run_dir, keep_run_dir=keep_run_dir,
                   progress=bool(progress), echo=echo)
    return execute(spec, sets)
