"""`subbench build --model NAME --data DATA`: data -> split -> train -> choose TTA -> package.

The build folder (default: the zip's path with `.build` instead of `.zip`) holds checkpoints, state.json,
log.jsonl and log.csv (a row an epoch), curves.png and summary.json; `--resume` continues from it. The held-out
split and the training images' hashes go into the manifest, so `subbench score` scores on held-out images and
flags leakage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from subbench.atomic import check_writable, write_text_atomic
from subbench.builder.package import TTA_PRESETS, PackageResult, package_models
from subbench.builder.recipe import Recipe
from subbench.builder.train import plot_curves, train
from subbench.builder.tta_select import AUTO, choose_tta
from subbench.datasets import Dataset, image_hashes, load_dataset
from subbench.errors import SubbenchError
from subbench.profile import Profile


class BuildDirError(SubbenchError):
    """The build folder holds another build."""


def default_build_dir(out_zip: Path) -> Path:
    return out_zip.with_name(out_zip.stem + ".build")


def data_split(dataset: Dataset, recipe: Recipe, split_path: Path | None = None) -> dict:
    """The build's train/holdout split: read from `split_path`, else made from the recipe's holdout and seed."""
    from subbench.data.split import dataset_fingerprint, make_split, read_split

    fingerprint = dataset_fingerprint(dataset)
    if split_path is not None:
        split = read_split(split_path)
        if split["data_fingerprint"] != fingerprint:
            raise BuildDirError(f"split {split_path} was made for other data (fingerprint differs)",
                                "make the split from this data: `subbench data split DATA -o split.json`")
        train_idx, hold_idx = np.asarray(split["train"]), np.asarray(split["holdout"])
    elif recipe.holdout > 0:
        train_idx, hold_idx = make_split(dataset.labels, recipe.holdout, recipe.seed)
    else:
        train_idx, hold_idx = np.arange(len(dataset)), np.zeros(0, dtype=np.int64)
    return {"data_fingerprint": fingerprint, "n": len(dataset), "seed": recipe.seed,
            "holdout_fraction": recipe.holdout, "train": np.sort(train_idx).tolist(),
            "holdout": np.sort(hold_idx).tolist()}


def _limit(idx: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A stratified subset of `n` indices (for --limit smoke runs)."""
    if not n or n >= len(idx):
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=n, stratify=labels[idx] if n >= len(set(labels[idx])) else None,
                               random_state=seed)
    return np.sort(keep)


# The validation copy's corruption draws differ from `subbench score`'s (seed 0 by default): the best epoch and
# the TTA views are chosen on one corrupted copy of the held-out images and scored on another.
VAL_CORRUPT_SEED = 10_007


def validation_set(dataset: Dataset, idx: np.ndarray, recipe: Recipe, echo=print):
    """The validation images (the held-out ones, corrupted once with the recipe's val_corrupt preset) and labels."""
    if len(idx) == 0:
        return None, None
    images = dataset.images[idx]
    if recipe.val_corrupt:
        from subbench.corrupt import apply_preset

        echo(f"validation: {len(idx)} held-out images corrupted once with preset {recipe.val_corrupt!r}")
        images = apply_preset(images, recipe.val_corrupt, seed=VAL_CORRUPT_SEED + recipe.seed)
    return images, dataset.labels[idx]


def _kfold_epochs(dataset: Dataset, train_idx: np.ndarray, recipe: Recipe, profile: Profile, build_dir: Path,
                  resume: bool, echo) -> tuple[int, list[dict]]:
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(recipe.kfold, shuffle=True, random_state=recipe.seed)
    rows = []
    for k, (tr, va) in enumerate(folds.split(train_idx, dataset.labels[train_idx]), start=1):
        echo(f"fold {k}/{recipe.kfold}")
        val_x, val_y = validation_set(dataset, train_idx[va], recipe, echo)
        res = train(recipe, dataset.images[train_idx[tr]], dataset.labels[train_idx[tr]], val_x, val_y,
                    num_classes=profile.num_classes, build_dir=build_dir / f"fold{k}", resume=resume, echo=echo)
        rows.append({"fold": k, "best_epoch": res.best_epochs.get("phase1") or recipe.epochs,
                     "val_accuracy": res.val_accuracy})
    epochs = int(np.median([r["best_epoch"] for r in rows]))
    echo(f"k-fold: best epochs {[r['best_epoch'] for r in rows]} -> {epochs} epochs; "
         f"val accuracy {np.mean([r['val_accuracy'] for r in rows]):.4f} mean")
    return epochs, rows


