"""The model modules of subbench.builder (backbones, preprocessing, custom_cnn, input_branches, weights, heads,
models): every backbone builds, preprocessing inside the model equals Keras', input branches, heads, weights,
freezing.

Real TensorFlow throughout. The default run builds each backbone name once (the smallest of each family also
trains one step); the largest backbones are in the slow stage. No download is attempted: "imagenet" is tested
through a proxy that refuses connections, i.e. Keras' real download code failing as it does offline.
"""

from __future__ import annotations

import json
from collections import Counter
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from subbench.builder.backbones import BACKBONES, BackboneSpec, ModelConfigError  # noqa: E402
from subbench.builder.custom_cnn import custom_cnn  # noqa: E402
from subbench.builder.export import export_model  # noqa: E402
from subbench.builder.heads import HeadConfig  # noqa: E402
from subbench.builder.input_branches import (  # noqa: E402
    INPUT_BRANCHES, InputBranchError, InputBranches,
)
from subbench.builder.models import BuiltModel, build_model, set_backbone_trainable  # noqa: E402
from subbench.builder.preprocessing import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB  # noqa: E402
from subbench.builder.weights import (  # noqa: E402
    WeightsFileError, WeightsUnavailableError, efficientnet_v1_stats_fix, keras_cache_dir, save_backbone_weights,
)
from subbench.keras_compat import find_problems, read_key_table  # noqa: E402

ALL_NAMES = (["convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"]
               + [f"efficientnet_b{i}" for i in range(8)]
               + [f"efficientnetv2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")]
               + ["resnet50v2", "vgg16", "mobilenetv3_small", "mobilenetv3_large", "densenet121", "inception_v3",
                  "custom_cnn"])
# The smallest backbone of each family: built and trained one step in the default run.
SMALLEST = {"convnext": "convnext_tiny", "efficientnet": "efficientnet_b0", "efficientnet_v2": "efficientnetv2_b0",
            "resnet_v2": "resnet50v2", "vgg16": "vgg16", "mobilenet_v3": "mobilenetv3_small",
            "densenet": "densenet121", "inception_v3": "inception_v3", "custom": "custom_cnn"}
# Slow stage: hundreds of MB of weights and 8-20 s each to build on 2 cores.
LARGE = ["convnext_large", "convnext_xlarge", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
         "efficientnetv2_m", "efficientnetv2_l"]
OTHERS = [n for n in ALL_NAMES if n not in SMALLEST.values() and n not in LARGE]
BLOCKING = {"lambda", "training_only", "missing_class", "custom_class"}

_CACHE: dict[str, BuiltModel] = {}


def smallest(name: str) -> BuiltModel:
    """One build per name per session (building is the slow part); preprocessing layers never change."""
    if name not in _CACHE:
        _CACHE[name] = build_model(name)
    return _CACHE[name]


