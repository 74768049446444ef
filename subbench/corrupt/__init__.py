"""Hidden-set simulator and robustness suite.

- apply_preset(images, "an2dl" | "noise", seed=0, cache=True, progress=False, **params) -> uint8 array:
  "an2dl" is keras_cv 0.9 AugMix then RandAugment (defaults, per image), how the AN2DL 2024 hidden test
  set was made; "noise" is additive Gaussian noise (sigma grey levels, default 25).
- corrupt(images, name, severity, seed=0) -> uint8 array: one corruption of the suite registry CORRUPTIONS
  (MedMNIST-C's BloodMNIST list plus Gaussian and shot noise) at severity 1..5.
- iter_suite(images, seed=0, severities=(1..5)) -> (name, severity, array) one at a time.
- augment_fn(preset) -> fn(images, seed=None) for tf.data map; training_augment(images, seed, share,
  noise_sigma) for a numpy batch (see augment.py).
- hidden_set_augmentation(preset="an2dl", **params) -> a training-only Keras layer (HiddenSetAugmentation:
  corrupts in fit, identity at inference); strip_augmentation(model) removes it before export (layers.py;
  imported on first use, since it imports Keras).
- corrupt_images(images, preset_or_name, severity=None, seed=0, **params): a preset or one corruption, every
  argument checked first (dispatch.py). The package itself is callable as the same function, so that
  `subbench.corrupt(images, "an2dl")` works while `subbench.corrupt.augment_fn` etc. stay reachable.
All take uint8 (N, H, W, 3) and are deterministic in the seed. Bad input raises the named errors below.
"""

import sys
import types

from .augment import augment_fn, training_augment
from .errors import CorruptionInputError, SeverityError, UnknownCorruptionError, UnknownPresetError
from .presets import (CORRUPTIONS, PRESET_HELP, PRESET_PARAMS, PRESETS, SEVERITIES, apply_preset, corrupt,
                      iter_suite)
from .suite import MEDMNISTC_PARAMS
from .dispatch import check_request, corrupt_images

__all__ = [
    "CORRUPTIONS", "PRESETS", "PRESET_HELP", "PRESET_PARAMS", "SEVERITIES", "MEDMNISTC_PARAMS",
    "apply_preset", "corrupt", "corrupt_images", "check_request", "iter_suite", "augment_fn", "training_augment",
    "CorruptionInputError", "UnknownPresetError", "UnknownCorruptionError", "SeverityError",
    "hidden_set_augmentation", "HiddenSetAugmentation", "strip_augmentation", "AugmentationStripError",
]

_LAYER_EXPORTS = ("hidden_set_augmentation", "HiddenSetAugmentation", "strip_augmentation", "AugmentationStripError")


def __getattr__(name):  # the Keras layer loads Keras: only when asked for
    if name in _LAYER_EXPORTS:
        from . import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """`subbench.corrupt` is both this package and the function `corrupt_images`: a package attribute of
    `subbench` cannot be a function once the package is imported, so the package takes the call."""

    def __call__(self, images, preset_or_name="an2dl", severity=None, seed=0, **params):
        return corrupt_images(images, preset_or_name, severity=severity, seed=seed, **params)


sys.modules[__name__].__class__ = _CallablePackage
