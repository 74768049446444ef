"""subbench.corrupt: presets, suite registry, cache, determinism, training augmentation, bad input.

Procedural cell-like images only (subbench.data.synthetic); fidelity to keras_cv is in
test_corrupt_fidelity.py, the real-data distribution check in test_corrupt_distribution.py (slow).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from subbench.corrupt import (CORRUPTIONS, PRESETS, SEVERITIES, CorruptionInputError, SeverityError,
                              UnknownCorruptionError, UnknownPresetError, an2dl, apply_preset, augment_fn, corrupt,
                              iter_suite, training_augment)
from subbench.corrupt.preview import write_preview
from subbench.data.synthetic import cell_like_images
from subbench.errors import OutputExistsError, SubbenchError


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return cell_like_images(24, seed=1)[0]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SUBBENCH_CACHE", str(path))
    return path


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------------------------- an2dl
def test_an2dl_changes_images_and_keeps_format(cells):
    out = apply_preset(cells, "an2dl", seed=0, cache=False)
    assert out.dtype == np.uint8 and out.shape == cells.shape
    per_image = np.abs(out.astype(int) - cells).mean(axis=(1, 2, 3))
    assert (per_image > 1).mean() > 0.9          # AugMix alone changes every image
    assert 20 < per_image.mean() < 150           # heavy, as the hidden set (real data: ~80 grey levels)


def test_an2dl_is_deterministic_in_seed(cells):
    a = apply_preset(cells, "an2dl", seed=3, cache=False)
    b = apply_preset(cells, "an2dl", seed=3, cache=False)
    c = apply_preset(cells, "an2dl", seed=4, cache=False)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_an2dl_image_result_depends_only_on_seed_and_index(cells):
    """Chunking, thread count and set length do not change an image's result."""
    ref = an2dl.apply_an2dl(cells, 5, workers=1)
    assert np.array_equal(an2dl.apply_an2dl(cells, 5, workers=2), ref)
    assert np.array_equal(an2dl.apply_an2dl(cells[:7], 5, workers=1), ref[:7])
    old = an2dl.CHUNK
    try:
        an2dl.CHUNK = 5
        assert np.array_equal(an2dl.apply_an2dl(cells, 5, workers=2), ref)
    finally:
        an2dl.CHUNK = old


def test_an2dl_samples_ops_per_image_not_per_batch(cells):
    """Keras 3's AugMix/RandAugment pick one op list per batch; keras_cv 0.9 (and we) pick per image."""
    same = np.repeat(cells[:1], 16, axis=0)
    out = apply_preset(same, "an2dl", seed=0, cache=False)
    assert len({o.tobytes() for o in out}) == 16
    d = an2dl.draw(64, seed=0)
    assert len({tuple(r) for r in d.ra_op}) > 40 and len({tuple(r.ravel()) for r in d.op}) > 40


def test_an2dl_sampler_follows_keras_cv_distributions():
    d = an2dl.draw(30000, seed=2)
    applied = d.ra_u <= an2dl.RA_RATE
    assert abs(applied.mean() - 10 / 11) < 0.01
    assert np.allclose(np.bincount(d.ra_op.ravel()) / d.ra_op.size, 1 / 10, atol=0.01)
    assert np.allclose(np.bincount(d.op.ravel()) / d.op.size, 1 / 8, atol=0.01)     # op 8 never drawn
    assert np.allclose(np.bincount(d.depth.ravel())[1:] / d.depth.size, 1 / 3, atol=0.01)
    assert np.allclose(d.chain_weight.sum(axis=1), 1, atol=1e-5) and (d.chain_weight >= 0).all()
    assert abs(d.mix_weight.mean() - 0.5) < 0.01 and abs(d.mix_weight.std() - (1 / 12) ** 0.5) < 0.01
    lo, hi = an2dl.SEVERITY_RANGE
    assert lo <= d.severity.min() and d.severity.max() < hi
    assert abs((d.sign > 0).mean() - 0.5) < 0.01 and abs((d.ra_sign > 0).mean() - 0.5) < 0.01


# ------------------------------------------------------------------------------------------- noise
def test_noise_preset_sigma(cells):
    low = apply_preset(cells, "noise", seed=0, cache=False, sigma=5)
    high = apply_preset(cells, "noise", seed=0, cache=False, sigma=40)
    default = apply_preset(cells, "noise", seed=0, cache=False)
    assert low.dtype == np.uint8 and low.shape == cells.shape
    assert mean_change(low, cells) < mean_change(default, cells) < mean_change(high, cells)
    assert 2 < mean_change(low, cells) < 6          # E|N(0, 5)| = 4 grey levels (less a little clipping)