def images(n: int = 8, size: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def one_hot(n: int, k: int = 8, seed: int = 0) -> np.ndarray:
    return np.eye(k, dtype="float32")[np.random.default_rng(seed).integers(0, k, n)]


# ------------------------------------------------------------------------------------------------ registry

def test_registry_has_every_supported_name_and_nothing_else():
    assert sorted(BACKBONES) == sorted(ALL_NAMES)
    assert {s.family for s in BACKBONES.values()} == set(SMALLEST)
    for spec in BACKBONES.values():
        assert spec.preprocessing in ("caffe", "tf", "torch", "builtin", "standardize")
        assert spec.min_input_size <= 96 and spec.default_input_size >= 96
        assert (spec.weights_file is None) == (spec.family == "custom")
        if spec.weights_file:
            assert spec.weights_origin.endswith("/" + spec.weights_file)
    assert BACKBONES["inception_v3"].min_input_size == 75


def test_unknown_backbone_and_too_small_input_are_named_errors():
    with pytest.raises(ModelConfigError, match="unknown backbone"):
        build_model("resnet18")
    with pytest.raises(ModelConfigError, match="at least 75") as err:
        build_model("inception_v3", input_shape=(64, 64, 3))
    assert "--input-size" in err.value.hint
    with pytest.raises(ModelConfigError, match="head"):
        build_model("custom_cnn", head=HeadConfig(kind="flatten"))


# ------------------------------------------------------------------------------------- build and train

def _assert_io(built: BuiltModel) -> None:
    assert tuple(built.model.input.shape) == (None, 96, 96, 3)
    assert tuple(built.model.output.shape) == (None, 8)
    assert built.model.output.dtype == "float32"


@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_smallest_of_each_family_builds_and_trains_one_step(family):
    built = smallest(SMALLEST[family])
    _assert_io(built)
    model = built.model
    # Eager: one step without tracing a 200-800 layer graph (tracing costs 20-80 s per model on 2 cores),
    # except ConvNeXt: Keras' TF backend XLA-compiles grouped (depthwise) convolutions on every eager call.
    model.compile(keras.optimizers.SGD(1e-2), keras.losses.CategoricalCrossentropy(), jit_compile=False,
                  run_eagerly=family != "convnext")
    trainable_before = [w.numpy().copy() for w in model.trainable_weights]
    fixed_before = [w.numpy().copy() for layer in built.preprocess_layers for w in layer.weights]
    history = model.fit(images(2), one_hot(2), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(trainable_before, model.trainable_weights)]
    assert any(changed) and model.get_layer("predictions").trainable
    # From scratch: the whole backbone learns (its first conv included), preprocessing stays fixed.
    first_conv = next(l for l in built.backbone_layers if isinstance(l, keras.layers.Conv2D))
    assert id(first_conv.kernel) in {id(w) for w in model.trainable_weights}
    for before, w in zip(fixed_before, [w for layer in built.preprocess_layers for w in layer.weights]):
        np.testing.assert_array_equal(before, w.numpy())
    probs = np.asarray(model(images(2), training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_every_constructor_resolves():
    """Cheap registry check for the default run; building every name is in the slow stage (below)."""
    for spec in BACKBONES.values():
        assert callable(spec.constructor), spec.name


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS + LARGE)
def test_every_other_backbone_builds_with_the_profile_input(name):
    built = build_model(name)
    _assert_io(built)
    keras.backend.clear_session()


# ---------------------------------------------------------------------------------------- preprocessing

def _reference(spec: BackboneSpec, x: np.ndarray) -> np.ndarray:
    if spec.keras_module is None:       # custom_cnn: per-image standardisation (numpy, by hand: the reference)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return (x - mean) / np.sqrt(x.var(axis=(1, 2, 3), keepdims=True) + 1.0)
    return np.asarray(getattr(keras.applications, spec.keras_module).preprocess_input(x.copy()))


@pytest.mark.parametrize("name", ["vgg16", "resnet50v2", "inception_v3", "densenet121", "custom_cnn",
                                  "convnext_tiny", "efficientnet_b0", "efficientnetv2_b0", "mobilenetv3_small"])
def test_raw_pixels_reach_the_backbone_as_keras_preprocess_input_makes_them(name):
    """caffe/tf/torch: our layers equal <family>.preprocess_input; builtin: preprocess_input is the identity
    and nothing is added in front of the backbone (no double preprocessing); standardize (custom_cnn): each
    image to zero mean and unit variance."""
    built = smallest(name)
    x = images(4)
    got = np.asarray(built.preprocess(x))
    np.testing.assert_allclose(got, _reference(built.spec, x), rtol=1e-5, atol=2e-5)
    assert (built.spec.preprocessing == "builtin") == (not built.preprocess_layers)


def test_standardize_cancels_brightness_and_contrast():
    built = smallest("custom_cnn")
    x = images(3)
    np.testing.assert_allclose(np.asarray(built.preprocess(0.5 * x + 40.0)), np.asarray(built.preprocess(x)),
                               atol=1e-3)


def _standardized(v: np.ndarray) -> np.ndarray:   # LayerNormalization over (H, W, C), epsilon 1 grey level squared
    return (v - v.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(v.var(axis=(1, 2, 3), keepdims=True) + 1.0)


def test_edge_channels_are_sobel_magnitudes_that_ignore_brightness_and_inversion():
    """Channels 4-9: |Sobel x| and |Sobel y| of R, G, B ('valid', of the image resized to 66 px), standardised;
    channels 1-3: the image resized to 64 px, standardised. Adding a brightness or inverting the image leaves
    channels 4-9 as they were."""
    built = build_model("custom_cnn", input_size=64, inputs=InputBranches.from_names(["edges"]))
    assert built.model.input_shape == (None, 96, 96, 3) and built.backbone.input_shape == (None, 64, 64, 9)
    assert built.model.output_shape == (None, 8)
    assert all(not layer.trainable for layer in built.preprocess_layers)
    x = np.round(images(3) * 0.7)                       # 0..178: +60 stays inside 0..255
    got = np.asarray(built.preprocess(x))
    resize = keras.layers.Resizing(64, 64, interpolation="bilinear")
    np.testing.assert_allclose(got[..., :3], _standardized(np.asarray(resize(x))), atol=1e-4)
    x66 = np.asarray(keras.layers.Resizing(66, 66, interpolation="bilinear")(x))
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "float32")
    gx = sum(sx[i, j] * x66[:, i:i + 64, j:j + 64] for i in range(3) for j in range(3))
    gy = sum(sx.T[i, j] * x66[:, i:i + 64, j:j + 64] for i in range(3) for j in range(3))
    edges = np.stack([np.abs(gx), np.abs(gy)], axis=-1).reshape(3, 64, 64, 6)   # channel c*2 + (x, y)
    np.testing.assert_allclose(got[..., 3:], _standardized(edges), atol=1e-4)
    for changed in (x + 60.0, 255.0 - x):
        other = np.asarray(built.preprocess(changed))
        np.testing.assert_allclose(other[..., 3:], got[..., 3:], atol=1e-4)
    assert np.abs(np.asarray(built.preprocess(255.0 - x))[..., :3] - got[..., :3]).max() > 1.0


def _soft_equalized(x: np.ndarray, knots: int = 17) -> np.ndarray:
    """numpy's reading of equalized_channels' estimate: hat weights on `knots` grey levels, their image means the
    histogram, F_k = sum_{j<k} h_j + h_k / 2, each pixel F read back through its hat weights; to -1..1."""
    t = np.linspace(0, 255, knots)
    w = np.maximum(0.0, 1.0 - np.abs(x[..., None].astype(np.float64) - t) / (255 / (knots - 1)))
    h = w.mean(axis=(1, 2))
    cdf = np.cumsum(h, axis=-1) - h / 2
    return 2 * (w * cdf[:, None, None]).sum(-1) - 1


def test_equalized_channels_are_each_colours_soft_cdf_and_ignore_equalize():
    """Channels 10-12 (after the image's 3 and the edges' 6): R, G, B each equalised by its own CDF, estimated on
    17 grey levels at 32 px and resized to 64. keras_cv's equalize and auto_contrast (subbench.corrupt's
    reimplementations) change them far less than they change the standardised image."""
    from subbench.corrupt import kcv_ops
    from subbench.data.synthetic import cell_like_images

    built = build_model("custom_cnn", input_size=64, inputs=InputBranches.from_names("equalized,edges"))
    assert built.backbone.input_shape == (None, 64, 64, 12) and built.model.output_shape == (None, 8)
    assert all(not layer.trainable for layer in built.preprocess_layers)
    x = cell_like_images(4, seed=1)[0].astype("float32")
    got = np.asarray(built.preprocess(x))
    resize = keras.layers.Resizing(64, 64, interpolation="bilinear")
    x32 = np.asarray(keras.layers.Resizing(32, 32, interpolation="bilinear")(resize(x)))
    want = np.asarray(resize(_soft_equalized(x32).astype("float32")))
    np.testing.assert_allclose(got[..., 9:], want, atol=1e-3)
    np.testing.assert_allclose(got[..., :3], _standardized(np.asarray(resize(x))), atol=1e-4)   # unchanged
    planar = x.transpose(0, 3, 1, 2)
    for op in (kcv_ops.equalize, kcv_ops.auto_contrast):
        other = np.asarray(built.preprocess(op(planar).transpose(0, 2, 3, 1)))
        eq_change = np.abs(other[..., 9:] - got[..., 9:]).mean()
        image_change = np.abs(other[..., :3] - got[..., :3]).mean()
        assert eq_change < image_change / 3, (op.__name__, eq_change, image_change)   # 0.20 vs 0.73 for equalize


def test_folded_channels_are_min_of_x_and_its_inverse_and_ignore_solarize():
    """Channels 4-6: min(x, 255 - x) of the raw image, resized to 64 px, standardised. keras_cv's solarize
    (AugMix's: no addition) at any threshold leaves them as they were, while it changes the colour channels."""
    from subbench.corrupt import kcv_ops

    built = build_model("custom_cnn", input_size=64, inputs=InputBranches.from_names("folded"))
    assert built.backbone.input_shape == (None, 64, 64, 6) and built.model.output_shape == (None, 8)
    assert all(not layer.trainable for layer in built.preprocess_layers)
    x = images(4)
    got = np.asarray(built.preprocess(x))
    resize = keras.layers.Resizing(64, 64, interpolation="bilinear")
    resized = np.asarray(resize(x))
    np.testing.assert_allclose(got[..., 3:], _standardized(np.asarray(resize(np.minimum(x, 255.0 - x)))), atol=1e-4)
    np.testing.assert_allclose(got[..., :3], _standardized(resized), atol=1e-4)
    planar = x.transpose(0, 3, 1, 2)
    for threshold in (0.0, 64.0, 128.0, 200.0):
        solarized = kcv_ops.solarize(planar, np.zeros(4), np.full(4, threshold)).transpose(0, 2, 3, 1)
        other = np.asarray(built.preprocess(solarized))
        np.testing.assert_allclose(other[..., 3:], got[..., 3:], atol=2e-3)
        assert np.abs(other[..., :3] - got[..., :3]).max() > 0.5


def test_colour_dropout_blanks_the_colours_of_a_share_of_training_images_only():
    """colour_dropout=0.5: in training, about half the images reach the backbone with their 3 colour channels
    zero and the branches' channels as they are; the images kept have the same colour channels as at inference
    (the per-image standardisation undoes Dropout's rescaling). At inference nothing is dropped. Without input
    branches it is a named error."""
    x = images(64)
    built = build_model("custom_cnn", input_size=64, inputs=InputBranches.from_names("folded"), colour_dropout=0.5)
    assert built.describe()["colour_dropout"] == 0.5
    infer = np.asarray(built.preprocess(x, training=False))
    train = np.asarray(built.preprocess(x, training=True))
    dropped = np.all(train[..., :3] == 0, axis=(1, 2, 3))
    assert 16 <= dropped.sum() <= 48, dropped.sum()          # binomial(64, 0.5): 32 +- 4
    np.testing.assert_allclose(train[..., 3:], infer[..., 3:], atol=1e-5)
    np.testing.assert_allclose(train[~dropped, ..., :3], infer[~dropped, ..., :3], atol=1e-3)
    assert not np.any(np.all(infer[..., :3] == 0, axis=(1, 2, 3)))
    with pytest.raises(ModelConfigError, match="colour dropout needs input branches"):
        build_model("custom_cnn", colour_dropout=0.3)


def _layer_kinds(model) -> Counter:
    return Counter(type(layer).__name__ for layer in model.layers)


def test_inverted_residual_blocks_are_cheaper_and_train():
    """block="inverted": each block 1x1 expansion (2x), 3x3 depthwise, 1x1 projection, each with BatchNorm, a
    residual Add where the shape is kept; far fewer weights than the basic blocks at the same widths; it trains
    and predicts like any other model. `block` is custom_cnn's only: a named error elsewhere."""
    basic = build_model("custom_cnn", input_size=64)
    inverted = build_model("custom_cnn", input_size=64, block="inverted")
    assert inverted.block == "inverted" and inverted.describe()["block"] == "inverted"
    kinds = _layer_kinds(inverted.backbone)
    assert kinds["DepthwiseConv2D"] == 6 and kinds["Add"] == 3   # blocks (1, 2, 2, 1): 3 keep their shape
    assert "DepthwiseConv2D" not in _layer_kinds(basic.backbone)
    assert inverted.backbone.count_params() < basic.backbone.count_params() / 2
    assert inverted.backbone.output_shape == basic.backbone.output_shape == (None, 4, 4, 256)
    model = inverted.model
    model.compile(keras.optimizers.SGD(1e-2), keras.losses.CategoricalCrossentropy(), jit_compile=False)
    before = model.get_layer(inverted.backbone.name).get_layer("stage2_block1_depthwise").kernel.numpy().copy()
    history = model.fit(images(4), one_hot(4), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.get_layer(inverted.backbone.name).get_layer("stage2_block1_depthwise").kernel.numpy()
    assert not np.array_equal(before, after)
    with pytest.raises(ModelConfigError, match="block applies to custom_cnn, not to mobilenetv3_small"):
        build_model("mobilenetv3_small", block="inverted")
    with pytest.raises(ModelConfigError, match="custom_cnn block 'dense' is unknown"):
        custom_cnn(block="dense")


@pytest.mark.parametrize("branch", sorted(INPUT_BRANCHES))
def test_input_branches_need_a_standardised_backbone(branch):
    with pytest.raises(ModelConfigError, match=f"input branch {branch} needs a backbone with per-image "
                                               "standardisation"):
        build_model("mobilenetv3_small", inputs=InputBranches.from_names([branch]))


def test_input_branches_are_one_value_read_from_names():
    """Registry order whatever the order given (it is the model's channel order), "none" for no branch, and an
    unknown name a named error with a hint listing the known ones."""
    both = InputBranches.from_names("equalized, edges")
    assert both == InputBranches.from_names(["edges", "equalized"]) == InputBranches(("edges", "equalized"))
    assert both.names() == ("edges", "equalized") and both.describe() == "edges,equalized"
    assert both.channels == 9 and "edges" in both and [b.name for b in both] == ["edges", "equalized"]
    for nothing in ("none", "", [], None):
        assert not InputBranches.from_names(nothing) and InputBranches.from_names(nothing).describe() == "none"
    assert InputBranches.from_names(both) is both
    with pytest.raises(InputBranchError, match="unknown input branch 'sobel'") as err:
        InputBranches.from_names("edges,sobel")
    assert "edges, folded, equalized" in err.value.hint and err.value.exit_code == 2
    with pytest.raises(InputBranchError, match="none goes alone"):
        InputBranches.from_names("none,edges")


def _leading_preprocessing(backbone, x):
    """Apply the backbone's own Rescaling/Normalization layers that come before its first conv."""
    y = x
    for layer in backbone.layers[1:]:
        if not isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            break
        y = layer(y)
    return np.asarray(y)


@pytest.mark.parametrize("name,mode", [("convnext_tiny", "torch"), ("efficientnetv2_b0", "torch"),
                                       ("mobilenetv3_small", "tf")])
def test_builtin_preprocessing_is_the_imagenet_mode_of_the_family(name, mode):
    built = smallest(name)
    x = images(2)
    ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(_leading_preprocessing(built.backbone, x), ref, rtol=1e-5, atol=2e-5)


def test_efficientnet_weights_with_imagenet_statistics_get_the_missing_rescaling(tmp_path):
    """EfficientNet v1 keeps ImageNet std in its Normalization variance; Keras adds a Rescaling only for
    weights="imagenet". A PATH file holding those statistics must give torch-mode inputs too."""
    src = build_model("efficientnet_b0")
    assert efficientnet_v1_stats_fix(src.backbone) is None   # trained from scratch: statistics 0/1, no fix
    norm = next(l for l in src.backbone.layers if isinstance(l, keras.layers.Normalization))
    norm.set_weights([np.array(IMAGENET_MEAN_RGB, "float32"), np.array(IMAGENET_STD_RGB, "float32"),
                      np.array(0)])
    path = save_backbone_weights(src, tmp_path / "effb0.weights.h5")
    built = build_model("efficientnet_b0", weights=str(path))
    assert [l.name for l in built.preprocess_layers] == ["pre_efficientnet_imagenet_stats"]
    x = images(2)
    got = _leading_preprocessing(built.backbone, built.preprocess(x))
    ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="torch")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_input_size_resizes_inside_the_model():
    built = build_model("custom_cnn", input_size=128)
    assert tuple(built.model.input.shape) == (None, 96, 96, 3)
    assert built.input_size == 128 and tuple(built.backbone.input.shape) == (None, 128, 128, 3)
    assert isinstance(built.model.get_layer("pre_resize"), keras.layers.Resizing)
    x = images(2)
    resized = np.asarray(keras.layers.Resizing(128, 128, interpolation="bilinear")(x))
    got = np.asarray(built.preprocess(x))
    assert got.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(got, _reference(built.spec, resized), rtol=1e-4, atol=1e-4)
    same = build_model("custom_cnn", input_size=96)
    assert "pre_resize" not in [l.name for l in same.model.layers] and same.input_size == 96


# ------------------------------------------------------------------------------- heads, saving, shipping

def test_heads_are_built_as_configured():
    gap = build_model("custom_cnn", head=HeadConfig(dense_units=(64, 32), batchnorm=True, dropout=0.3, l2=1e-4))
    names = [l.name for l in gap.model.layers]
    assert names[-1] == "predictions" and "head_gap" in names
    for i, units in enumerate((64, 32)):
        dense = gap.model.get_layer(f"head_dense{i}")
        assert dense.units == units and dense.kernel_regularizer is not None
        assert isinstance(gap.model.get_layer(f"head_dense{i}_bn"), keras.layers.BatchNormalization)
        assert gap.model.get_layer(f"head_dense{i}_dropout").rate == 0.3
    inc = build_model("custom_cnn", head=HeadConfig(kind="inception", dropout=0.2, inception_filters=16,
                                                    inception_bottleneck=8))
    concat = inc.model.get_layer("head_concat")
    assert concat.output.shape[-1] == 4 * 16       # 1x1, 3x3, 5x5 and pooling branches
    assert inc.model.get_layer("head_b3_3x3").kernel_size == (3, 3)
    assert inc.model.get_layer("head_b5_5x5").kernel_size == (5, 5)
    assert inc.model.get_layer("head_dropout").rate == 0.2


@pytest.mark.parametrize("name,head", [("custom_cnn", HeadConfig(kind="inception", dense_units=(32,),
                                                                 batchnorm=True, dropout=0.2, l2=1e-4)),
                                       ("vgg16", HeadConfig(dense_units=(32,), batchnorm=True, dropout=0.2)),
                                       pytest.param("convnext_tiny", HeadConfig(), marks=pytest.mark.slow)])
def test_model_ships_clean_float32_under_mixed_precision_and_reloads(name, head, keras_policy, tmp_path):
    keras_policy("mixed_float16")
    built = build_model(name, head=head, input_size=112 if name == "custom_cnn" else None)
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert built.model.get_layer("predictions").dtype_policy.name == "float32"
    x = images(3)
    probs = np.asarray(built.model(x, training=False))
    assert probs.dtype == np.float32
    path = tmp_path / "m.keras"
    table = read_key_table(Path(__file__).resolve().parents[1] / "subbench/profiles/keras-3.4.1.json")
    export_model(built.model, path, table)              # what build writes into the zip
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert [f.describe() for f in find_problems(config, table) if f.kind in BLOCKING] == []
    assert "FusedBatchNormalization" not in json.dumps(config)
    assert '"Lambda"' not in json.dumps(config)
    reloaded = keras.models.load_model(path, compile=False)
    # float32 export of a float16-computing model: the same probabilities up to float16 round-off
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), probs, atol=2e-3)


