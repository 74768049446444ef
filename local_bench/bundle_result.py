"""The typed results of running a competition bundle: `BundleScore` (one submission through the worker's two
steps), `BundleInfo` (`subbench bundle inspect`) and `BundleLeaderboard` (`subbench compare` on bundle results).

Data only, like `local_bench.results.Score`: numbers, typed statuses, relative paths of the files kept; the
words a person reads are drawn from them by the `html()` views below (CSS scoped under `.sbr`, the same sheet
as local_bench/report.py) and by the CLI.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from subbench.atomic import atomic_path
from subbench.errors import SubbenchError
from subbench.results import SCHEMA_VERSION, ResultMixin, TextEnum, from_plain, to_plain

# Why a run failed, one name per SubmissionException the worker raises (compute_worker.py), in a fixed order:
# the exit code of `subbench score --bundle` is 20 + the index (0 when the run finished).
FAILURES = ("Execution_Time_Limit_Exceeded",   # Run.start: "Execution Time Limit exceeded. Limit was N seconds"
            "Missing_Metadata",                # _run_program_directory: ingestion dir without metadata
            "Missing_Command",                 # _run_program_directory: ingestion metadata without command
            "Scores_Not_Found",                # push_scores: "Could not find scores file, ..."
            "Scores_Not_Decodable",            # push_scores: "Could not decode scores json properly, ..."
            "Metadata_Exists",                 # push_output: the output folder already holds `metadata`
            "Scoring_Program_Failed",          # Run.start (PR #2030): the scoring program exited non-zero
            "Out_Of_Memory")                   # --memory-limit (the worker sets none): named like `score`'s
RESULT_KIND = "bundle"


class BundleStatus(TextEnum):
    """The worker's final submission status (STATUS_FINISHED / STATUS_FAILED)."""
    Finished = "Finished"
    Failed = "Failed"

    @property
    def ok(self) -> bool:
        return self is BundleStatus.Finished


def failure_exit_code(failure: str | None) -> int:
    return 0 if failure is None else 20 + FAILURES.index(failure)


class BundleResultNotFoundError(SubbenchError):
    """A path given as a bundle result holds no bundle result (scores.json, or bundle_score.json of older
    versions)."""


LEGACY_FILE = "bundle_score.json"     # what subbench wrote before bundle runs shared scores.json


def result_file(path) -> Path | None:
    """The bundle result file of a folder (scores.json, else the older bundle_score.json) or the file given."""
    p = Path(path)
    if not p.is_dir():
        return p if p.is_file() else None
    for name in ("scores.json", LEGACY_FILE):
        if (p / name).is_file():
            return p / name
    return None


@dataclass
class ProgramRun:
    """One container of a step: the submission or the ingestion program (prediction), the scoring program or
    the ingestion program (scoring), as `_run_program_directory` handles it."""
    kind: str                        # the worker's kind: "program" or "ingestion"
    role: str                        # "submission", "ingestion program" or "scoring program"
    action: str                      # ran | copied (no metadata: copied to output) | no_command | absent
    command: str | None = None       # the metadata command after replace_legacy_metadata_command
    argv: list[str] = field(default_factory=list)  # what ran here
    exit_code: int | None = None     # as the container engine reports it (a signal N is 128 + N)
    elapsed_s: float | None = None
    killed: bool = False             # killed at the step's time limit
    out_of_memory: bool = False      # killed at --memory-limit (its whole process tree)
    stdout: str | None = None        # the log's path, relative to the result folder
    stderr: str | None = None
    stderr_tail: str = ""
    missing_module: str | None = None
    note: str = ""


@dataclass
class StepResult:
    """The prediction or the scoring step: one worker `Run`."""
    step: str                        # "prediction" or "scoring"
    time_limit_s: float
    elapsed_s: float                 # one wall clock over the step's programs
    programs: list[ProgramRun] = field(default_factory=list)
    metadata: dict | None = None     # what push_output wrote into output/metadata (None: the step failed before)
    output: str | None = None        # the output folder kept, relative to the result folder
    output_files: list[str] = field(default_factory=list)


