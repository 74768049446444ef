"""The Python API: what `import subbench` offers, and what every `subbench` command calls.

    import subbench
    x, y = subbench.load_data("training_set.npz")            # or a <class>/<image> folder
    sub = subbench.package(model, "sub.zip", tta="flips")     # an in-memory keras.Model (or paths)
    subbench.check(sub)                                      # CheckReport: shows itself in a notebook
    s = subbench.score(sub, data=(x_val, y_val), simulate_hidden="an2dl", clean_too=True)
    subbench.compare({"plain": s_plain, "hidden-aware": s})  # Leaderboard

Named errors (`subbench.errors.SubbenchError` and its subclasses) are raised as exceptions here; the CLI turns
them into `error:` / `hint:` lines. A failing submission is not an error: it is a `Score` whose status says how
it failed. This module sits at the top with the CLI: it may import builder and local_bench, nothing imports it
but the CLI and `subbench/__init__`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from subbench.datasets import Dataset, load_dataset
from subbench.datasets import _check_images as check_images
from subbench.errors import DataError, SubbenchError
from subbench.profile import Profile, load_profile


class ApiUsageError(SubbenchError):
    """An API function was called with arguments it does not take, or that contradict each other."""


Echo = Callable[[str], None]


def _silent(_line: str) -> None:
    pass


def _profile(profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def _dataset(data, profile: Profile) -> Dataset | str | None:
    """A path stays a path (it is recorded in results); (images, labels) arrays become a Dataset."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = (np.asarray(a) for a in data)
        check_images(images, "the images given", profile)    # the loaders' shape and profile check
        if images.dtype != np.uint8:
            raise DataError(f"the images given are {images.dtype}, profile {profile.name} expects uint8 0..255",
                            "pass the raw uint8 images, before any rescaling")
        labels = labels.reshape(-1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels", "give one label per image")
        return Dataset(images, labels, source="arrays")
    raise DataError(f"data of type {type(data).__name__} is not a path, a Dataset or (images, labels)",
                    "pass a path to an npz or <class>/<image> folder, or a tuple (images, labels)")


# ------------------------------------------------------------------------------------------------ data
def load_data(path, profile=None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), labels int64 (N,)) from an AN2DL-style npz or a <class>/<image> folder."""
    ds = load_dataset(path, _profile(profile))
    return ds.images, ds.labels


def corrupt(images, preset_or_name: str = "an2dl", severity: int | None = None, seed: int = 0,
            **params) -> np.ndarray:
    """A corrupted copy of uint8 images: a preset ("an2dl": the AN2DL hidden set's keras_cv AugMix then
    RandAugment; "noise") or one suite corruption (e.g. "motion_blur") at `severity` 1..5."""
    from subbench.corrupt import corrupt_images

    return corrupt_images(np.asarray(images), preset_or_name, severity=severity, seed=seed, **params)


def augment_fn(preset: str = "an2dl", **params):
    """The hidden-set corruption as a function for tf.data: `ds.map(lambda x, y: (fn(x), y))` on uint8 batches."""
    from subbench.corrupt import augment_fn as make

    return make(preset, **params)


def hidden_set_augmentation(preset: str = "an2dl", **params):
    """A Keras layer taking the raw 0..255 images: corrupts each image like the hidden set when training, the
    identity at inference. `package` removes it from the exported model."""
    from subbench.corrupt import hidden_set_augmentation as make

    return make(preset, **params)


def preprocess_layer(step: str, input_shape=(96, 96, 3), **params):
    """A cell preprocessing step of the team reports as a frozen Keras layer (a small keras.Model of built-in
    layers, raw 0..255 in and out, float32; the server's Keras 3.4.1 loads it): "clahe" (tiles, clip_limit,
    knots), "illumination" (window, mode) or "mask" (threshold, channel_weights, softness, open_size, close_size,
    fill). Put it first in your model, before its own rescaling."""
    from subbench.builder.cell_preprocessing import preprocess_layer as make

    return make(step, input_shape, **params)


def preprocessing(steps, input_shape=(96, 96, 3)):
    """Several steps chained in the order given (["illumination", "clahe"], "clahe,mask", or items
    {"name": "clahe", "clip_limit": 3.0}) as one frozen Keras layer; see `preprocess_layer`."""
    from subbench.builder.cell_preprocessing import preprocessing as make

    return make(steps, input_shape)


# ------------------------------------------------------------------------------------------------ build
def package(models, out, tta: str | list[str] = "none", ensemble_weights: list[float] | None = None,
            profile=None, *, batch_size: int = 64, force: bool = False, echo: Echo | None = print):
    """Write the upload zip from trained models: keras.Model objects in memory, or paths to .keras/.h5 files
    (one, or a list for an ensemble averaged with `ensemble_weights`). Returns a `BuildResult` (path-like)."""
    from subbench.builder.package import package_models
    from subbench.builder.result import BuildResult
    from subbench.builder.export import load_user_model

    prof = _profile(profile)
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    if not items:
        raise ApiUsageError("no models to package", "pass a keras.Model, a path to a .keras file, or a list")
    loaded, sources = [], []
    for i, m in enumerate(items):
        if isinstance(m, (str, os.PathLike)):
            loaded.append(load_user_model(Path(m)))
            sources.append(Path(m).name)
        else:
            loaded.append(m)
            sources.append(getattr(m, "name", None) or f"model{i}")
    pkg = package_models(loaded, Path(out), prof, tta=tta, ensemble_weights=ensemble_weights, sources=sources,
                         batch_size=batch_size, force=force, echo=echo or _silent)
    return BuildResult.from_package(pkg)


def train(recipe: str | os.PathLike | None = "cpu", data=None, out=None, profile=None, *, build_dir=None,
          split=None, resume: bool = False, force: bool = False, cpu_devices: int | None = None,
          echo: Echo | None = print, **overrides):
    """Train a recipe (a shipped name such as "cpu", a TOML path, or None for the defaults) on `data` (a path or
    (images, labels)) and write the zip `out`. Keyword overrides set recipe fields (epochs=3, backbone=...); an
    input_size or width given turns the recipe's autosize off unless autosize_epochs is given too.
    Returns a `BuildResult` with the zip, the training history and the validation accuracy."""
    from subbench.builder.recipe import Recipe, load_recipe, with_overrides
    from subbench.builder.result import BuildResult
    from subbench.builder.workflow import build_trained, default_build_dir

    if data is None or out is None:
        raise ApiUsageError("train needs data and out", "train(recipe='cpu', data='train.npz', out='sub.zip')")
    prof = _profile(profile)
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ApiUsageError(f"unknown recipe fields {unknown}", f"recipe fields are: {', '.join(sorted(known))}")
    if "autosize_epochs" not in overrides and any(overrides.get(k) is not None for k in ("input_size", "width")):
        overrides["autosize_epochs"] = 0   # a size the user gives is the size trained
    chosen = with_overrides(load_recipe(recipe) if recipe else Recipe(), **overrides)
    out = Path(out)
    build_dir = Path(build_dir) if build_dir else default_build_dir(out)
    pkg = build_trained(chosen, _dataset(data, prof), out, prof, build_dir=build_dir,
                        split_path=Path(split) if split else None, resume=resume, force=force,
                        cpu_devices=cpu_devices, echo=echo or _silent)
    return BuildResult.from_package(pkg, build_dir)


# ------------------------------------------------------------------------------------------------ check, score
def check(zip_path, env: str = "local", profile=None, *, time_limit: float | None = None, live: bool = True):
    """Every reason the zip would fail on the server, found before upload (`CheckReport`; `.ok`, `.failures`).
    env="server" runs it in the profile's TensorFlow/Keras (created once by `subbench env create`)."""
    from subbench.local_bench.check import check_zip

    return check_zip(os.fspath(zip_path), _profile(profile), env=env, time_limit_s=time_limit, live=live)


