"""`subbench score` as a library call: pick the scored images, run the zip like the server, score, assemble
scores.json, and write the output folder (scores.json + report.html + predictions) atomically.

Runs (each a fresh process through runner.run_sets):
1. the server emulation: the scored images (corrupted with the simulator when asked), the profile's time limit,
   working directory and interpreter; its status is the command's status;
2. the cross-check of the other working directory (`--cwd submission|program`) on a few images, so a zip that
   only works from one of them is flagged before the server finds out;
3. `--clean-too`: the clean images, for the clean-vs-corrupted gap;
4. `--simulate-hidden=suite`: one process predicting every corruption x severity in turn (streamed).
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from subbench import __version__
from subbench.datasets import Dataset, image_hashes, load_dataset
from subbench.errors import DataError, SubbenchError
from subbench.manifest import read_manifest
from subbench.profile import Profile
from subbench.results import from_plain
from subbench.server_env import resolve_python

from subbench.corrupt.record import an2dl_record, concat as concat_records
from subbench.local_bench import scorer
from subbench.local_bench.breakdown import breakdown, corruption_errors, suite_ranking
from subbench.local_bench.draws import choose_draws, draw_spread
from subbench.local_bench.results import (CleanResult, CwdCheck, Leakage, Metrics, Projection, Robustness, Score,
                                          ScoredOn, Status, Timing)
from subbench.local_bench.netns import require_network_isolation
from subbench.local_bench.runner import CWD_MODES, RunResult, run_sets
from subbench.local_bench.safezip import safe_extract

SIMULATE_PRESETS = ("an2dl", "noise", "suite")
CROSS_CWD_IMAGES = 4
SUITE_SIZE = 1000


@dataclass
class ScoreOptions:
    """How to score: the run's interpreter, working directory and limits, the images, the simulation."""
    env: str = "local"
    cwd: str | None = None                 # None: the profile's
    time_limit_s: float | None = None      # None: the profile's
    memory_limit_mb: float | None = None
    no_network: bool = False               # the submission's process without network access (local_bench.netns)
    chunk: int | None = None
    hidden_size: int | None = None         # None: the profile's expected hidden-set size
    server_speed: float = 1.0
    simulate_hidden: str | None = None     # an2dl | noise | suite
    clean_too: bool = False
    split: str | None = None               # a split.json; default: the split in the zip's manifest
    use_all: bool = False                  # score every image even when a split exists
    seed: int = 0
    cross_cwd: bool = True
    suite_size: int = SUITE_SIZE
    mce_baseline: str | None = None        # a suite score folder / scores.json: mCE against that model
    explain: int = 0                       # misclassified images explained (Grad-CAM) for each of the top ops
    draws: int | str | None = "auto"       # corruption draws of each image (auto: as many as fit DRAWS_BUDGET_S)
    progress: bool = False
    keep_run_dir: bool = False


