"""A Codabench competition bundle, read the way Codabench reads it: `competition.yaml` version 2 or the legacy
Codalab layout (versions 1 and 1.5), safely extracted, with every program and data set located.

Mirrors codalab/codabench `src/apps/competitions/tasks.py` (`unpack_competition`: competition.yaml at the zip's
root, `version` 1/1.5 -> V15Unpacker, 2 -> V2Unpacker, anything else refused) and the unpackers
`unpackers/v2.py` (`_unpack_tasks`, `_unpack_phases`, `_unpack_leaderboards`, `_unpack_solutions`) and
`unpackers/v1.py` (`V15Unpacker._unpack_phases`: numbered phases sorted by `phasenumber`, v1.8 parent phase
dropped, one task per phase; `_unpack_leaderboards`: columns sorted by `rank`, `sort` -> sorting, `numeric_format`
-> precision). A program or data set is a folder (zipped by `utils.zip_if_directory`, i.e. its contents become
the root) or a zip inside the bundle (extracted as is by the worker's `_get_bundle`); a value that is neither but
looks like a UUID is a data set already on the server (`base_unpacker._get_data_key`) and cannot be run locally.

Keys Codabench does not know: the unpackers ignore them, so here they are a warning naming the key (a
misspelt `execution_time_limit` silently gives the 600 s default on the server); `strict=True` (`--strict`, for
organizers checking their own bundle) makes them named errors (`BundleKeyError`). A key whose absence or type the
unpackers refuse is a `BundleKeyError` with the unpacker's own message; values go through the coercion of the
serializers they feed (DRF: "45" and 45.0 are 45, 45.5 is refused; "false" is False; choices, max lengths, the
columns' and phases' cross checks), with DRF's messages. Differences, on purpose: pages, terms and the logo are not
needed for a local run: their absence or emptiness is a warning with the server's message, not an error (Codabench
refuses the bundle); a phase with an empty task list is refused here (the server stores it, its submissions fail).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from subbench.errors import SubbenchError, ZipError

DEFAULT_DOCKER_IMAGE = "codalab/codalab-legacy:py37"     # v2.py and v1.py: the image when none is named
DEFAULT_TIME_LIMIT_S = 600                               # competitions/models.py Phase.execution_time_limit
MAX_EXECUTION_TIME_LIMIT = 600                           # tasks.py: the default queue's cap (no custom queue)
FILE_TYPES = ("ingestion_program", "input_data", "scoring_program", "reference_data")
PROGRAM_TYPES = ("ingestion_program", "scoring_program")
MAX_BUNDLE_RATIO = 200.0                                 # data compresses better than model weights
RATIO_FLOOR_BYTES = 50 * 1024 * 1024

# Keys Codabench reads or writes (unpackers, `create_competition_dump`, the YAML documentation).
V2_TOP = {"version", "title", "description", "image", "registration_auto_approve", "docker_image", "queue",
          "enable_detailed_results", "show_detailed_results_in_submission_panel",
          "show_detailed_results_in_leaderboard", "auto_run_submissions", "can_participants_make_submissions_public",
          "make_programs_available", "make_input_data_available", "competition_type", "fact_sheet", "reward",
          "contact_email", "forum_enabled", "pages", "terms", "tasks", "solutions", "phases", "leaderboards"}
# `is_public` (tasks), `solutions` (phases) and `index` (leaderboards) are ignored on upload but written by
# Codabench's own dump (`create_competition_dump`), so a re-uploaded dump gets no warning for them.
V2_TASK = {"index", "name", "description", "key", "is_public", "ingestion_only_during_scoring", *FILE_TYPES}
V2_PHASE = {"index", "name", "description", "start", "end", "max_submissions_per_day", "max_submissions",
            "execution_time_limit", "auto_migrate_to_this_phase", "hide_output", "hide_prediction_output",
            "hide_score_output", "tasks", "solutions", "public_data", "starting_kit"}
V2_SOLUTION = {"index", "name", "description", "key", "path", "tasks"}
V2_LEADERBOARD = {"index", "title", "key", "hidden", "submission_rule", "primary_index", "columns"}
V2_COLUMN = {"index", "title", "key", "sorting", "computation", "computation_indexes", "hidden", "precision"}
V1_TOP = {"version", "title", "description", "image", "has_registration", "html", "phases", "leaderboard",
          "competition_docker_image", "end_date", "enable_detailed_results", "show_detailed_results_in_submission_panel",
          "show_detailed_results_in_leaderboard", "auto_run_submissions", "make_programs_available",
          "make_input_data_available", "queue"}
V1_PHASE = {"phasenumber", "label", "description", "start_date", "max_submissions", "max_submissions_per_day",
            "auto_migration", "execution_time_limit", "public_data", "starting_kit",
            "ingestion_program_only_during_scoring", "hide_output", "hide_prediction_output", "hide_score_output",
            "is_parallel_parent", "parent_phasenumber", *FILE_TYPES}
V1_LEADERBOARD = {"label", "rank"}
V1_COLUMN = {"leaderboard", "label", "rank", "numeric_format", "sort", "hidden"}


# ------------------------------------------------------------------------------------------------ errors
class BundleError(SubbenchError):
    """A competition bundle cannot be read or run."""


class BundleKeyError(BundleError):
    """competition.yaml misses a key Codabench requires, or holds one Codabench does not know."""


class BundleFileError(BundleError):
    """A file or folder competition.yaml names is not in the bundle."""


class BundleSelectionError(BundleError):
    """The --phase or --task asked for is not in the bundle."""


class UnsafeArchiveError(ZipError):
    """An archive (bundle, program, data set or submission) is unsafe to extract."""


# ------------------------------------------------------------------------------------------------ safe extraction
def safe_extract_archive(zip_path: str | os.PathLike, dest: str | os.PathLike, what: str = "archive",
                         max_ratio: float = MAX_BUNDLE_RATIO) -> Path:
    """Extract any zip into dest after vetting every entry: no absolute or `..` paths, no symlinks, no bomb
    (safezip's rules; safezip.safe_extract itself also wants model.py at the root, which bundles and
    results-only submissions do not have)."""
    from subbench.local_bench.safezip import extract_vetted, vet_archive

    vet_archive(zip_path, what, max_ratio=max_ratio, ratio_floor=RATIO_FLOOR_BYTES)
    return extract_vetted(zip_path, dest, what)


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a folder's contents into dest (created), refusing symlinks that leave the folder."""
    src = Path(src).resolve()
    for p in src.rglob("*"):
        if p.is_symlink():
            target = p.resolve()
            if src != target and src not in target.parents:
                raise UnsafeArchiveError(f"{p} is a symbolic link to {target}, outside {src}",
                                         "replace the link with the file itself")
    shutil.copytree(src, dest, symlinks=False, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class DataRef:
    """One program or data set of a task, as competition.yaml names it."""
    kind: str                       # ingestion_program | input_data | scoring_program | reference_data
    name: str                       # the value in competition.yaml
    path: str | None = None         # resolved path inside the extracted bundle (None: not in the bundle)
    form: str = "missing"           # folder | zip | server_key | missing
    note: str = ""                  # why it cannot be used, or what the worker will see

    @property
    def usable(self) -> bool:
        return self.form in ("folder", "zip")


@dataclass
class BundleTask:
    index: int
    name: str | None
    files: dict[str, DataRef] = field(default_factory=dict)
    ingestion_only_during_scoring: bool = False
    server_key: str | None = None   # a task referenced by key: defined on the server, not in the bundle

    def get(self, kind: str) -> DataRef | None:
        return self.files.get(kind)


@dataclass
class BundlePhase:
    index: int                      # position after sorting (what Codabench stores)
    name: str | None
    tasks: list[int]
    execution_time_limit: int       # seconds, as the phase says (default 600)
    start: str | None = None
    end: str | None = None


@dataclass
class BundleColumn:
    key: str
    title: str
    index: int
    sorting: str = "desc"
    computation: str | None = None
    computation_indexes: list[int] | None = None
    hidden: bool = False
    precision: int = 2


@dataclass
class BundleLeaderboardSpec:
    key: str
    title: str
    columns: list[BundleColumn]
    primary_index: int = 0          # the column index ranked first (Leaderboard.primary_index)


@dataclass
class Bundle:
    root: Path                      # the extracted bundle (or the folder given)
    source: str                     # what the user gave
    version: str
    title: str | None
    docker_image: str
    queue: str | None
    enable_detailed_results: bool
    phases: list[BundlePhase]
    tasks: dict[int, BundleTask]
    leaderboards: list[BundleLeaderboardSpec]
    solutions: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[BundleColumn]:
        return [c for lb in self.leaderboards for c in lb.columns]

    def effective_time_limit(self, phase: BundlePhase) -> int:
        """The worker's `execution_time_limit`: min(MAX_EXECUTION_TIME_LIMIT, phase) on the default queue, the
        phase's own on a competition queue (tasks.py `_send_to_compute_worker`)."""
        return phase.execution_time_limit if self.queue else min(MAX_EXECUTION_TIME_LIMIT, phase.execution_time_limit)

    def phase(self, ref: str | int | None) -> BundlePhase:
        """--phase NAME|INDEX; None: the only phase, else the first one."""
        if not self.phases:
            raise BundleSelectionError("the bundle has no phases", "add a phase to competition.yaml")
        if ref is None or ref == "":
            return self.phases[0]
        text = str(ref)
        if text.lstrip("-").isdigit():
            i = int(text)
            for p in self.phases:
                if p.index == i:
                    return p
        for p in self.phases:
            if (p.name or "").lower() == text.lower():
                return p
        raise BundleSelectionError(f"no phase {text!r} in the bundle",
                                   "phases: " + ", ".join(f"{p.index} ({p.name})" for p in self.phases))

    def task(self, phase: BundlePhase, ref: int | str | None) -> BundleTask:
        """--task INDEX (a task of the phase); None: the phase's first task."""
        if ref is None or ref == "":
            index = phase.tasks[0]
        else:
            try:
                index = int(ref)
            except (TypeError, ValueError):
                raise BundleSelectionError(f"--task {ref!r} is not a task index",
                                           f"phase {phase.name!r} has tasks {phase.tasks}") from None
            if index not in phase.tasks:
                raise BundleSelectionError(f"task {index} is not a task of phase {phase.index} ({phase.name})",
                                           f"that phase has tasks {phase.tasks}")
        return self.tasks[index]


# ------------------------------------------------------------------------------------------------ reading
class _Reader:
    def __init__(self, root: Path, strict: bool):
        self.root, self.strict, self.warnings = root, strict, []

    def unknown(self, where: str, mapping, known: set[str]) -> None:
        if not isinstance(mapping, dict):
            raise BundleKeyError(f"{where} is a {type(mapping).__name__}, not a mapping of keys",
                                 "see https://docs.codabench.org (Yaml Structure)")
        extra = sorted(str(k) for k in mapping if str(k) not in known)
        if not extra:
            return
        msg = f"{where} has key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} that Codabench does " \
              f"not know (it ignores {'them' if len(extra) > 1 else 'it'})"
        if self.strict:
            raise BundleKeyError(msg, f"fix the spelling (known keys: {', '.join(sorted(known))}), or run without "
                                      "--strict (the server ignores the key)")
        self.warnings.append(msg)

    def require(self, mapping: dict, key: str, where: str, message: str | None = None):
        if key not in mapping or mapping[key] is None:
            raise BundleKeyError(message or f"{where} has no {key!r}", f"add {key!r} to {where} in competition.yaml")
        return mapping[key]

    def ref(self, kind: str, value, where: str) -> DataRef:
        name = str(value).strip()
        rel = name.strip("/")
        ref = DataRef(kind, name)
        candidate = (self.root / rel) if rel else None
        if candidate is not None and candidate.exists():
            resolved = candidate.resolve()
            if resolved != self.root and self.root not in resolved.parents:
                raise BundleFileError(f"{where}: {kind} {name!r} points outside the bundle", "use relative paths")
            ref.path = str(resolved)
            if resolved.is_dir():
                ref.form = "folder"
            elif zipfile.is_zipfile(resolved):
                ref.form = "zip"
                top = _single_top_folder(resolved)
                if top and kind in PROGRAM_TYPES:
                    ref.note = (f"{name} holds its files in a folder {top!r}: the worker extracts it as is and "
                                "looks for metadata at the root")
            else:
                raise BundleFileError(f"{where}: {kind} {name!r} is a file but not a zip",
                                      "a program or data set is a folder or a .zip in the bundle")
            return ref
        try:
            uuid.UUID(name)
            ref.form, ref.note = "server_key", f"{kind} {name} is a data set stored on the Codabench server, not in " \
                                               "the bundle"
            return ref
        except ValueError:
            pass
        raise BundleFileError(f"{where}: {kind} {name!r} is not in the bundle",
                              f"Codabench says: Cannot find dataset: \"{name}\"; put the folder or zip at that path")


def _single_top_folder(zip_path: Path) -> str | None:
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if n and not n.startswith("__MACOSX/")]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if not any(posixpath.basename(n.rstrip("/")) in ("metadata", "metadata.yaml") and n.count("/") == 0
                   for n in names):
            return top
    return None


