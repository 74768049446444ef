"""Backbones, preprocessing inside the model, heads: `build_model(name)` returns a model that takes raw pixels.

The model is what ships in the zip, so it is built only from layers the server's Keras (3.4.1) has: no Lambda,
no augmentation layers (those stay in the tf.data pipeline), and a float32 softmax even under a mixed_float16
policy. Raw 0..255 float input goes in; each backbone family's ImageNet preprocessing is done by built-in
layers in front of it (or by the backbone's own `include_preprocessing` where keras.applications has it):

    caffe (vgg16)                         RGB->BGR and mean subtraction: a frozen 1x1 Conv2D (permutation
                                          kernel, bias = -mean), since Keras has no channel-reversal layer
    tf (resnet50v2, inception_v3)         Rescaling(1/127.5, offset=-1)
    standardize (custom_cnn)              LayerNormalization over (H, W, C) without scale/offset: each image
                                          to zero mean, unit variance (no ImageNet statistics to match);
                                          edge_channels adds its Sobel gradient magnitudes (_edge_channels),
                                          equalized_channels its equalised channels
    torch (densenet121)                   Rescaling(1/255) + Normalization(ImageNet mean, std**2)
    builtin (convnext, efficientnet, efficientnetv2, mobilenetv3)   the backbone's own layers

`--weights`: "none" (random init), "imagenet" (Keras' own download and cache, ~/.keras/models; offline this
raises WeightsUnavailableError naming the file to put there), or PATH: a weights file of the backbone alone,
read by Keras' `load_weights`: a `.weights.h5` saved from `BuiltModel.backbone` (`save_backbone_weights`),
or Keras' own ImageNet `*_notop.h5` for that backbone (legacy .h5 format, also read). Full-model files are
refused: one file = one backbone's weights. (EfficientNet v1 files carrying ImageNet statistics get the
Rescaling Keras itself adds only for weights="imagenet"; see _efficientnet_v1_stats_fix.)

A pretrained backbone (imagenet or PATH) is called with training=False, so its BatchNormalization layers stay
in inference mode and `set_backbone_trainable` keeps them frozen when the top is unfrozen (seeds 000 and 001).
A backbone trained from scratch (weights none) is called normally: its BatchNorm must learn statistics.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from subbench.errors import SubbenchError

# ImageNet statistics as keras.applications.imagenet_utils uses them.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class ModelConfigError(SubbenchError):
    """A model option (backbone name, input size, head, unfreeze fraction) is invalid."""


class WeightsUnavailableError(SubbenchError):
    """ImageNet weights cannot be downloaded (offline) and are not in Keras' cache."""


