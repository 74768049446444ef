"""The builder's tf.data pipelines: what each augmentation preset does to real batches (small arrays, no
../shared)."""

from __future__ import annotations

import numpy as np
import pytest

from subbench.builder import pipeline
from subbench.builder.pipeline import MAX_SHIFT, heavy_bank, light_batch, make_dataset


def _d4(image):
    for k in range(4):
        r = np.rot90(image, k)
        yield r
        yield r[:, ::-1]


def _light_candidates(image):
    """Every image light_batch may make of `image`: a reflect-padded shift, then one of the 8 symmetries."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)), mode="reflect")
    for dy in range(2 * MAX_SHIFT + 1):
        for dx in range(2 * MAX_SHIFT + 1):
            yield from _d4(padded[dy:dy + h, dx:dx + w])


def test_light_batch_is_a_symmetry_and_a_shift_of_each_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)
    out = light_batch(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    for src, got in zip(images, out):
        assert any(np.array_equal(got, c) for c in _light_candidates(src))
    # and it is not the identity on every image
    assert not np.array_equal(out, images)


def test_light_batch_draws_all_eight_symmetries_without_shift(monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_SHIFT", 0)
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = pipeline.light_batch(np.repeat(image[None], 400, 0), np.random.default_rng(0))
    seen = {o.tobytes() for o in out}
    assert seen == {c.tobytes() for c in _d4(image)}


def test_light_batch_non_square_keeps_the_shape():
    images = np.random.default_rng(0).integers(0, 256, (10, 12, 20, 3), dtype=np.uint8)
    out = light_batch(images, np.random.default_rng(0))
    assert out.shape == images.shape


def _labelled(n=64, size=16):
    """Images whose constant grey value encodes the label (30 * label): survives flips, shifts, banks."""
    labels = np.arange(n) % 8
    images = np.repeat((30 * labels).astype(np.uint8), size * size * 3).reshape(n, size, size, 3)
    return images, np.eye(8, dtype=np.float32)[labels], labels


@pytest.mark.parametrize("augment", ["none", "light"])
def test_batches_keep_images_and_labels_together(augment):
    images, onehot, _ = _labelled()
    seen = []
    for x, y in make_dataset(images, onehot, batch_size=10, augment=augment, seed=3):
        x, y = x.numpy(), y.numpy()
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x.mean(axis=(1, 2, 3)), 30 * y.argmax(1))
        seen.extend(x[:, 0, 0, 0] // 30)
    assert sorted(seen) == sorted(np.arange(64) % 8)   # every image once an epoch


def test_heavy_with_bank_draws_clean_or_bank_copies_then_adds_noise():
    images, onehot, labels = _labelled(n=400)
    copies = 3
    # copy k of image i: the image's value + 1 + k (tells which copy was drawn, still encodes the label)
    bank = np.stack([images + np.uint8(1 + k) for k in range(copies)])
    fetch = pipeline._batch_fetcher(images, "heavy", 0, bank)
    idx = np.arange(400)
    got = fetch(idx, np.int64(5))
    offset = got[:, 0, 0, 0].astype(int) - 30 * labels
    assert set(np.unique(offset)) == {0, 1, 2, 3}
    share = np.mean(offset > 0)
    assert abs(share - pipeline.HEAVY_SHARE) < 0.08
    assert np.array_equal(fetch(idx, np.int64(5)), got)          # a batch is reproducible
    assert not np.array_equal(fetch(idx, np.int64(6)), got)      # and differs batch to batch

    x, y = next(iter(make_dataset(images, onehot, batch_size=400, augment="heavy", bank=bank, shuffle=False)))
    x = x.numpy()
    assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x))
    dark = labels[:400] == 0           # grey 0..3: the noise is clipped at 0 there
    noise = x[~dark] - np.median(x[~dark], axis=(1, 2, 3), keepdims=True)
    assert 6 < noise.std() < 10        # HEAVY_NOISE_SIGMA = 8 grey levels
    np.testing.assert_allclose(x[~dark].mean(axis=(1, 2, 3)), 30 * y.numpy()[~dark].argmax(1), atol=4)


@pytest.mark.parametrize("augment,bank", [("heavy", False), ("heavy", True), ("light", False)])
def test_each_pass_of_the_repeated_dataset_draws_anew(augment, bank):
    """train() fits on make_dataset(...).repeat() with steps_per_epoch (one iterator a phase): every pass,
    i.e. every epoch, must draw new augmentations, not replay the first."""
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (16, 32, 32, 3), dtype=np.uint8)
    onehot = np.eye(8, dtype=np.float32)[np.arange(16) % 8]
    copies = heavy_bank(images, 2, seed=0) if bank else None
    epoch = [x.numpy() for x, _ in make_dataset(images, onehot, batch_size=16, augment=augment, shuffle=False,
                                                bank=copies).repeat(3)]
    assert not np.array_equal(epoch[0], epoch[1]) and not np.array_equal(epoch[1], epoch[2])


def test_same_seed_same_batches_other_seed_other_batches():
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    onehot = np.eye(8, dtype=np.float32)[np.arange(32) % 8]

    def first(seed):
        return next(iter(make_dataset(images, onehot, batch_size=32, augment="heavy", seed=seed)))[0].numpy()

    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_heavy_bank_is_the_an2dl_preset_per_copy():
    from subbench.corrupt import apply_preset

    images = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    bank = heavy_bank(images, 2, seed=7)
    assert bank.shape == (2, 4, 96, 96, 3) and bank.dtype == np.uint8
    assert not np.array_equal(bank[0], bank[1])
    np.testing.assert_array_equal(bank[1], apply_preset(images, "an2dl", seed=7 * 1_009 + 1, cache=False))


def test_heavy_bank_in_processes_is_the_same_bank():
    images = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(heavy_bank(images, 3, seed=5, processes=2), heavy_bank(images, 3, seed=5))


def test_a_bank_needs_heavy_and_the_same_images():
    images, onehot, _ = _labelled()
    with pytest.raises(ValueError):
        make_dataset(images, onehot, batch_size=8, augment="light", bank=images[None])
    with pytest.raises(ValueError):
        make_dataset(images, onehot, batch_size=8, augment="heavy", bank=images[None, :10])


def test_the_bank_takes_at_most_a_third_of_the_memory_available():
    from subbench.builder.pipeline import bank_copies

    images = np.zeros((10, 96, 96, 3), np.uint8)          # 276,480 bytes a copy
    assert bank_copies(images, 12, available_bytes=100 * images.nbytes) == 12
    assert bank_copies(images, 12, available_bytes=15 * images.nbytes) == 5
    assert bank_copies(images, 12, available_bytes=images.nbytes) == 1   # at least one
    assert bank_copies(images, 0, available_bytes=images.nbytes) == 0    # none asked, none made
    assert 1 <= bank_copies(images, 12) <= 12                            # this machine's memory, read from the OS