# ---------------------------------------------------------------------------------------------- weights

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Downloads fail for real: every URL goes through a proxy on a port that refuses connections, and Keras'
    cache is an empty folder (a machine that has the weights cached still runs the download path)."""
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path))    # exists: writable, so used
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    urllib.request.install_opener(None)                    # urlopen re-reads the proxy settings
    yield
    urllib.request.install_opener(None)


def _cache_target(spec):
    target = keras_cache_dir() / spec.weights_file
    assert not target.exists() and str(target).startswith(keras.src.backend.config.keras_home())
    return target


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined:UserWarning")   # MobileNetV3 at 96 px
def test_imagenet_offline_names_the_file_and_where_to_put_it(offline):
    spec = BACKBONES["mobilenetv3_small"]
    target = _cache_target(spec)
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("mobilenetv3_small", weights="imagenet")
    assert spec.weights_file in err.value.cause
    assert str(target) in err.value.hint and spec.weights_origin in err.value.hint
    assert spec.weights_origin in str(err.value.__cause__)   # the URL Keras really asked for
    assert err.value.exit_code == 2 and "\n" not in err.value.cause


# The registry writes each family's file names and URLs with one formula per family: the smallest of each family
# and a second member of every family with several (another size letter/number in the name) check each formula
# against the URL Keras really requests. Not every name: building is the cost (5-16 s a large one; all 27 names
# took 3 of CI's minutes, these 13 under 1), and every name is built in the test above.
URL_CHECKED = sorted(set(SMALLEST.values()) - {"custom_cnn"}) + ["convnext_small", "efficientnet_b1",
                                                               "efficientnetv2_s", "mobilenetv3_large"]


@pytest.mark.slow
@pytest.mark.parametrize("name", URL_CHECKED)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_registry_weight_files_are_the_ones_keras_downloads(name, offline):
    spec = BACKBONES[name]
    _cache_target(spec)
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(name, weights="imagenet")
    assert f"on {spec.weights_origin}:" in str(err.value.__cause__)
    keras.backend.clear_session()


def test_custom_cnn_has_no_imagenet_weights():
    with pytest.raises(ModelConfigError, match="no ImageNet weights"):
        build_model("custom_cnn", weights="imagenet")


@pytest.mark.parametrize("name", ["custom_cnn", pytest.param("mobilenetv3_small", marks=pytest.mark.slow)])
def test_path_weights_round_trip(name, tmp_path):
    src = build_model(name, seed=1)
    path = save_backbone_weights(src, tmp_path / f"{name}.weights.h5")
    loaded = build_model(name, weights=str(path), seed=2, input_size=112)
    assert loaded.pretrained and loaded.input_size == 112
    for a, b in zip(src.backbone.weights, loaded.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = images(2)
    same_size = build_model(name, weights=str(path), seed=3)
    features = src.preprocess(x)
    np.testing.assert_allclose(np.asarray(same_size.backbone(features, training=False)),
                               np.asarray(src.backbone(features, training=False)), atol=1e-5)


def test_path_weights_in_keras_legacy_h5_format_load(tmp_path):
    """Keras' ImageNet files are legacy (topological) .h5; the same format written from a backbone loads."""
    import h5py                                              # a Keras dependency
    from keras.src.legacy.saving import legacy_h5_format as legacy   # the writer of Keras' ImageNet files
    src = smallest("vgg16")
    path = tmp_path / "vgg16_legacy.h5"
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, src.backbone)
    loaded = build_model("vgg16", weights=str(path), seed=9)
    for a, b in zip(src.backbone.weights, loaded.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.filterwarnings("ignore::UserWarning")   # Keras warns per object before raising on a mismatch
def test_path_weights_errors(tmp_path):
    with pytest.raises(WeightsFileError, match="does not exist"):
        build_model("custom_cnn", weights=str(tmp_path / "missing.weights.h5"))
    model_file = tmp_path / "model.keras"
    smallest("custom_cnn").model.save(model_file)
    with pytest.raises(WeightsFileError, match="weights file of the backbone"):
        build_model("custom_cnn", weights=str(model_file))
    other = save_backbone_weights(smallest("custom_cnn"), tmp_path / "cnn.weights.h5")
    with pytest.raises(WeightsFileError, match="does not hold weights for backbone vgg16") as err:
        build_model("vgg16", weights=str(other))
    assert "save_backbone_weights" in err.value.hint


def test_seed_makes_initial_weights_reproducible():
    a, b, c = (build_model("custom_cnn", seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a.model.get_weights(), b.model.get_weights()))
    assert not all(np.array_equal(x, y) for x, y in zip(a.model.get_weights(), c.model.get_weights()))


# --------------------------------------------------------------------------------------------- freezing

def _bn_layers(model):
    out = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def test_set_backbone_trainable_unfreezes_from_the_top_and_keeps_batchnorm_frozen(tmp_path):
    path = save_backbone_weights(smallest("custom_cnn"), tmp_path / "cnn.weights.h5")
    built = build_model("custom_cnn", weights=str(path))
    layers = built.backbone_layers
    assert built.backbone.trainable_weights == []            # pretrained: frozen at build (phase 1)
    assert built.model.get_layer("predictions").trainable_weights
    n = set_backbone_trainable(built, 0.5)
    first_open = len(layers) - round(0.5 * len(layers))
    open_ = [i for i, layer in enumerate(layers) if layer.trainable]
    assert n == len(open_) > 0 and min(open_) >= first_open     # the top half, nothing below
    assert open_ == [i for i in range(first_open, len(layers))
                     if not isinstance(layers[i], keras.layers.BatchNormalization)]
    assert all(not bn.trainable for bn in _bn_layers(built.backbone))
    top_conv = next(l for l in reversed(layers) if isinstance(l, keras.layers.Conv2D))
    bottom_conv = next(l for l in layers if isinstance(l, keras.layers.Conv2D))
    trainable_ids = {id(w) for w in built.model.trainable_weights}
    assert id(top_conv.kernel) in trainable_ids and id(bottom_conv.kernel) not in trainable_ids
    # A step leaves every BatchNorm statistic and scale untouched (inference mode and frozen).
    bn_before = [w.numpy().copy() for bn in _bn_layers(built.backbone) for w in bn.weights]
    top_before, bottom_before = top_conv.kernel.numpy().copy(), bottom_conv.kernel.numpy().copy()
    built.model.compile(keras.optimizers.AdamW(1e-2), "categorical_crossentropy", run_eagerly=True)
    built.model.fit(images(8), one_hot(8), batch_size=8, epochs=1, verbose=0)
    for before, w in zip(bn_before, [w for bn in _bn_layers(built.backbone) for w in bn.weights]):
        np.testing.assert_array_equal(before, w.numpy())
    assert not np.array_equal(top_before, top_conv.kernel.numpy())
    np.testing.assert_array_equal(bottom_before, bottom_conv.kernel.numpy())
    assert set_backbone_trainable(built, 1.0) == len([l for l in layers
                                                      if not isinstance(l, keras.layers.BatchNormalization)])
    assert set_backbone_trainable(built, 0.0) == 0 and built.backbone.trainable_weights == []
    with pytest.raises(ModelConfigError):
        set_backbone_trainable(built, 1.5)


def test_from_scratch_backbone_trains_its_batchnorm():
    """weights none: BatchNorm learns (trainable, training mode in fit), or a random backbone cannot train."""
    built = build_model("custom_cnn")
    assert set_backbone_trainable(built, 1.0) == len(built.backbone_layers)
    bns = _bn_layers(built.backbone)
    assert bns and all(bn.trainable for bn in bns)
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    built.model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy", run_eagerly=True)
    built.model.fit(images(8), one_hot(8), batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(b, bn.moving_mean.numpy()) for b, bn in zip(before, bns))


def _train_steps(model, x, y, steps=3):
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")      # graph mode, as fit runs it
    for _ in range(steps):
        model.train_on_batch(x, y)


def test_fused_batchnorm_trains_exactly_like_keras_batchnorm_and_exports_as_it(tmp_path):
    """custom_cnn trains with TF's fused BatchNorm kernel (speed, see builder/custom_cnn.py): same outputs, gradients and
    moving statistics as keras.layers.BatchNormalization within float32 round-off, and export writes the Keras
    class (a server without subbench loads it)."""
    x, y = images(8, 32, seed=3), one_hot(8, seed=3)
    keras.utils.set_random_seed(0)
    fused = custom_cnn(input_shape=(32, 32, 3), widths=(8, 16, 16, 16), name="f")
    keras.utils.set_random_seed(0)
    plain = custom_cnn(input_shape=(32, 32, 3), widths=(8, 16, 16, 16), name="p", fused_batchnorm=False)
    assert {type(l).__name__ for l in fused.layers} >= {"FusedBatchNormalization"}
    assert "FusedBatchNormalization" not in {type(l).__name__ for l in plain.layers}
    plain.set_weights(fused.get_weights())
    heads = []
    for body in (fused, plain):
        inp = keras.Input((32, 32, 3))
        out = keras.layers.Dense(8, activation="softmax", kernel_initializer="ones")(
            keras.layers.GlobalAveragePooling2D()(body(keras.layers.Rescaling(1 / 255)(inp))))
        heads.append(keras.Model(inp, out))
    np.testing.assert_allclose(np.asarray(heads[0](x, training=True)), np.asarray(heads[1](x, training=True)),
                               atol=1e-5)
    for m in heads:
        _train_steps(m, x, y)
    for wf, wp in zip(fused.weights, plain.weights):      # kernels, gammas, betas, moving means/variances
        np.testing.assert_allclose(wf.numpy(), wp.numpy(), rtol=1e-3, atol=1e-4, err_msg=wf.path)
    moved = [bn.moving_variance.numpy() for bn in fused.layers if "bn" in bn.name]
    assert moved and all(not np.allclose(v, 1.0) for v in moved)
    table = read_key_table(Path(__file__).resolve().parents[1] / "subbench/profiles/keras-3.4.1.json")
    export_model(heads[0], tmp_path / "m.keras", table)
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    assert "FusedBatchNormalization" not in json.dumps(config) and '"BatchNormalization"' in json.dumps(config)
    reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert "FusedBatchNormalization" not in {type(l).__name__ for l in reloaded._flatten_layers()}
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), np.asarray(heads[0](x, training=False)),
                               atol=1e-6)


