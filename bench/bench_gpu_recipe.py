"""The `cpu` recipe on a GPU: its model, split, bank, augmentation, size choice, progressive resizing and time
cosine, trained with Keras on JAX, then packaged and scored here like any build.

Why not `subbench build` itself: the builder trains on TensorFlow (tf.data pipelines), and the GPU machines this
project borrows hold JAX and PyTorch but no TensorFlow (its wheel, ~600 MB, does not fit what can be carried
there). Keras 3 runs the same model on JAX. Shared with `subbench build --recipe cpu`: the recipe file,
build_model, the split and the validation copy (builder.workflow), the bank of corrupted copies (heavy_bank, a
process a copy), the batch fetcher (clean or bank copy, symmetries, shifts) and the noise fields (builder.pipeline), the
loss and optimizer (_compile_plain), autosize's choose_size, progressive resizing's hand-over of weights and
optimizer state, the time cosine and the time budget (builder.train). Different: the backend, the precision
(mixed_bfloat16 on a GPU), a keras PyDataset on threads feeding the batches instead of tf.data, and the budget
(a GPU lease here lasts minutes).

  1. here:   python bench/bench_gpu_recipe.py prepare --data ../shared/data/pbc96 --to .gpu
             (the images in two halves, .gpu/a and .gpu/b, each small enough to travel with one call)
  2. there:  KERAS_BACKEND=jax python bench/bench_gpu_recipe.py train --data DIR --minutes 5 --out OUT
             (prints the host, the size probe, every epoch; writes OUT/best.weights.h5, ~17 MB for 64 px /
             32..256, and OUT/log.json)
  3. here:   python bench/bench_gpu_recipe.py finish --weights OUT/best.weights.h5 --log OUT/log.json
                 --data ../shared/data/pbc96 --out /tmp/bench-gpu
             (TTA chosen and the zip packaged as `build` does, split and training summary in its manifest), then
             python bench/bench_cpu_recipe.py --skip-aug --skip-build --out /tmp/bench-gpu [--paired-with CPU_RUN]

Measured on one H200 (16 CPU cores; Keras 3.15.1 on JAX 0.11.2, mixed_bfloat16): the bank of 12 copies in ~50 s
on 12 processes, 64 px / 32..256 chosen, ~1.6 s an epoch (~7,000 images/s, fed by the numpy batch fetcher on 8
threads: the step itself runs ~9 ms a batch of 64). 8 minutes: 222 epochs (88 at 48 px), validation 0.910.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_line  # noqa: E402


def prepare(args) -> None:
    """The dataset's image files in two halves (alternate files of each class), the same folder layout."""
    if args.to.exists():
        sys.exit(f"{args.to} exists: remove it first")
    total = {"a": 0, "b": 0}
    for cls in sorted(p for p in args.data.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(p for p in cls.iterdir() if p.is_file())):
            part = "ab"[i % 2]
            dest = args.to / part / cls.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            total[part] += f.stat().st_size
    for part, size in total.items():
        print(f"{args.to / part}: {size / 2**20:.1f} MB")


def host_lines() -> list[str]:
    """The CPU (bench/hostinfo.py's line), Python, and the GPU as nvidia-smi names it."""
    lines = [cpu_line(), f"python {platform.python_version()}"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        lines.append(f"GPU: {out or 'none'}")
    except (OSError, subprocess.TimeoutExpired):
        lines.append("GPU: nvidia-smi not found")
    return lines


def recipe_model(recipe, profile, input_shape, input_size: int, width: int):
    """The recipe's model at this size: what `build` trains (train.train's build_model call)."""
    from subbench.builder.models import build_model
    from subbench.builder.train import recipe_head

    return build_model(recipe.backbone, num_classes=profile.num_classes, input_shape=input_shape,
                       input_size=input_size, head=recipe_head(recipe), seed=recipe.seed, inputs=recipe.inputs,
                       weights=recipe.weights, width=width).model


def _batches(keras, x, onehot, fetch, noise, batch, seed):
    """A keras PyDataset of heavy-augmented training batches (full batches only: one compiled shape)."""

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=8, use_multiprocessing=False, max_queue_size=32)
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(x))

        def __len__(self):
            return len(x) // batch

        def __getitem__(self, i):
            idx = self.order[i * batch:(i + 1) * batch]
            rng = np.random.default_rng([seed, self.epoch, i])
            images = fetch(idx, rng.integers(2**62)).astype(np.float32)
            images += noise[rng.integers(0, len(noise), len(idx))]
            return np.clip(images, 0.0, 255.0), onehot[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(x))

    return Batches()


