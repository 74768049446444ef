"""Step time of `custom_cnn` (subbench.builder.custom_cnn) on this machine's CPU, training at batch 64 on 96x96.

Builds the model exactly as `build_model("custom_cnn")` does (Rescaling inside, GAP head, float32 softmax),
compiles it with AdamW and categorical cross-entropy, and times `train_on_batch` on random 0..255 images
(the input pipeline is not part of this number). Variants of the width/depth/BatchNorm/precision/edge channels
are timed side by side, in alternating rounds so that machine load affects all alike, with XLA (Keras' default on CPU,
jit_compile "auto") and without; medians are printed, plus the projected epoch time for 11,000 images.

    python bench/bench_custom_cnn.py [--rounds 5] [--steps 5] [--threads 2] [--input-size 64] [--xla off]
                                     [--variants "bf16"]   (only the variants whose name holds this text)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = {
    "default (32,64,128,256)x(1,2,2,1)": {},
    "default, Keras BatchNorm (not fused)": {"fused_batchnorm": False},
    # --mixed-precision on a CPU with AMX / AVX-512 BF16 (builder/precision.py); "policy" is not a custom_cnn option
    "default, mixed_bfloat16 policy": {"policy": "mixed_bfloat16"},
    # --inputs edges: 6 Sobel channels in float32 before the bf16 net ("inputs": build_model's input branches)
    "default, bf16, edge channels": {"policy": "mixed_bfloat16", "inputs": "edges"},
    # --inputs edges,equalized: 3 soft-histogram-equalised channels (17 knots) in float32 as well
    "default, bf16, edge + equalized channels": {"policy": "mixed_bfloat16", "inputs": "edges,equalized"},
    "(24,48,96,192)x(1,2,2,1)": {"widths": (24, 48, 96, 192)},
    "(32,64,128,256)x(1,1,2,1)": {"blocks": (1, 1, 2, 1)},
    "(32,64,128,256)x(1,1,1,1)": {"blocks": (1, 1, 1, 1)},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0 = TF default)")
    ap.add_argument("--epoch-images", type=int, default=11000)
    ap.add_argument("--input-size", type=int, default=96, help="resized to inside the model, as --input-size does")
    ap.add_argument("--xla", choices=("both", "on", "off"), default="both",
                    help="jit_compile True (Keras' 'auto' on CPU) and/or False")
    ap.add_argument("--variants", default="", help="time only the variants whose name contains this text; the "
                    "first one kept is the ratios' base")
    args = ap.parse_args()
    variants = {name: kw for name, kw in VARIANTS.items() if args.variants in name}
    if not variants:
        ap.error(f"no variant name contains {args.variants!r}: " + "; ".join(VARIANTS))

    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    from subbench.builder import custom_cnn as cnn
    from subbench.builder.input_branches import InputBranches
    from subbench.builder.models import build_model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, 96, 96, 3)).astype("float32")
    y = np.eye(8, dtype="float32")[rng.integers(0, 8, args.batch)]

    runs = {}
    original = cnn.custom_cnn
    for name, kw in variants.items():
        for jit in {"both": (True, False), "on": (True,), "off": (False,)}[args.xla]:
            kw = dict(kw)
            keras.mixed_precision.set_global_policy(kw.pop("policy", "float32"))
            inputs = InputBranches.from_names(kw.pop("inputs", None))
            cnn.custom_cnn = lambda *a, _kw=kw, **k: original(*a, **{**k, **_kw})
            built = build_model("custom_cnn", input_size=args.input_size, inputs=inputs)
            built.model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy", jit_compile=jit)
            keras.mixed_precision.set_global_policy("float32")
            t0 = time.perf_counter()
            built.model.train_on_batch(x, y)       # trace (and XLA-compile)
            runs[(name, jit)] = {"model": built.model, "params": built.model.count_params(),
                                 "first": time.perf_counter() - t0, "times": []}
    cnn.custom_cnn = original

    for _ in range(args.rounds):
        for run in runs.values():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run["model"].train_on_batch(x, y)
            run["times"].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(next(iter(runs.values()))["times"])
    print(f"batch {args.batch}, 96x96x3 resized to {args.input_size} in the model, {os.cpu_count()} CPUs visible, "
          f"threads {args.threads or 'default'}, {args.rounds} rounds x {args.steps} steps, Keras {keras.__version__}")
    print(f"{'variant':42s} {'xla':>5s} {'params':>8s} {'first step':>10s} {'step (median)':>14s} "
          f"{'epoch of ' + str(args.epoch_images):>16s} {'ratio':>6s}")
    for (name, jit), run in runs.items():
        step = statistics.median(run["times"])
        epoch = step * args.epoch_images / args.batch
        print(f"{name:42s} {str(jit):>5s} {run['params'] / 1e6:7.2f}M {run['first']:9.1f}s {step * 1000:11.0f} ms "
              f"{epoch / 60:13.1f} min {step / base:6.2f}")


if __name__ == "__main__":
    main()