# ------------------------------------------------------------------------------------------------ scored images
def select_images(data, profile: Profile, manifest: dict | None, options: ScoreOptions,
                  echo: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, ScoredOn, list[str]]:
    """(images, labels, what was scored, warnings): the held-out part of the split when there is one.

    The split is `--split split.json` (the format of `subbench data split`) or the one `build` recorded in the
    zip's manifest. Its indices only mean something for the data it was made on, so that identity is checked
    first (the split's data_fingerprint, else its training-image hashes); `--all` scores every image and skips
    that check. The leakage check (scored images whose hash is a training image's) runs whenever training
    hashes exist.
    """
    from subbench.data.split import check_split_matches, read_split

    split = read_split(options.split) if options.split else (manifest or {}).get("split")
    source = "--split" if options.split else "the zip's manifest"
    if data is None:
        recorded = split.get("data") if split else None
        if recorded and Path(recorded).exists():
            data = recorded
            echo(f"data: {data} (recorded in {source})")
        else:
            raise DataError("no --data given" + (f" and the data recorded in {source} ({recorded}) is not here"
                                                 if recorded else ""),
                            "pass --data PATH (an npz with images/labels or a <class>/<image> folder)")
    ds = data if isinstance(data, Dataset) else load_dataset(data, profile, progress=options.progress)
    warnings: list[str] = []
    info = ScoredOn(data=str(data if not isinstance(data, Dataset) else data.source), n_data=len(ds), part="all")
    hashes = image_hashes(ds.images)
    train_hashes = set(split.get("train_hashes") or []) if split else set()
    holdout = np.asarray((split or {}).get("holdout") or [], dtype=np.int64)
    if split and not options.use_all and len(holdout):
        fix = "pass the data the zip was built with (or the split was made on), or --all to score every image"
        if split.get("data_fingerprint") and "n" in split:
            try:
                check_split_matches(split, ds)
            except SubbenchError as exc:
                raise DataError(exc.cause, fix) from None
        else:  # a manifest without fingerprint: its training images must all be recorded hashes
            train = np.asarray(split.get("train") or [], dtype=np.int64)
            missing = sum(i >= len(ds) or hashes[i] not in train_hashes for i in train) if train_hashes else 0
            if missing or (len(holdout) and holdout.max() >= len(ds)):
                raise DataError(f"{data} is not the data of the split in {source} "
                                f"({missing} of {len(train)} training images differ)", fix)
        idx = holdout
        info.part, info.split_source = "holdout", source
    else:
        idx = np.arange(len(ds))
        if not split:
            warnings.append("no training split recorded (manifest or --split): scored on every image, "
                            "leakage not checked")
    images, labels = ds.images[idx], ds.labels[idx]
    info.n = len(idx)
    if train_hashes:
        leaked = sum(hashes[i] in train_hashes for i in idx)
        info.leakage = Leakage(True, int(leaked))
        if leaked:
            warnings.append(f"LEAKAGE: {leaked} of {len(idx)} scored images are in the zip's training set; the "
                            "score overstates what the hidden set will give"
                            + (" (--all includes the training part)" if info.part == "all" else ""))
    return images, labels, info, warnings


def _simulate(images: np.ndarray, preset: str, seed: int, progress: bool, cache: bool = True) -> np.ndarray:
    from subbench.corrupt import apply_preset

    return apply_preset(images, preset=preset, seed=seed, cache=cache, progress=progress)


# ------------------------------------------------------------------------------------------------ the runs
def _environment(options: ScoreOptions, profile: Profile, run: RunResult, cwd_mode: str) -> dict:
    env = {"env": options.env, "python": run.python, "cwd_mode": cwd_mode, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "subbench": __version__,
           "server_versions_expected": {"tensorflow": profile.server_tensorflow, "keras": profile.server_keras}}
    env.update({f"loaded_{k}": v for k, v in run.versions.items() if k != "executable"})
    return env


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _metrics(labels, predictions, profile: Profile) -> Metrics:
    return from_plain(Metrics, scorer.classification_scores(labels, predictions, profile.class_names))


def _timing(run: RunResult, n: int, time_limit: float | None, hidden_size: int | None,
            server_speed: float) -> Timing:
    per_image = run.per_image_s
    timing = Timing(stages=dict(run.stages), elapsed_s=run.elapsed_s, time_limit_s=time_limit,
                    margin_s=time_limit - run.elapsed_s if time_limit else None, stage_reached=run.stage_reached,
                    per_image_ms=per_image * 1000.0 if per_image is not None else None)
    if run.ok and hidden_size:
        timing.projection = from_plain(Projection, scorer.project_time(run.stages, n, hidden_size, time_limit,
                                                                       server_speed))
    return timing


