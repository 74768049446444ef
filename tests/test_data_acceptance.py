"""Acceptance on real cells: pbc96 plus junk planted the way AN2DL's training_set.npz was built.

Needs ../shared (skipped without it). The goal: inspect/clean find >= 99% of the planted junk and remove <= 1% of
the real cells (the originals of planted label conflicts count as removed real cells).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
PBC96 = SHARED / "data" / "pbc96"
ORIGINALS = SHARED / "data" / "pbc_originals"

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not PBC96.is_dir(), reason="../shared/data/pbc96 not present")
def test_pbc96_with_planted_junk():
    from subbench.data.clean import clean
    from subbench.data.inspect import inspect
    from subbench.data.synthetic import detection_rates, plant_junk
    from subbench.datasets import load_dataset
    from subbench.profile import load_profile

    profile = load_profile()
    real = load_dataset(PBC96, profile)
    planted = plant_junk(real.images, real.labels, profile.num_classes, seed=0)
    report = inspect(planted, class_names=profile.class_names)
    _, removed = clean(planted, report)
    rates = detection_rates(planted, np.array([i for i, _ in removed]), report.flagged)
    assert rates["found_rate"] >= 0.99, rates
    assert rates["real_removed_rate"] <= 0.01, rates
    for kind, row in rates["by_kind"].items():
        assert row["removed"] >= 0.99 * row["planted"], (kind, row)


@pytest.mark.skipif(not (ORIGINALS.is_dir() and PBC96.is_dir()), reason="../shared/data not present")
def test_import_of_pbc_originals_reproduces_pbc96(tmp_path):
    """`data import` (200 px centre crop, Lanczos to 96) on the full-size originals gives the pbc96 images."""
    from conftest import run_cli
    from PIL import Image

    out = tmp_path / "originals.npz"
    r = run_cli("data", "import", str(ORIGINALS), "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = np.load(out)
    files = sorted(p for p in ORIGINALS.rglob("*") if p.is_file())
    assert len(data["images"]) == len(files)
    diffs = []
    for img, f in zip(data["images"], files):
        ref = PBC96 / f.parent.name / f.name
        if ref.exists():
            with Image.open(ref) as im:
                diffs.append(np.abs(img.astype(int) - np.asarray(im.convert("RGB"), int)).mean())
    assert len(diffs) >= 0.9 * len(files)
    assert np.median(diffs) < 4.0, diffs          # pbc96 is JPEG: re-encoding error only