def _score_options(simulate_hidden, clean_too: bool, options: dict):
    from subbench.local_bench.evaluate import ScoreOptions

    fields = {f.name for f in dataclasses.fields(ScoreOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ApiUsageError(f"score takes no option {unknown}", f"options are: {', '.join(sorted(fields))}")
    return ScoreOptions(simulate_hidden=simulate_hidden, clean_too=clean_too, **options)


def score(zip_path, data=None, simulate_hidden: str | None = None, clean_too: bool = False, profile=None, *,
          echo: Echo | None = None, **options):
    """Run the zip the way Codabench does (fresh process, the server's layout, one time limit) and score it.

    data: a path, (images, labels), or None for the data and held-out split recorded in the zip by `train`.
    simulate_hidden: None, "an2dl" (the hidden set's corruption), "noise" or "suite" (robustness table).
    options: env, cwd, time_limit_s, memory_limit_mb, chunk, hidden_size, server_speed, split, use_all, seed,
    cross_cwd, suite_size, progress, keep_run_dir, draws ("auto" or K corruption draws of each image),
    explain (Grad-CAM of N misclassified images per costliest op), mce_baseline (a suite score folder) (see
    `subbench score --help`). Returns a `Score`; `.breakdown` says which ops cost how much, `.draws` the draws."""
    from subbench.local_bench.evaluate import evaluate

    prof = _profile(profile)
    opts = _score_options(simulate_hidden, clean_too, options)
    return evaluate(os.fspath(zip_path), _dataset(data, prof), prof, opts, echo=echo or _silent)


def explain(model_or_zip, images=None, labels=None, *, data=None, clean=None, simulate_hidden: str | None = None,
            seed: int = 0, split=None, use_all: bool = False, n: int | None = None, misclassified_only: bool = False,
            class_index=None, method: str = "auto", env: str = "local", time_limit: float | None = None,
            profile=None, echo: Echo | None = None):
    """Heat maps (Grad-CAM on the last convolutional feature map, gradient saliency where there is none) of what
    a model looked at. `model_or_zip`: an in-memory keras.Model or a .keras file (explained here), or a zip (run
    in a fresh process as scoring runs it; `env`, `time_limit`). `images` uint8 (N, H, W, 3) with `labels`; or
    None with a zip: the held-out split recorded in it, of `data` (a path, (images, labels), or the recorded
    data). simulate_hidden "an2dl"|"noise" corrupts the images first (the clean ones are drawn beside them).
    n: at most this many images; misclassified_only: only the wrong ones. Returns an `Explanation`."""
    from subbench.local_bench import explain as ex

    prof = _profile(profile)
    say = echo or _silent
    is_path = isinstance(model_or_zip, (str, os.PathLike))
    is_zip = is_path and Path(os.fspath(model_or_zip)).suffix.lower() == ".zip"
    warnings: list[str] = []
    if images is None:
        if not is_zip:
            raise ApiUsageError("no images to explain", "pass images (and labels), or a zip with data=...")
        images, labels, warnings = ex.held_out_images(model_or_zip, _dataset(data, prof), prof, split=split,
                                                      use_all=use_all, seed=seed, echo=say)
    elif isinstance(images, (str, os.PathLike)):
        images, labels = load_data(images, prof)
    shown = ex.simulate(np.asarray(images), simulate_hidden, seed)
    if simulate_hidden:
        say(f"simulating the hidden set: preset {simulate_hidden}, seed {seed}, {len(shown)} images")
        clean = np.asarray(images) if clean is None else clean
    common = dict(clean=clean, n=n, misclassified_only=misclassified_only, class_index=class_index, method=method)
    if is_zip:
        result = ex.explain_zip(os.fspath(model_or_zip), shown, labels, env=env, time_limit_s=time_limit,
                                profile=prof, echo=say, **common)
    else:
        model = model_or_zip
        if is_path:
            from subbench.builder.export import load_user_model

            model = load_user_model(Path(os.fspath(model_or_zip)))
        result = ex.explain_model(model, shown, labels, class_names=prof.class_names, **common)
    result.simulate_hidden, result.seed = simulate_hidden, (seed if simulate_hidden else None)
    result.warnings = warnings + result.warnings
    return result


def compare(results, data=None, profile=None, *, echo: Echo | None = None, **options):
    """A `Leaderboard` of local results: `Score` objects, score folders / scores.json files, or zips (scored
    now on `data` with `options`). A mapping {name: result} names the rows; otherwise names come from the
    results. Results of `score_bundle` (objects or folders) give a `BundleLeaderboard` of the bundle's columns."""
    from subbench.local_bench.bundle_result import BundleScore, is_bundle_result
    from subbench.local_bench.results import Leaderboard, Score

    named = results.items() if isinstance(results, Mapping) else [(None, r) for r in _as_list(results)]
    named = list(named)
    bundle = [isinstance(r, BundleScore) or (isinstance(r, (str, os.PathLike)) and is_bundle_result(r))
              for _, r in named]
    if any(bundle):
        if not all(bundle):
            raise ApiUsageError("bundle results (score --bundle) and profile scores cannot share a leaderboard",
                                "compare the two kinds separately")
        return compare_bundles(dict(named) if isinstance(results, Mapping) else [r for _, r in named])
    prof = None
    scored = []
    for name, r in named:
        if isinstance(r, Score):
            s = r
        elif Path(os.fspath(r)).suffix.lower() == ".zip":
            prof = prof or _profile(profile)
            s = score(r, data=data, profile=prof, echo=echo, **options)
        else:
            s = Score.load(r)
        scored.append((name or _default_name(r, s), s))
    if not isinstance(results, Mapping):
        scored = [(n, s) for n, (_, s) in zip(_distinct_names([r for _, r in named], [n for n, _ in scored]),
                                              scored)]
    return Leaderboard.from_scores(scored)


def _distinct_names(refs, names) -> list[str]:
    """`names`, where two are the same and come from paths (e.g. base/result and folded/result), with as many
    of their parent folders as tell them apart."""
    names = list(names)
    for depth in (2, 3):
        seen = {}
        for n in names:
            seen[n] = seen.get(n, 0) + 1
        if all(v == 1 for v in seen.values()):
            break
        for i, (ref, n) in enumerate(zip(refs, names)):
            if seen[n] > 1 and isinstance(ref, (str, os.PathLike)):
                parts = Path(os.path.abspath(os.fspath(ref))).parts
                names[i] = "/".join(parts[-depth:])
    return names


def _as_list(results) -> list:
    if isinstance(results, (str, os.PathLike)) or not isinstance(results, Iterable):
        return [results]
    return list(results)


def _default_name(ref, s) -> str:
    if isinstance(ref, (str, os.PathLike)):
        p = Path(os.fspath(ref))
        return p.name if p.suffix.lower() == ".zip" or p.is_dir() else str(p)
    return s.name


# ------------------------------------------------------------------------------------------------ bundles
def _bundle_python(python, env: str, profile) -> str:
    """The interpreter a bundle's programs run in: `python` when given, else env "local" (this one) or "server"
    (the profile's environment)."""
    if python:
        return os.fspath(python)
    from subbench.server_env import resolve_python

    return resolve_python(env, _profile(profile))


def score_bundle(zip_path, bundle, phase: str | int | None = None, task: int | None = None, *, python=None,
                 env: str = "local", profile=None, time_limit: float | None = None, out=None, force: bool = False,
                 strict: bool = False, echo: Echo | None = None, memory_limit_mb: float | None = None,
                 no_network: bool = False):
    """Run a submission (zip or folder) through a Codabench competition bundle (zip or folder) the way the
    compute worker does: the prediction step (the bundle's ingestion program, the submission's `metadata`
    command, or a results-only copy), then the scoring step, each under the phase's time limit.

    phase: name or index (default: the first); task: index within the phase (default: its first);
    python: the interpreter the programs run in (default: env "local" = this one, "server" = the profile's);
    out: a folder for scores.json, report.html, logs and outputs; strict: competition.yaml keys Codabench ignores
    are errors (default: warnings, as the server runs such a bundle). Returns a `BundleScore` (`.status` Finished/Failed, `.failure`, `.columns`, `.value`)."""
    from subbench.local_bench.bundle_worker import score_with_bundle

    return score_with_bundle(zip_path, bundle, phase=phase, task=task, python=_bundle_python(python, env, profile),
                             time_limit=time_limit, out=out, force=force, strict=strict, echo=echo or _silent,
                             memory_limit_mb=memory_limit_mb, no_network=no_network)


def bundle_inspect(bundle, *, python=None, env: str = "local", profile=None, strict: bool = False):
    """What a bundle holds and what a local run of it lacks (`BundleInfo`: phases, tasks, programs, data,
    leaderboard columns, time limits, docker image; `.runnable`)."""
    from subbench.local_bench.bundle_inspect import inspect_bundle

    return inspect_bundle(os.fspath(bundle), _bundle_python(python, env, profile), strict=strict)


def bundle_make(data, out, profile=None, *, simulate_hidden: str | None = None, seed: int = 0, split=None,
                use_all: bool = False, docker_image: str | None = None, title: str | None = None,
                force: bool = False, echo: Echo | None = print) -> Path:
    """Write a Codabench bundle (version 2) scoring the profile's submissions on `data` like `score` does (same
    images, same ingestion program, same statuses); returns the zip's path."""
    from subbench.local_bench.bundle_make import make_profile_bundle

    prof = _profile(profile)
    return make_profile_bundle(prof, _dataset(data, prof), out, simulate_hidden=simulate_hidden, seed=seed,
                               split=os.fspath(split) if split else None, use_all=use_all, docker_image=docker_image,
                               title=title, force=force, echo=echo or _silent)


def compare_bundles(results):
    """A `BundleLeaderboard` of bundle results (`BundleScore` objects or folders written by
    `score_bundle(..., out=DIR)`), ranked by the bundle's first leaderboard column."""
    from subbench.local_bench.bundle_result import BundleLeaderboard, BundleScore

    named = results.items() if isinstance(results, Mapping) else [(None, r) for r in _as_list(results)]
    loaded = []
    for name, r in named:
        s = r if isinstance(r, BundleScore) else BundleScore.load(r)
        loaded.append((name or (_default_name(r, s) if not isinstance(r, BundleScore) else s.name), s))
    return BundleLeaderboard.from_results(loaded)