# Field coercion as Codabench's serializers do it (Django REST framework fields built from the models: Phase,
# Leaderboard, Column, Task); the messages are DRF's own, prefixed with where the value is.
DRF_TRUE = {"t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1", 1, True}
DRF_FALSE = {"f", "F", "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "0", 0, 0.0,
             False}
MAX_POSITIVE_INT = 2147483647                            # Django PositiveIntegerField on PostgreSQL
SORTINGS = ("desc", "asc")                               # leaderboards/models.py Column.SORTING
# Column.COMPUTATION_CHOICES, each with how the leaderboard evaluates it over the columns at computation_indexes
# (leaderboards/models.py: avg; sum, min, max too)
COMPUTATIONS = {"avg": lambda v: sum(v) / len(v), "sum": sum, "min": min, "max": max}
SUBMISSION_RULES = ("Add", "Add_And_Delete", "Add_And_Delete_Multiple", "Force_Last", "Force_Latest_Multiple",
                    "Force_Best")                        # Leaderboard.SUBMISSION_RULES
FACT_SHEET_KEYS = {"key", "type", "title", "selection", "is_required", "is_on_leaderboard"}
FACT_SHEET_TYPES = {"checkbox", "text", "select"}
V2_BOOLS = {"registration_auto_approve": False, "enable_detailed_results": False,
            "show_detailed_results_in_submission_panel": True, "show_detailed_results_in_leaderboard": True,
            "auto_run_submissions": True, "can_participants_make_submissions_public": True,
            "make_programs_available": False, "make_input_data_available": False, "forum_enabled": True}


