"""Losses for one-hot targets by name (`LOSSES`): cross-entropy and the focal loss with label smoothing of the
'Overfitting Gods' team report (recipe convnext-xlarge-focal); class weights.

Focal loss (the report's eqs. 1-2):  y_s = y_t (1 - S - S/(K-1)) + S/(K-1)
                                     L   = sum_k  alpha (1 - p_k)^gamma (-y_s,k) log p_k
keras.losses.categorical_focal_crossentropy computes exactly eq. 2 (keras/src/losses/losses.py, same code in
the server's Keras 3.4.1); its own label smoothing is Keras' convention, y (1 - S) + S/K, which differs from
eq. 1 (the true class keeps 1 - S in the report's). So FocalLoss smooths the report's way and calls Keras'
function with label_smoothing=0. `crossentropy` is keras.losses.CategoricalCrossentropy, Keras' smoothing
convention. The losses never ship in the zip (the server loads with compile=False).
Importing this module does not import Keras (the CLI reads LOSSES): FocalLoss is defined on first use.
"""

from __future__ import annotations

import functools

import numpy as np

from subbench.errors import SubbenchError


class LossConfigError(SubbenchError):
    """A loss option is invalid."""


@functools.lru_cache(maxsize=None)
def _focal_loss_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="subbench")
    class FocalLoss(keras.losses.Loss):
        """The report's focal loss with label smoothing; targets one-hot (N, K), predictions probabilities (N, K)."""

        def __init__(self, gamma: float = 0.5, alpha: float = 1.0, label_smoothing: float = 0.05,
                     name: str = "focal_loss", **kwargs):
            super().__init__(name=name, **kwargs)
            self.gamma = float(gamma)
            self.alpha = float(alpha)
            self.label_smoothing = float(label_smoothing)

        def call(self, y_true, y_pred):
            y_pred = ops.convert_to_tensor(y_pred)
            y_true = ops.cast(y_true, y_pred.dtype)
            s = self.label_smoothing
            if s:
                k = y_pred.shape[-1]
                y_true = y_true * (1.0 - s - s / (k - 1)) + s / (k - 1)
            return keras.losses.categorical_focal_crossentropy(y_true, y_pred, alpha=self.alpha, gamma=self.gamma,
                                                               label_smoothing=0.0)

        def get_config(self):
            return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha,
                    "label_smoothing": self.label_smoothing}

    return FocalLoss


def __getattr__(name: str):
    if name == "FocalLoss":   # `from subbench.builder.losses import FocalLoss` defines it (and imports Keras)
        return _focal_loss_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def focal_loss(gamma: float = 0.5, alpha: float = 1.0, label_smoothing: float = 0.05):
    """The report's loss: S = 0.05, alpha = 1, gamma = 0.5 by default."""
    _check(label_smoothing, gamma, alpha)
    return _focal_loss_class()(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)


def _crossentropy(label_smoothing: float, gamma: float, alpha: float):
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def _focal(label_smoothing: float, gamma: float, alpha: float):
    return _focal_loss_class()(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)


# loss name -> factory(label_smoothing, gamma, alpha) (gamma and alpha: focal only)
LOSSES = {"crossentropy": _crossentropy, "focal": _focal}


def make_loss(name: str, label_smoothing: float = 0.0, gamma: float = 0.5, alpha: float = 1.0):
    """A loss in LOSSES, for one-hot targets and softmax outputs."""
    _check(label_smoothing, gamma, alpha)
    if name not in LOSSES:
        raise LossConfigError(f"unknown loss {name!r}", "use one of: " + ", ".join(LOSSES))
    return LOSSES[name](label_smoothing, gamma, alpha)


def _check(label_smoothing: float, gamma: float, alpha: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise LossConfigError(f"label smoothing {label_smoothing} is outside [0, 1)",
                              "e.g. 0.05 (the convnext-xlarge-focal recipe)")
    if gamma < 0 or alpha <= 0:
        raise LossConfigError(f"focal gamma {gamma} must be >= 0 and alpha {alpha} > 0",
                              "e.g. gamma 0.5, alpha 1 (the convnext-xlarge-focal recipe)")


def class_weights(labels, num_classes: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights n / (K_present * n_c); classes absent from `labels` get 1.0 (they
    never weigh a sample). Weighted sample count equals the number of samples."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.size == 0:
        raise LossConfigError("class weights of an empty label set", "train on at least one image per class")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise LossConfigError(f"labels outside 0..{num_classes - 1}", "check the dataset's labels and the profile")
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {int(c): 1.0 for c in range(num_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out
