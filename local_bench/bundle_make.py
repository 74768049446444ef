"""`subbench bundle make`: a Codabench bundle (competition.yaml version 2) that scores a profile's submissions the
way `subbench score` does, so that the profile path and the bundle path share one runner.

The bundle's ingestion program *is* subbench's ingestion program (local_bench/_ingestion.py, copied as
ingestion_program/ingestion.py, started by the small run_ingestion.py that maps the worker's folders onto its
arguments and moves into the submission folder when the profile's `cwd` says so); its scoring program names the
outcome with subbench's own classifier (local_bench/classify.py, copied beside score.py) and computes the
profile's metric. The images scored are the ones `subbench score` would score on the same data (the held-out
part of `--split`, or every image), corrupted like the hidden set with `--simulate-hidden` (same preset, same
seed, same bytes). An organizer can upload the zip as it is: it carries the logo, terms and pages Codabench
requires.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from subbench.atomic import atomic_path, check_writable
from subbench.profile import Profile

METRIC_TITLES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1"}


def _source(name: str) -> bytes:
    return (resources.files("subbench.local_bench") / name).read_bytes()


def _logo() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (200, 200), (46, 125, 50))
    ImageDraw.Draw(img).ellipse((40, 40, 160, 160), fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def competition_yaml(profile: Profile, *, title: str, docker_image: str, n: int, simulate: str | None) -> dict:
    metrics = [profile.metric] + [m for m in ("accuracy", "balanced_accuracy", "macro_f1") if m != profile.metric]
    columns = [{"index": 0, "title": METRIC_TITLES.get(profile.metric, profile.metric), "key": profile.leaderboard_key,
                "sorting": "desc", "precision": 4}]
    for m in metrics[1:]:
        if m != profile.leaderboard_key:
            columns.append({"index": len(columns), "title": METRIC_TITLES[m], "key": m, "sorting": "desc",
                            "precision": 4})
    what = f"{n} images" + (f", corrupted like the hidden set ({simulate})" if simulate else "")
    return {
        "version": 2,
        "title": title,
        "description": f"{profile.title}: {what}. Written by subbench bundle make.",
        "image": "logo.png",
        "registration_auto_approve": True,
        "docker_image": docker_image,
        "enable_detailed_results": True,
        "make_programs_available": True,
        "terms": "pages/terms.md",
        "pages": [{"title": "Overview", "file": "pages/overview.md"},
                  {"title": "Evaluation", "file": "pages/evaluation.md"}],
        "tasks": [{"index": 0, "name": f"{profile.name} ({what})",
                   "description": f"Model().predict(X) on {what}; scored by {profile.metric}.",
                   "input_data": "input_data", "reference_data": "reference_data",
                   "ingestion_program": "ingestion_program", "scoring_program": "scoring_program"}],
        "solutions": [],
        "phases": [{"index": 0, "name": "Local", "description": f"{what}", "start": time.strftime("%Y-%m-%d"),
                    "execution_time_limit": int(round(profile.time_limit_s)), "max_submissions_per_day": 5,
                    "max_submissions": 100, "tasks": [0]}],
        "leaderboards": [{"index": 0, "title": "Results", "key": "main", "columns": columns}],
    }


def write_bundle_folder(folder: Path, profile: Profile, images: np.ndarray, labels: np.ndarray, *, title: str,
                        docker_image: str, simulate: str | None, notes: list[str]) -> Path:
    """The bundle's files, into folder."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    spec = competition_yaml(profile, title=title, docker_image=docker_image, n=len(images), simulate=simulate)
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    (folder / "logo.png").write_bytes(_logo())
    pages = folder / "pages"
    pages.mkdir()
    (pages / "terms.md").write_text("# Terms\n\nA local bundle written by subbench for testing submissions.\n")
    (pages / "overview.md").write_text(
        f"# {title}\n\n{profile.title}.\n\nSubmit a zip with `{profile.entry}` at its root defining class "
        f"`{profile.class_name}`: `{profile.class_name}()` takes no arguments and `predict(X)` takes uint8 images "
        f"({', '.join(map(str, profile.input_shape))}) and returns one integer label per image in "
        f"0..{profile.num_classes - 1}.\n\n" + "".join(f"- {n}\n" for n in notes))
    (pages / "evaluation.md").write_text(
        f"# Evaluation\n\n{profile.metric} on {len(images)} images; classes: {', '.join(profile.class_names)}. "
        f"Time limit {profile.time_limit_s:g} s per step.\n")
    ing = folder / "ingestion_program"
    ing.mkdir()
    (ing / "ingestion.py").write_bytes(_source("_ingestion.py"))
    (ing / "run_ingestion.py").write_bytes(_source("_bundle_an2dl_ingestion.py"))
    (ing / "bundle.json").write_text(json.dumps({"cwd": profile.cwd, "module": Path(profile.entry).stem,
                                                 "class_name": profile.class_name, "profile": profile.name}, indent=1))
    (ing / "metadata").write_text("command: python3 /app/program/run_ingestion.py /app/input_data /app/output "
                                  "/app/program /app/ingested_program\n")
    sco = folder / "scoring_program"
    sco.mkdir()
    (sco / "score.py").write_bytes(_source("_bundle_an2dl_scoring.py"))
    (sco / "classify.py").write_bytes(_source("classify.py"))
    (sco / "metadata").write_text("command: python3 /app/program/score.py /app/input /app/output\n")
    data = folder / "input_data"
    data.mkdir()
    np.save(data / "0000.npy", np.ascontiguousarray(images, dtype=np.uint8))
    (data / "sets.json").write_text(json.dumps({"sets": [{"key": "0000", "file": "0000.npy"}], "stream": False,
                                                "chunk": None}))
    ref = folder / "reference_data"
    ref.mkdir()
    np.save(ref / "labels.npy", np.asarray(labels, dtype=np.int64))
    (ref / "classes.json").write_text(json.dumps({"class_names": list(profile.class_names),
                                                  "leaderboard_key": profile.leaderboard_key,
                                                  "metric": profile.metric}, indent=1))
    return folder