def _refused(where: str, key: str, message: str, hint: str) -> BundleKeyError:
    return BundleKeyError(f"{where}: {key}: {message}", hint)


def _as_int(value, where: str, key: str, min_value: int | None = 0) -> int:
    """DRF IntegerField: 5, "5" and 5.0 are 5; 5.5, "five" and true are refused; PositiveIntegerField: >= 0."""
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = int(re.sub(r"\.0*\s*$", "", str(value)))
    except (TypeError, ValueError):
        raise _refused(where, key, "A valid integer is required.", f"give {key} as a whole number") from None
    if min_value is not None and number < min_value:
        raise _refused(where, key, f"Ensure this value is greater than or equal to {min_value}.",
                       f"give {key} as a number >= {min_value}")
    if number > MAX_POSITIVE_INT:
        raise _refused(where, key, f"Ensure this value is less than or equal to {MAX_POSITIVE_INT}.",
                       f"give {key} as a smaller number")
    return number


def _as_bool(mapping: dict, key: str, default: bool, where: str) -> bool:
    """DRF BooleanField, fed `mapping.get(key, default)` as the unpackers do: "false" is False, null is refused."""
    value = mapping.get(key, default)
    if value is None:
        raise _refused(where, key, "This field may not be null.", f"give {key} as true or false, or leave it out")
    try:
        if value in DRF_TRUE:
            return True
        if value in DRF_FALSE:
            return False
    except TypeError:           # a list or mapping: not hashable
        pass
    raise _refused(where, key, "Must be a valid boolean.", f"give {key} as true or false")


