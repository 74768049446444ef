"""What `subbench demo` can show on the shipped demo data (subbench/demo_data: real PBC cells) in a few minutes.

Two builds of the `cpu` recipe on the same split, each then checked and scored like `subbench score
--simulate-hidden --clean-too` (the held-out images clean and corrupted like the AN2DL hidden set, same seed):
  plain  no augmentation, RGB input only, validated on clean images - what a team trains first;
  aware  the recipe's hidden-aware training, shortened: heavy augmentation (the hidden set's own corruption,
         drawn from a bank of corrupted copies), edge channels, validation corrupted like the hidden set.
The story to see: plain scores high on clean cells and collapses on hidden-like ones; aware keeps much more.

Prints, per model: the recipe overrides, epochs run, the build's and the training's seconds, the check's
outcome and seconds, clean and hidden-like accuracy with their 95% intervals, the scoring's seconds; then the
total wall time, the host's CPU model, its flags that matter (avx2, avx512*, amx*) and the load average at
each step (2 shared cores: timings are noisy).

    python bench/bench_demo.py [--out /tmp/bench-demo] [--holdout 0.25] [--plain KEY=VALUE ...]
                               [--aware KEY=VALUE ...] [--only plain|aware] [--per-class N] [--no-check]

KEY=VALUE are recipe options (builder/recipe.py), values parsed as TOML (`augment="none"` or `augment=none`,
`max_train_minutes=1.5`, `val_corrupt=none`); they apply on top of the defaults below, which apply on top of
the `cpu` recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# On top of the `cpu` recipe, for both models: the demo's split (370 of 1480 images held out: intervals of about
# +-4 points), a TTA-free zip (tta=auto spends time choosing views on the held-out images), batches of 32 (35
# steps an epoch on 1110 images; 64 gave fewer, no better epochs) and 48 px inside the model (the recipe's 64:
# 1.3-1.6x the epochs in the same minutes, measured 0.595-0.605 hidden-like against 0.565 at 64 px).
from subbench.cli.demo import AWARE, COMMON, PLAIN  # noqa: E402  (the demo's own settings, one definition)

DEFAULTS = {"plain": {**PLAIN, "max_train_minutes": 1.5}, "aware": {**AWARE, "max_train_minutes": 4.0}}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def host() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in CPU_FLAGS if f in flags]
    return (f"{model}; {os.cpu_count()} cores; flags: {' '.join(have) or 'none of ' + ', '.join(CPU_FLAGS)}; "
            f"python {platform.python_version()}")


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--plain/--aware take KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw                        # a bare word: a string
        out[key.strip()] = value
    return out


def recipe_for(name: str, extra: dict):
    from subbench.builder.recipe import load_recipe, with_overrides

    opts = {**COMMON, **DEFAULTS[name], **extra}
    return with_overrides(load_recipe("cpu"), **opts), opts


def accuracies(score) -> dict:
    """{'hidden': (acc, (lo, hi)), 'clean': (acc, (lo, hi))} from a Score (or an older Evaluation)."""
    d = score.to_dict() if hasattr(score, "to_dict") else dict(score.scores)

    def pick(block):
        if not block:
            return None, None
        m = block.get("metrics") or block
        return m.get("accuracy"), m.get("accuracy_ci95")

    return {"hidden": pick(d), "clean": pick(d.get("clean")), "status": d.get("status")}


def fmt(acc_ci) -> str:
    acc, ci = acc_ci
    if acc is None:
        return "n/a"
    return f"{acc:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{acc:.3f}"


def run_model(name: str, extra: dict, data: Path, out: Path, profile, do_check: bool, verbose: bool) -> dict:
    from subbench.builder.workflow import build_trained
    from subbench.local_bench.evaluate import ScoreOptions, evaluate

    recipe, opts = recipe_for(name, extra)
    lines: list[str] = []
    t_model = time.perf_counter()

    def echo(msg=""):
        lines.append(str(msg))
        if verbose:
            print(f"    [{name} {time.perf_counter() - t_model:6.1f} s] {msg}", flush=True)

    print(f"\n== {name}: cpu recipe + {json.dumps({k: v for k, v in opts.items()})}  (load {load()})", flush=True)
    d = recipe.to_dict()
    print("  recipe: " + ", ".join(f"{k}={d.get(k)}" for k in (
        "backbone", "input_size", "inputs", "edge_channels", "augment", "heavy_bank", "val_corrupt", "batch_size",
        "learning_rate", "schedule", "max_train_minutes", "mixed_precision", "holdout", "seed") if k in d), flush=True)
    zip_path = out / f"{name}.zip"
    t0 = time.perf_counter()
    build_trained(recipe, data, zip_path, profile, force=True, echo=echo)
    build_s = time.perf_counter() - t0
    build_dir = zip_path.with_name(zip_path.stem + ".build")
    summary = json.loads((build_dir / "summary.json").read_text())
    log = build_dir / ("final" if recipe.final else "main") / "log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x] if log.exists() else []
    epoch_s = sum(r.get("seconds", 0.0) for r in rows)
    bank = next((ln for ln in lines if ln.startswith("heavy augmentation")), None)
    best = summary.get("best_epochs") or {}
    res = {"name": name, "epochs": summary.get("epochs_trained"), "best_epoch": best.get("phase1"),
           "build_s": build_s, "epochs_s": epoch_s, "val_accuracy": summary.get("val_accuracy"),
           "policy": summary.get("compute_policy"), "zip_mb": zip_path.stat().st_size / 2**20}
    print(f"  build: {build_s:.1f} s wall; {res['epochs']} epochs (best {res['best_epoch']}) in {epoch_s:.1f} s of "
          f"epochs ({epoch_s / max(1, res['epochs'] or 1):.2f} s an epoch), {res['policy']}; validation accuracy "
          f"{res['val_accuracy']:.3f} ({'corrupted' if recipe.val_corrupt else 'clean'}); zip "
          f"{res['zip_mb']:.2f} MB  (load {load()})", flush=True)
    if bank:
        print(f"  {bank}", flush=True)
    if do_check:
        from subbench.local_bench.check import check_zip

        t0 = time.perf_counter()
        report = check_zip(zip_path, profile)
        res["check_s"] = time.perf_counter() - t0
        res["check_ok"] = report.ok
        print(f"  check: {'ok' if report.ok else 'FAILED ' + '; '.join(report.failures)} in {res['check_s']:.1f} s "
              f"(load {load()})", flush=True)
    t0 = time.perf_counter()
    score = evaluate(zip_path, str(data), profile, ScoreOptions(simulate_hidden="an2dl", clean_too=True),
                     echo=echo)
    res["score_s"] = time.perf_counter() - t0
    acc = accuracies(score)
    res.update(clean=acc["clean"], hidden=acc["hidden"], status=str(acc["status"]),
               predictions=getattr(score, "predictions", None), labels=getattr(score, "labels", None),
               n=getattr(score, "n", None))
    print(f"  score ({res['score_s']:.1f} s, status {res['status']}, n {res['n']}): clean {fmt(acc['clean'])}, "
          f"hidden-like {fmt(acc['hidden'])}  (load {load()})", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-demo"), help="replaced if it exists")
    ap.add_argument("--holdout", type=float, default=None, help=f"both models (default {COMMON['holdout']})")
    ap.add_argument("--plain", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--aware", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--both", action="append", default=[], metavar="KEY=VALUE", help="recipe option for both")
    ap.add_argument("--only", choices=("plain", "aware"))
    ap.add_argument("--per-class", type=int, help="use only the first N demo images of each class")
    ap.add_argument("--no-check", action="store_true", help="skip `check` (a fresh process per zip)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the build's and the scorer's messages")
    args = ap.parse_args()

    t_start = time.perf_counter()
    print(f"host: {host()}")
    print(f"load at start: {load()}", flush=True)
    import numpy as np

    from subbench.datasets import demo, image_hashes
    from subbench.profile import load_profile

    profile = load_profile()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    t0 = time.perf_counter()
    ds = demo(profile)
    keep = np.arange(len(ds))
    if args.per_class:
        keep = np.sort(np.concatenate([np.flatnonzero(ds.labels == c)[:args.per_class]
                                       for c in range(profile.num_classes)]))
    data = args.out / "demo.npz"
    np.savez(data, images=ds.images[keep], labels=ds.labels[keep])
    assert len(set(image_hashes(ds.images[keep]))) == len(keep)
    print(f"data: {len(keep)} demo images ({np.bincount(ds.labels[keep]).tolist()} per class), read and written "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    both = parse_overrides(args.both)
    if args.holdout is not None:
        both["holdout"] = args.holdout
    extras = {"plain": {**both, **parse_overrides(args.plain)}, "aware": {**both, **parse_overrides(args.aware)}}
    results = {}
    for name in ("plain", "aware"):
        if args.only and name != args.only:
            continue
        results[name] = run_model(name, extras[name], data, args.out, profile, not args.no_check, args.verbose)
    total = time.perf_counter() - t_start
    print("\n== summary")
    print(f"{'model':6s} {'epochs':>6s} {'build s':>8s} {'epochs s':>8s} {'check s':>7s} {'score s':>7s}  "
          f"{'clean (95% CI)':22s} {'hidden-like (95% CI)':22s} gap")
    for r in results.values():
        ok = r["clean"][0] is not None and r["hidden"][0] is not None
        gap = f"{r['clean'][0] - r['hidden'][0]:+.3f}" if ok else "n/a"
        print(f"{r['name']:6s} {r['epochs'] or 0:6d} {r['build_s']:8.1f} {r['epochs_s']:8.1f} "
              f"{r.get('check_s', 0):7.1f} {r['score_s']:7.1f}  {fmt(r['clean']):22s} {fmt(r['hidden']):22s} {gap}")
    if len(results) == 2 and all(r["hidden"][0] is not None for r in results.values()):
        p, a = results["plain"], results["aware"]
        print(f"hidden-like gain of aware over plain: {a['hidden'][0] - p['hidden'][0]:+.3f}; clean "
              f"{a['clean'][0] - p['clean'][0]:+.3f}")
        if p["predictions"] is not None and a["predictions"] is not None and p["labels"] is not None \
                and len(p["predictions"]) == len(a["predictions"]):
            from math import comb

            pc, ac = p["predictions"] == p["labels"], a["predictions"] == a["labels"]
            b, c = int((ac & ~pc).sum()), int((pc & ~ac).sum())
            k, n = min(b, c), b + c
            pval = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
            print(f"paired (same hidden-like images): only aware right {b}, only plain right {c}, exact McNemar "
                  f"p = {pval:.2g}")
    print(f"total wall time: {total:.1f} s ({total / 60:.2f} min); load at end: {load()}")
    print(f"host: {host()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