def _check_options(options: ScoreOptions, cwd_mode: str) -> None:
    if cwd_mode not in CWD_MODES:
        raise SubbenchError(f"--cwd {cwd_mode!r} is not one of {CWD_MODES}", "use --cwd submission or --cwd program")
    if options.simulate_hidden and options.simulate_hidden not in SIMULATE_PRESETS:
        raise SubbenchError(f"--simulate-hidden {options.simulate_hidden!r} is not a preset",
                            f"use one of {', '.join(SIMULATE_PRESETS)}")
    if options.no_network:
        require_network_isolation()   # before the images are read and corrupted, not after
    draws = options.draws
    if draws not in (None, "auto") and (not isinstance(draws, (int, np.integer)) or isinstance(draws, bool)
                                        or draws < 1):
        raise SubbenchError(f"--draws {draws!r} is not a number of draws", "use --draws auto or a whole number >= 1")
    if draws not in (None, "auto", 1) and options.simulate_hidden not in ("an2dl", "noise"):
        raise SubbenchError("--draws needs --simulate-hidden an2dl or noise",
                            "add --simulate-hidden, or drop --draws")
    if options.explain and options.simulate_hidden != "an2dl":
        raise SubbenchError("--explain needs --simulate-hidden an2dl (it explains the costliest ops' mistakes)",
                            "add --simulate-hidden, or use `subbench explain` for any images")
    if options.mce_baseline:
        if options.simulate_hidden != "suite":
            raise SubbenchError("--mce-baseline needs --simulate-hidden=suite",
                                "add --simulate-hidden=suite, or drop --mce-baseline")
        _baseline_suite(options.mce_baseline)


def evaluate(zip_path, data, profile: Profile, options: ScoreOptions | None = None,
             echo: Callable[[str], None] = print) -> Score:
    """Score one zip. Bad input raises a SubbenchError; a failing submission is a non-ok status, not an error.

    `data` is a path (npz or <class>/<image> folder), a `Dataset`, or None for the data recorded in the zip.
    """
    options = options or ScoreOptions()
    zip_path = Path(zip_path)
    cwd_mode = options.cwd or profile.cwd
    _check_options(options, cwd_mode)
    python = resolve_python(options.env, profile)
    time_limit = options.time_limit_s if options.time_limit_s is not None else profile.time_limit_s
    hidden_size = options.hidden_size or profile.hidden_size
    manifest = read_manifest(zip_path) if zip_path.is_file() else None
    with tempfile.TemporaryDirectory(prefix="subbench-score-") as tmp:
        folder = safe_extract(zip_path, Path(tmp) / "submission", profile)
        clean, labels, scored_on, warnings = select_images(data, profile, manifest, options, echo)
        preset = options.simulate_hidden
        scored_on.simulate_hidden, scored_on.seed = preset, options.seed
        if preset in ("an2dl", "noise"):
            echo(f"simulating the hidden set: preset {preset}, seed {options.seed}, {len(clean)} images")
            images = _simulate(clean, preset, options.seed, options.progress)
        else:
            images = clean
        common = dict(n_classes=profile.num_classes, python=python, memory_limit_mb=options.memory_limit_mb,
                      no_network=options.no_network,
                      chunk=options.chunk, module=Path(profile.entry).stem, class_name=profile.class_name,
                      profile=profile, echo=echo)
        echo(f"running {zip_path.name} on {len(images)} images ({options.env} env, cwd {cwd_mode}, "
             f"limit {time_limit:g} s)")
        run = run_sets(folder, [("scored", images)], time_limit_s=time_limit, cwd_mode=cwd_mode,
                       progress=options.progress, keep_run_dir=options.keep_run_dir, **common)
        if options.keep_run_dir:
            echo(f"run folder kept: {run.run_dir}")
        score = _first_score(run, images, labels, profile, options, time_limit, hidden_size, scored_on)
        proj = score.timing.projection
        if proj is not None and proj.fits is False:
            warnings.append(f"projected time for {hidden_size} hidden images is {proj.projected_s:.0f} s, over "
                            f"the {time_limit:g} s limit")
        # A run killed for time or memory says nothing about the working directory: no cross-check then.
        if options.cross_cwd and run.status in ("ok", "Import_Error", "Init_Error", "Predict_Error"):
            warnings += _cross_cwd(score, folder, images, run, cwd_mode, time_limit, common)
        if run.ok and preset in ("an2dl", "noise"):
            score.clean_images = clean
            warnings += _simulated_draws(score, folder, clean, labels, run, options, cwd_mode, common, echo)
        if run.ok and options.explain and score.breakdown is not None:
            from subbench.local_bench.explain_ops import explain_top_ops

            score.explanations, more = explain_top_ops(score, zip_path, options.explain, python, profile, echo)
            warnings += more
        if run.ok and options.clean_too and preset in ("an2dl", "noise"):
            score.clean = _clean_run(score, folder, clean, labels, time_limit, cwd_mode, options, common, echo)
        if run.ok and preset == "suite":
            score.robustness = _suite(folder, clean, labels, run, options, cwd_mode, common, echo)
            _rank_suite(score.robustness, options.mce_baseline)
        score.environment = _environment(options, profile, run, cwd_mode)
        score.zip = {"path": str(zip_path), "sha256": _sha256(zip_path) if zip_path.is_file() else None,
                     "size_mb": round(zip_path.stat().st_size / 2**20, 3) if zip_path.is_file() else None}
        score.warnings = [str(w) for w in warnings]
        return score


