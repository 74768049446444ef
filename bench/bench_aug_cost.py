"""Augmentation cost of the cpu recipe, heavy vs none, same model, in the precision and ISA you choose.

bench_cpu_recipe.py --aug-only measures it already (its `augmentation_cost`: the recipe's model trained by
train_on_batch from the recipe's tf.data pipelines, augment none / heavy from the bank of K copies / heavy
corrupted every batch anew, alternating rounds after warm-up) but always in the recipe's own precision, which
on this host is bfloat16 (AVX-512 BF16): a faster model leaves augmentation a larger share than on the goal's
float32 AVX2-only hosts. This script runs that same function with

  --precision float32|bfloat16|recipe   the recipe's mixed_precision switched off / forced on / as shipped;
  --isa AVX2                            ONEDNN_MAX_CPU_ISA for the whole run (re-executes itself with it set
                                        before TensorFlow loads): the AVX2-only hosts' kernels;

then, per pipeline alone (no model), the images/s and the CPU milliseconds an image that producing the batches
costs: on 2 cores that CPU is taken from the training step, whatever the overlap.

    python bench/bench_aug_cost.py [--data ../shared/data/pbc96] [--precision float32] [--isa native]
                                   [--input-size 48 --width 16] [--rounds 3] [--steps 10]
                                   [--pipeline-batches 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hostinfo import LoadMeter, cpu_line, load_text  # noqa: E402


def pipeline_alone(data: Path, batches: int) -> None:
    """Images/s and CPU ms an image of each pipeline iterated without a model."""
    import numpy as np

    from subbench.builder.pipeline import heavy_bank, make_dataset
    from subbench.builder.recipe import load_recipe
    from subbench.builder.train import one_hot
    from subbench.datasets import load_dataset
    from subbench.profile import load_profile

    recipe = load_recipe("cpu")
    batch = recipe.batch_size
    ds = load_dataset(data, load_profile())
    idx = np.random.default_rng(0).choice(len(ds), min(len(ds), batch * batches), replace=False)
    x, y = ds.images[idx], one_hot(ds.labels[idx], 8)
    bank = heavy_bank(x, recipe.heavy_bank, seed=1)
    feeds = {"none": make_dataset(x, y, batch_size=batch, augment="none", seed=1),
             f"heavy, bank of {recipe.heavy_bank}": make_dataset(x, y, batch_size=batch, augment="heavy", seed=1,
                                                                 bank=bank),
             "heavy, every batch anew": make_dataset(x, y, batch_size=batch, augment="heavy", seed=1)}
    print(f"pipelines alone ({batches} batches of {batch}, no model): images/s, CPU ms an image (all threads)")
    for name, feed in feeds.items():
        it = iter(feed.repeat())
        for _ in range(2):
            next(it)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(it)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = batches * batch
        print(f"  {name:28s} {n / wall:8.0f} images/s   {1e3 * cpu / n:6.2f} CPU ms an image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "pbc96")
    ap.add_argument("--precision", choices=("float32", "bfloat16", "recipe"), default="float32")
    ap.add_argument("--isa", default="native", help="ONEDNN_MAX_CPU_ISA (e.g. AVX2); native = unset")
    ap.add_argument("--input-size", type=int, default=0, help="the model's input size (0 = the recipe's)")
    ap.add_argument("--width", type=int, default=0, help="custom_cnn's first-stage width (0 = the recipe's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pipeline-batches", type=int, default=30, help="0 = skip the pipelines-alone part")
    args = ap.parse_args()
    want = None if args.isa == "native" else args.isa
    if os.environ.get("ONEDNN_MAX_CPU_ISA") != want:   # must be set before TensorFlow loads: re-execute
        env = dict(os.environ)
        if want:
            env["ONEDNN_MAX_CPU_ISA"] = want
        else:
            env.pop("ONEDNN_MAX_CPU_ISA", None)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if not args.data.exists():
        sys.exit(f"no data at {args.data}")
    print(cpu_line(), flush=True)
    print(f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, precision {args.precision}",
          flush=True)

    import bench_cpu_recipe
    from subbench.builder import recipe as recipe_module

    original = recipe_module.load_recipe

    def load_recipe(name):
        r = original(name)
        if args.precision != "recipe":
            r = dataclasses.replace(r, mixed_precision=args.precision == "bfloat16")
        # the size the recipe's autosize picks on the host being imitated (its build log prints it)
        return dataclasses.replace(r, input_size=args.input_size or r.input_size, width=args.width or r.width)

    recipe_module.load_recipe = load_recipe
    if args.precision == "bfloat16":   # force it even where precision.py would choose float32 (e.g. --isa AVX2)
        from subbench.builder import precision

        precision.mixed_precision_policy = lambda: ("mixed_bfloat16", "forced by bench_aug_cost --precision")
    meter = LoadMeter().start()
    bench_cpu_recipe.augmentation_cost(args.data, args.rounds, args.steps)
    print(load_text(meter.stop()), flush=True)
    if args.pipeline_batches:
        meter = LoadMeter().start()
        pipeline_alone(args.data, args.pipeline_batches)
        print(load_text(meter.stop()), flush=True)


if __name__ == "__main__":
    main()
