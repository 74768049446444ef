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
unpackers refuse is a `BundleKeyError` with the unpacker's own message. Differences, on purpose: pages, terms and
the logo are not needed for a local run: their absence
is a warning, not an error (Codabench refuses the bundle).
"""

from __future__ import annotations

import os
import posixpath
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
          "contact_email", "forum_enabled", "enable_forum", "pages", "terms", "tasks", "solutions", "phases",
          "leaderboards", "end_date", "allow_robot_submissions", "whitelist_emails", "report"}
V2_TASK = {"index", "name", "description", "key", "is_public", "ingestion_only_during_scoring", "created_by",
           *FILE_TYPES}
V2_PHASE = {"index", "name", "description", "start", "end", "max_submissions_per_day", "max_submissions",
            "max_submissions_per_person", "execution_time_limit", "auto_migrate_to_this_phase", "hide_output",
            "hide_prediction_output", "hide_score_output", "tasks", "solutions", "public_data", "starting_kit",
            "status", "is_final_phase", "has_max_submissions", "leaderboard"}
V2_SOLUTION = {"index", "name", "description", "key", "path", "tasks"}
V2_LEADERBOARD = {"index", "title", "key", "hidden", "submission_rule", "columns"}
V2_COLUMN = {"index", "title", "key", "sorting", "computation", "computation_indexes", "hidden", "precision"}
V1_TOP = {"version", "title", "description", "image", "has_registration", "html", "phases", "leaderboard",
          "competition_docker_image", "end_date", "admin_names", "allow_public_submissions", "allow_teams",
          "anonymous_leaderboard", "enable_detailed_results", "show_detailed_results_in_submission_panel",
          "show_detailed_results_in_leaderboard", "enable_forum", "enable_per_submission_metadata",
          "force_submission_to_leaderboard", "disallow_leaderboard_modifying", "show_datasets_from_yaml",
          "auto_run_submissions", "make_programs_available", "make_input_data_available", "queue",
          "registration_auto_approve", "reward", "hide_top_three", "hide_chart", "allow_organizer_teams",
          "enable_medical_image_viewer", "is_migrated", "competition_type"}
V1_PHASE = {"phasenumber", "label", "description", "start_date", "max_submissions", "max_submissions_per_day",
            "is_scoring_only", "color", "auto_migration", "leaderboard_management_mode", "datasets",
            "execution_time_limit", "force_best_submission_to_leaderboard", "public_data", "starting_kit",
            "ingestion_program_only_during_scoring", "hide_output", "hide_prediction_output", "hide_score_output",
            "default_docker_image", "disable_custom_docker_image", "is_parallel_parent", "parent_phasenumber",
            "phase_never_ends", "max_submission_size", "is_public", *FILE_TYPES}
V1_LEADERBOARD = {"label", "rank"}
V1_COLUMN = {"leaderboard", "label", "rank", "numeric_format", "sort", "hidden", "computed", "selection_default",
             "show_rank"}


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


def _as_int(value, where: str, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BundleKeyError(f"{where}: {key} {value!r} is not an integer", f"give {key} as a number") from None


def _read_v2(y: dict, r: _Reader) -> dict:
    r.unknown("competition.yaml", y, V2_TOP)
    tasks: dict[int, BundleTask] = {}
    raw_tasks = y.get("tasks")
    if not raw_tasks:
        raise BundleKeyError("No tasks listed in this competition", "add a `tasks:` list to competition.yaml")
    for i, t in enumerate(raw_tasks):
        where = f"tasks[{i}]"
        r.unknown(where, t, V2_TASK)
        if "index" not in t:
            raise BundleKeyError(f"ERROR: No index for task: {t.get('name') or t.get('key')}",
                                 f"add `index:` to {where}")
        index = _as_int(t["index"], where, "index")
        if index in tasks:
            raise BundleKeyError(f"ERROR: Duplicate task indexes. Index: {index}", "give each task its own index")
        task = BundleTask(index, t.get("name"), ingestion_only_during_scoring=bool(t.get("ingestion_only_during_scoring",
                                                                                           False)))
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
            if not (r.root / entry["path"].strip("/")).exists():
                r.warnings.append(f"solution {entry['path']!r} is not in the bundle")
        solutions.append(entry)
    raw_phases = y.get("phases")
    if raw_phases is None:
        raise BundleKeyError("Unable to find any phases for this competition", "add a `phases:` list")
    for i, p in enumerate(raw_phases):
        r.unknown(f"phases[{i}]", p, V2_PHASE)
    phases = []
    for index, p in enumerate(sorted(raw_phases, key=lambda p: p.get("index", 0))):
        where = f"phase {p.get('name') or index}"
        ptasks = r.require(p, "tasks", where, "Phases must contain at least one task to be valid")
        if not ptasks:
            raise BundleKeyError("Phases must contain at least one task to be valid", f"add tasks to {where}")
        for ti in ptasks:
            if ti not in tasks:
                raise BundleKeyError(f"{where} names task {ti!r}, which is not in `tasks`",
                                     f"tasks are {sorted(tasks)}")
        limit = p.get("execution_time_limit")
        phases.append(BundlePhase(index, p.get("name"), [int(t) for t in ptasks],
                                  _as_int(limit, where, "execution_time_limit") if limit else DEFAULT_TIME_LIMIT_S,
                                  _text(p.get("start")), _text(p.get("end"))))
    if "leaderboards" not in y:
        raise BundleKeyError("Could not find leaderboards in the competition yaml", "add a `leaderboards:` list")
    leaderboards = []
    for i, lb in enumerate(y.get("leaderboards") or []):
        where = f"leaderboards[{i}]"
        r.unknown(where, lb, V2_LEADERBOARD)
        cols = []
        for j, c in enumerate(lb.get("columns") or []):
            cw = f"{where}.columns[{j}]"
            r.unknown(cw, c, V2_COLUMN)
            key = str(r.require(c, "key", cw))
            cols.append(BundleColumn(key, str(c.get("title") or key), _as_int(c.get("index", j), cw, "index"),
                                     str(c.get("sorting") or "desc"), c.get("computation"),
                                     c.get("computation_indexes"), bool(c.get("hidden", False)),
                                     _as_int(c.get("precision", 2), cw, "precision")))
        cols.sort(key=lambda c: c.index)
        leaderboards.append(BundleLeaderboardSpec(str(lb.get("key") or lb.get("title") or i),
                                                  str(lb.get("title") or lb.get("key") or i), cols))
    return dict(docker_image=str(y.get("docker_image") or DEFAULT_DOCKER_IMAGE), tasks=tasks, phases=phases,
                leaderboards=leaderboards, solutions=solutions)


def _read_v1(y: dict, r: _Reader) -> dict:
    r.unknown("competition.yaml", y, V1_TOP)
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
    tasks: dict[int, BundleTask] = {}
    phases = []
    for index, p in enumerate(ordered):
        where = f"phase {p['phasenumber']}"
        label = r.require(p, "label", where)
        task = BundleTask(index, f"{label} Task",
                          ingestion_only_during_scoring=bool(p.get("ingestion_program_only_during_scoring", False)))
        for kind in FILE_TYPES:
            if p.get(kind):
                task.files[kind] = r.ref(kind, p[kind], where)
        if "scoring_program" not in task.files:
            r.warnings.append(f"{where} ({label}) has no scoring_program: submissions to it cannot be scored")
        tasks[index] = task
        limit = p.get("execution_time_limit")
        phases.append(BundlePhase(index, str(label), [index],
                                  _as_int(limit, where, "execution_time_limit") if limit else DEFAULT_TIME_LIMIT_S,
                                  _text(p.get("start_date")), None))
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
        r.unknown(f"leaderboard.leaderboards[{key}]", data, V1_LEADERBOARD)
        boards.append(BundleLeaderboardSpec(str(key), str(data.get("label", key)), []))
    columns = sorted(({"title": k, **v} for k, v in (lb["columns"] or {}).items()), key=lambda c: c.get("rank", 1))
    for index, c in enumerate(columns):
        where = f"leaderboard.columns[{c['title']}]"
        r.unknown(where, {k: v for k, v in c.items() if k != "title"}, V1_COLUMN)
        col = BundleColumn(str(c["title"]), str(c.get("label", c["title"])), index, str(c.get("sort") or "desc"),
                           None, None, bool(c.get("hidden", False)),
                           _as_int(c.get("numeric_format", 2), where, "numeric_format"))
        owner = (c.get("leaderboard") or {}).get("label")
        placed = False
        for board in boards:
            if owner is not None and str(owner).lower() == board.title.lower():
                board.columns.append(col)
                placed = True
        if not placed:
            r.warnings.append(f"leaderboard column {c['title']!r} names leaderboard {owner!r}, which is not declared: "
                              "Codabench shows it nowhere")
    return dict(docker_image=str(y.get("competition_docker_image") or DEFAULT_DOCKER_IMAGE), tasks=tasks,
                phases=phases, leaderboards=boards, solutions=[])


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
    version = str(y.get("version", "1"))
    reader = _Reader(root, strict)
    if version in ("1", "1.5", "1.0"):
        parts = _read_v1(y, reader)
    elif version in ("2", "2.0"):
        parts = _read_v2(y, reader)
    else:
        raise BundleKeyError(f"version {version!r}: A suitable version could not be found for this competition. Make "
                             "sure one is supplied in the yaml.", "use `version: 2` (or 1.5 for legacy Codalab)")
    for key in ("title", "image") + (("terms",) if version.startswith("2") else ()):
        if not y.get(key):
            reader.warnings.append(f"competition.yaml has no {key!r}: Codabench refuses such a bundle on upload")
    image = y.get("image")
    if image and not (root / str(image)).is_file():
        reader.warnings.append(f"the logo {image!r} is not in the bundle: Codabench refuses such a bundle on upload")
    return Bundle(root=root, source=str(src), version=version, title=y.get("title"), queue=_text(y.get("queue")),
                  enable_detailed_results=bool(y.get("enable_detailed_results", False)), warnings=reader.warnings,
                  **parts)


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