@pytest.mark.parametrize("params", [{"sigma": 0}, {"sigma": 300}, {"sigma": "x"}, {"gamma": 1}])
def test_noise_preset_bad_params(cells, params, cache_dir):
    with pytest.raises(CorruptionInputError):
        apply_preset(cells, "noise", **params)
    assert not cache_dir.exists()


# ------------------------------------------------------------------------------------------- cache
def test_cache_is_read_back_not_recomputed(cells, cache_dir):
    first = apply_preset(cells, "an2dl", seed=0)
    files = list((cache_dir / "corrupt").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    marker = np.full_like(first, 7)                  # replace the entry: a cache hit must return it
    np.save(files[0], marker)
    assert np.array_equal(apply_preset(cells, "an2dl", seed=0), marker)
    assert np.array_equal(apply_preset(cells, "an2dl", seed=0, cache=False), first)
    apply_preset(cells, "an2dl", seed=1)
    apply_preset(cells[:-1], "an2dl", seed=0)
    apply_preset(cells, "noise", seed=0, sigma=9)
    names = sorted(p.name for p in (cache_dir / "corrupt").iterdir())
    assert len(names) == 4 and not any(n.endswith(".tmp") for n in names)


def test_cache_off_writes_nothing(cells, cache_dir):
    apply_preset(cells, "an2dl", seed=0, cache=False)
    assert not cache_dir.exists()


def test_damaged_cache_entry_is_recomputed(cells, cache_dir):
    first = apply_preset(cells, "an2dl", seed=0)
    entry = next((cache_dir / "corrupt").iterdir())
    entry.write_bytes(b"not an npy file")
    assert np.array_equal(apply_preset(cells, "an2dl", seed=0), first)


# ------------------------------------------------------------------------------------------- suite
def test_registry_has_the_bloodmnist_list_and_noises():
    assert set(CORRUPTIONS) >= {"pixelate", "jpeg_compression", "defocus_blur", "motion_blur", "brightness_up",
                                "brightness_down", "contrast_up", "contrast_down", "saturate", "stain_deposit",
                                "bubble", "gaussian_noise", "shot_noise"}
    assert PRESETS == ("an2dl", "noise", "suite") and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_all_severities(cells, name):
    changes = []
    for severity in SEVERITIES:
        out = corrupt(cells, name, severity, seed=0)
        assert out.dtype == np.uint8 and out.shape == cells.shape
        assert np.array_equal(out, corrupt(cells, name, severity, seed=0))
        changes.append(mean_change(out, cells))
    assert changes[0] > 0.05, f"{name} severity 1 leaves the images unchanged"
    assert changes[-1] > changes[0], f"{name}: severity 5 changes less than severity 1 ({changes})"


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "motion_blur", "bubble", "stain_deposit"])
def test_random_corruptions_depend_on_seed(cells, name):
    assert not np.array_equal(corrupt(cells, name, 3, seed=0), corrupt(cells, name, 3, seed=1))


def test_iter_suite_streams_every_step(cells):
    gen = iter_suite(cells[:3], seed=0)
    assert inspect.isgenerator(gen)
    steps = [(name, sev) for name, sev, arr in gen]
    assert steps == [(n, s) for n in CORRUPTIONS for s in SEVERITIES]
    name, sev, arr = next(iter_suite(cells[:3], seed=0, severities=(4,), names=["saturate"]))
    assert (name, sev) == ("saturate", 4) and np.array_equal(arr, corrupt(cells[:3], "saturate", 4, seed=0))


def test_iter_suite_checks_arguments_before_iterating(cells):
    with pytest.raises(SeverityError):
        iter_suite(cells, severities=(1, 6))
    with pytest.raises(UnknownCorruptionError):
        iter_suite(cells, names=["fog"])


