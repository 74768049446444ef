"""Cost of test-time augmentation in the shipped submission: predict time with k views against k x one view.

Packages the cpu recipe's model (build_model with the recipe's backbone, input size, input branches and head;
untrained weights: the time does not depend on them) with `package_models` once per TTA preset of
subbench.builder.package.TTA_PRESETS (none = 1 view, flips = 3, d4 = 8), extracts each zip, and in ONE fresh
Python process (like the server: nothing imported beforehand) imports each zip's own model.py (the shipped
submission_template/model.py), times `Model()` and a first warm-up `predict` (tracing), then times
`Model().predict(X)` on N images, presets in alternating rounds, median over rounds. That is in-process timing
after warm-up, not the runner's end-to-end time (that adds start-up, imports and loading once per run, the
same for every k: see the printed load and first-predict times).

Also timed on the same loaded model, as what a change to model.py would give (not shipped):
  batched   all k views of a chunk stacked into one model.predict call (k x chunk images) instead of k calls;
  direct    the views stacked and the model called on fixed-size batches with model(x, training=False)
            (no keras predict() machinery: its per-call set-up, its data adapter).

Prints time(k) / (k x time(1)) for each (goal <= 1.1).

    python bench/bench_tta_cost.py [--n 1000] [--rounds 3] [--presets none,flips,d4] [--input-size 64]
                                   [--batch-size 64] [--chunk-size 1024]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import LoadMeter, cpu_line, load_text  # noqa: E402

TAG = "@@"


def package(workdir: Path, presets: list[str], input_size: int | None, batch_size: int, chunk_size: int) -> dict:
    """{preset: extracted submission folder}, one zip per preset, the cpu recipe's model in each."""
    import dataclasses

    from subbench.builder.models import build_model
    from subbench.builder.package import package_models
    from subbench.builder.recipe import load_recipe
    from subbench.builder.train import recipe_head
    from subbench.profile import load_profile

    recipe = load_recipe("cpu")
    if input_size:
        recipe = dataclasses.replace(recipe, input_size=input_size)
    head = recipe_head(recipe)
    built = build_model(recipe.backbone, input_size=recipe.input_size, inputs=recipe.inputs, head=head, seed=0,
                        width=recipe.width)
    profile = load_profile()
    dirs = {}
    for preset in presets:
        zip_path = workdir / f"{preset}.zip"
        package_models([built.model], zip_path, profile, tta=preset, batch_size=batch_size, echo=lambda _: None)
        dest = workdir / preset
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(dest)
        if chunk_size != 1024:   # package_models writes chunk_size 1024
            cfg_path = dest / "model_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["chunk_size"] = chunk_size
            cfg_path.write_text(json.dumps(cfg))
        dirs[preset] = str(dest)
    return dirs


def _send(obj) -> None:
    print(f"{TAG} {json.dumps(obj)}", flush=True)