def _first_score(run, images, labels, profile: Profile, options: ScoreOptions, time_limit, hidden_size,
                 scored_on) -> Score:
    """The Score of the scored run, before the follow-up runs (draws, clean, suite, cross-cwd) add theirs."""
    metrics = _metrics(labels, run.predictions, profile) if run.ok else None
    return Score(
        status=Status(run.status), leaderboard_key=profile.leaderboard_key, metric=profile.metric,
        value=getattr(metrics, profile.metric) if metrics else None, message=run.message or "", n=len(images),
        timing=_timing(run, len(images), time_limit, hidden_size, options.server_speed), scored_on=scored_on,
        class_names=list(profile.class_names), profile=profile.name, metrics=metrics,
        peak_memory_mb=run.peak_memory_mb, memory_limit_mb=options.memory_limit_mb,
        stderr_tail=run.stderr_tail or "", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        subbench_version=__version__, images=images, labels=labels, predictions=run.predictions)


def _clean_run(score: Score, folder, clean, labels, time_limit, cwd_mode: str, options: ScoreOptions, common,
               echo) -> CleanResult:
    """The clean images in a run of their own, for the clean-vs-corrupted gap."""
    echo(f"running the clean images for comparison ({len(clean)} images)")
    clean_run = run_sets(folder, [("clean", clean)], time_limit_s=time_limit, cwd_mode=cwd_mode,
                         progress=options.progress, **common)
    result = CleanResult(Status(clean_run.status), clean_run.message or "")
    if clean_run.ok:
        result.metrics = _metrics(labels, clean_run.predictions, common["profile"])
        result.gap = result.metrics.accuracy - score.metrics.accuracy
        result.timing = Timing(stages=dict(clean_run.stages), elapsed_s=clean_run.elapsed_s)
    return result


def _cross_cwd(score: Score, folder, images, run: RunResult, cwd_mode: str, time_limit, common) -> list[str]:
    """Run a few images from the other working directory; warn when only one of the two works."""
    other = "program" if cwd_mode == "submission" else "submission"
    check = run_sets(folder, [("cross", images[:CROSS_CWD_IMAGES])], time_limit_s=time_limit, cwd_mode=other,
                     progress=False, **common)
    score.cwd_check = CwdCheck(other, Status(check.status), check.message or "")
    if run.ok and not check.ok:
        return [f"works with --cwd {cwd_mode} but fails with --cwd {other} ({check.status}: {check.message}); "
                "load files relative to __file__ so both work"]
    if check.ok and not run.ok and run.status in ("Import_Error", "Init_Error"):
        return [f"fails with --cwd {cwd_mode} but works with --cwd {other}: it reads files relative to the "
                "working directory; load them relative to __file__"]
    return []