class WeightsFileError(SubbenchError):
    """A --weights PATH file is missing or does not hold weights for the chosen backbone."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str                    # convnext | efficientnet | efficientnet_v2 | resnet_v2 | vgg16 | mobilenet_v3
    #                                | densenet | inception_v3 | custom
    constructor_name: str          # keras.applications attribute, or "custom_cnn" (this module)
    min_input_size: int            # keras.applications refuses smaller inputs
    default_input_size: int        # the resolution its ImageNet weights were trained at (informative)
    preprocessing: str             # caffe | tf | torch | builtin (see module docstring)
    weights_file: str | None       # Keras' ImageNet no-top file name, cached as ~/.keras/models/<file>
    weights_origin: str | None     # the URL Keras downloads it from
    keras_module: str | None       # keras.applications.<module>.preprocess_input is the reference
    constructor_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def constructor(self) -> Callable:
        """The keras.applications callable (resolved lazily: listing names must not import TensorFlow)."""
        if self.constructor_name == "custom_cnn":
            return custom_cnn
        import keras

        return getattr(keras.applications, self.constructor_name)


def _registry() -> dict[str, BackboneSpec]:
    gs = "https://storage.googleapis.com/tensorflow/keras-applications/"
    specs: list[BackboneSpec] = []
    builtin = (("include_preprocessing", True),)
    for size in ("tiny", "small", "base", "large", "xlarge"):
        specs.append(BackboneSpec(f"convnext_{size}", "convnext", f"ConvNeXt{size.capitalize().replace('Xl', 'XL')}",
                                  32, 224, "builtin", f"convnext_{size}_notop.h5",
                                  f"{gs}convnext/convnext_{size}_notop.h5", "convnext", builtin))
    for i, native in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        specs.append(BackboneSpec(f"efficientnet_b{i}", "efficientnet", f"EfficientNetB{i}", 32, native, "builtin",
                                  f"efficientnetb{i}_notop.h5",
                                  f"https://storage.googleapis.com/keras-applications/efficientnetb{i}_notop.h5",
                                  "efficientnet"))
    for v, native in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480)):
        specs.append(BackboneSpec(f"efficientnetv2_{v}", "efficientnet_v2", f"EfficientNetV2{v.upper()}", 32, native,
                                  "builtin", f"efficientnetv2-{v}_notop.h5",
                                  f"{gs}efficientnet_v2/efficientnetv2-{v}_notop.h5", "efficientnet_v2", builtin))
    specs.append(BackboneSpec("resnet50v2", "resnet_v2", "ResNet50V2", 32, 224, "tf",
                              "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              f"{gs}resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet_v2"))
    specs.append(BackboneSpec("vgg16", "vgg16", "VGG16", 32, 224, "caffe",
                              "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              f"{gs}vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16"))
    for size in ("small", "large"):
        file = f"weights_mobilenet_v3_{size}_224_1.0_float_no_top_v2.h5"
        specs.append(BackboneSpec(f"mobilenetv3_{size}", "mobilenet_v3", f"MobileNetV3{size.capitalize()}", 32, 224,
                                  "builtin", file, f"{gs}mobilenet_v3/{file}", "mobilenet_v3", builtin))
    specs.append(BackboneSpec("densenet121", "densenet", "DenseNet121", 32, 224, "torch",
                              "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              f"{gs}densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet"))
    specs.append(BackboneSpec("inception_v3", "inception_v3", "InceptionV3", 75, 299, "tf",
                              "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              f"{gs}inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              "inception_v3"))
    # Per-image standardisation rather than a fixed rescale for the from-scratch CNN: the hidden set's brightness,
    # contrast and equalisation changes cancel before the first conv. cpu recipe at 64 px, 12 minutes, same
    # pipeline: val accuracy (an2dl-corrupted held-out) 0.723 vs 0.649 with Rescaling.
    specs.append(BackboneSpec("custom_cnn", "custom", "custom_cnn", 32, 96, "standardize", None, None, None))
    return {s.name: s for s in specs}


BACKBONES: dict[str, BackboneSpec] = _registry()


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelConfigError(f"unknown backbone {name!r}", "choose one of: " + ", ".join(BACKBONES)) from None


@dataclass(frozen=True)
class HeadConfig:
    """gap: GAP -> [Dense(units, L2) -> BN? -> activation -> Dropout]* -> Dropout (if no dense) -> softmax.
    inception (seed 000): MaxPool -> parallel 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 convs -> concat -> GAP ->
    Dropout -> [dense as above]* -> softmax."""

    kind: str = "gap"
    dense_units: tuple[int, ...] = ()
    batchnorm: bool = False
    dropout: float = 0.0
    l2: float = 0.0
    activation: str = "relu"
    inception_filters: int = 128      # output channels of each inception branch
    inception_bottleneck: int = 64    # 1x1 bottleneck in front of the 3x3 and 5x5 convs


@dataclass
class BuiltModel:
    model: Any                 # keras.Model: raw 0..255 float32 (N, *input_shape) -> float32 softmax (N, classes)
    backbone: Any              # keras.Model nested in `model` (freeze/unfreeze it through set_backbone_trainable)
    backbone_layers: list      # the backbone's layers in depth order (InputLayer excluded)
    spec: BackboneSpec
    head: HeadConfig
    input_size: int            # spatial size the backbone sees (after Resizing, if any)
    weights: str               # as given: none | imagenet | PATH
    preprocess: Any = None     # keras.Model: raw input -> the backbone's input (shares the model's layers)
    preprocess_layers: list = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def describe(self) -> dict:
        """For the manifest/log: what was built."""
        return {"backbone": self.spec.name, "family": self.spec.family, "input_size": self.input_size,
                "weights": self.weights, "preprocessing": self.spec.preprocessing, "head": asdict(self.head),
                "params": int(self.model.count_params()), "backbone_params": int(self.backbone.count_params())}


# --------------------------------------------------------------------------------------------- custom CNN

# Faster-moving BatchNorm statistics than Keras' 0.99 for layers trained from scratch (custom_cnn, heads): on a
# small set (the demo, --limit runs) they otherwise validate with statistics lagging the weights by many steps.
BN_MOMENTUM = 0.9


@functools.lru_cache(maxsize=None)
def _fused_batch_normalization_class():
    """A keras.layers.BatchNormalization whose training-mode call is TensorFlow's fused kernel (FusedBatchNormV3).

    Why: Keras 3 normalises with separate moment, subtract, scale ops; on a 2-core CPU that made BatchNorm about
    half of custom_cnn's training step (one 64x32x32x64 BN forward+backward: 78 ms as the Keras layer, 17 ms
    fused; whole model 1.14x faster a step at 64 px, bench/bench_custom_cnn.py). Same weights, same inference path
    (the parent's), same moving-statistics rule; it exists only while training: export writes the Keras class
    (`TRAINING_STANDINS`), so the server loads a plain BatchNormalization. Defined lazily: importing this
    module must not import Keras."""
    import keras

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def _fusable(self, inputs) -> bool:
            return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                    and self.axis in (-1, 3) and not getattr(self, "synchronized", False)
                    and not getattr(self, "renorm", False) and self.center and self.scale)

        def call(self, inputs, training=None, mask=None):
            if not training or mask is not None or not self.trainable or not self._fusable(inputs):
                return super().call(inputs, training=training, mask=mask)
            import tensorflow as tf

            empty = tf.constant([], tf.float32)
            y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32),
                mean=empty, variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0,
                data_format="NHWC", is_training=True)
            # the kernel's variance output is Bessel-corrected; Keras' moving variance uses the biased one
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
            var = var * (n - 1.0) / n
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1 - m))
            self.moving_variance.assign(self.moving_variance * m + tf.cast(var, self.moving_variance.dtype) * (1 - m))
            return y

    return FusedBatchNormalization


def fused_batch_normalization(**kwargs):
    return _fused_batch_normalization_class()(**kwargs)


# class name of a training-time stand-in -> the Keras class export writes in its place (same config, weights)
TRAINING_STANDINS = {"FusedBatchNormalization": "BatchNormalization"}


def custom_cnn(include_top: bool = False, weights=None, input_shape=(96, 96, 3), widths=(32, 64, 128, 256),
               blocks=(1, 2, 2, 1), name: str = "custom_cnn", fused_batchnorm: bool = True, **_ignored):
    """A small ResNet for a CPU (1.6 M parameters with the GAP head): stride-2 stem, basic residual blocks
    (conv-BN-ReLU x2, projection shortcut on downsampling), stages at 1/2, 1/4, 1/8, 1/16 of the input.
    Returns the feature map (no top, no preprocessing: like keras.applications with include_top=False).
    Widths 32..256 rather than 24..192 (measured, the cpu recipe's hour on pbc96): with the fused BatchNorm the
    wider net costs 1.07x the step (bench/bench_custom_cnn.py; the 0.59x that once favoured 24..192 was the Keras
    BatchNorm's cost), reaches +1 to 1.5 points of validation accuracy at the same epoch, and scored 0.851 vs 0.841
    on the simulated hidden set. XLA (Keras' jit_compile default) is ~2x slower on CPU (same bench).
    `fused_batchnorm`: train with `FusedBatchNormalization` (see there; exported as BatchNormalization)."""
    import keras
    from keras import layers

    del include_top
    batchnorm = fused_batch_normalization if fused_batchnorm else layers.BatchNormalization
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = batchnorm(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for s, (width, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            stride = 2 if (s > 0 and b == 0) else 1
            p = f"stage{s + 1}_block{b + 1}"
            shortcut = x
            y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{p}_conv1")(x)
            y = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_bn1")(y)
            y = layers.Activation("relu", name=f"{p}_relu1")(y)
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            y = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_bn2")(y)
            if stride != 1 or shortcut.shape[-1] != width:
                shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{p}_proj")(shortcut)
                shortcut = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_proj_bn")(shortcut)
            x = layers.Add(name=f"{p}_add")([shortcut, y])
            x = layers.Activation("relu", name=f"{p}_out")(x)
    model = keras.Model(inp, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


# ------------------------------------------------------------------------------------------ preprocessing

EDGE_CHANNELS = 6   # |Sobel x| and |Sobel y| of each of R, G, B
EQUALIZED_CHANNELS = 3   # R, G, B, each equalised by its own CDF
EQUALIZE_KNOTS = 17   # grey levels 0, 15.9, ..., 255 (_equalized_channels)
EQUALIZE_SCALE = 2   # equalised at 1/2 of the model's input size, then resized up (_equalized_channels)


def _edge_channels(raw, height: int, width: int):
    """(the standardised Sobel gradient magnitudes of R, G, B, height x width x 6; the layers added): built-in
    layers only, the Sobel kernel a frozen DepthwiseConv2D weight saved with the model.

    Why: RandAugment's solarize (add ~55 grey levels, then invert the pixels above a threshold) costs the cpu
    recipe the most, 35-40% of its errors on the simulated hidden set (bench_cpu_recipe's errors by op). A
    gradient's magnitude does not change when a brightness is added or a pixel region is inverted, except along
    the threshold's own edge. The Sobel is taken with 'valid' padding (zero padding would add a border that
    inversion changes) on the image resized to (height + 2, width + 2), which gives height x width with no second
    resize; bilinear resizing commutes with adding a constant and with x -> 255 - x, so the invariance holds.
    """
    from keras import layers

    edge_resize = layers.Resizing(height + 2, width + 2, interpolation="bilinear", dtype="float32",
                                  name="pre_resize_edges")
    sobel = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", use_bias=False, trainable=False,
                                   dtype="float32", name="pre_sobel")
    negate = layers.Rescaling(-1.0, dtype="float32", name="pre_sobel_negate")
    magnitude = layers.Maximum(dtype="float32", name="pre_sobel_abs")   # |g| = max(g, -g): Keras has no Abs layer
    standardize = _standardize_layer("pre_standardize_edges")
    grad = sobel(edge_resize(raw))
    edges = standardize(magnitude([grad, negate(grad)]))
    kernel = np.zeros((3, 3, raw.shape[-1], 2), "float32")
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "float32")
    kernel[:, :, :, 0], kernel[:, :, :, 1] = sx[..., None], sx.T[..., None]
    sobel.set_weights([kernel])
    return edges, [edge_resize, sobel, negate, magnitude, standardize]


def _equalized_channels(image, knots: int = EQUALIZE_KNOTS, scale: int = EQUALIZE_SCALE):
    """(each of R, G, B histogram-equalised by its own soft CDF, in -1..1; the layers added): built-in layers only.

    Why: equalize (in AugMix's chains and in RandAugment), auto_contrast, contrast and posterize change each
    channel by a monotone map, and a channel's CDF value at a pixel (its rank among the image's pixels) does not
    change under a monotone map. Equalising numpy's way needs a sort or a 256-bin histogram per image and
    channel; Keras 3.4.1 has neither as a layer, so the CDF is estimated on `knots` evenly spaced grey levels
    t_0..t_K (0..255): hat weights w_k(v) = relu(1 - |v - t_k| / step) make the histogram (their image mean),
    F_k = sum_{j<k} h_j + h_k / 2 the CDF at each knot, and each pixel reads F back through its own hat weights
    (linear interpolation).

    Cost (bench_custom_cnn, the cpu recipe's bf16 model with edge channels, side by side, one thread): the
    branch at 1/`scale` of the input size, then resized up, costs 1.05x the step; at full size 1.15x. Written
    as ramps r_m = relu((v - t_m) / step), m = -1..K (w_k = r_{k-1} - 2 r_k + r_{k+1}), the histogram, CDF and
    second difference are one fixed matrix on the ramps' image means and the lookup one batched matrix product
    (Dot); the hat weights' own layers (abs, hat, multiply, sum) cost 1.43x at full size.
    What it buys, on 32 pbc96 images (keras_cv's ops as subbench.corrupt has them): equalize changes these
    channels by 0.06 on average, auto_contrast by 0.02; the standardised image by 0.47 and 0.29.
    """
    from keras import layers

    full_size = image.shape[1:3]
    down = layers.Resizing(full_size[0] // scale, full_size[1] // scale, interpolation="bilinear",
                           dtype="float32", name="pre_eq_down")
    up = layers.Resizing(*full_size, interpolation="bilinear", dtype="float32", name="pre_eq_up")
    image = down(image)
    height, width, channels = image.shape[1:]
    ramps_per_channel, step = knots + 1, 255.0 / (knots - 1)
    ramps = layers.Conv2D(channels * ramps_per_channel, 1, use_bias=True, activation="relu", trainable=False,
                          dtype="float32", name="pre_eq_ramps")
    means = layers.GlobalAveragePooling2D(dtype="float32", name="pre_eq_ramp_means")
    lookup_table = layers.Dense(channels * ramps_per_channel * channels, use_bias=False, trainable=False,
                                dtype="float32", name="pre_eq_lookup_table")
    as_matrix = layers.Reshape((channels * ramps_per_channel, channels), dtype="float32", name="pre_eq_matrix")
    as_rows = layers.Reshape((height * width, channels * ramps_per_channel), dtype="float32", name="pre_eq_rows")
    lookup = layers.Dot(axes=(2, 1), dtype="float32", name="pre_eq_lookup")
    as_image = layers.Reshape((height, width, channels), dtype="float32", name="pre_eq_image")
    center = layers.Rescaling(2.0, offset=-1.0, dtype="float32", name="pre_eq_center")
    r = ramps(image)                                       # channel c * (K + 2) + m + 1: r_m of colour c
    out = up(center(as_image(lookup([as_rows(r), as_matrix(lookup_table(means(r)))]))))
    # ramp r_m, m = -1..K, at ramp index m + 1: relu(v / step - m)
    ramps.set_weights([np.kron(np.eye(channels, dtype="float32"),
                               np.full((1, ramps_per_channel), 1.0 / step, "float32"))[None, None],
                       np.tile(-np.arange(-1, knots, dtype="float32"), channels)])
    second_diff = np.zeros((ramps_per_channel, knots))     # w_k = sum_m second_diff[m, k] r_m
    for k in range(knots):
        rows = second_diff[k:k + 3, k]                    # r_{k-1}, r_k, r_{k+1}; r_{K+1} is 0 on 0..255: left out
        rows[:] = (1.0, -2.0, 1.0)[:len(rows)]
    cumulative = np.tril(np.ones((knots, knots)), -1) + 0.5 * np.eye(knots)   # F = cumulative @ h
    per_colour = second_diff @ cumulative @ second_diff.T  # e = r . (second_diff F), F from h = second_diff.T g
    table = np.zeros((channels * ramps_per_channel, channels * ramps_per_channel, channels), "float32")
    for c in range(channels):
        block = slice(c * ramps_per_channel, (c + 1) * ramps_per_channel)
        table[block, block, c] = per_colour.T            # table[g index, r index, colour]
    lookup_table.set_weights([table.reshape(channels * ramps_per_channel, -1)])
    return out, [down, ramps, means, lookup_table, as_matrix, as_rows, lookup, as_image, center, up]


def _standardize_layer(name: str):
    """Per-image standardisation (zero mean, unit variance over H, W, C): brightness and contrast changes of the
    hidden set's corruption cancel before the first conv; epsilon in grey levels squared."""
    from keras import layers

    return layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1.0, dtype="float32",
                                     name=name)


def _preprocessing_layers(mode: str) -> list:
    """Built-in layers mapping raw 0..255 to what the backbone expects. float32 even under mixed precision:
    raw pixel values and means are where float16 loses the most."""
    from keras import layers

    if mode == "builtin":
        return []
    if mode == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, dtype="float32", name="pre_scale_tf")]
    if mode == "standardize":
        return [_standardize_layer("pre_standardize")]
    if mode == "torch":
        return [layers.Rescaling(1 / 255.0, dtype="float32", name="pre_scale_unit"),
                layers.Normalization(mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB],
                                     dtype="float32", name="pre_normalize_imagenet")]
    if mode == "caffe":
        # Keras has no layer reversing channels (Permute moves axes, not entries); a 1x1 conv with a
        # permutation kernel does RGB->BGR and the bias subtracts the BGR mean, exactly (test_models).
        return [layers.Conv2D(3, 1, dtype="float32", trainable=False, name="pre_caffe_bgr_mean")]
    raise ModelConfigError(f"unknown preprocessing mode {mode!r}", "use caffe, tf, torch, standardize or builtin")


def _init_caffe(layer) -> None:
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out_c, in_c in enumerate((2, 1, 0)):     # output BGR from input RGB
        kernel[0, 0, in_c, out_c] = 1.0
    layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])


