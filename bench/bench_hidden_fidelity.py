"""How far the simulated hidden score can be trusted: the simulator against keras_cv 0.9's own layers, many draws,
three kinds of model, and the coverage of the intervals `subbench score` prints.

    python bench/bench_hidden_fidelity.py [--images 4000] [--draws 24] [--op-images 1500] [--op-draws 3]

Images: ../shared/data/pbc96 (every 3rd file held out and corrupted; models trained on a subset of the rest).
Models (small CNNs, seeded, same architecture): plain (clean images), augmented (flips, rotations, contrast,
brightness: a team's usual augmentation), hidden-aware (clean + 2 copies corrupted by our simulator).
Each draw corrupts the held-out images once (keras_cv: AugMix then RandAugment, value_range (0, 255), defaults,
tf.function over batches of 128; ours: apply_preset "an2dl" with seed d), and every model predicts it.

Printed, per model:
- accuracy under keras_cv and under ours (mean over draws), their difference with a 95% interval: a bootstrap over
  images of each image's (mean right over our draws - mean right over keras_cv's): paired on the images, counting
  the draws' noise through the per-image means; goal |difference| <= 0.3 points, interval narrower than +-0.3;
- the spread of one draw's figure on each side (standard deviation over draws);
- coverage of the intervals (local_bench.draws) with K = 1 and K = 4 of our draws: the share of `next_draw_ci95`
  that hold a keras_cv draw's figure on the same images, and the share of the headline `ci95` computed on disjoint
  subsets of 400 images that hold the expected figure (keras_cv's mean over all images and draws);
- distributions: mean |corrupted - clean| per image (quantiles), share of pixels at 0 and at 255.
Per RandAugment op (--op-draws > 0): RandAugment restricted to that op (keras_cv's RandomAugmentationPipeline with
that one layer of its standard policy, 3 slots, rate 10/11; ours with the op forced), no AugMix, on --op-images
images: accuracy of each model both ways and the difference with its interval.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc96"
sys.path.insert(0, str(REPO / "bench"))

from hostinfo import cpu_line  # noqa: E402


def spaced(a: np.ndarray, n: int) -> np.ndarray:
    return a if len(a) <= n else a[np.linspace(0, len(a) - 1, n).astype(int)]


def load(args):
    from subbench.datasets import read_image
    from subbench.profile import load_profile

    profile = load_profile()
    files = sorted(PBC.rglob("*.jpg"))
    labels = np.array([profile.class_index(f.parent.name) for f in files])
    idx = np.arange(len(files))
    held = spaced(idx[::3], args.images)          # files are sorted by class: evenly spaced keeps every class
    train = spaced(np.setdiff1d(idx, idx[::3]), args.train_images)

    def read(ii):
        return np.stack([read_image(files[i], None) for i in ii])
    return read(train), labels[train], read(held), labels[held]


def small_cnn(kind: str):
    import keras

    aug = []
    if kind == "augmented":
        aug = [keras.layers.RandomFlip("horizontal_and_vertical"), keras.layers.RandomRotation(0.25),
               keras.layers.RandomContrast(0.3), keras.layers.RandomBrightness(0.2, value_range=(0, 255))]
    model = keras.Sequential([keras.Input((96, 96, 3)), *aug, keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(24, 3, strides=2, activation="relu"),
                              keras.layers.Conv2D(48, 3, strides=2, activation="relu"),
                              keras.layers.Conv2D(96, 3, strides=2, activation="relu"),
                              keras.layers.Conv2D(96, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train_models(x, y, epochs: int):
    import keras

    from subbench.corrupt import apply_preset

    out = {}
    for kind in ("plain", "augmented", "hidden-aware"):
        keras.utils.set_random_seed(0)
        xx, yy = x, y
        if kind == "hidden-aware":
            xx = np.concatenate([x] + [apply_preset(x, "an2dl", seed=1000 + s, cache=False) for s in range(2)])
            yy = np.tile(y, 3)
        t = time.time()
        model = small_cnn(kind)
        model.fit(xx, yy, epochs=epochs, batch_size=64, verbose=0)
        out[kind] = model
        print(f"trained {kind}: {len(xx)} images x {epochs} epochs in {time.time() - t:.0f} s", flush=True)
    return out


def predict_all(models, images):
    return {k: m.predict(images, batch_size=256, verbose=0).argmax(1) for k, m in models.items()}


def keras_cv_fn(pipeline=None):
    import keras_cv
    import tensorflow as tf

    if pipeline is None:
        augmix = keras_cv.layers.AugMix(value_range=(0, 255))
        randaug = keras_cv.layers.RandAugment(value_range=(0, 255))
        fn = tf.function(lambda b: randaug(augmix(b)))
    else:
        fn = tf.function(lambda b: pipeline(b))

    def run(images):
        out = [fn(tf.constant(images[i:i + 128])).numpy() for i in range(0, len(images), 128)]
        return np.clip(np.concatenate(out), 0, 255).astype(np.uint8)
    return run


def stats(corrupted, clean):
    change = np.abs(corrupted.astype(np.float32) - clean).mean(axis=(1, 2, 3))
    return change, float((corrupted == 0).mean()), float((corrupted == 255).mean())


def diff_interval(ours: np.ndarray, kcv: np.ndarray, n_boot: int = 2000, seed: int = 0):
    """(difference in points, (lo, hi)): bootstrap over images of per-image mean differences."""
    d = ours.mean(0).astype(np.float64) - kcv.mean(0)
    rng = np.random.default_rng(seed)
    boots = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return 100 * d.mean(), (100 * lo, 100 * hi)


def corrupt_draws(args, x_held, models):
    from subbench.corrupt import apply_preset

    kcv_fn = keras_cv_fn()
    correct = {side: {k: [] for k in models} for side in ("keras_cv", "ours")}
    dist = {"keras_cv": [], "ours": []}
    t = {"keras_cv": 0.0, "ours": 0.0}
    for d in range(args.draws):
        for side in ("keras_cv", "ours"):
            t0 = time.time()
            c = kcv_fn(x_held) if side == "keras_cv" else apply_preset(x_held, "an2dl", seed=d, cache=False)
            t[side] += time.time() - t0
            for k, p in predict_all(models, c).items():
                correct[side][k].append(p)
            dist[side].append(stats(c, x_held))
        print(f"draw {d + 1}/{args.draws} (keras_cv {t['keras_cv']:.0f} s, ours {t['ours']:.0f} s so far)",
              flush=True)
    return correct, dist, t


def coverage(ours_ok: np.ndarray, kcv_ok: np.ndarray, expected: float, k: int, subset: int = 400):
    """(share of next-draw intervals holding a keras_cv draw's figure, share of subset ci95 holding `expected`)."""
    from subbench.local_bench.draws import draw_spread

    groups = [ours_ok[i:i + k] for i in range(0, len(ours_ok) - k + 1, k)]
    kcv_figs = kcv_ok.mean(1)
    hits = [np.mean([(lo <= f <= hi) for f in kcv_figs])
            for g in groups for lo, hi in [draw_spread(g, list(range(k))).next_draw_ci95]]
    sub_hits = []
    n = ours_ok.shape[1]
    # disjoint random subsets (the images are in class order: contiguous blocks would be one class each)
    rng = np.random.default_rng(0)
    for g in groups:
        order = rng.permutation(n)                # fresh subsets for every group of draws
        for s in range(0, n - subset + 1, subset):
            lo, hi = draw_spread(g[:, order[s:s + subset]], list(range(k))).ci95
            sub_hits.append(lo <= expected <= hi)
    return float(np.mean(hits)), float(np.mean(sub_hits)), len(hits), len(sub_hits)


def report_models(correct, y_held, clean_acc):
    print("\n## Simulator vs keras_cv, per model (accuracy, mean over draws)")
    print(f"{'model':<13} {'clean':>6} {'keras_cv':>9} {'ours':>7} {'diff pts':>9} {'95% interval':>16} "
          f"{'sd/draw kcv':>11} {'sd/draw ours':>12} {'cov next K=1':>12} {'K=4':>5} {'cov ci95 K=1':>12} {'K=4':>5}")
    for k in correct["ours"]:
        ours = np.stack(correct["ours"][k]) == y_held
        kcv = np.stack(correct["keras_cv"][k]) == y_held
        diff, (lo, hi) = diff_interval(ours, kcv)
        cov1 = coverage(ours, kcv, kcv.mean(), 1)
        cov4 = coverage(ours, kcv, kcv.mean(), 4)
        print(f"{k:<13} {clean_acc[k]:>6.4f} {kcv.mean():>9.4f} {ours.mean():>7.4f} {diff:>+9.2f} "
              f"{lo:>+7.2f}..{hi:>+6.2f} {100 * kcv.mean(1).std(ddof=1):>10.2f}p {100 * ours.mean(1).std(ddof=1):>11.2f}p"
              f" {cov1[0]:>12.2f} {cov4[0]:>5.2f} {cov1[1]:>12.2f} {cov4[1]:>5.2f}")
    print("(coverage: next-draw interval vs each keras_cv draw's figure on the same images; headline ci95 on "
          "disjoint 400-image subsets vs keras_cv's overall mean)")


def report_distributions(dist):
    print("\n## Distributions (per-image mean |corrupted - clean|, grey levels; share of pixels at 0 and 255)")
    for side, rows in dist.items():
        change = np.concatenate([r[0] for r in rows])
        q = np.quantile(change, [0.1, 0.5, 0.9])
        print(f"{side:<9} mean {change.mean():6.2f}  q10 {q[0]:6.2f}  q50 {q[1]:6.2f}  q90 {q[2]:6.2f}  "
              f"at 0: {np.mean([r[1] for r in rows]):.4f}  at 255: {np.mean([r[2] for r in rows]):.4f}")


def ours_single_op(images, op_index: int, seed: int):
    """Our RandAugment with every slot's op forced to `op_index` (no AugMix), same rate and magnitudes."""
    from subbench.corrupt import an2dl as A

    d = A.draw(len(images), seed)
    d.ra_op[:] = op_index
    out = np.empty_like(images)
    for s in range(0, len(images), A.CHUNK):
        sl = slice(s, s + A.CHUNK)
        x = images[sl].transpose(0, 3, 1, 2).astype(np.float32, order="C")
        x = A.randaugment(x, d[sl])
        out[sl] = np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return out


def per_op(args, x, y, models):
    import keras_cv

    from subbench.corrupt import an2dl as A

    take = spaced(np.arange(len(x)), args.op_images)
    x, y = x[take], y[take]
    policy = keras_cv.layers.RandAugment.get_standard_policy(value_range=(0, 255), magnitude=0.5,
                                                              magnitude_stddev=0.15)
    print(f"\n## Per RandAugment op, RandAugment restricted to it ({len(x)} images, {args.op_draws} draws a side)")
    print("keras_cv policy order: " + ", ".join(type(layer).__name__ for layer in policy))
    print(f"{'op':<13} " + " ".join(f"{k + ' kcv/ours/diff [95%]':>44}" for k in models))
    for j, op in enumerate(A.RANDAUGMENT_OPS):
        if args.ops and op not in args.ops.split(","):
            continue
        pipe = keras_cv.layers.RandomAugmentationPipeline(layers=[policy[j]], augmentations_per_image=3,
                                                          rate=10 / 11)
        fn = keras_cv_fn(pipe)
        kcv = {k: [] for k in models}
        ours = {k: [] for k in models}
        for d in range(args.op_draws):
            for side, c in (("kcv", fn(x)), ("ours", ours_single_op(x, j, seed=d))):
                for k, p in predict_all(models, c).items():
                    (kcv if side == "kcv" else ours)[k].append(p == y)
        cells = []
        for k in models:
            a, b = np.stack(kcv[k]), np.stack(ours[k])
            diff, (lo, hi) = diff_interval(b, a)
            cells.append(f"{a.mean():.4f}/{b.mean():.4f}/{diff:+.2f} [{lo:+.2f},{hi:+.2f}]")
        print(f"{op:<13} " + " ".join(f"{c:>44}" for c in cells), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--draws", type=int, default=24)
    ap.add_argument("--op-images", type=int, default=1500)
    ap.add_argument("--op-draws", type=int, default=3)
    ap.add_argument("--ops", default="", help="Comma-separated RandAugment ops for the per-op part (default all).")
    ap.add_argument("--save", default=None, help="An npz for every draw's predictions (to re-analyse).")
    ap.add_argument("--skip-pipeline", action="store_true", help="Only the per-op part.")
    args = ap.parse_args()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")             # keras_cv's per-op tf.functions retrace: expected here
    if not PBC.is_dir():
        sys.exit(f"{PBC} is absent: this bench needs the real images")
    print(cpu_line())
    print(f"python {sys.version.split()[0]}; {vars(args)}", flush=True)
    t0 = time.time()
    x_train, y_train, x_held, y_held = load(args)
    models = train_models(x_train, y_train, args.epochs)
    clean_acc = {k: float((p == y_held).mean()) for k, p in predict_all(models, x_held).items()}
    if not args.skip_pipeline:
        correct, dist, t = corrupt_draws(args, x_held, models)
        print(f"\ncorruption time: keras_cv {t['keras_cv']:.0f} s, ours {t['ours']:.0f} s "
              f"({t['keras_cv'] / max(t['ours'], 1e-9):.1f}x) for {args.draws} draws of {len(x_held)} images")
        report_models(correct, y_held, clean_acc)
        report_distributions(dist)
        if args.save:
            np.savez_compressed(args.save, labels=y_held, **{f"{side}:{k}": np.stack(v)
                                                             for side, per in correct.items() for k, v in per.items()})
            print(f"predictions saved to {args.save}")
    if args.op_draws:
        per_op(args, x_held, y_held, models)
    print(f"\ntotal {time.time() - t0:.0f} s; {cpu_line()}")


if __name__ == "__main__":
    main()