def _suite(folder, clean, labels, run: RunResult, options: ScoreOptions, cwd_mode: str, common,
           echo) -> Robustness:
    """Every corruption x severity of the suite on up to `suite_size` images, in one streamed process."""
    from subbench.corrupt import iter_suite

    rng = np.random.default_rng(options.seed)
    take = np.sort(rng.permutation(len(clean))[:options.suite_size])
    sub_images, sub_labels = clean[take], labels[take]
    keys: list[tuple[str, int]] = []

    def sets():
        for name, severity, arr in iter_suite(sub_images, seed=options.seed):
            keys.append((name, int(severity)))
            yield f"{name}@{severity}", arr

    # An analysis run, not a server emulation: no time limit (the scored run already passed the server's), the
    # memory limit still applies. Ctrl-C kills the whole process tree.
    echo(f"robustness suite on {len(take)} images (one process, corruptions streamed)")
    suite_run = run_sets(folder, sets(), stream=True, time_limit_s=None, cwd_mode=cwd_mode,
                         progress=options.progress, **common)
    if not suite_run.ok:
        return Robustness(Status(suite_run.status), suite_run.message or "")
    clean_acc = float((run.predictions[take] == sub_labels).mean())
    acc = {k: float((suite_run.set_predictions[f"{k[0]}@{k[1]}"] == sub_labels).mean()) for k in keys}
    summary = scorer.robustness_summary(clean_acc, acc)
    summary.pop("formula")
    return from_plain(Robustness, {"status": "ok", **summary, "n": int(len(take)),
                                   "seconds": suite_run.elapsed_s})


def _simulated_draws(score: Score, folder, clean, labels, run: RunResult, options: ScoreOptions, cwd_mode: str,
                     common, echo) -> list[str]:
    """Draws 2..K of the corruption (one streamed analysis process, no time limit: the first draw was the
    server emulation), then the score's figure, interval and breakdown over all K."""
    preset, seed0 = score.scored_on.simulate_hidden, options.seed
    k, why = choose_draws(options.draws, run.set_seconds.get("scored", run.stages.get("predict", 0.0)))
    preds, warnings = [run.predictions], []
    if k > 1:
        echo(f"{why}: predicting draws {seed0 + 1}..{seed0 + k - 1} (one process)")
        sets = ((f"draw{s}", _simulate(clean, preset, s, False, cache=False)) for s in range(seed0 + 1, seed0 + k))
        more = run_sets(folder, sets, stream=True, time_limit_s=None, cwd_mode=cwd_mode, progress=options.progress,
                        **common)
        if more.ok:
            preds += [more.set_predictions[f"draw{s}"] for s in range(seed0 + 1, seed0 + k)]
        else:
            warnings.append(f"the extra draws' run failed ({more.status}: {more.message}); figures from one draw")
    seeds = list(range(seed0, seed0 + len(preds)))
    score.draw_predictions = np.stack(preds)
    correct = score.draw_predictions == labels[None, :]
    score.draws = draw_spread(correct, seeds, score.timing.projection.hidden_size if score.timing.projection
                              else None, why)
    pooled = _metrics(np.tile(labels, len(preds)), score.draw_predictions.ravel(), common["profile"])
    pooled.accuracy_ci95 = score.draws.ci95
    pooled.bootstrap = {"resamples": scorer.N_BOOT, "seed": scorer.BOOT_SEED, "method": "percentile",
                        "over": f"images, each its mean over {len(preds)} draws"}
    score.metrics, score.value = pooled, getattr(pooled, score.metric)
    if preset == "an2dl":
        score.record = concat_records([an2dl_record(len(clean), s) for s in seeds])
        score.breakdown = breakdown(np.tile(labels, len(preds)), score.draw_predictions.ravel(), score.record,
                                    draws=len(preds))
    return warnings


def _rank_suite(rob: Robustness, baseline_path: str | None) -> None:
    """The suite's sorted view, and its mCE against a baseline model's suite result when one is named."""
    if rob.status != "ok":
        return
    rob.drop_points = dict(suite_ranking(rob))
    if baseline_path:
        rob.corruption_error, rob.mce = corruption_errors(rob, _baseline_suite(baseline_path))
        rob.mce_baseline = str(baseline_path)


def _baseline_suite(path) -> Robustness:
    base = Score.load(path).robustness
    if base is None or base.status != "ok" or not base.accuracy:
        raise DataError(f"{path} holds no robustness suite result",
                        "give a folder written by `subbench score --simulate-hidden=suite --out DIR`")
    return base


# ------------------------------------------------------------------------------------------------ outputs
def write_outputs(score: Score, out_dir, force: bool = False) -> Path:
    """scores.json, report.html, predictions.npy (when ok) into out_dir, written as a whole or not at all."""
    return score.save(out_dir, force=force)