# ------------------------------------------------------------------------------------------------ weights

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


def _imagenet_backbone(spec: BackboneSpec, kwargs: dict):
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


def _load_path_weights(spec: BackboneSpec, backbone, path: Path) -> None:
    if not path.is_file():
        raise WeightsFileError(f"weights file {path} does not exist",
                               "pass --weights none, imagenet, or the path of an existing .h5 weights file")
    if not path.name.endswith(".h5"):
        raise WeightsFileError(f"{path.name}: --weights PATH takes a weights file of the backbone (.weights.h5 or "
                               f"Keras' ImageNet .h5), not {path.suffix or 'this file type'}",
                               "save one with builder.models.save_backbone_weights(built, 'x.weights.h5')")
    try:
        backbone.load_weights(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsFileError(
            f"{path} does not hold weights for backbone {spec.name}: {first[:300]}",
            f"use a file saved from a {spec.name} backbone (save_backbone_weights) or Keras' ImageNet file "
            f"{spec.weights_file or '(none exists for this backbone)'}") from exc


def _efficientnet_v1_stats_fix(backbone):
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


def save_backbone_weights(built: BuiltModel, path) -> Path:
    """Write the backbone's weights where `--weights PATH` reads them (name must end in .weights.h5)."""
    path = Path(path)
    built.backbone.save_weights(str(path))
    return path


# -------------------------------------------------------------------------------------------------- heads

def _head(x, head: HeadConfig, num_classes: int):
    import keras
    from keras import layers

    reg = keras.regularizers.L2(head.l2) if head.l2 else None
    if head.kind == "inception":
        # Seed 000: max-pool on the feature map, then four parallel branches (three 1x1-bottlenecked convs and
        # a pooling branch), concatenated depth-wise. Stride-1 pools keep the small maps of 96-px inputs.
        x = layers.MaxPooling2D(3, strides=1, padding="same", name="head_pool")(x)

        def conv(t, filters, k, name):
            t = layers.Conv2D(filters, k, padding="same", use_bias=not head.batchnorm, kernel_regularizer=reg,
                              name=name)(t)
            if head.batchnorm:
                t = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(t)
            return layers.Activation(head.activation, name=f"{name}_act")(t)

        f, b = head.inception_filters, head.inception_bottleneck
        b1 = conv(conv(x, b, 1, "head_b1_reduce"), f, 1, "head_b1_1x1")
        b3 = conv(conv(x, b, 1, "head_b3_reduce"), f, 3, "head_b3_3x3")
        b5 = conv(conv(x, b, 1, "head_b5_reduce"), f, 5, "head_b5_5x5")
        bp = layers.MaxPooling2D(3, strides=1, padding="same", name="head_bp_pool")(x)
        bp = conv(bp, f, 1, "head_bp_1x1")
        x = layers.Concatenate(name="head_concat")([b1, b3, b5, bp])
    elif head.kind != "gap":
        raise ModelConfigError(f"unknown head {head.kind!r}", "use gap or inception")
    x = layers.GlobalAveragePooling2D(name="head_gap")(x)
    if head.dropout and (head.kind == "inception" or not head.dense_units):
        x = layers.Dropout(head.dropout, name="head_dropout")(x)
    for i, units in enumerate(head.dense_units):
        x = layers.Dense(units, use_bias=not head.batchnorm, kernel_regularizer=reg, name=f"head_dense{i}")(x)
        if head.batchnorm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"head_dense{i}_bn")(x)
        x = layers.Activation(head.activation, name=f"head_dense{i}_act")(x)
        if head.dropout:
            x = layers.Dropout(head.dropout, name=f"head_dense{i}_dropout")(x)
    # float32 so the probabilities stay float32 under a mixed_float16 policy.
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32",
                        name="predictions")(x)


