"""`--tta auto` (builder/tta_select.py choose_tta): its decision on cases where the right answer is known.

The model here reads only the pixel at (0, 0): channel 0 holds a class, channel 1 a confidence (percent). Each TTA
view moves another corner there (hflip: top-right, vflip: bottom-left, ...), so writing the corners decides which
views are right. Its predict sleeps a fixed time per image, so the projected server time of each view set, and
with it which sets fit a budget, is known too (sleeping only ever adds time, so "does not fit" is certain and
"fits" has slack).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from subbench.builder.tta_select import SAFETY_MARGIN, STARTUP_S, choose_tta

K = 8                   # classes
SIZE = 8                # image side
N = 64                  # validation images
PER_IMAGE_S = 0.002     # the model's cost per image and view
HIDDEN = 10_000         # hidden-set size the projection is made for


class CornerReader:
    """probabilities = c * onehot(x[0, 0, 0]) + (1 - c) / K with c = x[0, 0, 1] / 100."""

    def __init__(self):
        self.images_seen = 0

    def predict(self, x, batch_size=None, verbose=0):
        x = np.asarray(x)
        self.images_seen += len(x)
        time.sleep(PER_IMAGE_S * len(x))
        cls = x[:, 0, 0, 0].astype(int)
        conf = x[:, 0, 0, 1:2] / 100.0
        return conf * np.eye(K)[cls] + (1 - conf) / K


def corner_images(hard: dict[str, tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Half the images show their label with 90% confidence in every corner ("easy"); in the other half each
    corner named in `hard` shows ("label" | "wrong", confidence %) instead."""
    labels = np.arange(N) % K
    x = np.zeros((N, SIZE, SIZE, 3), np.float32)
    corners = {"tl": (0, 0), "tr": (0, SIZE - 1), "bl": (SIZE - 1, 0), "br": (SIZE - 1, SIZE - 1)}
    for i, label in enumerate(labels):
        for name, (r, c) in corners.items():
            what, conf = hard.get(name, ("label", 90)) if i % 2 else ("label", 90)
            x[i, r, c, 0] = label if what == "label" else (label + 1) % K
            x[i, r, c, 1] = conf
    return x, labels


def budget_fitting(views: int) -> float:
    """A time budget that `views` views fit (with half a view of slack) and views + 1 do not."""
    return (STARTUP_S + PER_IMAGE_S * (views + 0.5) * HIDDEN) * (1 + SAFETY_MARGIN)


# identity reads the top-left corner, hflip the top-right, vflip the bottom-left: the flips outvote a wrong
# top-left; d4 (each corner twice) too.
FLIPS_FIX = {"tl": ("wrong", 40), "tr": ("label", 90), "bl": ("label", 90), "br": ("label", 90)}
# the flips outvote a right top-left; so does d4 (the top-left twice, the three wrong corners twice each).
FLIPS_HURT = {"tl": ("label", 90), "tr": ("wrong", 90), "bl": ("wrong", 90), "br": ("wrong", 90)}


def run(hard, budget):
    x, y = corner_images(hard)
    said: list[str] = []
    choice = choose_tta(CornerReader(), x, y, hidden_size=HIDDEN, time_budget_s=budget, echo=said.append)
    rows = {r["preset"]: r for r in choice.rows}
    return choice, rows, said


def test_flips_chosen_when_they_help_and_d4_does_not_fit():
    choice, rows, said = run(FLIPS_FIX, budget_fitting(3))
    assert (rows["none"]["accuracy"], rows["flips"]["accuracy"], rows["d4"]["accuracy"]) == (0.5, 1.0, 1.0)
    assert (rows["none"]["fits"], rows["flips"]["fits"], rows["d4"]["fits"]) == (True, True, False)
    assert choice.preset == "flips" and choice.views == ["identity", "hflip", "vflip"]
    assert [p for p, r in rows.items() if r["chosen"]] == ["flips"]
    assert choice.per_image_view_s >= PER_IMAGE_S
    assert sum("<- chosen" in line for line in said) == 1 and any("flips" in s and "<- chosen" in s for s in said)


def test_d4_chosen_when_everything_fits():
    choice, rows, _ = run(FLIPS_FIX, 1e6)
    assert all(r["fits"] for r in rows.values())
    assert choice.preset == "d4" and len(choice.views) == 8


def test_none_when_views_cost_too_much_time_even_though_they_help():
    choice, rows, _ = run(FLIPS_FIX, budget_fitting(1))
    assert rows["flips"]["accuracy"] == 1.0 > rows["none"]["accuracy"]
    assert (rows["none"]["fits"], rows["flips"]["fits"], rows["d4"]["fits"]) == (True, False, False)
    assert choice.preset == "none" and choice.views == ["identity"]


def test_none_when_views_lower_accuracy_whatever_the_budget():
    choice, rows, _ = run(FLIPS_HURT, 1e6)
    assert rows["none"]["accuracy"] == 1.0
    assert rows["flips"]["accuracy"] == pytest.approx(0.5) and rows["d4"]["accuracy"] < 1.0
    assert choice.preset == "none"
