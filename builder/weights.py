"""A backbone's start weights: `--weights none | imagenet | PATH`.

"none" (random init), "imagenet" (Keras' own download and cache, ~/.keras/models; offline this raises
WeightsUnavailableError naming the file to put there), or PATH: a weights file of the backbone alone, read by
Keras' `load_weights`: a `.weights.h5` saved from `BuiltModel.backbone` (`save_backbone_weights`), or Keras' own
ImageNet `*_notop.h5` for that backbone (legacy .h5 format, also read). Full-model files are refused: one file =
one backbone's weights. (EfficientNet v1 files carrying ImageNet statistics get the Rescaling Keras itself adds
only for weights="imagenet"; see efficientnet_v1_stats_fix.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from subbench.builder.backbones import BackboneSpec, ModelConfigError
from subbench.builder.preprocessing import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from subbench.errors import SubbenchError


class WeightsUnavailableError(SubbenchError):
    """ImageNet weights cannot be downloaded (offline) and are not in Keras' cache."""


class WeightsFileError(SubbenchError):
    """A --weights PATH file is missing or does not hold weights for the chosen backbone."""


def check_weights_option(weights) -> None:
    if weights not in ("none", "imagenet") and not isinstance(weights, (str, os.PathLike)):
        raise WeightsFileError(f"--weights {weights!r} is not none, imagenet or a path", "")


def backbone_with_weights(spec: BackboneSpec, weights, kwargs: dict) -> tuple:
    """(the backbone built by spec.constructor(**kwargs) with `weights` loaded, layers to put in front of it:
    [] or the EfficientNet v1 statistics fix)."""
    if weights == "imagenet":
        return imagenet_backbone(spec, kwargs), []
    net = spec.constructor(weights=None, **kwargs)
    if weights == "none":
        return net, []
    load_path_weights(spec, net, Path(weights).expanduser())
    fix = efficientnet_v1_stats_fix(net) if spec.family == "efficientnet" else None
    return net, [fix] if fix is not None else []


def keras_cache_dir() -> Path:
    """Where keras.utils.get_file looks for `cache_subdir="models"` files: $KERAS_HOME or ~/.keras, /tmp/.keras
    when that is not writable (keras/src/utils/file_utils.py)."""
    try:
        from keras.src.backend import config as _config  # the exact value Keras resolved at import

        base = _config.keras_home()
    except Exception:  # pragma: no cover - private module moved
        base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def imagenet_backbone(spec: BackboneSpec, kwargs: dict):
    if spec.weights_file is None:
        raise ModelConfigError(f"{spec.name} has no ImageNet weights", "use --weights none, or a PATH to weights "
                               "saved from an earlier build of the same backbone")
    try:
        return spec.constructor(weights="imagenet", **kwargs)
    except Exception as exc:  # Keras wraps URLError/HTTPError in a bare Exception ("URL fetch failure on ...")
        text = f"{type(exc).__name__}: {exc}"
        if "fetch failure" not in text and "hash" not in text and not isinstance(exc, OSError):
            raise
        target = keras_cache_dir() / spec.weights_file
        there = " (a file is there but its hash does not match: replace it)" if target.exists() else ""
        reason = text.splitlines()[0].rsplit(" -- ", 1)[-1][:200]   # "URL fetch failure on URL: errno -- reason"
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} ({spec.weights_file}) are not in Keras' cache and could not be "
            f"downloaded ({reason})",
            f"download {spec.weights_origin} on a machine with internet and put it at {target}{there}; "
            f"Keras then loads it from its cache. Or use --weights none.") from exc


def load_path_weights(spec: BackboneSpec, backbone, path: Path) -> None:
    if not path.is_file():
        raise WeightsFileError(f"weights file {path} does not exist",
                               "pass --weights none, imagenet, or the path of an existing .h5 weights file")
    if not path.name.endswith(".h5"):
        raise WeightsFileError(f"{path.name}: --weights PATH takes a weights file of the backbone (.weights.h5 or "
                               f"Keras' ImageNet .h5), not {path.suffix or 'this file type'}",
                               "save one with subbench.builder.weights.save_backbone_weights(built, "
                               "'x.weights.h5')")
    try:
        backbone.load_weights(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsFileError(
            f"{path} does not hold weights for backbone {spec.name}: {first[:300]}",
            f"use a file saved from a {spec.name} backbone (save_backbone_weights) or Keras' ImageNet file "
            f"{spec.weights_file or '(none exists for this backbone)'}") from exc


def efficientnet_v1_stats_fix(backbone):
    """A Rescaling to put in front of an EfficientNet (v1) backbone whose weights carry ImageNet statistics.

    EfficientNet v1 stores ImageNet's standard deviations in its Normalization layer's *variance* slot and adds
    a second Rescaling(1/sqrt(std)) only when Keras itself loads `weights="imagenet"` (tensorflow#49930). A
    backbone loaded from PATH lacks that Rescaling; the per-channel affine map y = x/sqrt(std) +
    255*mean*(1 - 1/sqrt(std)) in front makes its Rescaling(1/255)+Normalization give (x/255 - mean)/std.
    Returns None when the loaded statistics are not ImageNet's (weights saved from a model trained from scratch).
    """
    from keras import layers

    norm = next((l for l in backbone.layers if isinstance(l, layers.Normalization)), None)
    if norm is None or norm.input_mean is not None:
        return None
    mean = np.asarray(norm.adapt_mean.numpy(), np.float64).reshape(-1)
    var = np.asarray(norm.adapt_variance.numpy(), np.float64).reshape(-1)
    if not (np.allclose(mean, IMAGENET_MEAN_RGB, atol=1e-3) and np.allclose(var, IMAGENET_STD_RGB, atol=1e-3)):
        return None
    root = np.sqrt(var)
    return layers.Rescaling(scale=(1.0 / root).tolist(), offset=(255.0 * mean * (1.0 - 1.0 / root)).tolist(),
                            dtype="float32", name="pre_efficientnet_imagenet_stats")


def save_backbone_weights(built, path) -> Path:
    """Write the backbone's weights of `built` (a BuiltModel) where `--weights PATH` reads them (name must end
    in .weights.h5)."""
    path = Path(path)
    built.backbone.save_weights(str(path))
    return path
