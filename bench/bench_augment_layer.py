"""Training-step cost of the hidden-set augmentation inside a model: none vs ours vs keras_cv 0.9, in one run.

    python bench/bench_augment_layer.py [--batch 32] [--steps 4] [--rounds 3] [--size 96] [--threads 0]

The same small CNN (Rescaling, 4 strided convolutions, GAP, Dense 8; Adam, sparse cross-entropy) is trained with
`model.train_on_batch` on uint8 cell-like images of --size px, with in front of it:
- none: nothing;
- ours: subbench.corrupt.hidden_set_augmentation("an2dl") (numpy simulator through tf.numpy_function);
- keras_cv: keras_cv 0.9 `AugMix(value_range=(0, 255))` then `RandAugment(value_range=(0, 255))`, default
  parameters, as layers of the model (how AN2DL teams corrupted while training). Placed directly in a Keras 3
  model they break the train function (Keras 3 does not autograph-convert layer calls, and keras_cv's
  Equalization does a Python `and` on tensors: OperatorNotAllowedInGraphError), so a one-line wrapper layer
  calls them through a tf.function (autograph on), in graph mode like the rest of the step.
All three are compiled with jit_compile=False (neither augmentation can be XLA-compiled; Keras' "auto" is off on
a CPU anyway). Each variant is traced and warmed up first; then --rounds rounds time --steps steps of each
variant in turn (so machine load affects all alike) and the median images/s is printed, with the ratios
ours/none, keras_cv/none and keras_cv/ours (of images/s: above 1 is faster). The host's CPU model, its
avx2/avx512/amx flags and the load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    present = [fl for fl in FLAGS if fl in flags] or ["none of " + "/".join(FLAGS)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {cores} cores usable; flags: {' '.join(present)}"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _front_class():
    import keras
    import tensorflow as tf

    class KerasCVFront(keras.layers.Layer):
        """keras_cv layers applied when training, through tf.function so that autograph converts their code."""

        def __init__(self, *augmenters, **kwargs):
            super().__init__(**kwargs)
            self.augmenters = list(augmenters)
            self.supports_jit = False

            def run(images):
                for layer in self.augmenters:
                    images = layer(images, training=True)
                return images
            self._run = tf.function(run)

        def call(self, images, training=None):
            return self._run(images) if training else images

        def compute_output_spec(self, images, training=None):
            return keras.KerasTensor(images.shape, dtype=images.dtype)

    return KerasCVFront


def KerasCVFront(*augmenters):  # noqa: N802 - builds the wrapper class only once Keras is imported
    return _front_class()(*augmenters)


def build(front, size: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = inp
    for layer in front:
        x = layer(x)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    for width in (16, 32, 64, 64):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(8)(x))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    return model


def variants(which: list[str]) -> dict:
    out = {}
    if "none" in which:
        out["none"] = lambda: []
    if "ours" in which:
        def ours():
            from subbench.corrupt import hidden_set_augmentation

            return [hidden_set_augmentation("an2dl")]
        out["ours"] = ours
    if "keras_cv" in which:
        def kcv():
            import keras_cv

            return [KerasCVFront(keras_cv.layers.AugMix(value_range=(0, 255)),
                                 keras_cv.layers.RandAugment(value_range=(0, 255)))]
        out["keras_cv"] = kcv
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed train_on_batch steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (tracing, allocator)")
    ap.add_argument("--size", type=int, default=96, help="image side in px (AN2DL: 96)")
    ap.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0 = TF default)")
    ap.add_argument("--only", default="none,ours,keras_cv", help="comma-separated subset of none,ours,keras_cv")
    args = ap.parse_args()
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    if not which or set(which) - {"none", "ours", "keras_cv"}:
        ap.error(f"--only takes none, ours, keras_cv; got {args.only!r}")

    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    from subbench.data.synthetic import cell_like_images

    print(f"host: {cpu_line()}")
    print(f"start: {load_line()}; TF {tf.__version__}, Keras {keras.__version__}, backend {keras.backend.backend()}")
    images, _ = cell_like_images(args.batch, size=args.size, seed=0)
    x = images.astype(np.float32)                        # the model receives raw 0..255 pixels
    y = np.arange(args.batch) % 8
    models = {}
    for name, front in variants(which).items():
        try:
            models[name] = build(front(), args.size)
        except ImportError as exc:
            print(f"{name}: not importable ({exc}); install the dev extra: pip install -e '.[dev]'")
            return 1
        t = time.perf_counter()
        for _ in range(args.warmup):
            models[name].train_on_batch(x, y)
        print(f"{name}: traced + {args.warmup} warm-up steps in {time.perf_counter() - t:.1f} s")
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
    print(f"\ntraining step, batch {args.batch} of {args.size}x{args.size}x3, median of {args.rounds} rounds x "
          f"{args.steps} steps:")
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in med.items():
        print(f"  {name:8s} {r:9.1f} images/s   ({1000 * args.batch / r:7.1f} ms/step; rounds: "
              + ", ".join(f"{v:.1f}" for v in rates[name]) + ")")
    for a, b in (("ours", "none"), ("keras_cv", "none"), ("keras_cv", "ours")):
        if a in med and b in med:
            print(f"  ratio {a}/{b} (images/s): {med[a] / med[b]:.3f}  (step time x{med[b] / med[a]:.2f})")
    print(f"end: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
