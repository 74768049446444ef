"""hidden_set_augmentation: the hidden-set corruption as a training-only Keras layer, and its removal on export."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import subbench.corrupt.augment as augment_module
from conftest import run_cli, write_zip
from subbench.builder.package import package_models, template_source
from subbench.corrupt import (CorruptionInputError, UnknownPresetError, augment_fn, hidden_set_augmentation,
                              strip_augmentation)
from subbench.corrupt.layers import AugmentationStripError, HiddenSetAugmentation, contains_augmentation
from subbench.errors import ExportError
from subbench.local_bench.check import check_zip
from subbench.profile import load_profile

PROFILE = load_profile()
SEED_MAX = 2 ** 31 - 1


def pixels(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def first_seed(layer_seed: int) -> int:
    """The seed the layer's first training call draws (the same SeedGenerator, the same draw)."""
    gen = keras.random.SeedGenerator(layer_seed)
    return int(keras.random.randint((), 0, SEED_MAX, dtype="int32", seed=gen))


def head(x, num_classes: int = 8):
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(4, 3, strides=4, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def functional(size: int = 32, dtype: str = "float32", **aug):
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3), dtype=dtype, name="images")
    return keras.Model(inp, head(hidden_set_augmentation(**aug)(inp)), name="with_aug")


def sequential(size: int = 32, **aug):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((size, size, 3)), hidden_set_augmentation(**aug),
                             keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(4, 3, strides=4),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8, activation="softmax")],
                            name="seq_with_aug")


