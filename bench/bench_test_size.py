"""Test-time input size: a trained cpu-recipe build evaluated with the model's inner resize at other sizes.

FixRes (Touvron et al., 2019) finds that a network trained with random-resized crops scores better tested at a larger
size than it trained at. This measures whether that holds for the `cpu` recipe, whose augmentation (the hidden set's
AugMix + RandAugment) shears, rotates and shifts but never zooms: the build's final weights (sub.build/main/phase1)
are loaded into the same network built at each --sizes value and scored on the held-out split of the zip's manifest,
corrupted like the hidden set, the same --draws draws for every size, without TTA. Prints, per build and size, the
accuracy of each draw and the paired difference against the size it was trained at (per image, mean over the draws;
bootstrap interval over images).

    python bench/bench_test_size.py /tmp/bench-cpu [/tmp/bench-cpu-2 ...] [--sizes 56,64,72,80] [--draws 3]
                                    [--phase phase1_lowres]   # the 48 px part of progressive resizing, tested larger

Each folder is a bench_cpu_recipe.py --out folder (sub.zip, sub.build/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_hidden_fidelity import diff_interval  # noqa: E402
from hostinfo import cpu_line  # noqa: E402


def trained_recipe(build_dir: Path):
    """The recipe the build trained with, as its state.json recorded it (command-line options included), read the
    way a resumed build reads it."""
    from subbench.builder.recipe import Recipe
    from subbench.builder.train import _current_form

    return Recipe(**_current_form(json.loads((build_dir / "main" / "state.json").read_text())["recipe"]))


def correct_by_size(run: Path, data: Path, sizes: list[int], draws: int, phase: str):
    """{size: (draws, images) bool array of right answers}, and the size `phase` trained at."""
    import numpy as np

    from local_bench.evaluate import ScoreOptions, select_images
    from subbench.builder.autosize import lowres_size
    from subbench.builder.models import build_model
    from subbench.builder.train import model_options, recipe_head
    from subbench.corrupt.an2dl import apply_an2dl
    from subbench.manifest import read_manifest
    from subbench.profile import load_profile

    recipe = trained_recipe(run / "sub.build")
    size = json.loads((run / "sub.build" / "summary.json").read_text())["model_size"]
    trained = lowres_size(size["input_size"]) if phase.endswith("_lowres") else size["input_size"]
    images, labels, _, _ = select_images(str(data), load_profile(), read_manifest(run / "sub.zip"), ScoreOptions(),
                                         echo=lambda _: None)
    corrupted = [apply_an2dl(np.asarray(images), seed=s) for s in range(draws)]
    out = {}
    for s in sorted(set(sizes) | {trained}):
        built = build_model(recipe.backbone, num_classes=8, input_shape=(96, 96, 3), input_size=s, weights="none",
                            head=recipe_head(recipe), width=size["width"], **model_options(recipe))
        built.model.load_weights(run / "sub.build" / "main" / f"{phase}.best.weights.h5")
        out[s] = np.stack([built.model.predict(x, batch_size=256, verbose=0).argmax(1) == labels
                           for x in corrupted])
    return out, trained


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="bench_cpu_recipe.py --out folders")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc96")
    ap.add_argument("--sizes", default="56,64,72,80")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--phase", default="phase1", help="whose weights: phase1 (final), phase1_lowres (progressive "
                    "resizing's small part, as it ended)")
    args = ap.parse_args()
    print(cpu_line())
    sizes = [int(s) for s in args.sizes.split(",")]
    for run in args.runs:
        correct, trained = correct_by_size(run, args.data, sizes, args.draws, args.phase)
        print(f"{run} ({args.phase}): trained at {trained} px; {correct[trained].shape[1]} held-out images, {args.draws} an2dl draws, "
              "no TTA")
        for s, c in correct.items():
            points, (lo, hi) = diff_interval(c, correct[trained])
            print(f"  tested at {s} px: accuracy {c.mean():.4f} (draws {', '.join(f'{a:.4f}' for a in c.mean(1))}); "
                  f"against {trained} px {points / 100:+.4f}, 95% [{lo / 100:+.4f}, {hi / 100:+.4f}]", flush=True)


if __name__ == "__main__":
    main()
