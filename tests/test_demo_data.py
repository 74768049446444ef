"""The demo data shipped in the package (subbench/demo_data): a balanced, attributed subset of the PBC images."""

from __future__ import annotations

import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from subbench.datasets import (DEMO_ATTRIBUTION, DEMO_NPZ, DEMO_ZIP, demo, demo_attribution, demo_path,
                               image_hashes, load_dataset)
from subbench.errors import OutputExistsError
from subbench.profile import load_profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PACKAGE_DIR = Path(str(resources.files("subbench") / "demo_data"))


@pytest.fixture(scope="module")
def ds():
    return demo()


def test_balanced_shapes_dtype(ds):
    prof = load_profile()
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (96, 96, 3)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds.images),)
    counts = np.bincount(ds.labels, minlength=prof.num_classes)
    assert len(counts) == prof.num_classes and len(set(counts.tolist())) == 1, counts
    assert counts[0] >= 150                       # enough for a held-out split with a readable interval
    assert len(ds.names) == len(ds) and all(n.lower().endswith(".jpg") for n in ds.names)
    # folders map through the profile's aliases: ig -> immature granulocyte
    ig = prof.class_names.index("immature granulocyte")
    assert all(n.startswith("ig/") for n, y in zip(ds.names, ds.labels) if y == ig)
    assert ds.images.std() > 10                   # real pictures, not blank decodes


def test_no_duplicate_images(ds):
    assert len(set(image_hashes(ds.images))) == len(ds)
    from subbench.data.inspect import inspect

    report = inspect(ds, rules=["exact_duplicates", "near_duplicates", "label_conflicts"])
    assert report.indices(report.rules).size == 0, report.summary()


def test_loading_is_deterministic(ds):
    again = demo()
    assert again.names == ds.names == sorted(ds.names)
    assert np.array_equal(again.images, ds.images) and np.array_equal(again.labels, ds.labels)


def test_attribution_ships_and_names_the_paper():
    text = (PACKAGE_DIR / DEMO_ATTRIBUTION).read_text(encoding="utf-8")
    assert text == demo_attribution()
    for needle in ("Acevedo", "Rodellar", "A dataset of microscopic peripheral blood cell images",
                   "Data in Brief 30 (2020) 105474", "10.1016/j.dib.2020.105474", "CC BY 4.0",
                   "https://creativecommons.org/licenses/by/4.0/", "96x96"):
        assert needle in text, needle
    with zipfile.ZipFile(PACKAGE_DIR / DEMO_ZIP) as zf:     # the zip carries the same text
        assert zf.read(DEMO_ATTRIBUTION).decode("utf-8") == text


def test_zip_holds_original_jpegs_within_budget(ds):
    path = PACKAGE_DIR / DEMO_ZIP
    assert path.stat().st_size <= 10_000_000
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if i.filename != DEMO_ATTRIBUTION]
        assert [i.filename for i in infos] == ds.names
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert all(zf.read(i).startswith(b"\xff\xd8") for i in infos[:20])
    per_class = np.bincount(ds.labels)[0]
    assert f"{per_class} per class" in demo_attribution()


def test_package_data_lists_the_demo_folder():
    pkg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["subbench"]
    shipped = {p.name for pattern in pkg for p in (REPO / "subbench").glob(pattern)}
    assert {DEMO_ZIP, DEMO_ATTRIBUTION} <= shipped


def test_demo_path_writes_only_the_target(tmp_path, ds):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in PACKAGE_DIR.iterdir())
    out = tmp_path / "out"
    out.mkdir()
    path = demo_path(out)
    assert path == out / DEMO_NPZ and sorted(p.name for p in out.iterdir()) == [DEMO_NPZ]
    loaded = load_dataset(path, load_profile())
    assert np.array_equal(loaded.images, ds.images) and np.array_equal(loaded.labels, ds.labels)
    with np.load(path, allow_pickle=False) as npz:
        assert "Acevedo" in str(npz["attribution"]) and list(npz["names"]) == ds.names
    with pytest.raises(OutputExistsError):
        demo_path(path)
    named = demo_path(tmp_path / "d.npz")
    assert named == tmp_path / "d.npz" and named.exists()
    assert demo_path(path, force=True) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "out"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in PACKAGE_DIR.iterdir()) == before


def _jpeg(path: Path, colour, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def test_subset_script_is_reproducible_and_skips_copies(tmp_path):
    from subbench.data import demo_subset

    src = tmp_path / "src"
    for k, folder in enumerate(["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                "neutrophil", "platelet"]):
        for i in range(5):
            _jpeg(src / folder / f"{folder[:2].upper()}_{i}.jpg", (30 * k, 100, 200 - 20 * k), seed=100 * k + i)
    dup = (src / "basophil" / "BA_0.jpg").read_bytes()
    (src / "basophil" / "BA_9.jpg").write_bytes(dup)          # an exact copy in the same class
    (src / "platelet" / "PL_9.jpg").write_bytes(dup)          # and one with another label: every copy goes
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    for out in (a, b):
        assert demo_subset.main(["--source", str(src), "-o", str(out), "--no-inspect"]) == 0
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = [n for n in zf.namelist() if n != "LICENSE.txt"]
        assert len(names) == 8 * 4                  # basophil keeps 4 of its 5 distinct images: 4 per class
        assert not {"basophil/BA_0.jpg", "basophil/BA_9.jpg", "platelet/PL_9.jpg"} & set(names)
        assert zf.read(names[0]) == (src / names[0]).read_bytes()      # original bytes
        assert "4 per class" in zf.read("LICENSE.txt").decode()
    small = tmp_path / "small.zip"                  # a byte budget picks the largest N that fits
    assert demo_subset.main(["--source", str(src), "-o", str(small), "--no-inspect",
                             "--max-bytes", str(a.stat().st_size - 1)]) == 0
    with zipfile.ZipFile(small) as zf, zipfile.ZipFile(a) as big:
        got = set(zf.namelist()) - {"LICENSE.txt"}
        assert len(got) == 8 * 3 and got < set(big.namelist())       # a prefix of the larger selection


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "pbc96").is_dir(), reason="../shared/data/pbc96 not present")
def test_shipped_zip_is_reproduced_from_pbc96(tmp_path):
    from subbench.data import demo_subset

    out, lic = tmp_path / DEMO_ZIP, tmp_path / DEMO_ATTRIBUTION
    assert demo_subset.main(["--source", str(SHARED / "data" / "pbc96"), "-o", str(out),
                             "--attribution", str(lic)]) == 0
    assert out.read_bytes() == (PACKAGE_DIR / DEMO_ZIP).read_bytes()
    assert lic.read_text(encoding="utf-8") == demo_attribution()