def _epoch_printer(keras, phase: str, rows: list, batch_images: int, lr_of):
    class Printer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            secs = time.monotonic() - self.t0
            row = {"phase": phase, "epoch": len(rows) + 1, "seconds": round(secs, 2),
                   "images_per_s": round(batch_images / secs, 1), "lr": float(lr_of()),
                   **{k: round(float(v), 4) for k, v in (logs or {}).items()}}
            rows.append(row)
            print(f"  {phase:13s} epoch {row['epoch']:3d}  {secs:5.1f} s  {row['images_per_s']:7.0f} img/s  "
                  f"loss {row.get('loss', float('nan')):.3f}  acc {row.get('accuracy', float('nan')):.3f}  "
                  f"val_acc {row.get('val_accuracy', float('nan')):.4f}  lr {row['lr']:.2e}", flush=True)

    return Printer()


def train_there(args) -> None:
    """The recipe's training under a `--minutes` budget, counted like the recipe's (bank and probes included)."""
    from subbench.builder.autosize import choose_size, lowres_size
    from subbench.builder.pipeline import HEAVY_NOISE_SIGMA, _batch_fetcher, heavy_bank, noise_fields
    from subbench.builder.recipe import load_recipe
    from subbench.builder.workflow import data_split, validation_set
    from subbench.datasets import load_dataset
    from subbench.profile import load_profile

    t_start = time.monotonic()
    host = host_lines()
    print("\n".join(host), flush=True)
    recipe = load_recipe("cpu")
    profile = load_profile()
    ds = load_dataset(args.data, profile)
    split = data_split(ds, recipe)
    if args.fingerprint and split["data_fingerprint"] != args.fingerprint:
        sys.exit(f"the data differs from the prepared copy: fingerprint {split['data_fingerprint']}")
    train_idx, hold_idx = np.asarray(split["train"]), np.asarray(split["holdout"])
    x, y = ds.images[train_idx], ds.labels[train_idx]
    val_x, val_y = validation_set(ds, hold_idx, recipe)
    deadline = time.monotonic() + args.minutes * 60
    t0 = time.monotonic()
    # before Keras: forked workers, no JAX threads yet
    bank = heavy_bank(x, recipe.heavy_bank, recipe.seed, processes=os.cpu_count() or 1)
    print(f"data: {len(ds)} images, training on {len(x)}, validating on {len(val_x)} (an2dl-corrupted); "
          f"bank of {len(bank)} corrupted copies in {time.monotonic() - t0:.0f} s", flush=True)

    import keras
    import jax

    from subbench.builder.train import (_compile_plain, _take_over_optimizer, _take_over_weights, _time_budget,
                                        _time_cosine, lowres_stop, one_hot)

    print(f"keras {keras.__version__} on {keras.backend.backend()} {jax.__version__}, devices {jax.devices()}")
    keras.mixed_precision.set_global_policy(args.policy)
    keras.utils.set_random_seed(recipe.seed)
    onehot, val_onehot = one_hot(y, profile.num_classes), one_hot(val_y, profile.num_classes)

    def build(size, width):
        model = recipe_model(recipe, profile, x.shape[1:], size, width)
        _compile_plain(model, recipe, metrics=["accuracy"])
        return model

    pick = np.random.default_rng(recipe.seed).choice(len(x), recipe.batch_size, replace=False)
    target = args.autosize_epochs or recipe.autosize_epochs
    print(f"model size: timing a training step of each size (target {target} epochs in {args.minutes:g} minutes), "
          f"{args.policy}", flush=True)
    choice = choose_size(build, batch=(x[pick], onehot[pick]), steps_per_epoch=len(x) // recipe.batch_size,
                         val_images=len(val_x), seconds_left=lambda: deadline - time.monotonic(),
                         target_epochs=target, progressive=recipe.progressive)
    print(f"model size: {choice.input_size} px, width {choice.width}: {choice.reason}", flush=True)
    fetch = _batch_fetcher(x, "heavy", recipe.seed, bank)
    noise = noise_fields(HEAVY_NOISE_SIGMA, x.shape[1:], recipe.seed)
    data = _batches(keras, x, onehot, fetch, noise, recipe.batch_size, recipe.seed)
    images_per_epoch = len(data) * recipe.batch_size
    low = build(lowres_size(choice.input_size), choice.width)
    full = build(choice.input_size, choice.width)
    rows: list = []
    cosine_start = time.monotonic()
    stop_low = lowres_stop(deadline, recipe.progressive, args.minutes)
    best = Path(args.out) / "best.weights.h5"
    for phase, model, stop in (("phase1_lowres", low, stop_low), ("phase1", full, deadline)):
        if phase == "phase1":
            _take_over_weights(full, low)
            _take_over_optimizer(full, low.optimizer)
        callbacks = [_time_cosine(recipe.learning_rate, cosine_start, deadline), _time_budget(stop),
                     _epoch_printer(keras, phase, rows, images_per_epoch, lambda m=model: m.optimizer.learning_rate)]
        if phase == "phase1":
            callbacks.append(keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", save_best_only=True,
                                                             save_weights_only=True))
        model.fit(data, validation_data=(val_x.astype(np.float32), val_onehot),
                  validation_batch_size=recipe.batch_size, epochs=100_000, callbacks=callbacks, verbose=0)
    wall = time.monotonic() - t_start
    full_rows = [r for r in rows if r["phase"] == "phase1"]
    best_row = max(full_rows, key=lambda r: r.get("val_accuracy", 0.0))
    log = {"host": host, "minutes": args.minutes, "policy": args.policy, "wall_s": round(wall, 1),
           "model_size": choice.to_dict(), "epochs": rows, "best_epoch": best_row["epoch"],
           "val_accuracy": best_row.get("val_accuracy"), "bank_copies": len(bank)}
    (Path(args.out) / "log.json").write_text(json.dumps(log, indent=1))
    print(f"trained {len(rows)} epochs ({len(rows) - len(full_rows)} at {lowres_size(choice.input_size)} px) in "
          f"{wall / 60:.1f} min from start; best val accuracy {best_row.get('val_accuracy')} at epoch "
          f"{best_row['epoch']}; median {np.median([r['images_per_s'] for r in full_rows]):.0f} images/s at full size")


