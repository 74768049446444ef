"""Presets (`an2dl`, `noise`, `suite`), the checked `corrupt` entry point, and the content-hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..paths import cache_root
from . import an2dl, suite
from .errors import (CorruptionInputError, UnknownCorruptionError, UnknownPresetError, check_images,
                     check_seed, check_severity)

PRESETS = ("an2dl", "noise", "suite")
PRESET_HELP = {
    "an2dl": "keras_cv 0.9 AugMix then RandAugment, defaults, sampled per image (the AN2DL 2024 hidden set)",
    "noise": "additive Gaussian white noise of sigma grey levels (0..255 scale; the 'dirt' test set of the ANNamo team report)",
    "suite": "every corruption in CORRUPTIONS at severities 1-5 (robustness table)",
}
PRESET_PARAMS = {"an2dl": {}, "noise": {"sigma": 25.0}}     # sigma in grey levels (0..255)
SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTIONS = suite.CORRUPTIONS

# Bump when any preset's output for the same input and seed changes: old cache entries stop matching.
CACHE_VERSION = 1
_CHUNK = 256     # images per step for the suite corruptions: bounded float temporaries


def _check_name(name: str) -> str:
    if name not in CORRUPTIONS:
        raise UnknownCorruptionError(f"no corruption named {name!r}",
                                     f"choose one of: {', '.join(CORRUPTIONS)}")
    return name


def _check_preset(preset: str, params: dict) -> dict:
    if preset == "suite":
        raise UnknownPresetError("preset 'suite' gives one array per corruption and severity, not one array",
                                 "use subbench.corrupt.iter_suite(images) (or `subbench corrupt --preset suite`)")
    if preset not in PRESET_PARAMS:
        raise UnknownPresetError(f"no preset named {preset!r}", f"choose one of: {', '.join(PRESETS)}")
    unknown = set(params) - set(PRESET_PARAMS[preset])
    if unknown:
        allowed = ", ".join(PRESET_PARAMS[preset]) or "none"
        raise CorruptionInputError(f"preset {preset!r} has no parameter {sorted(unknown)[0]!r}",
                                   f"its parameters: {allowed}")
    full = {**PRESET_PARAMS[preset], **params}
    if preset == "noise":
        sigma = full["sigma"]
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 255:
            raise CorruptionInputError(f"noise sigma {sigma!r} is not in (0, 255]",
                                       "give the standard deviation in grey levels, e.g. 25")
        full["sigma"] = float(sigma)
    return full


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity])


def _run_corruption(images: np.ndarray, name: str, severity: int, seed: int, **kw) -> np.ndarray:
    rng = _rng(seed, name, severity)
    fn = CORRUPTIONS[name]
    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        sl = slice(start, start + _CHUNK)
        out[sl] = fn(images[sl], severity, rng, **kw)
    return out


def add_noise(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """The `noise` preset: clip(x + N(0, sigma grey levels)), MedMNIST-C's gaussian_noise with its own sigma."""
    return _run_corruption(images, "gaussian_noise", 1, seed, sigma=sigma / 255)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """One suite corruption of a uint8 (N, H, W, 3) array at severity 1..5; deterministic in seed."""
    check_images(images)
    _check_name(name)
    severity = check_severity(severity)
    seed = check_seed(seed)
    return _run_corruption(images, name, severity, seed)


def iter_suite(images: np.ndarray, seed: int = 0, severities=SEVERITIES,
               names=None) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (name, severity, corrupted uint8 array) for every corruption and severity, one at a time.

    Only one corrupted copy is alive at once if the caller drops it before the next step. Arguments are
    checked here, before the first item is produced. Not cached: the suite is ~65 copies of the set, and
    recomputing one copy costs less than predicting on it.
    """
    check_images(images)
    seed = check_seed(seed)
    names = list(CORRUPTIONS) if names is None else [_check_name(n) for n in names]
    severities = [check_severity(s) for s in severities]
    if not severities or not names:
        raise CorruptionInputError("no corruptions or severities to run", "leave names/severities at their defaults")

    def gen():
        for name in names:
            for sev in severities:
                yield name, sev, _run_corruption(images, name, sev, seed)
    return gen()


# ---------------------------------------------------------------- cache

def cache_key(images: np.ndarray, preset: str, params: dict, seed: int) -> str:
    h = hashlib.blake2b(digest_size=20)
    meta = {"preset": preset, "params": params, "seed": seed, "shape": images.shape, "dtype": str(images.dtype),
            "version": CACHE_VERSION, "numpy": ".".join(np.__version__.split(".")[:2])}
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    return h.hexdigest()


def cache_path(key: str, preset: str) -> Path:
    return cache_root() / "corrupt" / f"{preset}-{key}.npy"


def _load_cached(path: Path, like: np.ndarray) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None                                   # missing or damaged: recompute
    return arr if arr.shape == like.shape and arr.dtype == like.dtype else None


def _save_cached(path: Path, arr: np.ndarray) -> None:
    """Write to a temp file beside the target and rename: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass                                          # a read-only or full cache only costs a recompute


def apply_preset(images: np.ndarray, preset: str, seed: int = 0, cache: bool = True, progress: bool = False,
                 **params) -> np.ndarray:
    """Corrupt a uint8 (N, H, W, 3) array with a preset ("an2dl" or "noise"); returns a new uint8 array.

    Byte-identical for the same images, preset, params and seed on the same machine. With cache=True the
    result is kept under cache_root()/corrupt, keyed by a hash of the image bytes, preset, params, seed and
    CACHE_VERSION, so a second call (e.g. a second `subbench score`) only reads it back.
    """
    check_images(images)
    full = _check_preset(preset, params)
    seed = check_seed(seed)
    path = None
    if cache:
        path = cache_path(cache_key(images, preset, full, seed), preset)
        hit = _load_cached(path, images)
        if hit is not None:
            return hit
    if preset == "an2dl":
        out = an2dl.apply_an2dl(images, seed, progress=progress)
    else:
        out = add_noise(images, full["sigma"], seed)
    if path is not None:
        _save_cached(path, out)
    return out