def _check_head(head: HeadConfig) -> None:
    if head.kind not in ("gap", "inception"):
        raise ModelConfigError(f"unknown head {head.kind!r}", "use gap or inception")
    if not 0.0 <= head.dropout < 1.0:
        raise ModelConfigError(f"head dropout {head.dropout} is outside [0, 1)", "use e.g. 0.2")
    if head.l2 < 0 or any(int(u) <= 0 for u in head.dense_units):
        raise ModelConfigError("head l2 must be >= 0 and dense units > 0", "e.g. dense_units=(256,), l2=1e-4")


# -------------------------------------------------------------------------------------------------- build

def build_model(backbone: str, *, num_classes: int = 8, input_shape=(96, 96, 3), input_size: int | None = None,
                weights: str = "none", head: HeadConfig | None = None, seed: int = 0,
                edge_channels: bool = False, equalized_channels: bool = False) -> BuiltModel:
    """Backbone `backbone` + preprocessing + head, taking raw 0..255 float32 images of `input_shape`.

    input_size: resize inside the model to input_size x input_size first (for backbones that want more
    pixels); None keeps input_shape. seed seeds Keras' global RNG so the initial weights are reproducible.
    edge_channels (backbones with per-image standardisation: custom_cnn): 6 more input channels, the
    standardised Sobel gradient magnitudes (see _edge_channels). equalized_channels (the same backbones): 3 more,
    each colour channel histogram-equalised (see _equalized_channels). The image's 3 channels come first, then
    the edges, then the equalised ones.
    """
    import keras
    from keras import layers

    spec = get_spec(backbone)
    head = head or HeadConfig()
    _check_head(head)
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ModelConfigError(f"input shape {input_shape} is not (H, W, 3)", "use RGB images, channels last")
    size = int(input_size) if input_size else None
    side = size or min(input_shape[:2])
    if side < spec.min_input_size:
        raise ModelConfigError(f"{spec.name} needs inputs of at least {spec.min_input_size}x{spec.min_input_size}, "
                               f"got {side}", f"pass --input-size {max(spec.min_input_size, 96)} (resized inside "
                               "the model)")
    if weights not in ("none", "imagenet") and not isinstance(weights, (str, os.PathLike)):
        raise WeightsFileError(f"--weights {weights!r} is not none, imagenet or a path", "")
    keras.utils.set_random_seed(seed)

    inp = keras.Input(input_shape, dtype="float32", name="image")
    x = inp
    if size and (size, size) != input_shape[:2]:
        x = layers.Resizing(size, size, interpolation="bilinear", dtype="float32", name="pre_resize")(x)
    backbone_shape = (size, size, 3) if size else input_shape
    pre = _preprocessing_layers(spec.preprocessing)
    extra_channels = {"edge_channels": EDGE_CHANNELS * bool(edge_channels),
                      "equalized_channels": EQUALIZED_CHANNELS * bool(equalized_channels)}
    for option, count in extra_channels.items():
        if count and spec.preprocessing != "standardize":   # ImageNet weights expect 3 channels of their own scaling
            raise ModelConfigError(f"{option} needs a backbone with per-image standardisation, not {spec.name}",
                                   f"use it with custom_cnn, or leave {option} off")
    backbone_shape = (*backbone_shape[:2], 3 + sum(extra_channels.values()))

    kwargs = dict(include_top=False, input_shape=backbone_shape, **dict(spec.constructor_kwargs))
    if weights == "imagenet":
        net = _imagenet_backbone(spec, kwargs)
    else:
        net = spec.constructor(weights=None, **kwargs)
        if weights != "none":
            _load_path_weights(spec, net, Path(weights).expanduser())
            if spec.family == "efficientnet":
                fix = _efficientnet_v1_stats_fix(net)
                if fix is not None:
                    pre.append(fix)
    extras, extra_layers = [], []
    if edge_channels:   # from the raw input: the Sobel wants 2 more pixels than the resized image has
        edges, added = _edge_channels(inp, *backbone_shape[:2])
        extras, extra_layers = extras + [edges], extra_layers + added
    if equalized_channels:   # from the resized image, before standardisation (which it does not need)
        equalized, added = _equalized_channels(x)
        extras, extra_layers = extras + [equalized], extra_layers + added
    for layer in pre:
        x = layer(x)
    if extras:
        concat = layers.Concatenate(dtype="float32", name="pre_with_extra_channels")
        x = concat([x, *extras])
        pre = pre + extra_layers + [concat]
    for layer in pre:
        if layer.name == "pre_caffe_bgr_mean":
            _init_caffe(layer)
    preprocessed = x
    pretrained = weights != "none"
    # Pretrained: inference-mode BatchNorm for good (standard Keras transfer learning); from scratch: normal.
    features = net(x, training=False) if pretrained else net(x)
    out = _head(features, head, num_classes)
    model = keras.Model(inp, out, name=f"subbench_{spec.name}")
    built = BuiltModel(model=model, backbone=net, backbone_layers=_depth_ordered_layers(net), spec=spec, head=head,
                       input_size=backbone_shape[0], weights=str(weights),
                       preprocess=keras.Model(inp, preprocessed, name="preprocess"), preprocess_layers=pre)
    set_backbone_trainable(built, 0.0 if pretrained else 1.0)
    return built