def _zip_folder(folder: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def make_profile_bundle(profile: Profile, data, out, *, simulate_hidden: str | None = None, seed: int = 0,
                        split: str | None = None, use_all: bool = False, docker_image: str | None = None,
                        title: str | None = None, force: bool = False,
                        echo: Callable[[str], None] = print) -> Path:
    """Write the bundle zip `out` for `profile` on `data` (a path, or a Dataset). Returns the zip's path."""
    from subbench.local_bench.evaluate import ScoreOptions, select_images

    out = Path(out)
    check_writable(out, force)
    if simulate_hidden not in (None, "an2dl", "noise"):
        from subbench.errors import SubbenchError

        raise SubbenchError(f"--simulate-hidden {simulate_hidden!r} is not a preset a bundle can hold",
                            "use an2dl or noise (the suite is a robustness table, not a leaderboard)")
    options = ScoreOptions(split=split, use_all=use_all, seed=seed, simulate_hidden=simulate_hidden)
    images, labels, scored_on, notes = select_images(data, profile, None, options, echo)
    if simulate_hidden:
        from subbench.corrupt import apply_preset

        echo(f"simulating the hidden set: preset {simulate_hidden}, seed {seed}, {len(images)} images")
        images = apply_preset(images, preset=simulate_hidden, seed=seed, cache=True, progress=False)
    part = "held-out split" if scored_on.part == "holdout" else "every image"
    notes = [f"data: {scored_on.data} ({part}, {len(images)} images)"] + notes
    if simulate_hidden:
        notes.append(f"images corrupted like the hidden set: preset {simulate_hidden}, seed {seed}")
    image = docker_image or f"tensorflow/tensorflow:{profile.server_tensorflow}"
    with tempfile.TemporaryDirectory(prefix="subbench-bundle-make-") as tmp:
        folder = write_bundle_folder(Path(tmp) / "bundle", profile, images, labels,
                                     title=title or f"{profile.title} (local)", docker_image=image,
                                     simulate=simulate_hidden, notes=notes)
        with atomic_path(out, force=force, suffix=".zip") as tmp_zip:
            _zip_folder(folder, tmp_zip)
    echo(f"wrote {out}: {len(images)} images, time limit {profile.time_limit_s:g} s, image {image}")
    return out
