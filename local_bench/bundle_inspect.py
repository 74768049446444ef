"""`subbench bundle inspect`: what a competition bundle holds and what a local run of it lacks, read without
running anything but an import probe in the chosen interpreter."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from subbench.local_bench.bundle_result import BundleInfo, DataInfo, PhaseInfo, TaskInfo
from subbench.local_bench.bundle_spec import materialize, open_bundle
from subbench.local_bench.bundle_mounts import APP_PATH, app_mode
from subbench.local_bench.bundle_step import SubmissionException, read_metadata
from subbench.local_bench.bundle_worker import map_columns


_IMPORT_PROBE = """
import importlib.util, json, sys
names = json.loads(sys.argv[1])
std = set(getattr(sys, "stdlib_module_names", ()))
out = {}
for n in names:
    if n in std or n in sys.builtin_module_names:
        out[n] = "stdlib"
    else:
        try:
            out[n] = "yes" if importlib.util.find_spec(n) is not None else "no"
        except Exception:
            out[n] = "no"
print(json.dumps(out))
"""


def _imports(folder: Path) -> list[str]:
    """Top-level modules the .py files of a program import, without the program's own modules."""
    import ast

    local = {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return sorted(found - local - {"__future__"})


def probe_imports(python: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    try:
        proc = subprocess.run([python, "-c", _IMPORT_PROBE, json.dumps(names)], capture_output=True, text=True,
                              timeout=60)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return {}


def _app_paths_in_code(folder: Path) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.name in ("metadata", "metadata.yaml"):
            continue  # the command's /app paths are the worker's own, handled either way
        if path.is_file() and path.suffix in (".py", ".sh", ".R", ".r", ".jl", "") and path.stat().st_size < 1 << 20:
            try:
                if APP_PATH.search(path.read_text(encoding="utf-8", errors="replace")):
                    hits.append(str(path.relative_to(folder)))
            except OSError:
                pass
    return hits


def _program_info(d: DataInfo, kind: str, name: str, folder: Path, python: str) -> list[str]:
    """A program's metadata command, imports (missing ones probed in `python`) and /app paths; what it lacks."""
    missing = []
    d.has_metadata = (folder / "metadata.yaml").exists() or (folder / "metadata").exists()
    try:
        action, command, _note = read_metadata(folder, "program")
        d.command = command
        if action == "no_command":
            missing.append(f"{kind} {name}: its metadata has no command"
                           + (" (the worker fails: Program directory missing 'command' in metadata)"
                              if kind == "ingestion_program" else " (no scores can be written)"))
    except SubmissionException:
        pass
    if not d.has_metadata:
        missing.append(f"{kind} {name}: no metadata at its root"
                       + (" (the worker fails: Program directory missing 'metadata.yaml/metadata')"
                          if kind == "ingestion_program" else " (the worker copies it to the output and finds no scores)"))
    d.imports = _imports(folder)
    status = probe_imports(python, d.imports)
    d.imports = [n for n in d.imports if status.get(n) != "stdlib"]
    d.missing_imports = [n for n in d.imports if status.get(n) == "no"]
    d.app_paths_in_code = _app_paths_in_code(folder)
    return missing


def _task_info(task, python: str, tmp: Path, seen: dict, mode: str, why: str, path_warnings: list) -> TaskInfo:
    data, missing = [], []
    if task.server_key:
        missing.append(f"the task is referenced by key {task.server_key}: it is defined on the server")
    for kind in ("ingestion_program", "input_data", "scoring_program", "reference_data"):
        ref = task.get(kind)
        if ref is None:
            continue
        d = DataInfo(kind, ref.name, ref.form, note=ref.note)
        data.append(d)
        if not ref.usable:
            missing.append(ref.note or f"{kind} {ref.name!r}")
            continue
        folder = seen.get((kind, ref.path))
        if folder is None:
            folder = seen[(kind, ref.path)] = materialize(ref, tmp / "data" / f"{len(seen)}")
        files = [p for p in folder.rglob("*") if p.is_file()]
        d.files, d.size_mb = len(files), round(sum(p.stat().st_size for p in files) / 2**20, 3)
        if kind in ("ingestion_program", "scoring_program"):
            missing += _program_info(d, kind, ref.name, folder, python)
            if d.app_paths_in_code and mode == "rewrite":
                path_warnings.append(
                    f"task {task.index}: {kind} {ref.name} names /app paths in its code "
                    f"({', '.join(d.app_paths_in_code[:3])}); without a private mount namespace ({why}) only "
                    "the paths its command passes are rewritten, the others do not resolve")
    if task.get("scoring_program") is None and not task.server_key:
        missing.append("no scoring program")
    if task.get("ingestion_program") is not None:
        kind = ("a code submission (read by the ingestion program at /app/ingested_program); a results-only "
                "submission works if the ingestion program accepts it")
    else:
        kind = ("results (copied to the output as they are) or a program with a `metadata` command that "
                "writes them to /app/output")
    return TaskInfo(task.index, task.name, task.ingestion_only_during_scoring, data, kind, missing)


def inspect_bundle(path, python: str, strict: bool = False) -> BundleInfo:
    """What `subbench bundle inspect` shows: phases (each with its tasks and time limit), tasks, programs and
    data, columns, limits, image, and what a local run lacks."""
    with tempfile.TemporaryDirectory(prefix="subbench-inspect-") as tmp:
        bundle = open_bundle(path, tmp, strict=strict)
        mode, why = app_mode()
        seen, path_warnings = {}, []
        infos = [_task_info(bundle.tasks[i], python, Path(tmp), seen, mode, why, path_warnings)
                 for i in sorted(bundle.tasks)]
        cols, _ = map_columns(bundle, None)
        phases = [PhaseInfo(p.index, p.name, p.tasks, p.execution_time_limit, bundle.effective_time_limit(p),
                            p.start, p.end) for p in bundle.phases]
        warnings = list(bundle.warnings) + path_warnings
        if mode == "rewrite":
            warnings.append(f"no private mount namespace here ({why}): /app paths in commands will be rewritten")
        return BundleInfo(str(path), bundle.version, bundle.title, bundle.docker_image, bundle.queue,
                          bundle.enable_detailed_results, phases, infos, cols, python, warnings)