# ------------------------------------------------------------------------------------------- bad input
BAD_IMAGES = {
    "list": [[[[0, 0, 0]]]],
    "float": np.zeros((2, 8, 8, 3), np.float32),
    "int64": np.zeros((2, 8, 8, 3), np.int64),
    "no batch axis": np.zeros((8, 8, 3), np.uint8),
    "4 channels": np.zeros((2, 8, 8, 4), np.uint8),
    "empty": np.zeros((0, 8, 8, 3), np.uint8),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_are_named_errors(kind, cache_dir):
    bad = BAD_IMAGES[kind]
    for call in (lambda: apply_preset(bad, "an2dl"), lambda: corrupt(bad, "pixelate", 1),
                 lambda: iter_suite(bad), lambda: training_augment(bad, 0)):
        with pytest.raises(CorruptionInputError) as info:
            call()
        assert isinstance(info.value, SubbenchError) and info.value.exit_code == 2 and info.value.hint
    assert not cache_dir.exists()


def test_unknown_names_and_bad_severity(cells):
    with pytest.raises(UnknownPresetError):
        apply_preset(cells, "hidden")
    with pytest.raises(UnknownPresetError):
        apply_preset(cells, "suite")                 # many arrays: iter_suite
    with pytest.raises(UnknownPresetError):
        augment_fn("fog")
    with pytest.raises(UnknownCorruptionError):
        corrupt(cells, "fog", 1)
    for severity in (0, 6, 2.5, True, "3"):
        with pytest.raises(SeverityError):
            corrupt(cells, "pixelate", severity)
    for seed in (-1, 1.5, "0"):
        with pytest.raises(CorruptionInputError):
            apply_preset(cells, "an2dl", seed=seed)


# ------------------------------------------------------------------------------------------- training
def test_training_augment(cells):
    assert np.array_equal(training_augment(cells, 0, share=0.0, noise_sigma=0.0), cells)
    assert np.array_equal(training_augment(cells, 4, share=1.0), an2dl.apply_an2dl(cells, 4))
    part = training_augment(cells, 4, share=0.5)
    untouched = np.all(part == cells, axis=(1, 2, 3))
    assert 0 < untouched.sum() < len(cells)
    noisy = training_augment(cells, 4, share=0.0, noise_sigma=8.0)
    assert np.all(np.any(noisy != cells, axis=(1, 2, 3))) and mean_change(noisy, cells) < 10
    assert np.array_equal(noisy, training_augment(cells, 4, share=0.0, noise_sigma=8.0))
    with pytest.raises(CorruptionInputError):
        training_augment(cells, 0, share=1.5)


def test_augment_fn_numpy(cells):
    fn = augment_fn("an2dl")
    one = fn(cells[0], seed=3)
    assert one.shape == cells[0].shape and one.dtype == np.uint8
    assert np.array_equal(one, fn(cells[0], seed=3)) and not np.array_equal(one, cells[0])
    batch = fn(cells[:4], seed=3)
    assert np.array_equal(batch, apply_preset(cells[:4], "an2dl", seed=3, cache=False))
    assert augment_fn("noise", sigma=10)(cells[:2], seed=0).shape == cells[:2].shape


def test_augment_fn_in_tf_data(cells):
    import tensorflow as tf

    fn = augment_fn("an2dl")
    labels = np.arange(len(cells))
    ds = tf.data.Dataset.from_tensor_slices((cells, labels)).batch(8)
    ds = ds.map(lambda x, y: (fn(x, seed=tf.cast(y[0], tf.int64)), y), num_parallel_calls=2)
    out = np.concatenate([x.numpy() for x, _ in ds])
    assert out.dtype == np.uint8 and out.shape == cells.shape
    assert np.array_equal(out[:8], fn(cells[:8], seed=0)) and np.array_equal(out[8:16], fn(cells[8:16], seed=8))
    single = tf.data.Dataset.from_tensor_slices(cells[:3]).map(fn)        # per image, seeds from TF's RNG
    items = [x.numpy() for x in single]
    assert all(x.shape == cells[0].shape for x in items) and not np.array_equal(items[0], cells[0])
    with pytest.raises(CorruptionInputError):
        fn(tf.zeros((2, 8, 8, 3), tf.float32))


# ------------------------------------------------------------------------------------------- preview
def test_preview_png(cells, tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    write_preview(path, [("clean", cells[:5]), ("an2dl", apply_preset(cells[:5], "an2dl", cache=False))])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 5 * 96 and im.height > 2 * 96
    with pytest.raises(OutputExistsError):
        write_preview(path, [("clean", cells[:5])])
    write_preview(path, [("clean", cells[:5])], force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