class Spy:
    """Counts the numpy simulator's calls (the layer reaches it through augment_fn's tf.numpy_function)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        real = augment_module._numpy_augment

        def spy(images, preset, params, seed):
            self.calls.append((images.shape, images.dtype, preset))
            return real(images, preset, params, seed)

        monkeypatch.setattr(augment_module, "_numpy_augment", spy)


# --------------------------------------------------------------------------------------------- the layer

def test_identity_at_inference_for_uint8_and_float():
    layer = hidden_set_augmentation("an2dl")
    x = pixels(4)
    for value in (x, x.astype(np.float32) + 0.25):
        for kwargs in ({}, {"training": False}, {"training": None}):
            out = layer(value, **kwargs)
            assert out.dtype == value.dtype
            np.testing.assert_array_equal(np.asarray(out), value)


def test_training_corrupts_with_the_numpy_simulator():
    x = pixels(6)
    out = HiddenSetAugmentation("an2dl", seed=7)(x, training=True)
    assert out.dtype == tf.uint8 and tuple(out.shape) == x.shape
    np.testing.assert_array_equal(out.numpy(), augment_fn("an2dl")(x, seed=first_seed(7)))
    assert (out.numpy() != x).mean() > 0.3
    layer = HiddenSetAugmentation("an2dl", seed=7)       # each call draws a new seed from the layer's generator
    a, b = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    assert not np.array_equal(a, b)
    step = tf.function(lambda images, training: layer(images, training=training))    # training as a tensor
    assert (step(x, tf.constant(True)).numpy() != x).mean() > 0.3
    np.testing.assert_array_equal(step(x, tf.constant(False)).numpy(), x)


def test_float_input_is_rounded_clipped_and_cast_back():
    x = pixels(4)
    wobble = np.random.default_rng(1).uniform(-0.45, 0.45, x.shape).astype(np.float32)
    xf = x.astype(np.float32) + wobble
    xf[:, 0, 0, 0], xf[:, 1, 1, 1] = 300.0, -20.0          # out of range: clipped to 255 / 0
    expect_in = x.copy()
    expect_in[:, 0, 0, 0], expect_in[:, 1, 1, 1] = 255, 0
    out = HiddenSetAugmentation("noise", {"sigma": 30}, seed=4)(xf, training=True)
    assert out.dtype == tf.float32
    want = augment_fn("noise", sigma=30)(expect_in, seed=first_seed(4)).astype(np.float32)
    np.testing.assert_array_equal(out.numpy(), want)


def test_presets_and_named_errors():
    assert hidden_set_augmentation("noise", sigma=12).get_config()["params"] == {"sigma": 12.0}
    with pytest.raises(UnknownPresetError, match="fog"):
        hidden_set_augmentation("fog")
    with pytest.raises(UnknownPresetError):
        hidden_set_augmentation("suite")
    with pytest.raises(CorruptionInputError, match="no parameter 'sigma'"):
        hidden_set_augmentation("an2dl", sigma=3)
    with pytest.raises(CorruptionInputError, match=r"expected \(N, H, W, 3\)"):
        hidden_set_augmentation()(keras.Input((32, 32, 1)))


def test_config_round_trip():
    layer = hidden_set_augmentation("noise", seed=5, name="hidden", sigma=9)
    config = layer.get_config()
    assert (config["preset"], config["params"], config["seed"], config["name"]) == ("noise", {"sigma": 9.0}, 5,
                                                                                      "hidden")
    clone = HiddenSetAugmentation.from_config(config)
    assert clone.get_config() == config
    x = pixels(3)
    np.testing.assert_array_equal(clone(x, training=True).numpy(), layer(x, training=True).numpy())
    assert keras.saving.get_registered_name(HiddenSetAugmentation) == "subbench>HiddenSetAugmentation"
    assert HiddenSetAugmentation().supports_jit is False


@pytest.mark.parametrize("build", [functional, sequential], ids=["functional", "sequential"])
@pytest.mark.filterwarnings("ignore:Model doesn't support `jit_compile=True`:UserWarning")   # asked for below
def test_fit_corrupts_every_training_batch_in_graph_mode_and_never_at_inference(build, monkeypatch):
    spy = Spy(monkeypatch)
    model = build()
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)   # must fall back: no XLA here
    assert not model.jit_compile and not model.run_eagerly
    x, y = pixels(32), np.arange(32) % 8
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert len(spy.calls) == 8 and all(c == ((8, 32, 32, 3), np.uint8, "an2dl") for c in spy.calls)
    model.train_on_batch(x[:8], y[:8])
    assert len(spy.calls) == 9
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert len(spy.calls) == 9


def test_model_with_the_layer_saves_and_loads_as_keras(tmp_path):
    model = functional(dtype="uint8", preset="noise", sigma=7, seed=11)
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = next(lay for lay in loaded.layers if isinstance(lay, HiddenSetAugmentation))
    assert (layer.preset, layer.params, layer.seed) == ("noise", {"sigma": 7.0}, 11)
    x = pixels(5)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ------------------------------------------------------------------------------------------------ removal

def _same_inference(a, b, size=32, dtype=np.uint8):
    x = pixels(6, size, seed=3).astype(dtype)
    np.testing.assert_array_equal(np.asarray(a.predict(x, verbose=0)), np.asarray(b.predict(x, verbose=0)))


def _assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb) > 0
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)


def test_strip_functional_keeps_graph_inputs_and_weights():
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), dtype="uint8", name="images")
    x = hidden_set_augmentation(name="aug")(inp)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)              # two branches from its output
    b = keras.layers.AveragePooling2D(1, name="pool_b")(x)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.BatchNormalization()(x)
    out = keras.layers.Dense(8, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out, name="branchy")
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(pixels(16), np.arange(16) % 8, epochs=1, verbose=0)                # trained: BN statistics move
    stripped = strip_augmentation(model)
    assert not contains_augmentation(stripped) and contains_augmentation(model)   # the original is untouched
    assert "aug" not in [lay.name for lay in stripped.layers]
    assert stripped.name == "branchy" and stripped.input.dtype == "uint8" and stripped.layers[0].name == "images"
    assert stripped.get_layer("conv_a") is model.get_layer("conv_a")              # shared, not copied
    _assert_same_weights(stripped, model)
    _same_inference(stripped, model)
    assert "HiddenSetAugmentation" not in json.dumps(stripped.get_config())


def test_strip_sequential_and_nested():
    seq = sequential()
    stripped = strip_augmentation(seq)
    assert isinstance(stripped, keras.Sequential) and len(stripped.layers) == len(seq.layers) - 1
    assert stripped.name == "seq_with_aug" and tuple(stripped.input_shape) == (None, 32, 32, 3)
    _assert_same_weights(stripped, seq)
    _same_inference(stripped, seq, dtype=np.float32)

    inp = keras.Input((32, 32, 3))
    outer = keras.Model(inp, keras.layers.Dense(3)(sequential()(inp)), name="outer")   # the layer one level down
    stripped = strip_augmentation(outer)
    assert contains_augmentation(outer) and not contains_augmentation(stripped)
    _assert_same_weights(stripped, outer)
    _same_inference(stripped, outer, dtype=np.float32)


def test_strip_without_call_function_in_clone_model(monkeypatch):
    """Keras 3.0-3.4's clone_model has no call_function: the graph is walked directly, same result."""
    def old_clone_model(model, input_tensors=None, clone_function=None):
        raise AssertionError("must not be used without call_function")

    monkeypatch.setattr(keras.models, "clone_model", old_clone_model)
    model = functional(dtype="uint8")
    stripped = strip_augmentation(model)
    assert not contains_augmentation(stripped) and stripped.layers[0].name == "images"
    _assert_same_weights(stripped, model)
    _same_inference(stripped, model)


