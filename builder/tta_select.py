"""`--tta auto`: the largest set of test-time views that fits the time budget and does not lower accuracy.

Cost: each view is one more pass of the model over the hidden set, so the projected server time is
  start-up + per-image cost x views x hidden-set size,
with the per-image cost measured here on the validation images. It must fit the budget with a safety margin
(the server's speed is unknown). Accuracy: measured on the validation split (corrupted like the hidden set
when the build corrupts its validation set); a view set is kept only if it scores at least as well as the
identity alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from subbench.builder.package import TTA_PRESETS
from subbench.submission_template.model import VIEWS  # the very views the zip will apply

AUTO = "auto"                         # --tta auto: choose_tta picks a preset
TTA_CHOICES = (*TTA_PRESETS, AUTO)    # what --tta and a recipe's tta take
CANDIDATES = tuple(TTA_PRESETS)       # in order of growing cost
SAFETY_MARGIN = 0.5      # projected time x 1.5 must fit: the server may be slower than this machine
STARTUP_S = 15.0         # process start, TensorFlow import and model load on the server (measured here: 5-10 s)


@dataclass
class TTAChoice:
    preset: str
    views: list[str]
    per_image_view_s: float
    rows: list[dict]          # per candidate: preset, views, projected_s, fits, accuracy, chosen


def choose_tta(model, images: np.ndarray, labels: np.ndarray, *, hidden_size: int, time_budget_s: float,
               batch_size: int = 64, echo=print) -> TTAChoice:
    x = images.astype(np.float32)
    timing = x[: min(len(x), 512)]
    model.predict(timing[:batch_size], batch_size=batch_size, verbose=0)  # warm-up (graph tracing)
    t0 = time.perf_counter()
    model.predict(timing, batch_size=batch_size, verbose=0)
    per_image = (time.perf_counter() - t0) / len(timing)
    probs = {name: model.predict(np.ascontiguousarray(fn(x)), batch_size=batch_size, verbose=0)
             for name, fn in VIEWS.items()}
    rows, base_acc = [], None
    for preset in CANDIDATES:
        views = TTA_PRESETS[preset]
        projected = STARTUP_S + per_image * len(views) * hidden_size
        acc = float(np.mean(np.mean([probs[v] for v in views], axis=0).argmax(1) == labels))
        base_acc = acc if base_acc is None else base_acc
        rows.append({"preset": preset, "views": views, "projected_s": round(projected, 1),
                     "fits": projected * (1 + SAFETY_MARGIN) <= time_budget_s, "accuracy": acc})
    eligible = [r for r in rows if r["fits"] and r["accuracy"] >= base_acc]
    chosen = max(eligible, key=lambda r: len(r["views"])) if eligible else rows[0]
    for r in rows:
        r["chosen"] = r is chosen
        echo(f"  tta {r['preset']:5s} {len(r['views'])} views: projected {r['projected_s']:7.1f} s for "
             f"{hidden_size} images ({'fits' if r['fits'] else 'too slow'}), val accuracy {r['accuracy']:.4f}"
             + ("  <- chosen" if r["chosen"] else ""))
    return TTAChoice(chosen["preset"], list(chosen["views"]), per_image, rows)