@dataclass
class ColumnScore:
    """A leaderboard column of the bundle and the value the scores give it."""
    leaderboard: str
    key: str
    title: str
    index: int
    sorting: str = "desc"
    precision: int = 2
    hidden: bool = False
    value: float | None = None
    present: bool = False            # the scores file has the key (or the column is computed from present ones)
    computed: str | None = None      # "avg" when the server computes it from other columns
    task: int | None = None          # the task whose child submission gave the value (multi-task phases)
    phase: int | None = None         # the phase (--phase all)


@dataclass
class BundleScore(ResultMixin):
    """One submission run through a competition bundle the way Codabench's compute worker runs it."""

    status: BundleStatus
    failure: str | None              # a FAILURES name when Failed
    message: str                     # the worker's status_details when Failed
    failed_step: str | None
    value: float | None              # the first leaderboard column's value
    leaderboard_key: str | None      # that column's key
    columns: list[ColumnScore]
    scores: dict | None              # the scores the scoring program wrote
    scores_file: str | None          # "scores.json" or "scores.txt"
    steps: list[StepResult]
    bundle: dict                     # path, sha256, title, version, docker_image
    phase: dict                      # index, name
    task: dict                       # index, name
    time_limit_s: float
    python: str
    app_paths: str                   # "namespace" (private /app mounts) or "rewrite" (paths rewritten)
    detailed_results: str | None = None   # detailed_results.html kept, relative to the result folder
    submission: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = ""
    subbench_version: str = ""
    kind: str = RESULT_KIND
    # A multi-task phase: the parent submission holds one child per task (each run on its own, with its own run
    # folder and time limit); the parent runs no step itself and its columns are its children's.
    children: list["BundleScore"] = field(default_factory=list)
    # The folder holding the logs and outputs named by the relative paths above (a temp folder until saved).
    artifacts: Path | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})

    file_stem = "scores"              # one result file for every score: scores.json

    def to_dict(self) -> dict:
        # Like Score: the leaderboard key leads scores.json, with its value; the rest follows.
        body = to_plain(self)
        value = body.pop("value")
        return {self.leaderboard_key or "score": value, "schema": SCHEMA_VERSION, **body}

    @property
    def ok(self) -> bool:
        return BundleStatus(self.status).ok

    @property
    def exit_code(self) -> int:
        """The failure's code; a parent: its first failed child's (the server shows the parent Finished)."""
        if self.children:
            return next((c.exit_code for c in self.children if c.failure), 0)
        return failure_exit_code(self.failure)

    @property
    def name(self) -> str:
        return Path(self.submission.get("path") or "submission").name

    def program(self, step: str, role: str) -> ProgramRun | None:
        for s in self.steps:
            if s.step == step:
                for p in s.programs:
                    if p.role == role:
                        return p
        return None

    def read(self, relative: str | None) -> str | None:
        """The text of a kept file (a log, detailed_results.html), while the artifacts are there."""
        if relative is None or self.artifacts is None:
            return None
        path = Path(self.artifacts) / relative
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def save(self, folder, force: bool = False) -> Path:
        """scores.json, report.html and the kept logs and outputs (prediction/, scoring/,
        detailed_results.html) into folder, atomically."""
        with atomic_path(folder, force=force) as tmp:
            if self.artifacts is not None and Path(self.artifacts).is_dir():
                shutil.copytree(self.artifacts, tmp, symlinks=True)  # a program's link is kept as a link
            else:
                tmp.mkdir(parents=True)
            (tmp / f"{self.file_stem}.json").write_text(self.to_json(), encoding="utf-8")
            (tmp / "report.html").write_text(self.page(), encoding="utf-8")
        self.artifacts = Path(folder)
        return Path(folder)

    @classmethod
    def from_dict(cls, data: dict) -> "BundleScore":
        data = dict(data)
        if "value" not in data:              # schema 3: the value sits under the leaderboard key
            data["value"] = data.get(data.get("leaderboard_key") or "score")
        return from_plain(cls, data)

    @classmethod
    def load(cls, path) -> "BundleScore":
        p = Path(path)
        f = result_file(p)
        if f is None:
            raise BundleResultNotFoundError(f"{p} holds no scores.json (nor {LEGACY_FILE})",
                                            "give folders written by `subbench score --bundle B --out DIR`")
        try:
            result = cls.from_dict(json.loads(f.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleResultNotFoundError(f"{f} is not a subbench bundle result ({exc!r})",
                                            "re-run `subbench score --bundle ... --out DIR --force`") from None
        result.artifacts = f.parent
        return result

    def html(self) -> str:
        return render_bundle_score(self)


def is_bundle_result(path) -> bool:
    """A folder (or file) written by `subbench score --bundle ... --out`."""
    f = result_file(path)
    if f is None or f.suffix != ".json":
        return False
    try:
        return json.loads(f.read_text(encoding="utf-8")).get("kind") == RESULT_KIND
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------------ inspect
@dataclass
class DataInfo:
    kind: str
    name: str
    form: str                        # folder | zip | server_key | missing
    files: int = 0
    size_mb: float = 0.0
    has_metadata: bool | None = None  # programs: a metadata/metadata.yaml at the root
    command: str | None = None       # programs: the metadata command
    imports: list[str] = field(default_factory=list)          # programs: third-party modules imported
    missing_imports: list[str] = field(default_factory=list)  # ... not importable by the chosen interpreter
    app_paths_in_code: list[str] = field(default_factory=list)  # files naming /app/... in their code
    note: str = ""


@dataclass
class TaskInfo:
    index: int
    name: str | None
    ingestion_only_during_scoring: bool
    data: list[DataInfo]
    submission_kind: str             # what a submission must be for this task
    missing: list[str] = field(default_factory=list)  # what a local run lacks


@dataclass
class PhaseInfo:
    index: int
    name: str | None
    tasks: list[int]
    execution_time_limit: int
    effective_time_limit: int        # what the worker gets (the default queue caps it)
    start: str | None = None
    end: str | None = None


@dataclass
class BundleInfo(ResultMixin):
    path: str
    version: str
    title: str | None
    docker_image: str
    queue: str | None
    enable_detailed_results: bool
    phases: list[PhaseInfo]
    tasks: list[TaskInfo]
    columns: list[ColumnScore]
    python: str
    warnings: list[str] = field(default_factory=list)

    file_stem = "bundle"

    @property
    def runnable(self) -> bool:
        return all(not t.missing for t in self.tasks)

    def html(self) -> str:
        return render_bundle_info(self)

    def _phase_needs(self, p: PhaseInfo) -> list[str]:
        """What a submission to the phase needs: per task, what it must be and the data it is scored on; what a
        local run of the phase lacks."""
        tasks = {t.index: t for t in self.tasks}
        out = []
        if len(p.tasks) > 1:
            out.append(f"  runs {len(p.tasks)} child submissions, one per task, each with its own time limit")
        for i in p.tasks:
            t = tasks.get(i)
            if t is None:
                continue
            data = ", ".join(f"{d.kind} {d.name}" for d in t.data if d.kind in ("input_data", "reference_data"))
            out.append(f"  needs (task {i}): {t.submission_kind}" + (f"; scored on {data}" if data else ""))
            if t.missing:
                out.append(f"  a local run of this phase lacks: {'; '.join(t.missing)}")
        return out

    def lines(self) -> list[str]:
        """What `subbench bundle inspect` prints."""
        out = [f"bundle: {self.title or '(untitled)'}  (competition.yaml version {self.version})",
               f"docker image: {self.docker_image}" + (f"  · queue {self.queue}" if self.queue else
                                                       "  · default queue (time limits capped at 600 s)"),
               f"programs run here with: {self.python}",
               f"detailed results: {'enabled' if self.enable_detailed_results else 'not enabled'}"]
        for p in self.phases:
            limit = f"{p.effective_time_limit} s per step"
            if p.effective_time_limit != p.execution_time_limit:
                limit += f" (phase says {p.execution_time_limit} s)"
            out.append(f"phase {p.index}: {p.name}  · tasks {p.tasks} · time limit {limit}"
                       + (f" · {p.start} → {p.end or 'no end'}" if p.start else ""))
            out += self._phase_needs(p)
        for t in self.tasks:
            out.append(f"task {t.index}: {t.name}" + ("  (ingestion only during scoring)"
                                                      if t.ingestion_only_during_scoring else ""))
            out.append(f"  submission: {t.submission_kind}")
            for d in t.data:
                desc = f"  {d.kind}: {d.name} [{d.form}"
                desc += f", {d.files} files, {d.size_mb:.1f} MB]" if d.form in ("folder", "zip") else "]"
                if d.command:
                    desc += f"  command: {d.command}"
                elif d.has_metadata is False:
                    desc += "  (no metadata)"
                out.append(desc)
                if d.imports:
                    out.append(f"    imports {', '.join(d.imports)}"
                               + (f"; not installed here: {', '.join(d.missing_imports)}" if d.missing_imports
                                  else "")
                               + (" (or the submission's own modules)" if d.missing_imports
                                  and d.kind == "ingestion_program" else ""))
                if d.app_paths_in_code:
                    out.append(f"    names /app paths in its code: {', '.join(d.app_paths_in_code)}")
                if d.note:
                    out.append(f"    note: {d.note}")
            for m in t.missing:
                out.append(f"  MISSING for a local run: {m}")
        if self.columns:
            out.append("leaderboard columns: " + ", ".join(
                f"{c.key} ({c.title}, {c.sorting}{', ' + c.computed if c.computed else ''})" for c in self.columns))
        else:
            out.append("leaderboard columns: none")
        return out


# ------------------------------------------------------------------------------------------------ compare
@dataclass
class BundleLeaderboardRow:
    rank: int
    name: str
    status: BundleStatus
    failure: str | None
    values: dict[str, float | None]
    prediction_s: float | None
    scoring_s: float | None


@dataclass
class BundleLeaderboard(ResultMixin):
    """Bundle results ranked like the bundle's leaderboard: finished runs by the first column (its sorting),
    then the failed ones."""
    columns: list[ColumnScore]
    rows: list[BundleLeaderboardRow]
    comparable: bool = True          # every result ran the same bundle, phase and task

    file_stem = "leaderboard"

    @classmethod
    def from_results(cls, named: list[tuple[str, BundleScore]]) -> "BundleLeaderboard":
        columns = [ColumnScore(c.leaderboard, c.key, c.title, c.index, c.sorting, c.precision, c.hidden)
                   for c in (named[0][1].columns if named else [])]
        rows = []
        for name, r in named:
            steps = {s.step: s for s in r.steps}
            rows.append(BundleLeaderboardRow(0, name, BundleStatus(r.status), r.failure,
                                             {c.key: c.value for c in r.columns},
                                             steps["prediction"].elapsed_s if "prediction" in steps else None,
                                             steps["scoring"].elapsed_s if "scoring" in steps else None))
        first = columns[0] if columns else None
        sign = -1.0 if first is None or first.sorting != "asc" else 1.0

        def key(row):
            v = row.values.get(first.key) if first else None
            return (not row.status.ok, v is None, sign * v if v is not None else 0.0)

        rows.sort(key=key)
        for i, row in enumerate(rows, 1):
            row.rank = i
        kinds = {(r.bundle.get("sha256"), r.phase.get("index"), r.task.get("index")) for _, r in named}
        return cls(columns, rows, comparable=len(kinds) <= 1)

    @property
    def warning(self) -> str | None:
        return None if self.comparable else ("results ran different bundles, phases or tasks: their scores are not "
                                             "directly comparable")

    def table(self) -> list[list[str]]:
        header = ["#", "submission", "status"] + [c.title for c in self.columns] + ["prediction s", "scoring s"]
        body = []
        for r in self.rows:
            cells = [str(r.rank), r.name, str(r.status) + (f" ({r.failure})" if r.failure else "")]
            for c in self.columns:
                v = r.values.get(c.key)
                cells.append(f"{v:.{c.precision}f}" if isinstance(v, (int, float)) else "–")
            cells += [f"{r.prediction_s:.1f}" if r.prediction_s is not None else "–",
                      f"{r.scoring_s:.1f}" if r.scoring_s is not None else "–"]
            body.append(cells)
        return [header] + body

    def __str__(self) -> str:
        rows = self.table()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        left = {1, 2}

        def line(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        return "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]])

    def html(self) -> str:
        from subbench.local_bench.report import render_leaderboard

        return render_leaderboard(self, "Local leaderboard (bundle columns)")

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, "kind": RESULT_KIND, **to_plain(self)}


# ------------------------------------------------------------------------------------------------ HTML
def _esc(v) -> str:
    return html.escape("–" if v is None else str(v))


def _fmt_value(v, precision: int = 4) -> str:
    return f"{v:.{max(precision, 0)}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else _esc(v)


def _link(result: BundleScore, relative: str | None, label: str) -> str:
    if not relative:
        return "–"
    return f'<a href="{html.escape(relative)}">{html.escape(label)}</a>'


def render_bundle_score(r: BundleScore) -> str:
    from subbench.local_bench.report import CSS

    parts = [f'<div class="sbr"><style>{CSS}</style>', *_headline_html(r), *_columns_html(r)]
    for s in r.steps:
        parts += _step_html(r, s)
    for child in r.children:
        label = (f'Phase {_esc(child.phase.get("index"))} ({_esc(child.phase.get("name"))})'
                 if r.phase.get("name") == "all" else
                 f'Task {_esc(child.task.get("index"))} ({_esc(child.task.get("name"))}): child submission')
        parts.append(f'<h2 class="child">{label}</h2>{render_bundle_score(child)}')
    parts.append('<h2>Run</h2><table class="kv">')
    for k, v in (("bundle", r.bundle.get("path")), ("bundle sha256", r.bundle.get("sha256")),
                 ("competition.yaml version", r.bundle.get("version")),
                 ("competition's docker image", r.bundle.get("docker_image")), ("interpreter here", r.python),
                 ("/app paths", r.app_paths), ("time limit per step", f"{r.time_limit_s:g} s"),
                 ("submission", r.submission.get("path")), ("submission sha256", r.submission.get("sha256"))):
        parts.append(f"<tr><td>{html.escape(k)}</td><td>{_esc(v)}</td></tr>")
    parts.append("</table></div>")
    return "\n".join(parts)


def _headline_html(r: BundleScore) -> list[str]:
    """Title, the leaderboard key's value and the status; the failure and the warnings."""
    parts = [f"<h1>subbench score --bundle: {html.escape(r.name)}</h1>",
             f'<p class="sub">{_esc(r.bundle.get("title"))} · phase {_esc(r.phase.get("index"))} '
             f'({_esc(r.phase.get("name"))}) · task {_esc(r.task.get("index"))} ({_esc(r.task.get("name"))}) · '
             f'{_esc(r.created)}</p>']
    head = _fmt_value(r.value, next((c.precision for c in r.columns if c.key == r.leaderboard_key), 4))
    parts.append(f'<div class="headline"><div><div class="sub">{_esc(r.leaderboard_key or "score")}</div>'
                 f'<p class="score" id="score">{head}</p></div><div><div class="sub">status</div>'
                 f'<span class="status {"ok" if r.ok else "bad"}" id="status">{_esc(r.status)}</span></div></div>')
    if not r.ok:
        parts.append(f'<div class="warn loud" id="failure"><b>{_esc(r.failure)}</b> ({_esc(r.failed_step)} step): '
                     f'{_esc(r.message)}</div>')
    return parts + [f'<div class="warn">{html.escape(w)}</div>' for w in r.warnings]


def _columns_html(r: BundleScore) -> list[str]:
    """The leaderboard columns as the server fills them, the raw scores, the detailed results' link."""
    parts = ['<h2>Leaderboard columns</h2><table id="columns"><tr><th>leaderboard</th><th>column</th>'
             '<th>key</th><th>value</th><th>sorting</th></tr>']
    for c in r.columns:
        value = _fmt_value(c.value, c.precision) if c.present else '<span class="fail">missing</span>'
        parts.append(f"<tr><td>{_esc(c.leaderboard)}{'' if c.phase is None else ' · phase ' + _esc(c.phase)}"
                     f"{'' if c.task is None else ' · task ' + _esc(c.task)}</td>"
                     f"<td>{_esc(c.title)}</td><td>{_esc(c.key)}</td>"
                     f"<td>{value}{' (' + c.computed + ')' if c.computed else ''}</td><td>{_esc(c.sorting)}</td></tr>")
    parts.append("</table>")
    if r.scores is not None:
        parts.append(f"<p class=\"sub\">{_esc(r.scores_file)}: <code>{html.escape(json.dumps(r.scores))}</code></p>")
    if r.detailed_results:
        parts.append(f'<p id="detailed">Detailed results: {_link(r, r.detailed_results, r.detailed_results)}</p>')
    return parts


def _step_html(r: BundleScore, s) -> list[str]:
    """One step: its programs (action, command, exit code, seconds, logs), notes, stderr tails, metadata."""
    parts = [f"<h2>{html.escape(s.step.capitalize())} step</h2>",
             f"<p class=\"sub\">{s.elapsed_s:.2f} s of {s.time_limit_s:g} s"
             + (f" · output: {_link(r, s.output, s.output)}" if s.output else "") + "</p>",
             "<table><tr><th>program</th><th>action</th><th>command</th><th>exit code</th><th>seconds</th>"
             "<th>logs</th></tr>"]
    for p in s.programs:
        logs = " ".join(x for x in (_link(r, p.stdout, "stdout") if p.stdout else "",
                                    _link(r, p.stderr, "stderr") if p.stderr else "") if x) or "–"
        parts.append(f"<tr><td>{_esc(p.role)}</td><td>{_esc(p.action)}{' (killed)' if p.killed else ''}</td>"
                     f"<td><code>{_esc(p.command)}</code></td><td>{_esc(p.exit_code)}</td>"
                     f"<td>{'–' if p.elapsed_s is None else f'{p.elapsed_s:.2f}'}</td><td>{logs}</td></tr>")
    parts.append("</table>")
    for p in s.programs:
        if p.note:
            parts.append(f'<div class="warn">{_esc(p.role)}: {html.escape(p.note)}</div>')
        if p.stderr_tail and (p.exit_code not in (0, None) or p.killed):
            parts.append(f"<p>Last lines of the {_esc(p.role)}'s stderr:</p><pre>{html.escape(p.stderr_tail)}"
                         "</pre>")
    if s.metadata is not None:
        parts.append(f"<p class=\"sub\">output/metadata: <code>{html.escape(json.dumps(s.metadata))}</code></p>")
    return parts


def render_bundle_info(info: BundleInfo) -> str:
    from subbench.local_bench.report import CSS

    lines = "\n".join(info.lines())
    warns = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in info.warnings)
    return (f'<div class="sbr"><style>{CSS}</style><h2>subbench bundle inspect: {_esc(info.title)}</h2>{warns}'
            f"<pre>{html.escape(lines)}</pre></div>")
