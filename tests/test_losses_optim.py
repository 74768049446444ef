"""builder.losses and builder.optim: the focal loss of the 'Overfitting Gods' team report against a hand
computation, class weights, optimizers and schedules stepping real Keras variables."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from subbench.builder.losses import (  # noqa: E402
    FocalLoss, LossConfigError, class_weights, focal_loss, make_loss,
)
from subbench.builder.optim import (  # noqa: E402
    OPTIMIZERS, OptimizerConfigError, make_optimizer, make_schedule,
)


def _batch(n=16, k=8, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.eye(k)[rng.integers(0, k, n)].astype("float32"), probs.astype("float32")


def reports_focal(y_true, y_pred, S=0.05, alpha=1.0, gamma=0.5):
    """The report's eqs. 1 and 2, written out in numpy; mean over the batch."""
    k = y_true.shape[1]
    y_s = y_true * (1 - S - S / (k - 1)) + S / (k - 1)
    p = np.clip(y_pred.astype(np.float64), 1e-7, 1 - 1e-7)
    per_sample = np.sum(alpha * (1 - p) ** gamma * (-y_s) * np.log(p), axis=1)
    return per_sample.mean()


def test_focal_loss_matches_the_reports_equations_by_hand():
    y, p = _batch()
    got = float(focal_loss()(y, p))                         # defaults: S = 0.05, alpha = 1, gamma = 0.5
    assert got == pytest.approx(reports_focal(y, p), rel=1e-5)
    got = float(make_loss("focal", label_smoothing=0.1, gamma=2.0, alpha=0.25)(y, p))
    assert got == pytest.approx(reports_focal(y, p, S=0.1, alpha=0.25, gamma=2.0), rel=1e-5)


def test_focal_loss_smoothing_is_the_reports_not_keras():
    """True class keeps 1 - S, the K-1 others share S (eq. 1); Keras' own smoothing would give S/K to all."""
    y, p = _batch()
    ours = float(FocalLoss(gamma=0.0, alpha=1.0, label_smoothing=0.2)(y, p))
    k = y.shape[1]
    y_s = np.where(y == 1, 0.8, 0.2 / (k - 1))
    assert ours == pytest.approx(float(np.mean(np.sum(-y_s * np.log(p), axis=1))), rel=1e-5)
    keras_smoothed = float(keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=0.0,
                                                                     label_smoothing=0.2)(y, p))
    assert abs(ours - keras_smoothed) > 1e-3


def test_focal_without_smoothing_equals_keras_focal_and_gamma0_equals_crossentropy():
    y, p = _batch(seed=1)
    ours = float(FocalLoss(gamma=2.0, alpha=0.25, label_smoothing=0.0)(y, p))
    assert ours == pytest.approx(float(keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0)(y, p)),
                                 rel=1e-6)
    assert float(FocalLoss(gamma=0.0, alpha=1.0, label_smoothing=0.0)(y, p)) == pytest.approx(
        float(make_loss("crossentropy")(y, p)), rel=1e-5)


def test_crossentropy_is_keras_with_its_label_smoothing():
    y, p = _batch(seed=2)
    loss = make_loss("crossentropy", label_smoothing=0.1)
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    k = y.shape[1]
    y_s = y * 0.9 + 0.1 / k
    assert float(loss(y, p)) == pytest.approx(float(np.mean(np.sum(-y_s * np.log(p), axis=1))), rel=1e-5)


def test_loss_errors_are_named():
    for bad in (lambda: make_loss("hinge"), lambda: make_loss("focal", label_smoothing=1.0),
                lambda: focal_loss(gamma=-1)):
        with pytest.raises(LossConfigError):
            bad()


def test_focal_loss_serializes_and_trains_with_one_hot_targets():
    loss = focal_loss(gamma=0.5, alpha=1.0, label_smoothing=0.05)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, FocalLoss) and (again.gamma, again.alpha, again.label_smoothing) == (0.5, 1.0, 0.05)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(make_optimizer("adamw", 1e-2), loss=loss, run_eagerly=True)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.argmax(x[:, :3], axis=1)]
    hist = model.fit(x, y, epochs=5, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]


