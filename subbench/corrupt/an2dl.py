"""The `an2dl` preset: keras_cv 0.9 `AugMix` then `RandAugment`, default arguments, value range 0..255.

This is how the AN2DL 2024 hidden test set was made (teams reproduced it with these layers; the 'Overfitting Gods' team report describes it). keras_cv 0.9 maps its layers
over the batch with tf.map_fn, so every image draws its own ops and magnitudes; we do the same, drawing every
random number for all N images up front (so an image's result depends only on the seed and its index, not on
the chunking or thread count), then applying each op once per group of images that drew it.

Defaults and quirks reproduced from keras_cv 0.9's source (layers/preprocessing/aug_mix.py, rand_augment.py):
- AugMix: severity 0.3 means a fresh Uniform(0.01, 0.3) draw for every op call; 3 chains of depth
  Uniform{1, 2, 3}; chain weights Dirichlet(1, 1, 1); mix with the original by Beta(1, 1).
- AugMix draws its op index from [0, 8), so op 8 (translate_y) is never used.
- AugMix rotate passes severity * 30 to get_rotation_matrix, which takes radians: 0.3..9 rad, not degrees.
- AugMix posterize keeps int(severity * 3) = 0 bits + 3, i.e. always the top 3 bits.
- AugMix solarize inverts every pixel >= int(severity * 255), a threshold of only 2..76.
- AugMix translate_x shifts by an integer int(severity * W / 3) pixels, either direction.
- RandAugment: 3 slots per image, each applied with probability 10/11 and picking uniformly among 10 ops;
  magnitude 0.5, stddev 0.15: solarize adds clip(N(55, 16.5), 0, 110) and thresholds at
  clip(N(127.5, 38.25), 0, 255); colour degeneration clip(N(0.5, 0.15), 0, 1); contrast factor
  Uniform(0.5, 1.5); brightness Uniform(-0.5, 0.5) * 255; shear clip(N(0.5, 0.15), 0, 1) with a random sign;
  translation Uniform(-0.5, 0.5) of the image size (up to 48 px at 96 px, reflect fill).
- The output is float; we clip to 0..255 and cast to uint8 by truncation (numpy's astype, the usual way the
  float result is saved).
(Keras 3's own keras.layers.AugMix / RandAugment pick their ops once per batch, so they are not used here.)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kcv_ops as K

F32 = np.float32

# AugMix defaults
SEVERITY_RANGE = (0.01, 0.3)
NUM_CHAINS = 3
CHAIN_DEPTH = (1, 3)
ALPHA = 1.0
# RandAugment defaults
RA_SLOTS = 3
RA_MAGNITUDE = 0.5
RA_STDDEV = 0.15
RA_RATE = 10 / 11

AUGMIX_OPS = ("auto_contrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
              "translate_x")
RANDAUGMENT_OPS = ("auto_contrast", "equalize", "solarize", "color", "contrast", "brightness", "shear_x",
                   "shear_y", "translate_x", "translate_y")

CHUNK = 64          # images per work unit: keeps temporaries ~ 50 MB whatever the set size
MAX_DEPTH = CHAIN_DEPTH[1]


@dataclass
class Draws:
    """Every random number the preset uses, one row per image."""
    chain_weight: np.ndarray   # (N, chains) float32, Dirichlet
    mix_weight: np.ndarray     # (N,) float32, Beta: weight of the original image
    depth: np.ndarray          # (N, chains) int
    op: np.ndarray             # (N, chains, MAX_DEPTH) int in [0, 8)
    severity: np.ndarray       # (N, chains, MAX_DEPTH) float32
    sign: np.ndarray           # (N, chains, MAX_DEPTH) float32, +-1
    ra_u: np.ndarray           # (N, slots) float32: slot applied when <= rate
    ra_op: np.ndarray          # (N, slots) int in [0, 10)
    ra_z: np.ndarray           # (N, slots, 2) float32 standard normals (normal factor samplers)
    ra_v: np.ndarray           # (N, slots) float32 uniforms (uniform factor samplers)
    ra_sign: np.ndarray        # (N, slots) float32, +-1

    def __getitem__(self, sl) -> "Draws":
        return Draws(**{k: v[sl] for k, v in self.__dict__.items()})


def draw(n: int, seed: int) -> Draws:
    """All random numbers for n images. One generator per field, so row i never depends on n."""
    def rng(field: int) -> np.random.Generator:
        return np.random.default_rng([seed, 0xA2D1, field])

    gam = rng(0).standard_gamma(ALPHA, (n, NUM_CHAINS))
    mix_a = rng(1).standard_gamma(ALPHA, n)
    mix_b = rng(11).standard_gamma(ALPHA, n)
    lo, hi = SEVERITY_RANGE

    def sign(field, shape):
        return np.where(rng(field).random(shape, F32) > 0.5, F32(-1), F32(1))

    return Draws(
        chain_weight=(gam / gam.sum(axis=1, keepdims=True)).astype(F32),
        mix_weight=(mix_a / (mix_a + mix_b)).astype(F32),
        depth=rng(2).integers(CHAIN_DEPTH[0], CHAIN_DEPTH[1] + 1, (n, NUM_CHAINS)),
        op=rng(3).integers(0, len(AUGMIX_OPS), (n, NUM_CHAINS, MAX_DEPTH)),
        severity=(lo + (hi - lo) * rng(4).random((n, NUM_CHAINS, MAX_DEPTH), F32)).astype(F32),
        sign=sign(5, (n, NUM_CHAINS, MAX_DEPTH)),
        ra_u=rng(6).random((n, RA_SLOTS), F32),
        ra_op=rng(7).integers(0, len(RANDAUGMENT_OPS), (n, RA_SLOTS)),
        ra_z=rng(8).standard_normal((n, RA_SLOTS, 2), F32),
        ra_v=rng(9).random((n, RA_SLOTS), F32),
        ra_sign=sign(10, (n, RA_SLOTS)),
    )


# --- AugMix ops: fn(images, severity, sign) with the magnitude mapping of aug_mix.py

def _am_posterize(x, sev, sign):
    shift = 4 - (sev * 3).astype(np.int32) + 1        # bits = int(severity * 3), always 0 at severity <= 0.3
    out = np.empty_like(x)
    for s in np.unique(shift):
        sel = shift == s
        out[sel] = K.posterize(x[sel], int(s))
    return out


def _am_translate_x(x, sev, sign):
    w = x.shape[3]
    return K.translate_x(x, np.trunc(sev * F32(w) / F32(3) * sign))   # tf.cast(float -> int32) truncates


_AUGMIX_FNS = (
    lambda x, sev, sign: K.auto_contrast(x),
    lambda x, sev, sign: K.equalize(x),
    _am_posterize,
    lambda x, sev, sign: K.rotate(x, sev * F32(30)),                    # radians, as keras_cv does
    lambda x, sev, sign: K.solarize(x, np.zeros_like(sev), np.trunc(sev * F32(255))),
    lambda x, sev, sign: K.shear_x(x, sev * F32(0.3) * sign),
    lambda x, sev, sign: K.shear_y(x, sev * F32(0.3) * sign),
    _am_translate_x,
)


# --- RandAugment ops: fn(images, z (G, 2), v (G,), sign (G,)) with rand_augment.py's policy

def _normal(z, mean, std, lo, hi):
    return np.clip(F32(mean) + F32(std) * z, F32(lo), F32(hi))


_M, _S = RA_MAGNITUDE, RA_STDDEV
_RANDAUGMENT_FNS = (
    lambda x, z, v, s: K.auto_contrast(x),
    lambda x, z, v, s: K.equalize(x),
    lambda x, z, v, s: K.solarize(x, _normal(z[:, 0], _M * 110, _S * 110, 0, 110),
                                  _normal(z[:, 1], 255 - _M * 255, _S * 255, 0, 255)),
    lambda x, z, v, s: K.color_degeneration(x, _normal(z[:, 0], _M, _S, 0, 1)),
    lambda x, z, v, s: K.contrast(x, F32(1 - _M) + F32(2 * _M) * v),
    lambda x, z, v, s: K.brightness(x, (F32(-_M) + F32(2 * _M) * v) * F32(255)),
    lambda x, z, v, s: K.shear_x(x, _normal(z[:, 0], _M, _S, 0, 1) * s),
    lambda x, z, v, s: K.shear_y(x, _normal(z[:, 0], _M, _S, 0, 1) * s),
    lambda x, z, v, s: K.translate_x(x, (F32(-_M) + F32(2 * _M) * v) * F32(x.shape[3])),
    lambda x, z, v, s: K.translate_y(x, (F32(-_M) + F32(2 * _M) * v) * F32(x.shape[2])),
)


def _apply_grouped(x: np.ndarray, ops: np.ndarray, fns, *params) -> None:
    """x[i] = fns[ops[i]](x[i], params[i]...) in place, one call per op; ops < 0 means no op."""
    for k, fn in enumerate(fns):
        idx = np.flatnonzero(ops == k)
        if idx.size:
            x[idx] = fn(x[idx], *(p[idx] for p in params))


def augmix(x: np.ndarray, d: Draws) -> np.ndarray:
    """keras_cv AugMix.augment_image on a planar float32 batch."""
    mix = np.zeros_like(x)
    for c in range(NUM_CHAINS):
        aug = x.copy()
        for level in range(MAX_DEPTH):
            ops = np.where(d.depth[:, c] > level, d.op[:, c, level], -1)
            _apply_grouped(aug, ops, _AUGMIX_FNS, d.severity[:, c, level], d.sign[:, c, level])
        mix += d.chain_weight[:, c].reshape(-1, 1, 1, 1) * aug
    ws = d.mix_weight.reshape(-1, 1, 1, 1)
    return ws * x + (F32(1) - ws) * mix


def randaugment(x: np.ndarray, d: Draws) -> np.ndarray:
    """keras_cv RandAugment (RandomAugmentationPipeline._augment) on a planar float32 batch, in place."""
    for slot in range(RA_SLOTS):
        ops = np.where(d.ra_u[:, slot] > F32(RA_RATE), -1, d.ra_op[:, slot])
        _apply_grouped(x, ops, _RANDAUGMENT_FNS, d.ra_z[:, slot], d.ra_v[:, slot], d.ra_sign[:, slot])
    return x


def apply_chunk(images: np.ndarray, d: Draws) -> np.ndarray:
    """uint8 (G, H, W, 3) -> uint8 (G, H, W, 3) with this chunk's draws."""
    x = images.transpose(0, 3, 1, 2).astype(F32, order="C")      # planar; astype keeps strides otherwise
    x = randaugment(augmix(x, d), d)
    out = np.clip(x, F32(0), F32(255)).astype(np.uint8)      # truncation, like ndarray.astype(uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def apply_an2dl(images: np.ndarray, seed: int, workers: int | None = None, progress: bool = False) -> np.ndarray:
    """The an2dl corruption of a uint8 (N, H, W, 3) array (already checked), as a new uint8 array.

    numpy releases the GIL in the heavy loops, so chunks run on a thread pool (one thread per core).
    """
    n = len(images)
    draws = draw(n, seed)
    out = np.empty_like(images)
    starts = range(0, n, CHUNK)

    def run(start):
        sl = slice(start, min(n, start + CHUNK))
        out[sl] = apply_chunk(images[sl], draws[sl])
        return sl.stop - sl.start

    workers = workers or default_workers()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="an2dl", unit="img")
    if workers == 1 or n <= CHUNK:
        for s in starts:
            done = run(s)
            if bar is not None:
                bar.update(done)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(run, starts):
                if bar is not None:
                    bar.update(done)
    if bar is not None:
        bar.close()
    return out
