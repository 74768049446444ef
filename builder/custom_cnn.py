"""`custom_cnn`: a small residual CNN trained from scratch on a CPU, and its training-time stand-in layers.

`custom_cnn(...)` has the signature of a keras.applications constructor (the backbone registry,
subbench.builder.backbones, calls it like one). It trains with `FusedBatchNormalization`, TensorFlow's fused
BatchNorm kernel behind Keras' BatchNormalization; export writes the Keras class in its place
(`TRAINING_STANDINS`, read by subbench.builder.export), so the server loads a plain BatchNormalization.
Importing this module does not import Keras.
"""

from __future__ import annotations

import functools

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


# Inverted residual blocks: the 1x1 expansion's channels, x the block's input. MobileNetV2 has 6; measured on 2
# AMD EPYC cores held to AVX2, float32, 64 px, stages 24..192, batch 64, images/s of a training step against the
# basic blocks' 286: expansion 4 241, 2 452, 1 662 (its depthwise and 4x-wide BatchNorm layers are memory-bound:
# 23% of the fp32 peak against the basic blocks' 75%, bench/bench_throughput.py).
INVERTED_EXPANSION = 2
BLOCKS = ("basic", "inverted")   # custom_cnn(block=...): the stages' block type


def custom_cnn(include_top: bool = False, weights=None, input_shape=(96, 96, 3), widths=(32, 64, 128, 256),
               blocks=(1, 2, 2, 1), name: str = "custom_cnn", fused_batchnorm: bool = True, block: str = "basic",
               **_ignored):
    """A small ResNet for a CPU (1.6 M parameters with the GAP head): stride-2 stem, then stages at 1/2, 1/4,
    1/8, 1/16 of the input, of `block` blocks (`basic_block` or `inverted_block`).
    Returns the feature map (no top, no preprocessing: like keras.applications with include_top=False).
    Widths 32..256 rather than 24..192 (measured, the cpu recipe's hour on pbc96): with the fused BatchNorm the
    wider net costs 1.07x the step (bench/bench_custom_cnn.py; the 0.59x that once favoured 24..192 was the Keras
    BatchNorm's cost), reaches +1 to 1.5 points of validation accuracy at the same epoch, and scored 0.851 vs 0.841
    on the simulated hidden set. XLA (Keras' jit_compile default) is ~2x slower on CPU (same bench).
    `fused_batchnorm`: train with `FusedBatchNormalization` (see there; exported as BatchNormalization)."""
    import keras
    from keras import layers

    del include_top
    if block not in BLOCKS:
        from subbench.builder.backbones import ModelConfigError

        raise ModelConfigError(f"custom_cnn block {block!r} is unknown", f"use one of {', '.join(BLOCKS)}")
    batchnorm = fused_batch_normalization if fused_batchnorm else layers.BatchNormalization
    make_block = basic_block if block == "basic" else inverted_block
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = batchnorm(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for s, (width, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            stride = 2 if (s > 0 and b == 0) else 1
            x = make_block(x, width, stride, batchnorm, f"stage{s + 1}_block{b + 1}")
    model = keras.Model(inp, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def basic_block(x, width: int, stride: int, batchnorm, p: str):
    """ResNet's basic block: conv3x3-BN-ReLU, conv3x3-BN, + the input (a 1x1 projection where the shape changes),
    ReLU. 18 w^2 multiply-adds a pixel at width w."""
    from keras import layers

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
    return layers.Activation("relu", name=f"{p}_out")(x)


def inverted_block(x, width: int, stride: int, batchnorm, p: str, expansion: int = INVERTED_EXPANSION):
    """MobileNetV2's inverted residual: 1x1 expansion to `expansion` x the input's channels -BN-ReLU, 3x3
    depthwise (the stride) -BN-ReLU, 1x1 linear projection to `width` -BN, + the input where the shape is kept
    (no projection shortcut, as in MobileNetV2). At width w, expansion e: 2 e w^2 + 9 e w multiply-adds a
    pixel, against the basic block's 18 w^2. Built-in layers only (DepthwiseConv2D loads on Keras 3.4.1)."""
    from keras import layers

    cin = x.shape[-1]
    y = layers.Conv2D(cin * expansion, 1, use_bias=False, name=f"{p}_expand")(x)
    y = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_expand_bn")(y)
    y = layers.Activation("relu", name=f"{p}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{p}_depthwise")(y)
    y = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_depthwise_bn")(y)
    y = layers.Activation("relu", name=f"{p}_depthwise_relu")(y)
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{p}_project")(y)
    y = batchnorm(momentum=BN_MOMENTUM, name=f"{p}_project_bn")(y)
    if stride == 1 and cin == width:
        y = layers.Add(name=f"{p}_add")([x, y])
    return y


WHITEN_EPS = 5e-4      # airbench's: added to each eigenvalue, so that near-empty directions are not blown up
WHITEN_IMAGES = 512    # training images whose patches estimate the covariance (~300k patches at 48 px)


def whiten_stem(built, images, *, seed: int = 0, eps: float = WHITEN_EPS, samples: int = WHITEN_IMAGES) -> int:
    """Start custom_cnn's first conv (`stem_conv`) as a whitening of the training images' patches, as airbench
    does ("94% on CIFAR-10 in 3.29 seconds", K. Jordan 2024): the covariance of the stem's input patches (after
    the model's resizing, standardisation and input branches) from `samples` images, its top width/2 eigenvectors
    each scaled by 1/sqrt(eigenvalue + eps), as filters and as their negatives. The first layer then starts by
    passing the directions that carry the most of the images' variance, each at unit variance, instead of random
    ones. The kernel stays trainable. Returns the number of eigen-directions used."""
    import numpy as np
    import tensorflow as tf

    from subbench.builder.backbones import ModelConfigError

    if built.spec.name != "custom_cnn":
        raise ModelConfigError(f"whiten_stem applies to custom_cnn, not to {built.spec.name}",
                               "leave --whiten-stem out for keras.applications backbones")
    conv = built.backbone.get_layer("stem_conv")
    kh, kw, cin, cout = conv.kernel.shape
    pick = np.random.default_rng([seed, 0x3417E]).choice(len(images), min(samples, len(images)), replace=False)
    x = built.preprocess.predict(np.asarray(images[np.sort(pick)], np.float32), batch_size=128, verbose=0)
    # the stem's receptive fields: (kh, kw, cin) patches at its stride, flattened in the kernel's own order
    patches = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, *conv.strides, 1], rates=[1, 1, 1, 1],
                                       padding=conv.padding.upper())
    flat = tf.reshape(patches, (-1, kh * kw * cin)).numpy().astype(np.float64)
    values, vectors = np.linalg.eigh(flat.T @ flat / len(flat))          # ascending
    k = min(cout // 2, len(values))
    top = np.argsort(values)[::-1][:k]
    filters = vectors[:, top] / np.sqrt(np.maximum(values[top], 0.0) + eps)
    kernel = np.zeros((kh * kw * cin, cout))
    kernel[:, :k], kernel[:, k:2 * k] = filters, -filters
    conv.kernel.assign(kernel.reshape(kh, kw, cin, cout).astype(conv.kernel.dtype))
    return k