def finish(args) -> None:
    """The GPU-trained weights into the recipe's model, and it into a zip as `subbench build` makes it: same
    split, validation copy, TTA choice."""
    from subbench.builder.recipe import load_recipe
    from subbench.builder.workflow import data_split, package_build, validation_set
    from subbench.datasets import load_dataset
    from subbench.profile import load_profile

    log = json.loads(args.log.read_text())
    recipe, profile = load_recipe("cpu"), load_profile()
    ds = load_dataset(args.data, profile)
    split = data_split(ds, recipe)
    val = validation_set(ds, np.asarray(split["holdout"]), recipe)
    size = log["model_size"]
    model = recipe_model(recipe, profile, ds.images.shape[1:], size["input_size"], size["width"])
    model.load_weights(args.weights)
    acc = float(np.mean(model.predict(val[0].astype(np.float32), verbose=0).argmax(1) == val[1]))
    print(f"loaded {args.weights}: validation accuracy here {acc:.4f} (there {log['val_accuracy']})")
    summary = {"recipe": recipe.to_dict(), "trained_on": "GPU, Keras on JAX (bench/bench_gpu_recipe.py)",
               "host": log["host"], "val_accuracy": acc, "epochs_trained": len(log["epochs"]),
               "best_epochs": {"phase1": log["best_epoch"]}, "compute_policy": log["policy"],
               "model_size": log["model_size"], "wall_s": log["wall_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    package_build(model, recipe, ds, split, val, args.out / "sub.zip", profile, data_ref=str(args.data),
                  summary=summary, build_dir=args.out / "sub.build", force=True)
    print(f"wrote {args.out / 'sub.zip'}; score it: python bench/bench_cpu_recipe.py --skip-aug --skip-build "
          f"--data {args.data} --out {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc96")
    p.add_argument("--to", type=Path, default=REPO / ".gpu")
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--minutes", type=float, default=5.0)
    t.add_argument("--policy", default="mixed_bfloat16")
    t.add_argument("--autosize-epochs", type=int, help="epochs the budget must hold (default: the recipe's)")
    t.add_argument("--fingerprint", help="the data's fingerprint here (a check that the copy there is whole)")
    t.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("finish")
    f.add_argument("--weights", type=Path, required=True)
    f.add_argument("--log", type=Path, required=True)
    f.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc96")
    f.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    {"prepare": prepare, "train": train_there, "finish": finish}[args.step](args)


if __name__ == "__main__":
    main()