def _as_text(mapping: dict, key: str, where: str, max_length: int | None = None) -> str:
    """DRF CharField of a required model field (required, not null, not blank, max_length)."""
    if key not in mapping:
        raise _refused(where, key, "This field is required.", f"add {key!r} to {where} in competition.yaml")
    value = mapping[key]
    if value is None:
        raise _refused(where, key, "This field may not be null.", f"give {where} a {key}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _refused(where, key, "Not a valid string.", f"give {key} as text")
    text = str(value).strip()
    if not text:
        raise _refused(where, key, "This field may not be blank.", f"give {where} a {key}")
    if max_length and len(text) > max_length:
        raise _refused(where, key, f"Ensure this field has no more than {max_length} characters.",
                       f"shorten {key} to {max_length} characters")
    return text


def _as_choice(value, choices, where: str, key: str) -> str:
    if value not in choices:
        raise _refused(where, key, f'"{value}" is not a valid choice.', f"{key} is one of {', '.join(choices)}")
    return value


def _as_datetime(value, where: str, key: str):
    """unpackers/utils.get_datetime: empty is None, a date is midnight, text goes through dateutil's parser."""
    import datetime as dt

    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    try:
        from dateutil import parser
        return parser.parse(value).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BundleKeyError(f"{where}: {key} {value!r} is not a date Codabench can read (the upload fails: {exc})",
                             f"give {key} as a date, e.g. 2024-01-31 or '2024-01-31 12:00'") from None


def _server_file(r: _Reader, value, where: str, kind: str) -> None:
    """base_unpacker._get_data_key: any file or folder in the bundle, else a data set key already on the server."""
    name = str(value).strip()
    if (r.root / name.strip("/")).exists():
        return
    try:
        uuid.UUID(name)
    except ValueError:
        raise BundleFileError(f"{where}: {kind} {name!r} is not in the bundle (Codabench says: Cannot find dataset: "
                              f"\"{name}\")", "put the file or folder at that path, or remove the key") from None


def _check_pages(y: dict, r: _Reader) -> None:
    """V2Unpacker._unpack_pages and _unpack_terms: not needed locally, so the server's refusals are warnings."""
    pages = y.get("pages")
    if not isinstance(pages, list):
        r.warnings.append("competition.yaml has no `pages:` list: Codabench's upload fails on it (its unpacker "
                          "walks the list; give `pages: []` for none)")
        pages = []
    for i, page in enumerate(pages):
        name = page.get("file") if isinstance(page, dict) else None
        if not name:
            r.warnings.append(f"pages[{i}] has no 'file': Codabench's upload fails on it")
        else:
            r.warnings.extend(_page_problem(r, name, f"Unable to find page: {name}",
                                            f"Page '{name}' is empty, it must contain content."))
    terms = y.get("terms")
    if not terms:
        r.warnings.append("competition.yaml has no 'terms': Codabench refuses such a bundle on upload (A file "
                          "containing the terms of this competition has not been supplied in the required location)")
    else:
        r.warnings.extend(_page_problem(r, terms, f"Unable to find page: {terms}",
                                        f"{terms} is empty, it must contain content."))


def _page_problem(r: _Reader, name, missing: str, empty: str) -> list[str]:
    path = r.root / str(name).strip("/")
    if not path.is_file():
        return [f"{missing}: Codabench refuses such a bundle on upload"]
    if path.stat().st_size == 0:
        return [f"{empty} (Codabench refuses such a bundle on upload)"]
    return []


def _check_fact_sheet(fact_sheet) -> None:
    """CompetitionSerializer.validate_fact_sheet, with its messages."""
    if not fact_sheet:
        return
    hint = "each fact_sheet question has key, type (checkbox, text or select), title, selection, is_required, " \
           "is_on_leaderboard"
    if not isinstance(fact_sheet, dict):
        raise BundleKeyError("fact_sheet: Not valid JSON", hint)
    for key, value in fact_sheet.items():
        if not isinstance(value, dict):
            raise BundleKeyError(f"fact_sheet: question {key!r} is not a mapping (the upload fails)", hint)
        missing = FACT_SHEET_KEYS.symmetric_difference(set(value))
        if missing:
            raise BundleKeyError(f"fact_sheet: Missing {missing} values for {key}", hint)
        if key != value["key"]:
            raise BundleKeyError(f"fact_sheet: key:{value['key']}  does not match JSON key:{key}", hint)
        if value["type"] not in FACT_SHEET_TYPES:
            raise BundleKeyError(f"fact_sheet: {value['type']} is not a valid question type", hint)


def _read_v2(y: dict, r: _Reader) -> dict:
    r.unknown("competition.yaml", y, V2_TOP)
    for key, default in V2_BOOLS.items():
        _as_bool(y, key, default, "competition.yaml")
    _check_fact_sheet(y.get("fact_sheet"))
    _check_pages(y, r)
    tasks = _read_v2_tasks(y, r)
    solutions = _read_v2_solutions(y, r, tasks)
    phases = _read_v2_phases(y, r, tasks)
    leaderboards = _read_v2_leaderboards(y, r)
    return dict(docker_image=str(y.get("docker_image") or DEFAULT_DOCKER_IMAGE), tasks=tasks, phases=phases,
                leaderboards=leaderboards, solutions=solutions)


def _read_v2_tasks(y: dict, r: _Reader) -> dict[int, BundleTask]:
    """V2Unpacker._unpack_tasks."""
    raw_tasks = y.get("tasks")
    if not raw_tasks:
        raise BundleKeyError("No tasks listed in this competition", "add a `tasks:` list to competition.yaml")
    tasks: dict[int, BundleTask] = {}
    for i, t in enumerate(raw_tasks):
        where = f"tasks[{i}]"
        r.unknown(where, t, V2_TASK)
        if "index" not in t:
            raise BundleKeyError(f"ERROR: No index for task: {t.get('name') or t.get('key')}",
                                 f"add `index:` to {where}")
        index = _as_int(t["index"], where, "index", min_value=None)
        if index in tasks:
            raise BundleKeyError(f"ERROR: Duplicate task indexes. Index: {index}", "give each task its own index")
        task = BundleTask(index, t.get("name"),
                          ingestion_only_during_scoring=_as_bool(t, "ingestion_only_during_scoring", False, where))
        if "key" in t:
            task.server_key = str(t["key"])
        else:
            for kind in FILE_TYPES:
                if t.get(kind):
                    task.files[kind] = r.ref(kind, t[kind], f"task {index}")
                elif kind == "scoring_program":
                    raise BundleKeyError(f'ERROR: Task "{t.get("name") or index}" does not have a scoring program',
                                         f"add `scoring_program:` to {where}")
        tasks[index] = task
    return tasks


def _read_v2_solutions(y: dict, r: _Reader, tasks: dict[int, BundleTask]) -> list[dict]:
    """V2Unpacker._unpack_solutions; a solution's file must be in the bundle (`_get_data_key`)."""
    solutions = []
    for i, s in enumerate(y.get("solutions") or []):
        where = f"solutions[{i}]"
        r.unknown(where, s, V2_SOLUTION)
        r.require(s, "index", where, f"ERROR: No index for solution: {s.get('name') or s.get('key')}")
        stasks = r.require(s, "tasks", where, f"Could not find tasks for solution: {s.get('name') or s.get('key')}")
        missing = [ti for ti in stasks if ti not in tasks]
        if missing:
            raise BundleKeyError(f"ERROR: Solution: {s.get('key') or s.get('name') or i} missing task index pointers "
                                 f"{missing}", f"tasks are {sorted(tasks)}")
        entry = {"index": s["index"], "name": s.get("name"), "tasks": list(stasks)}
        if "key" not in s:
            entry["path"] = str(r.require(s, "path", where, f'Solution {s.get("name")} missing "path"'))
            _server_file(r, entry["path"], where, "solution")
        solutions.append(entry)
    return solutions


def _read_v2_phases(y: dict, r: _Reader, tasks: dict[int, BundleTask]) -> list[BundlePhase]:
    """V2Unpacker._unpack_phases: sorted by index, then numbered 0..n-1; dates checked in order."""
    raw_phases = y.get("phases")
    if raw_phases is None:
        raise BundleKeyError("Unable to find any phases for this competition", "add a `phases:` list")
    if not raw_phases:
        raise BundleKeyError("phases: Competitions must have at least one phase", "add a phase to `phases:`")
    for i, p in enumerate(raw_phases):
        r.unknown(f"phases[{i}]", p, V2_PHASE)
    phases, dates = [], []
    for index, p in enumerate(sorted(raw_phases, key=lambda p: _as_int(p.get("index", 0), "phases", "index",
                                                                                    min_value=None))):
        where = f"phase {p.get('name') or index}"
        ptasks = r.require(p, "tasks", where, "Phases must contain at least one task to be valid")
        if not ptasks:
            raise BundleKeyError("Phases must contain at least one task to be valid", f"add tasks to {where}")
        for ti in ptasks:
            if ti not in tasks:
                raise BundleKeyError(f"{where} names task {ti!r}, which is not in `tasks`",
                                     f"tasks are {sorted(tasks)}")
        _as_text(p, "name", where, 256)
        start, end = _as_datetime(p.get("start"), where, "start"), _as_datetime(p.get("end"), where, "end")
        if start is None:
            raise _refused(where, "start", "This field may not be null.",
                           "give the phase a start date (Codabench's upload fails without one)")
        for key in ("max_submissions_per_day", "max_submissions"):
            if p.get(key) is not None:
                _as_int(p[key], where, key)
        for key in ("auto_migrate_to_this_phase", "hide_output", "hide_prediction_output", "hide_score_output"):
            _as_bool(p, key, False, where)
        for kind in ("public_data", "starting_kit"):
            if kind in p:
                _server_file(r, p[kind], where, kind)
        limit = p.get("execution_time_limit")
        phases.append(BundlePhase(index, p.get("name"), [int(t) for t in ptasks],
                                  _as_int(limit, where, "execution_time_limit") if limit else DEFAULT_TIME_LIMIT_S,
                                  _text(p.get("start")), _text(p.get("end"))))
        dates.append((p.get("name", index), start, end, _as_bool(p, "auto_migrate_to_this_phase", False, where)))
    _check_phase_order(dates)
    return phases


def _check_phase_order(dates: list[tuple]) -> None:
    """BaseUnpacker._validate_phase_ordering and CompetitionSerializer.validate_phases, with their messages."""
    hint = "each phase but the last needs an end, before the next phase's start"
    for (name1, _, end1, _), (name2, start2, _, _) in zip(dates, dates[1:]):
        if end1 is None:
            raise BundleKeyError(f"Phase: {name1} must have an end time because it has a phase after it.", hint)
        if start2 < end1:
            raise BundleKeyError(f"Phases must be sequential. Phase: {name2}starts before Phase: {name1} has ended",
                                 hint)
        if start2 == end1:
            raise BundleKeyError(f"Phases dates conflict. Phase: {name2} should start after Phase: {name1} has ended",
                                 hint)
    if len(dates) == 1 and dates[0][3]:
        raise BundleKeyError("phases: You cannot auto migrate in a competition with one phase",
                             "remove auto_migrate_to_this_phase")
    if dates and dates[0][3]:
        raise BundleKeyError("phases: You cannot auto migrate to the first phase of a competition",
                             "remove auto_migrate_to_this_phase from the first phase")


def _read_v2_leaderboards(y: dict, r: _Reader) -> list[BundleLeaderboardSpec]:
    """V2Unpacker._unpack_leaderboards + LeaderboardSerializer; every phase gets the first leaderboard."""
    if "leaderboards" not in y:
        raise BundleKeyError("Could not find leaderboards in the competition yaml", "add a `leaderboards:` list")
    raw = y.get("leaderboards")
    if not raw or not isinstance(raw, list):
        raise BundleKeyError("leaderboards: Competitions require at least 1 leaderboard (the upload fails)",
                             "give `leaderboards:` a list with one leaderboard and its columns")
    if len(raw) > 1:
        r.warnings.append(f"competition.yaml has {len(raw)} leaderboards: Codabench attaches only the first to the "
                          "phases; the others show nowhere")
    leaderboards = []
    for i, lb in enumerate(raw):
        where = f"leaderboards[{i}]"
        r.unknown(where, lb, V2_LEADERBOARD)
        title, key = _as_text(lb, "title", where, 64), _as_text(lb, "key", where, 36)
        _as_bool(lb, "hidden", False, where)
        _as_choice(lb.get("submission_rule", "Add"), SUBMISSION_RULES, where, "submission_rule")
        primary = _as_int(lb.get("primary_index", 0), where, "primary_index")
        cols = [_read_v2_column(c, f"{where}.columns[{j}]", r) for j, c in enumerate(lb.get("columns") or [])]
        _check_columns(cols, where)
        cols.sort(key=lambda c: c.index)
        leaderboards.append(BundleLeaderboardSpec(key, title, cols, primary))
    return leaderboards


def _read_v2_column(c, where: str, r: _Reader) -> BundleColumn:
    """ColumnSerializer's fields: title, key and index required; sorting and computation from their choices."""
    r.unknown(where, c, V2_COLUMN)
    computation = c.get("computation")
    if computation is not None:
        _as_choice(computation, tuple(COMPUTATIONS), where, "computation")
    indexes = c.get("computation_indexes")
    if isinstance(indexes, str):
        indexes = [i.strip() for i in indexes.split(",") if i.strip()]
    if "index" not in c:
        raise _refused(where, "index", "This field is required.", f"add `index:` to {where}")
    return BundleColumn(_as_text(c, "key", where, 36), _as_text(c, "title", where, 36),
                        _as_int(c["index"], where, "index"),
                        _as_choice(c.get("sorting", "desc"), SORTINGS, where, "sorting"), computation,
                        list(indexes) if indexes else None, _as_bool(c, "hidden", False, where),
                        _as_int(c.get("precision", 2), where, "precision", min_value=None))


def _check_columns(cols: list[BundleColumn], where: str) -> None:
    """LeaderboardSerializer.validate_columns and ColumnSerializer.validate, with their messages."""
    hint = "see the Codabench docs: Leaderboards and columns"
    if not cols:
        raise BundleKeyError(f"{where}: columns: Leaderboards require at least 1 column", hint)
    indexes = [c.index for c in cols]
    if len(set(indexes)) != len(cols):
        raise BundleKeyError(f"{where}: columns: Columns must have unique indexes!", hint)
    if len({c.key for c in cols}) != len(cols):
        raise BundleKeyError(f"{where}: columns: Columns must have unique keys!", hint)
    for c in cols:
        if c.computation and not c.computation_indexes:
            raise BundleKeyError(f"{where}: Column with computation must have at least 1 column selected for the "
                                 "computation to act upon", hint)
        if c.computation_indexes and not c.computation:
            raise BundleKeyError(f"{where}: Cannot add computation columns without a computation function set", hint)
        for index in c.computation_indexes or []:
            if str(index) == str(c.index):
                raise BundleKeyError(f"{where}: Column with index {c.index} referencing itself. Cannot self-reference, "
                                     "must be other columns.", hint)
            try:
                if int(index) not in indexes:
                    raise BundleKeyError(f"{where}: columns: Column index {index} does not exist in available indexes "
                                         f"{indexes}", hint)
            except (TypeError, ValueError):
                raise BundleKeyError(f"{where}: columns: Bad value for index, should be an integer but received: "
                                     f"{index}.", hint) from None


def _read_v1(y: dict, r: _Reader) -> dict:
    r.unknown("competition.yaml", y, V1_TOP)
    html = y.get("html")
    if not isinstance(html, dict):
        r.warnings.append("competition.yaml has no `html:` pages: Codabench refuses such a bundle on upload (HTML pages "
                          "could not be found in the yaml file)")
    else:
        if "terms" not in html:
            r.warnings.append("html has no 'terms' page: Codabench refuses such a bundle on upload (A file containing "
                              "the terms of the competition could not be located for this competition)")
        for title, path in html.items():
            if not (r.root / str(path).strip("/")).is_file():
                r.warnings.append(f"Could not find file for page: {title}: Codabench refuses such a bundle on upload")
    tasks, phases = _read_v1_phases(y, r)
    return dict(docker_image=str(y.get("competition_docker_image") or DEFAULT_DOCKER_IMAGE), tasks=tasks,
                phases=phases, leaderboards=_read_v1_leaderboards(y, r), solutions=[])


def _read_v1_phases(y: dict, r: _Reader) -> tuple[dict[int, BundleTask], list[BundlePhase]]:
    """V15Unpacker._unpack_phases: sorted by phasenumber, v1.8 parent dropped, one task per phase; a phase ends a
    day before the next one starts, the last at the competition's end_date."""
    import datetime as dt

    raw = y.get("phases")
    if not raw:
        raise BundleKeyError("No phases could be found for this competition", "add a numbered `phases:` mapping")
    if not isinstance(raw, dict):
        raise BundleKeyError("phases is not a mapping of numbered phases (legacy layout: `phases: {1: {...}}`)",
                             "version 2 bundles need `version: 2` at the top of competition.yaml")
    for key, p in raw.items():
        r.unknown(f"phases[{key}]", p, V1_PHASE)
        if "phasenumber" not in p:
            raise BundleKeyError(f"phase {key} has no 'phasenumber'", f"add `phasenumber: {key}` to that phase")
    ordered = sorted(raw.values(), key=lambda p: p["phasenumber"])
    if any(p.get("is_parallel_parent") or p.get("parent_phasenumber") for p in ordered):
        ordered = ordered[1:]  # v1.8: the first phase is the parent phase (V15Unpacker._preprocess_phases)
    starts = []
    for p in ordered:
        where = f"phase {p['phasenumber']}"
        start = _as_datetime(p.get("start_date"), where, "start_date")
        if start is None:
            raise _refused(where, "start_date", "This field may not be null.",
                           "give the phase a start_date (Codabench's upload fails without one)")
        starts.append(start)
    end_date = y.get("end_date")
    last_end = _as_datetime(end_date, "competition.yaml", "end_date") if end_date != "null" else None
    tasks: dict[int, BundleTask] = {}
    phases = []
    for index, p in enumerate(ordered):
        where = f"phase {p['phasenumber']}"
        label = r.require(p, "label", where)
        task = BundleTask(index, f"{label} Task", ingestion_only_during_scoring=_as_bool(
            p, "ingestion_program_only_during_scoring", False, where))
        for kind in FILE_TYPES:
            if p.get(kind):
                task.files[kind] = r.ref(kind, p[kind], where)
        if "scoring_program" not in task.files:
            r.warnings.append(f"{where} ({label}) has no scoring_program: submissions to it cannot be scored")
        for kind in ("public_data", "starting_kit"):
            if kind in p:
                _server_file(r, p[kind], where, kind)
        tasks[index] = task
        limit = p.get("execution_time_limit")
        end = starts[index + 1] - dt.timedelta(days=1) if index + 1 < len(starts) else last_end
        phases.append(BundlePhase(index, str(label), [index],
                                  _as_int(limit, where, "execution_time_limit") if limit else DEFAULT_TIME_LIMIT_S,
                                  _text(p.get("start_date")), _date_text(end)))
    return tasks, phases


def _date_text(value) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%d") if value.time() == value.min.time() else value.isoformat(sep=" ")


def _read_v1_leaderboards(y: dict, r: _Reader) -> list[BundleLeaderboardSpec]:
    """V15Unpacker._unpack_leaderboards: columns sorted by rank, placed on the leaderboard whose label they name."""
    lb = y.get("leaderboard")
    if lb is None:
        raise BundleKeyError("Could not find leaderboard in the competition yaml", "add a `leaderboard:` mapping")
    if "leaderboards" not in lb:
        raise BundleKeyError("Could not find leaderboards declared on the competition leaderboard",
                             "add `leaderboard: leaderboards:` to competition.yaml")
    if "columns" not in lb:
        raise BundleKeyError("Could not find columns declared on the competition leaderboard",
                             "add `leaderboard: columns:` to competition.yaml")
    boards = []
    for key, data in (lb["leaderboards"] or {}).items():
        where = f"leaderboard.leaderboards[{key}]"
        r.unknown(where, data, V1_LEADERBOARD)
        boards.append(BundleLeaderboardSpec(str(key), str(r.require(data, "label", where)), []))
    if not boards:
        raise BundleKeyError("leaderboard.leaderboards: Competitions require at least 1 leaderboard (the upload fails)",
                             "declare a leaderboard under `leaderboard: leaderboards:`")
    columns = sorted(({"title": k, **v} for k, v in (lb["columns"] or {}).items()), key=lambda c: c.get("rank", 1))
    for index, c in enumerate(columns):
        where = f"leaderboard.columns[{c['title']}]"
        r.unknown(where, {k: v for k, v in c.items() if k != "title"}, V1_COLUMN)
        col = BundleColumn(str(c["title"]), str(c.get("label", c["title"])), index,
                           _as_choice(c.get("sort") or "desc", SORTINGS, where, "sort"), None, None,
                           _as_bool(c, "hidden", False, where),
                           _as_int(c.get("numeric_format", 2), where, "numeric_format", min_value=None))
        owner = (c.get("leaderboard") or {}).get("label") if isinstance(c.get("leaderboard"), dict) else None
        if owner is None:
            raise BundleKeyError(f"{where} names no leaderboard (the upload fails on it)",
                                 "give the column `leaderboard: *RESULTS` (the leaderboard's anchor)")
        placed = [board for board in boards if str(owner).lower() == board.title.lower()]
        for board in placed:
            board.columns.append(col)
        if not placed:
            r.warnings.append(f"leaderboard column {c['title']!r} names leaderboard {owner!r}, which is not declared: "
                              "Codabench shows it nowhere")
    for board in boards:
        if not board.columns:
            raise BundleKeyError(f"leaderboard {board.key}: columns: Leaderboards require at least 1 column",
                                 "place a column on it (`leaderboard: *ITS_ANCHOR`)")
    return boards


MAX_YAML_NODES = 1_000_000   # expanded nodes; a real competition.yaml has a few hundred


def _load_yaml(text: str):
    """yaml.safe_load, refusing an alias bomb (anchors nested so that the document expands into billions of
    nodes) before anything walks the expanded document: the composed graph's expanded size is counted first."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = MAX_YAML_NODES + 1  # a node that holds itself counts as too big
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
                node.value if isinstance(node, yaml.SequenceNode) else []
            sizes[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(size(c) for c in children))
        return sizes[id(node)]

    if root is not None and size(root) > MAX_YAML_NODES:
        raise BundleKeyError(f"competition.yaml expands into more than {MAX_YAML_NODES:,} YAML nodes through its "
                             "aliases (*name): an alias bomb", "write the repeated parts out, or use fewer anchors")
    return yaml.safe_load(text)


def _text(value) -> str | None:
    return None if value is None else str(value)


def open_bundle(path: str | os.PathLike, workdir: str | os.PathLike, strict: bool = False) -> Bundle:
    """Read a bundle (zip, extracted into workdir/bundle, or a folder, read in place: nothing is written to it).

    `strict`: keys Codabench does not know are errors (default: warnings, as the server ignores them)."""
    import yaml

    src = Path(path)
    if src.is_dir():
        root = src.resolve()
    elif src.is_file():
        root = safe_extract_archive(src, Path(workdir) / "bundle", what="bundle")
    else:
        raise BundleFileError(f"{src} does not exist", "give a competition bundle zip or its folder")
    yaml_path = root / "competition.yaml"
    if not yaml_path.is_file():
        nested = sorted(str(p.relative_to(root)) for p in root.glob("*/competition.yaml"))
        raise BundleFileError("competition.yaml is missing from zip, check your folder structure to make sure it is in "
                              "the root directory." + (f" (found {nested[0]})" if nested else ""),
                              "zip the bundle's contents, not its folder: `cd bundle && zip -r ../bundle.zip .`"
                              if nested else "a bundle has competition.yaml at its root")
    try:
        y = _load_yaml(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BundleKeyError(f"competition.yaml is not valid YAML ({exc})".replace("\n", " "),
                             "fix the syntax error it names") from None
    if not isinstance(y, dict):
        raise BundleKeyError("competition.yaml is not a mapping of keys", "see the Codabench Yaml Structure docs")
    version = str(y.get("version", "1"))    # tasks.unpack_competition: exactly '1', '1.5' or '2' ("2.0" is refused)
    reader = _Reader(root, strict)
    if version in ("1", "1.5"):
        parts = _read_v1(y, reader)
    elif version == "2":
        parts = _read_v2(y, reader)
    else:
        raise BundleKeyError(f"version {version!r}: A suitable version could not be found for this competition. Make "
                             "sure one is supplied in the yaml.", "use `version: 2` (or 1.5 for legacy Codalab)")
    if not y.get("title"):
        reader.warnings.append("competition.yaml has no 'title': Codabench refuses such a bundle on upload (title: "
                               "This field may not be null.)")
    image = y.get("image")
    if not image:
        reader.warnings.append("competition.yaml has no 'image': Codabench refuses such a bundle on upload (An image "
                               "for this competition could not be found in the yaml)")
    elif not (root / str(image)).is_file():
        reader.warnings.append(f"the logo {image!r} is not in the bundle: Codabench refuses such a bundle on upload "
                               f"(Unable to find image: {image})")
    return Bundle(root=root, source=str(src), version=version, title=y.get("title"), queue=_text(y.get("queue")),
                  enable_detailed_results=_as_bool(y, "enable_detailed_results", False, "competition.yaml"),
                  warnings=reader.warnings, **parts)


def materialize(ref: DataRef, dest: Path) -> Path:
    """Put a program or data set where the worker's `_get_bundle` puts it: a folder's contents, or a zip
    extracted as is, into dest."""
    if ref.form == "folder":
        copy_tree(Path(ref.path), dest)
    elif ref.form == "zip":
        safe_extract_archive(ref.path, dest, what=ref.kind)
    else:
        raise BundleFileError(ref.note or f"{ref.kind} {ref.name!r} is not in the bundle",
                              "a local run needs every program and data set inside the bundle")
    return dest