def test_strip_returns_a_model_without_the_layer_unchanged():
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    plain = keras.Model(inp, head(inp))
    assert strip_augmentation(plain) is plain


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aug = hidden_set_augmentation()
        self.flat = keras.layers.Flatten()
        self.out = keras.layers.Dense(8, activation="softmax")

    def call(self, x, training=None):
        return self.out(self.flat(self.aug(x, training=training)))


class Wrapper(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aug = hidden_set_augmentation()

    def call(self, x, training=None):
        return self.aug(x, training=training)


def test_unstrippable_models_are_a_named_export_error(tmp_path):
    model = Subclassed(name="sub")
    model(pixels(1, 96).astype(np.float32))
    with pytest.raises(AugmentationStripError) as err:
        strip_augmentation(model)
    assert isinstance(err.value, ExportError) and "subclassed Subclassed" in err.value.cause
    assert "augment_fn" in err.value.hint and "functionally" in err.value.hint
    with pytest.raises(AugmentationStripError, match="subclassed"):     # the build path refuses it too
        package_models([model], tmp_path / "sub.zip", PROFILE, echo=lambda *_: None)
    assert not (tmp_path / "sub.zip").exists()

    inp = keras.Input((32, 32, 3))
    inner = keras.Model(inp, head(Wrapper(name="wrap")(inp)))
    with pytest.raises(AugmentationStripError, match="inside Wrapper 'wrap'"):
        strip_augmentation(inner)


# -------------------------------------------------------------------------------------- zip and check

@pytest.fixture(scope="module")
def trained_aug_model():
    model = functional(size=96, dtype="float32")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(pixels(16, 96), np.arange(16) % 8, epochs=1, batch_size=8, verbose=0)   # BN statistics move
    return model


def test_package_removes_the_layer_and_the_zip_passes_check(trained_aug_model, tmp_path):
    said: list[str] = []
    out = tmp_path / "sub.zip"
    result = package_models([trained_aug_model], out, PROFILE, echo=said.append)
    assert any("removed the training-only HiddenSetAugmentation layer" in line for line in said)
    assert any("HiddenSetAugmentation" in n for n in result.notes)
    with zipfile.ZipFile(out) as zf:
        weights = zf.read("weights.keras")
    (tmp_path / "weights.keras").write_bytes(weights)
    with zipfile.ZipFile(tmp_path / "weights.keras") as wz:
        config = wz.read("config.json").decode()
    assert "HiddenSetAugmentation" not in config and "subbench" not in config
    report = check_zip(out, PROFILE)                            # real subprocesses: the live run and the probe
    assert report.ok, [(r.name, r.cause) for r in report.results if not r.ok]
    packaged = keras.models.load_model(tmp_path / "weights.keras", compile=False)
    x = pixels(8, 96, seed=5).astype(np.float32)
    np.testing.assert_allclose(packaged.predict(x, verbose=0), trained_aug_model.predict(x, verbose=0),
                               rtol=0, atol=1e-6)


def test_check_flags_a_keras_file_that_still_holds_the_layer(trained_aug_model, tmp_path):
    weights = tmp_path / "raw.keras"
    trained_aug_model.save(weights)                             # saved by hand, not through build
    cfg = '{"models": [{"file": "weights.keras", "weight": 1}], "tta": ["identity"]}'
    z = write_zip(tmp_path / "raw.zip", {"model.py": template_source(), "model_config.json": cfg,
                                         "weights.keras": weights.read_bytes()})
    report = check_zip(z, PROFILE, live=False)
    flagged = [r for r in report.results if not r.ok and r.details.get("cls") == "HiddenSetAugmentation"]
    assert not report.ok and [r.name for r in flagged] == ["TrainingOnlyLayer"]
    assert "HiddenSetAugmentation" in flagged[0].cause and "subbench.package" in flagged[0].hint


def test_build_from_a_keras_file_holding_the_layer(trained_aug_model, tmp_path):
    """A fresh process: package_files must register the class before loading the user's file."""
    src = tmp_path / "aug.keras"
    trained_aug_model.save(src)
    out = tmp_path / "sub.zip"
    res = run_cli("build", "--from", str(src), "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed the training-only HiddenSetAugmentation layer" in res.stdout + res.stderr
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(zf.open("weights.keras")) as wz:
        assert "HiddenSetAugmentation" not in wz.read("config.json").decode()