def build_trained(recipe: Recipe, data_path: Path, out_zip: Path, profile: Profile, *,
                  build_dir: Path | None = None, split_path: Path | None = None, resume: bool = False,
                  force: bool = False, cpu_devices: int | None = None, echo=print) -> PackageResult:
    out_zip = Path(out_zip)
    check_writable(out_zip, force)
    build_dir = Path(build_dir) if build_dir else default_build_dir(out_zip)
    if build_dir.exists() and any(build_dir.iterdir()) and not resume:
        if not force:
            raise BuildDirError(f"build folder {build_dir} holds an earlier build",
                                "continue it with --resume, or pass --force to start over")
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    # A Dataset (arrays from a notebook) is used as it is; a path is loaded and recorded for `score`.
    dataset = data_path if isinstance(data_path, Dataset) else load_dataset(data_path, profile, progress=True)
    data_ref = None if isinstance(data_path, Dataset) else str(data_path)
    split = data_split(dataset, recipe, split_path)
    train_idx = _limit(np.asarray(split["train"]), dataset.labels, recipe.limit, recipe.seed)
    hold_idx = np.asarray(split["holdout"], dtype=np.int64)
    if recipe.limit:
        hold_idx = _limit(hold_idx, dataset.labels, max(16, recipe.limit // 4), recipe.seed)
    echo(f"data: {len(dataset)} images from {data_ref or 'arrays'}; training on {len(train_idx)}, holding out {len(hold_idx)}")
    kfold_rows, epochs = [], None
    if recipe.kfold and recipe.kfold > 1:
        epochs, kfold_rows = _kfold_epochs(dataset, train_idx, recipe, profile, build_dir, resume, echo)
    if recipe.final:
        if not kfold_rows:
            raise BuildDirError("--final needs --kfold K to know how many epochs to train",
                                "add --kfold 5 (or set kfold in the recipe)")
        train_idx, hold_idx = np.sort(np.concatenate([train_idx, hold_idx])), np.zeros(0, dtype=np.int64)
        echo(f"final fit on all {len(train_idx)} images for {epochs} epochs (no held-out images left)")
    val_x, val_y = validation_set(dataset, hold_idx, recipe, echo)
    result = train(recipe, dataset.images[train_idx], dataset.labels[train_idx], val_x, val_y,
                   num_classes=profile.num_classes, build_dir=build_dir / ("final" if recipe.final else "main"),
                   resume=resume, epochs=epochs, cpu_devices=cpu_devices, echo=echo)
    plot_curves(result.history, build_dir / "curves.png")
    summary = {"recipe": recipe.to_dict(), "val_accuracy": result.val_accuracy, "best_epochs": result.best_epochs,
               "kfold": kfold_rows, "epochs_trained": len(result.history),
               "compute_policy": result.compute_policy, "model_size": result.model_size}
    split = {**split, "train": train_idx.tolist(), "holdout": hold_idx.tolist()}   # as trained (--limit, --final)
    return package_build(result.built.model, recipe, dataset, split, (val_x, val_y), out_zip, profile,
                         data_ref=data_ref, summary=summary, build_dir=build_dir, force=force, echo=echo)


def package_build(model, recipe: Recipe, dataset: Dataset, split: dict, val: tuple, out_zip: Path, profile: Profile,
                  *, data_ref: str | None, summary: dict, build_dir: Path, force: bool = False,
                  echo=print) -> PackageResult:
    """A trained model into the build's zip: the TTA views (chosen on the validation set with --tta auto), the
    split (split["train"], split["holdout"]: the images trained on and held out) and the training's `summary` in
    the manifest; summary.json into `build_dir`."""
    val_x, val_y = val
    tta_preset, tta_rows = recipe.tta, []
    views = None
    if recipe.tta == AUTO:
        if val_x is None:
            raise BuildDirError("--tta auto needs held-out images to judge accuracy", "set --holdout above 0")
        choice = choose_tta(model, val_x, val_y, hidden_size=profile.hidden_size,
                            time_budget_s=recipe.time_budget_s or profile.time_limit_s, echo=echo)
        tta_preset, views, tta_rows = choice.preset, choice.views, choice.rows
    views = views or TTA_PRESETS[tta_preset]
    train_idx = np.asarray(split["train"], dtype=np.int64)
    split_info = {"format": 1, "kind": "subbench-split", **split, "data": data_ref,
                  "train_hashes": image_hashes(dataset.images[train_idx])}
    summary = {**summary, "tta": {"preset": tta_preset, "views": views, "candidates": tta_rows},
               "val_corrupted_with": recipe.val_corrupt}
    write_text_atomic(Path(build_dir) / "summary.json", json.dumps(summary, indent=1), force=True)
    return package_models([model], out_zip, profile, tta=views, sources=[recipe.backbone],
                          batch_size=recipe.batch_size, force=force, echo=echo,
                          extra_manifest={"split": split_info, "training": summary})
