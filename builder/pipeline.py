"""tf.data input pipelines for training: shuffle, batch, augment whole batches, prefetch.

Augmentation presets (the model itself holds no augmentation layer, so it loads on the server's Keras):
  none   the images as they are
  light  per image: one of the 8 flips/90-degree rotations, a reflect-padded shift of up to 8 px - the
         symmetries of a blood smear
  heavy  the hidden set's own corruption (subbench.corrupt's `an2dl` preset: AugMix then RandAugment, sampled
         per image) on a share of the images, then light, then Gaussian noise (the "dirt" of the 'ANNamo' team
         report) on all

Cost, measured on 2 cores (a small CNN at 64 px trains at ~4 ms an image, so every 0.1 ms is 2.5% of a step):
- light ops in numpy on the whole batch (views, one copy an image): 0.05-0.1 ms an image over none; the same
  ops as tf.image calls mapped image by image cost 0.3-0.35 ms, batched tf.where variants 0.5 ms (op dispatch
  and full-batch copies dominate at 96 px).
- noise: a field drawn from a fixed pool of NOISE_POOL, 0.05 ms; fresh tf.random normals, 0.4-0.5 ms.
- an2dl (numpy, subbench.corrupt): ~2.1 ms of CPU an image, more than the model's step. With `bank=K` it is
  computed once, K corrupted copies of the training set before the first epoch, and each step picks one of them
  per image (or the clean image): fewer fresh draws for a fraction of the cost. bank=None corrupts every batch
  anew (the choice on a GPU, where tf.data's parallel CPU work overlaps the device's steps).
"""

from __future__ import annotations

import numpy as np

AUGMENT_PRESETS = ("none", "light", "heavy")   # --augment (make_dataset)
HEAVY_SHARE = 0.8        # keep some clean views: the hidden set's corruption leaves ~1/11 images near clean
HEAVY_NOISE_SIGMA = 8.0  # on 0..255
MAX_SHIFT = 8            # pixels, light preset


