"""What the team reports' cell preprocessing (subbench.builder.cell_preprocessing) does to accuracy, clean and on
the simulated hidden set, for the plain model and the `cpu` recipe.

For each preprocessing variant (none, clahe, illumination, mask, and the three in the 'LionIA' report's order)
and each model (plain: no augmentation, RGB only, validated on clean cells, as `subbench demo` trains it; cpu:
the cpu recipe shortened to the budget, see CPU below), it trains on the same training images with the same
seed and the same time budget (--minutes), and scores every zip with `subbench.score` on the same held-out
images (a stratified part the builds never see): clean, and corrupted like the hidden set (an2dl) with
--hidden-seeds corruption seeds. Prints the host's CPU, a table of clean and hidden-like accuracy (mean and range
over the seeds) per run, and each variant against "none" of the same model PAIRED on the same images: the
images only one of the two gets right and the exact McNemar p (clean; hidden-like pooled over the seeds, which
share the images, so that p is indicative only).

    nice -n 10 python bench/bench_preprocess.py [--minutes 2.5] [--limit 4000] [--test 1000]
                                                [--hidden-seeds 0,1,2] [--variants none,clahe,...]
                                                [--models plain,cpu] [--out /tmp/bench-preprocess]
                                                [--reuse] [--step-cost]

Results are kept in OUT/results.json (a rerun with --reuse scores only what is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostinfo import cpu_line, loadavg  # noqa: E402

VARIANTS = {"none": [], "clahe": ["clahe"], "illumination": ["illumination"], "mask": ["mask"],
            "all": ["illumination", "clahe", "mask"]}
# plain: as `subbench demo` trains it (subbench.cli.demo.PLAIN); cpu: the recipe at a fixed small size (timing the
# candidate sizes and a 12-copy bank would use most of a few minutes' budget), the rest as shipped.
PLAIN = {"augment": "none", "val_corrupt": "none", "inputs": "none", "input_size": 48, "progressive": 0}
CPU = {"input_size": 48, "width": 24, "autosize_epochs": 0, "progressive": 0, "heavy_bank": 3}
COMMON = {"epochs": 1000, "patience": 1000, "tta": "none", "seed": 0, "holdout": 0.1}


def split(images, labels, n_test: int, seed: int = 0):
    """(train images, train labels, test images, test labels): a stratified test part of about n_test."""
    import numpy as np

    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.extend(rng.choice(idx, max(1, round(n_test * len(idx) / len(labels))), replace=False))
    mask = np.zeros(len(labels), bool)
    mask[test] = True
    return images[~mask], labels[~mask], images[mask], labels[mask]


def train_one(model: str, variant: str, data, args, out: Path) -> dict:
    import subbench

    overrides = {**COMMON, **(PLAIN if model == "plain" else CPU), "max_train_minutes": args.minutes,
                 "limit": args.limit, "preprocess": VARIANTS[variant]}
    zip_path = out / f"{model}-{variant}.zip"
    t0 = time.perf_counter()
    res = subbench.train("cpu", data=data, out=zip_path, force=True, echo=None, **overrides)
    build_s = time.perf_counter() - t0
    print(f"  built {zip_path.name}: {res.epochs_trained} epochs, validation {res.val_accuracy:.3f}, "
          f"{build_s:.0f} s wall (load {loadavg()})", flush=True)
    return {"zip": str(zip_path), "epochs": res.epochs_trained, "val_accuracy": res.val_accuracy,
            "build_s": build_s, "overrides": {k: v for k, v in overrides.items()}}


def score_one(zip_path: str, x, y, seeds: list[int]) -> dict:
    """Per-image correctness: clean, and corrupted like the hidden set with each seed."""
    import subbench

    clean = subbench.score(zip_path, data=(x, y), use_all=True)
    out = {"clean": (clean.predictions == clean.labels).astype(int).tolist(), "hidden": {}}
    for seed in seeds:
        s = subbench.score(zip_path, data=(x, y), simulate_hidden="an2dl", seed=seed, use_all=True)
        if s.predictions is None:
            raise SystemExit(f"{zip_path}: scoring failed ({s.status}: {s.message})")
        out["hidden"][str(seed)] = (s.predictions == s.labels).astype(int).tolist()
    return out


def mcnemar(a, b) -> tuple[int, int, float]:
    """(right only in a, right only in b, exact two-sided McNemar p) of two per-image correctness vectors."""
    import numpy as np
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def row(model: str, variant: str, r: dict, base: dict | None) -> str:
    """One line of the table: the run, its accuracies, and against "none" of the same model, paired."""
    import numpy as np

    clean = np.mean(r["scores"]["clean"])
    hidden = [np.mean(v) for v in r["scores"]["hidden"].values()]
    line = (f"{model:6s} {variant:13s} {r['epochs']:6d}  {r['val_accuracy']:.3f}  {clean:.3f}   "
            f"{np.mean(hidden):.3f} [{min(hidden):.3f}-{max(hidden):.3f}] ({len(hidden)} seeds)")
    if base is None or variant == "none" or "scores" not in base:
        return line
    c = mcnemar(r["scores"]["clean"], base["scores"]["clean"])
    seeds = sorted(set(r["scores"]["hidden"]) & set(base["scores"]["hidden"]))
    h = mcnemar(sum((r["scores"]["hidden"][s] for s in seeds), []),
                sum((base["scores"]["hidden"][s] for s in seeds), []))
    base_clean = np.mean(base["scores"]["clean"])
    base_hidden = np.mean([np.mean(base["scores"]["hidden"][s]) for s in seeds])
    return (line + f"   clean {clean - base_clean:+.3f} {c[0]:4d}/{c[1]:<4d} p={c[2]:.3f} | hidden "
            f"{np.mean(hidden) - base_hidden:+.3f} {h[0]:4d}/{h[1]:<4d} p={h[2]:.3f}")


def table(results: dict, models: list[str], variants: list[str]) -> None:
    print("\nmodel  preprocess     epochs  val    clean   hidden-like mean [min-max] over seeds   vs none, paired: "
          "clean delta only-this/only-none McNemar p | hidden-like (pooled over seeds) delta, counts, p")
    for model in models:
        base = results.get(f"{model}/none")
        for variant in variants:
            r = results.get(f"{model}/{variant}")
            if r and "scores" in r:
                print(row(model, variant, r, base))


def step_cost(variants: list[str], rounds: int = 3, steps: int = 5, batch: int = 64) -> None:
    """Seconds a training step of the plain model (custom_cnn at 48 px, batches of 64) with each variant, in
    alternating rounds after warm-up: what each step costs of the time budget, apart from the host's load."""
    import keras
    import numpy as np

    from subbench.builder.models import build_model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, 96, 96, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 8, batch), 8)
    models = {}
    for v in variants:
        m = build_model("custom_cnn", input_size=48, width=24, preprocess=VARIANTS[v]).model
        m.compile(optimizer="adamw", loss="categorical_crossentropy", jit_compile=False)
        for _ in range(2):
            m.train_on_batch(x, y)
        models[v] = m
    seconds = dict.fromkeys(variants, 0.0)
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            t0 = time.perf_counter()
            for _ in range(steps):
                models[v].train_on_batch(x, y)
            seconds[v] += time.perf_counter() - t0
    base = seconds.get("none") or min(seconds.values())
    print(f"\ntraining step, plain model (custom_cnn 48 px, width 24, batch {batch}; {rounds} alternating rounds x "
          f"{steps} steps; load {loadavg()}):")
    for v, sec in seconds.items():
        print(f"  {v:13s} {1e3 * sec / (rounds * steps):7.1f} ms a step   x{sec / base:.2f} of none")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc96")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-preprocess"))
    ap.add_argument("--minutes", type=float, default=2.5, help="training time budget of each run")
    ap.add_argument("--limit", type=int, default=4000, help="training images per run (the same ones)")
    ap.add_argument("--test", type=int, default=1000, help="held-out images scored")
    ap.add_argument("--hidden-seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--models", default="plain,cpu")
    ap.add_argument("--reuse", action="store_true", help="keep the runs already in OUT/results.json")
    ap.add_argument("--step-cost", action="store_true", help="also time a training step of each variant")
    args = ap.parse_args()
    import subbench

    print(cpu_line(), flush=True)
    models, variants = args.models.split(","), args.variants.split(",")
    seeds = [int(s) for s in args.hidden_seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = json.loads(store.read_text()) if args.reuse and store.exists() else {}
    images, labels = subbench.load_data(args.data)
    x_train, y_train, x_test, y_test = split(images, labels, args.test)
    print(f"data: {len(images)} images; {len(x_test)} held out for scoring; training on {args.limit} of the "
          f"other {len(x_train)} (recipe holdout 0.1 of them for validation); {args.minutes:g} min a run; hidden "
          f"seeds {seeds}", flush=True)
    t_all = time.perf_counter()
    for model in models:
        for variant in variants:
            key = f"{model}/{variant}"
            if key in results and "scores" in results[key]:
                continue
            print(f"\n== {key}: preprocess {VARIANTS[variant] or 'none'}", flush=True)
            results[key] = train_one(model, variant, (x_train, y_train), args, args.out)
            results[key]["scores"] = score_one(results[key]["zip"], x_test, y_test, seeds)
            store.write_text(json.dumps(results))
    print(f"\ntotal {((time.perf_counter() - t_all) / 60):.1f} min; {cpu_line()}")
    if args.step_cost:
        step_cost(variants)
    table(results, models, variants)


if __name__ == "__main__":
    main()