# --------------------------------------------------------------------------------------- server's Keras

@pytest.mark.server_env
def test_one_model_per_family_loads_on_the_server_keras(tmp_path):
    """Exported (builder.export) and loaded by the profile's Keras 3.4.1 with the same predictions."""
    from conftest import run_cli
    from subbench import server_env
    from subbench.builder.export import export_model
    from subbench.keras_compat import load_key_table
    from subbench.profile import load_profile

    profile = load_profile()
    assert run_cli("env", "create", timeout=1200).returncode == 0
    python = server_env.resolve_python("server", profile)
    table = load_key_table(profile)
    x = images(3)
    np.save(tmp_path / "x.npy", x)
    for family, name in SMALLEST.items():
        head = HeadConfig(kind="inception", dense_units=(16,), batchnorm=True, dropout=0.1) \
            if family == "custom" else HeadConfig(dense_units=(16,), batchnorm=True, dropout=0.1)
        built = build_model(name, head=head)
        export_model(built.model, tmp_path / f"{name}.keras", table)
        np.save(tmp_path / f"{name}.npy", built.model.predict(x, verbose=0))
        keras.backend.clear_session()
    # the cpu recipe's input (96 px resized to 64 inside) with the edge channels (a frozen Sobel DepthwiseConv2D),
    # the folded ones (Rescaling, Minimum) and the equalised ones (frozen Conv2D ramps, Dense, Reshape, Dot); and
    # the inverted residual blocks (DepthwiseConv2D, the exported BatchNormalization)
    # (the inverted one with colour dropout: a Dropout layer, identity at inference)
    for tag, block in (("edges", "basic"), ("inverted", "inverted")):
        built = build_model("custom_cnn", input_size=64, block=block, colour_dropout=0.3 if block == "inverted" else 0,
                            inputs=InputBranches.from_names(["edges", "folded", "equalized"]))
        export_model(built.model, tmp_path / f"custom_cnn_{tag}.keras", table)
        np.save(tmp_path / f"custom_cnn_{tag}.npy", built.model.predict(x, verbose=0))
        keras.backend.clear_session()
    script = ("import sys, glob, numpy as np, keras\n"
              "x = np.load(sys.argv[1] + '/x.npy')\n"
              "for f in sorted(glob.glob(sys.argv[1] + '/*.keras')):\n"
              "    p = keras.models.load_model(f, compile=False).predict(x, verbose=0)\n"
              "    print(f.rsplit('/', 1)[1], float(np.abs(p - np.load(f[:-6] + '.npy')).max()), p.dtype)\n")
    res = subprocess.run([python, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line.split() for line in res.stdout.splitlines() if ".keras" in line]
    assert len(lines) == len(SMALLEST) + 2
    for fname, diff, dtype in lines:
        assert float(diff) < 1e-4 and dtype == "float32", (fname, diff, dtype)