def light_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image of a uint8 batch (B, H, W, C): one of the 8 symmetries of the square (rot90 k times, then a
    flip; transposes only for square images) and an integer shift of up to MAX_SHIFT px with reflection."""
    b, h, w = images.shape[:3]
    rot = rng.integers(0, 4, b) if h == w else 2 * rng.integers(0, 2, b)
    flip = rng.random(b) < 0.5
    dy, dx = rng.integers(0, 2 * MAX_SHIFT + 1, (2, b))
    # Each pixel as one 3-byte void element: numpy copies a rotated or flipped view of (H, W, 3) uint8 through an
    # inner loop of 3, one pixel's channels at a time; of (H, W) void pixels, whole pixels. 0.125 vs 0.20 ms an
    # image for this function at batch 64 (same bytes out).
    pixel = np.dtype((np.void, images.shape[3] * images.dtype.itemsize))
    pixels = np.ascontiguousarray(images).view(pixel)[..., 0]
    padded = np.pad(pixels, ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT)), mode="reflect")
    out = np.empty((b, h, w), pixel)
    for i in range(b):   # numpy views: one copy per image, no per-op dispatch (see the module docstring)
        view = np.rot90(padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w], rot[i])
        out[i] = view[:, ::-1] if flip[i] else view
    return out.view(images.dtype).reshape(images.shape)


NOISE_POOL = 256          # fixed noise fields the heavy preset draws from, one per image


def noise_fields(sigma: float, shape: tuple, seed: int) -> np.ndarray:
    """NOISE_POOL integer-valued Gaussian noise fields of `sigma` grey levels, (NOISE_POOL, *shape) float32.
    Drawing a field from a pool instead of fresh normals: 0.05 vs 0.4-0.5 ms an image (see the module docstring)."""
    fields = np.round(np.random.default_rng([seed, 0x9015E]).normal(0.0, sigma, (NOISE_POOL, *shape)))
    return fields.astype(np.float32)


def noise_pool(sigma: float, shape: tuple, seed: int):
    """noise_fields() as a TensorFlow constant, for add_noise_batch."""
    import tensorflow as tf

    return tf.constant(noise_fields(sigma, shape, seed))


def add_noise_batch(x, pool, seed):
    """One pool field per image of a float32 batch, clipped to 0..255 (integer inputs stay integers)."""
    import tensorflow as tf

    pick = tf.random.stateless_uniform([tf.shape(x)[0]], seed, 0, pool.shape[0], dtype=tf.int32)
    return tf.clip_by_value(x + tf.gather(pool, pick), 0.0, 255.0)


def _corrupted_copy(job) -> np.ndarray:
    from subbench.corrupt import apply_preset

    images, seed, progress = job
    return apply_preset(images, "an2dl", seed=seed, cache=False, progress=progress)


def heavy_bank(images: np.ndarray, copies: int, seed: int, progress: bool = False, processes: int = 1) -> np.ndarray:
    """`copies` an2dl-corrupted copies of `images`, (copies, N, H, W, 3) uint8: computed once per build (not
    cached on disk: at ~330 MB a copy of a training set they belong to this run). processes > 1: a forked process
    a copy (the same copies; fork before Keras on JAX starts its threads), for hosts with cores to spare."""
    jobs = [(images, seed * 1_009 + k, progress and processes <= 1) for k in range(copies)]
    if processes <= 1:
        bank = np.empty((copies, *images.shape), np.uint8)
        for k, job in enumerate(jobs):
            bank[k] = _corrupted_copy(job)
        return bank
    import multiprocessing as mp

    with mp.get_context("fork").Pool(min(copies, processes)) as pool:
        return np.stack(pool.map(_corrupted_copy, jobs))


BANK_MEMORY_SHARE = 1 / 3   # the most of the memory available at the start that the bank may take


def bank_copies(images: np.ndarray, copies: int, available_bytes: int | None = None) -> int:
    """How many of `copies` corrupted copies of `images` fit in BANK_MEMORY_SHARE of the memory available now
    (`available_bytes`, default read from the OS; unknown: all of them), at least 1."""
    if copies <= 0:
        return copies
    if available_bytes is None:
        try:
            import os

            available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):   # not on this OS
            return copies
    fit = int(available_bytes * BANK_MEMORY_SHARE // max(images.nbytes, 1))
    return max(1, min(copies, fit))


def _batch_fetcher(images: np.ndarray, augment: str, seed: int, bank: np.ndarray | None):
    """The numpy side of a training batch: gather rows `idx`; for heavy, the clean image or a corrupted one
    (a bank copy, or corrupted now) per image; for light and heavy, the symmetries and shifts."""
    from subbench.corrupt import training_augment

    def fetch(idx: np.ndarray, key: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, int(key) % 2**63])
        if augment != "heavy":
            out = images[idx]
        elif bank is not None:
            out = images[idx]
            corrupted = rng.random(len(idx)) < HEAVY_SHARE
            copy = rng.integers(0, len(bank), len(idx))
            out[corrupted] = bank[copy[corrupted], idx[corrupted]]
        else:
            out = training_augment(images[idx], int(rng.integers(2**31)), share=HEAVY_SHARE)
        return light_batch(out, rng)

    return fetch


def make_dataset(images: np.ndarray, labels_onehot: np.ndarray, *, batch_size: int, augment: str = "none",
                 shuffle: bool = True, seed: int = 0, index: np.ndarray | None = None,
                 bank: np.ndarray | None = None):
    """A tf.data.Dataset of (float32 images 0..255, one-hot labels) batches.

    `index` picks (and may repeat, for oversampling) the rows of `images` an epoch visits; default all.
    `bank` (heavy only): precomputed corrupted copies from heavy_bank(images, ...) to draw from; None corrupts
    every batch anew.
    """
    import tensorflow as tf

    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {AUGMENT_PRESETS}")
    if bank is not None and (augment != "heavy" or bank.shape[1:] != images.shape):
        raise ValueError("a bank goes with augment='heavy' and holds copies of exactly these images")
    index = np.arange(len(images)) if index is None else np.asarray(index)
    ds = tf.data.Dataset.from_tensor_slices(index)
    if shuffle:
        ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    # A different random key per batch, and per epoch (a counter would restart with every epoch's iterator
    # and repeat the same draws): per-image randomness from stateless ops, reproducible runs.
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, keys))
    labs = tf.constant(labels_onehot.astype(np.float32))
    if augment == "none":
        imgs = tf.constant(images)

        def fetch(i, c):
            return tf.gather(imgs, i), i, c
    else:
        fetch_np = _batch_fetcher(images, augment, seed, bank)

        def fetch(i, c):
            x = tf.numpy_function(fetch_np, [i, c], tf.uint8, stateful=False)
            return tf.ensure_shape(x, (None, *images.shape[1:])), i, c

    pool = noise_pool(HEAVY_NOISE_SIGMA, images.shape[1:], seed) if augment == "heavy" else None

    def finish(x, i, c):
        x = tf.cast(x, tf.float32)
        if augment == "heavy":
            x = add_noise_batch(x, pool, tf.stack([c, tf.constant(seed, tf.int64)]))
        return x, tf.gather(labs, i)

    ds = ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