def test_class_weights_are_balanced_and_sum_to_the_sample_count():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10 + [4] * 20)
    w = class_weights(labels, 5)
    assert set(w) == {0, 1, 2, 3, 4}
    counts = np.bincount(labels, minlength=5)
    assert sum(counts[c] * w[c] for c in range(5)) == pytest.approx(len(labels))   # weighted count = n
    assert w[2] > w[4] > w[1] > w[0]                                              # rarer weighs more
    assert w[2] == pytest.approx(len(labels) / (4 * 10))                          # n / (K_present n_c)
    assert w[3] == 1.0                                                            # absent class
    with pytest.raises(LossConfigError):
        class_weights([0, 9], 5)


# ----------------------------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_construct_and_step(name):
    opt = make_optimizer(name, 1e-2, weight_decay=1e-2)
    kernel = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    grads = [np.full((3, 2), 0.5, "float32"), np.full((2,), 0.5, "float32")]
    opt.apply_gradients(zip(grads, [kernel, bias]))
    assert np.all(kernel.numpy() < 1.0) and np.all(bias.numpy() < 1.0)
    assert int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_skips_biases_and_norm_parameters(name):
    opt = make_optimizer(name, 1e-1, weight_decay=0.5)
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    gamma = keras.Variable(np.ones((2,), "float32"), name="gamma")
    zero = [np.zeros((2, 2), "float32"), np.zeros((2,), "float32"), np.zeros((2,), "float32")]
    opt.apply_gradients(zip(zero, [kernel, bias, gamma]))    # zero gradient: only decay can move them
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), 1.0)
    np.testing.assert_array_equal(gamma.numpy(), 1.0)


def test_optimizer_defaults_and_errors():
    assert make_optimizer("adamw", 1e-3).weight_decay == pytest.approx(0.004)   # Keras' AdamW default
    assert make_optimizer("nadam", 1e-3).weight_decay is None
    sgd = make_optimizer("sgd", 1e-2)
    assert sgd.momentum == 0.9 and sgd.nesterov
    for bad in (lambda: make_optimizer("rmsprop", 1e-3), lambda: make_optimizer("adamw", 0.0),
                lambda: make_optimizer("lion", 1e-4, weight_decay=-1)):
        with pytest.raises(OptimizerConfigError):
            bad()


def test_schedules():
    assert make_schedule("constant", 1e-3, 100) == 1e-3
    cos = make_schedule("cosine", 1e-3, 100)
    assert isinstance(cos, keras.optimizers.schedules.CosineDecay)
    assert float(cos(0)) == pytest.approx(1e-3)
    assert float(cos(50)) == pytest.approx(5e-4, rel=1e-4)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-9)
    warm = make_schedule("cosine", 1e-3, 100, warmup_steps=10, alpha=0.1)
    assert float(warm(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(warm(10)) == pytest.approx(1e-3)
    assert float(warm(100)) == pytest.approx(1e-4, rel=1e-4)
    opt = make_optimizer("adamw", cos)
    var = keras.Variable(np.ones((2,), "float32"), name="kernel")
    opt.apply_gradients([(np.ones((2,), "float32"), var)])
    assert float(opt.learning_rate) == pytest.approx(float(cos(1)), rel=1e-6)
    for bad in (lambda: make_schedule("step", 1e-3, 10), lambda: make_schedule("cosine", 1e-3, 0),
                lambda: make_schedule("cosine", 1e-3, 10, warmup_steps=10)):
        with pytest.raises(OptimizerConfigError):
            bad()


def test_mixed_precision_training_step_with_each_optimizer(keras_policy):
    keras_policy("mixed_float16")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.random.default_rng(1).integers(0, 3, 16)]
    for name in OPTIMIZERS:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax", dtype="float32")])
        model.compile(make_optimizer(name, 1e-3), loss=focal_loss(), run_eagerly=True)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        loss = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history["loss"][0]
        assert np.isfinite(loss)