def _depth_ordered_layers(backbone) -> list:
    from keras import layers

    # Functional models list their layers in topological (input-to-output) order.
    return [l for l in backbone.layers if not isinstance(l, layers.InputLayer)]


def _all_sublayers(layer):
    for sub in getattr(layer, "layers", []) or []:
        yield sub
        yield from _all_sublayers(sub)


def set_backbone_trainable(built: BuiltModel, fraction: float, *, freeze_batchnorm: bool | None = None) -> int:
    """Unfreeze the top `fraction` of the backbone's layers (0 = frozen, 1 = all); returns how many of
    `backbone_layers` are trainable. BatchNormalization stays frozen when `freeze_batchnorm` (default: the
    backbone is pretrained; seeds 000/001). Recompile the model afterwards (Keras reads trainability at
    compile time). Use this rather than `model.trainable = True`, which would also unfreeze the fixed
    preprocessing conv of caffe-mode backbones."""
    from keras import layers

    if not 0.0 <= float(fraction) <= 1.0:
        raise ModelConfigError(f"unfreeze fraction {fraction} is outside [0, 1]", "use 0 (frozen) .. 1 (all)")
    if freeze_batchnorm is None:
        freeze_batchnorm = built.pretrained
    layers_ = built.backbone_layers
    n_open = int(round(float(fraction) * len(layers_)))
    first_open = len(layers_) - n_open
    built.backbone.trainable = n_open > 0   # the outer flag gates every inner one
    count = 0
    for i, layer in enumerate(layers_):
        layer.trainable = i >= first_open
        for sub in [layer, *_all_sublayers(layer)]:
            if freeze_batchnorm and isinstance(sub, layers.BatchNormalization):
                sub.trainable = False
        if layer.trainable and not (freeze_batchnorm and isinstance(layer, layers.BatchNormalization)):
            count += 1
    for layer in built.preprocess_layers:
        layer.trainable = False
    return count