def child(dirs: dict, n: int, rounds: int) -> None:
    """The fresh process: load each submission, warm up, time predict in alternating rounds."""
    import numpy as np

    t0 = time.perf_counter()
    import keras  # noqa: F401  (what Model() imports first; timed apart)

    import_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    subs, info = {}, {"import_keras_s": import_s}
    for preset, folder in dirs.items():
        spec = importlib.util.spec_from_file_location(f"submission_{preset}", Path(folder) / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        t0 = time.perf_counter()
        m = module.Model()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.predict(x[:100])
        first_s = time.perf_counter() - t0
        subs[preset] = m
        info[preset] = {"views": len(m.views), "load_s": load_s, "first_predict_100_s": first_s}

    base = subs[next(iter(subs))]          # the none preset's loaded model: same weights as the others
    model, batch = base.models[0], base.batch_size
    views_by = {p: m.views for p, m in subs.items()}

    def batched(views, chunk_size):
        """All views of a chunk in one predict call (the proposed model.py change)."""
        out = []
        for s in range(0, len(x), chunk_size):
            chunk = x[s:s + chunk_size].astype(np.float32)
            stacked = np.concatenate([np.ascontiguousarray(v(chunk)) for v in views])
            p = np.asarray(model.predict(stacked, batch_size=batch, verbose=0), np.float64)
            out.append(p.reshape(len(views), len(chunk), -1).mean(0))
        return np.concatenate(out).argmax(1)

    def direct(views, chunk_size):
        """Stacked views, the model called on fixed-size batches directly (no predict())."""
        out = []
        for s in range(0, len(x), chunk_size):
            chunk = x[s:s + chunk_size].astype(np.float32)
            stacked = np.concatenate([np.ascontiguousarray(v(chunk)) for v in views])
            parts = [np.asarray(model(stacked[i:i + batch], training=False), np.float64)
                     for i in range(0, len(stacked), batch)]
            out.append(np.concatenate(parts).reshape(len(views), len(chunk), -1).mean(0))
        return np.concatenate(out).argmax(1)

    chunk_size = base.chunk_size
    runs = {}
    for p, m in subs.items():
        runs[("shipped", p)] = lambda m=m: m.predict(x)
        runs[("batched", p)] = lambda v=views_by[p]: batched(v, chunk_size)
        runs[("direct", p)] = lambda v=views_by[p]: direct(v, chunk_size)
    warm = {k: f() for k, f in runs.items()}   # warm-up: every shape each path will see (last partial batches)
    # the three paths predict the same labels (views averaged the same way): share of equal labels
    agree = {p: round(min(float((warm[(a, p)] == warm[("shipped", p)]).mean()) for a in ("batched", "direct")), 4)
             for p in subs}
    times = {k: [] for k in runs}
    order = list(runs)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    _send({"info": info, "agree": agree,
           "times": {f"{a}|{p}": t for (a, p), t in times.items()}})


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images predicted a timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--presets", default="none,flips,d4", help="TTA_PRESETS names; the first is the k=1 base")
    ap.add_argument("--input-size", type=int, default=0, help="override the recipe's input size (0 = recipe's)")
    ap.add_argument("--batch-size", type=int, default=64, help="model_config.json batch_size (package default 64)")
    ap.add_argument("--chunk-size", type=int, default=1024, help="model_config.json chunk_size (default 1024)")
    args = ap.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    print(cpu_line(), flush=True)
    meter = LoadMeter().start()
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        t0 = time.perf_counter()
        dirs = package(Path(tmp), presets, args.input_size or None, args.batch_size, args.chunk_size)
        print(f"packaged {len(dirs)} zips in {time.perf_counter() - t0:.0f} s; timing in a fresh process, "
              f"{args.n} images, {args.rounds} alternating rounds", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(dirs), str(args.n), str(args.rounds)],
                              capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(TAG)]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-3000:])
        sys.exit(f"child failed ({proc.returncode})")
    res = json.loads(lines[-1][len(TAG):])
    info, times = res["info"], {k: statistics.median(v) for k, v in res["times"].items()}
    print(f"fresh process: import keras {info['import_keras_s']:.1f} s; per zip: "
          + "; ".join(f"{p} Model() {info[p]['load_s']:.2f} s, first predict(100) {info[p]['first_predict_100_s']:.2f} s"
                      for p in presets))
    print(f"same labels as the shipped path (least of batched, direct): {res['agree']}")
    base = presets[0]
    print(f"{'path':8s} {'preset':6s} {'k':>2s} {'time s':>8s} {'ms/img/view':>11s} {'t(k)/(k t(1))':>14s}"
          f" {'vs shipped':>10s}")
    for path in ("shipped", "batched", "direct"):
        t1 = times[f"{path}|{base}"] / info[base]["views"]
        for p in presets:
            k = info[p]["views"]
            t = times[f"{path}|{p}"]
            print(f"{path:8s} {p:6s} {k:2d} {t:8.2f} {1e3 * t / (k * args.n):11.2f} {t / (k * t1):14.3f}"
                  f" {t / times[f'shipped|{p}']:10.2f}")
    print("t(k)/(k t(1)): each path against its own single view; vs shipped: the path's time over the shipped "
          "model.py's for the same preset")
    print(load_text(meter.stop()))


if __name__ == "__main__":
    main()
