"""Fit a from-scratch model to the host: time a training step of a few model sizes, train the largest that fits.

The `cpu` recipe's score is decided by how many epochs its time budget holds (on pbc96, 25 epochs of the 64 px
model in an hour scored ~0.83 on the simulated hidden set on an AVX2 host, 175 epochs 0.92 on an AMX host), and
a step's cost varies 5x between this project's 2-core machines. So instead of one size for every host, the
recipe names a number of epochs (`autosize_epochs`) and `choose_size` measures, at the start of the build,
the seconds a step takes for each candidate (input size, width) from the most to the least costly, stopping at
the first whose epochs in the remaining budget reach the target; when none does, the cheapest. It prints the
table of what it measured and the reason for the choice.

A candidate's cost: a few steps of `train_on_batch` on real training images after one traced step (the step
that compiles the graph is not timed), under the build's precision policy. An epoch = steps a pass x the step,
plus the validation pass (a forward pass costs about a third of a training step, measured on custom_cnn).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

# (input size, custom_cnn width) from the most to the least costly (bench/bench_throughput.py measured the
# step at 64 px / 32..256 as 1, 64 px / 24..192 0.66, 48 px / 32..256 0.57, 48 px / 24..192 0.40, 48 px /
# 16..128 ~0.25).
CANDIDATES = ((64, 32), (64, 24), (48, 32), (48, 24), (48, 16))
# custom_cnn's inverted residual blocks: ~1/6 of the basic blocks' weights at the same widths and 1.6x the images/s
# (bench/bench_throughput.py, AVX2), so wider stages come first.
INVERTED_CANDIDATES = ((64, 48), (64, 32), (64, 24), (48, 32), (48, 24))


def candidates_for(block: str) -> tuple:
    """The (input size, width) candidates for custom_cnn's `block`, most costly first."""
    return INVERTED_CANDIDATES if block == "inverted" else CANDIDATES
PROBE_STEPS = 3
FORWARD_SHARE = 1 / 3   # a forward (validation) image costs about a third of a training image
PROGRESSIVE_SCALE = 0.75   # progressive resizing: the first part's input size, as a share of the full one


def lowres_size(size: int) -> int:
    """The input size progressive resizing starts at: PROGRESSIVE_SCALE of `size`, down to a multiple of 8, >= 32."""
    return max(32, int(size * PROGRESSIVE_SCALE) // 8 * 8)


@dataclass
class SizeChoice:
    input_size: int
    width: int
    seconds_per_epoch: float
    epochs: float               # epochs the remaining budget holds at this size
    reason: str
    rows: list = field(default_factory=list)   # every candidate measured: dicts for summary.json

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "width": self.width,
                "seconds_per_epoch": round(self.seconds_per_epoch, 2), "epochs": round(self.epochs, 1),
                "reason": self.reason, "candidates": self.rows}


def step_seconds(model, images: np.ndarray, labels_onehot: np.ndarray, steps: int = PROBE_STEPS) -> float:
    """Median seconds of one training step of a compiled `model` on this batch (after one untimed step)."""
    x, y = images.astype(np.float32), labels_onehot
    model.train_on_batch(x, y)       # traces and compiles the step
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def choose_size(build_probe, *, batch: tuple[np.ndarray, np.ndarray], steps_per_epoch: int, val_images: int,
                seconds_left, target_epochs: int, candidates=CANDIDATES, progressive: float = 0.0,
                echo=print) -> SizeChoice:
    """The first of `candidates` whose epochs in the budget reach `target_epochs`, else the cheapest.

    build_probe(input_size, width) -> a compiled keras.Model of that size; `batch` (images, one-hot labels) one
    training batch; seconds_left() the training seconds left at the time of asking (the probe's own time and
    other work before training already subtracted by the caller's clock). progressive: the share of the budget
    trained at lowres_size(size) (progressive resizing); that size's step is timed too and its epochs counted.
    """
    rows = []
    batch_size = len(batch[0])
    chosen = None
    timed = {}

    def epoch_seconds(size, width):
        if (size, width) not in timed:
            timed[size, width] = step_seconds(build_probe(size, width), *batch)
        step = timed[size, width]
        return step, step * (steps_per_epoch + FORWARD_SHARE * val_images / batch_size)

    for size, width in candidates:
        t0 = time.perf_counter()
        step, epoch_s = epoch_seconds(size, width)
        left = max(seconds_left(), 0.0)
        epochs = left / epoch_s
        row = {"input_size": size, "width": width, "step_s": round(step, 4),
               "images_per_s": round(batch_size / step, 1), "seconds_per_epoch": round(epoch_s, 1)}
        how = ""
        if progressive:
            low = lowres_size(size)
            _, low_epoch_s = epoch_seconds(low, width)
            epochs = progressive * left / low_epoch_s + (1 - progressive) * left / epoch_s
            row["lowres"] = {"input_size": low, "seconds_per_epoch": round(low_epoch_s, 1)}
            how = f" ({progressive:.0%} of it at {low} px, {low_epoch_s:.0f} s an epoch)"
        rows.append({**row, "epochs_in_budget": round(epochs, 1), "probe_s": round(time.perf_counter() - t0, 1)})
        echo(f"  size {size} px, width {width}: {batch_size / step:.0f} images/s, {epoch_s:.0f} s an epoch, "
             f"{epochs:.0f} epochs in the budget{how}")
        if epochs >= target_epochs:
            chosen = (size, width, epoch_s, epochs,
                      f"the largest size whose epochs in the budget ({epochs:.0f}) reach the target of "
                      f"{target_epochs}")
            break
    if chosen is None:
        size, width = rows[-1]["input_size"], rows[-1]["width"]
        epoch_s, epochs = rows[-1]["seconds_per_epoch"], rows[-1]["epochs_in_budget"]
        chosen = (size, width, epoch_s, epochs,
                  f"no size reaches the target of {target_epochs} epochs in the budget on this host; the "
                  f"cheapest ({epochs:.0f} epochs)")
    return SizeChoice(*chosen, rows=rows)
