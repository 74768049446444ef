"""Each backbone family's input preprocessing, as built-in Keras layers inside the model.

Raw 0..255 float input goes in; the model ships in the zip, so the preprocessing is done by layers the server's
Keras (3.4.1) has (no Lambda), in float32 even under a mixed-precision policy (raw pixel values and means are
where float16 loses the most). The mode is a backbone's `BackboneSpec.preprocessing`
(subbench.builder.backbones):

    caffe (vgg16)                         RGB->BGR and mean subtraction: a frozen 1x1 Conv2D (permutation
                                          kernel, bias = -mean), since Keras has no channel-reversal layer
    tf (resnet50v2, inception_v3)         Rescaling(1/127.5, offset=-1)
    standardize (custom_cnn)              LayerNormalization over (H, W, C) without scale/offset: each image
                                          to zero mean, unit variance (no ImageNet statistics to match); the
                                          input branches (subbench.builder.input_branches) go with this mode
    torch (densenet121)                   Rescaling(1/255) + Normalization(ImageNet mean, std**2)
    builtin (convnext, efficientnet, efficientnetv2, mobilenetv3)   the backbone's own layers (its
                                          `include_preprocessing` where keras.applications has it): none here
"""

from __future__ import annotations

import numpy as np

from subbench.builder.backbones import ModelConfigError

# ImageNet statistics as keras.applications.imagenet_utils uses them.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = ("caffe", "tf", "standardize", "torch", "builtin")


def standardize_layer(name: str):
    """Per-image standardisation (zero mean, unit variance over H, W, C): brightness and contrast changes of the
    hidden set's corruption cancel before the first conv; epsilon in grey levels squared."""
    from keras import layers

    return layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1.0, dtype="float32",
                                     name=name)


def preprocessing_layers(mode: str) -> list:
    """Built-in layers mapping raw 0..255 to what the backbone expects (not yet called; a caffe conv gets its
    weights from `init_caffe` once built)."""
    from keras import layers

    if mode == "builtin":
        return []
    if mode == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, dtype="float32", name="pre_scale_tf")]
    if mode == "standardize":
        return [standardize_layer("pre_standardize")]
    if mode == "torch":
        return [layers.Rescaling(1 / 255.0, dtype="float32", name="pre_scale_unit"),
                layers.Normalization(mean=list(IMAGENET_MEAN_RGB), variance=[s * s for s in IMAGENET_STD_RGB],
                                     dtype="float32", name="pre_normalize_imagenet")]
    if mode == "caffe":
        # Keras has no layer reversing channels (Permute moves axes, not entries); a 1x1 conv with a
        # permutation kernel does RGB->BGR and the bias subtracts the BGR mean, exactly (test_models).
        return [layers.Conv2D(3, 1, dtype="float32", trainable=False, name="pre_caffe_bgr_mean")]
    raise ModelConfigError(f"unknown preprocessing mode {mode!r}", "use one of: " + ", ".join(PREPROCESSING_MODES))


def init_caffe(layers: list) -> None:
    """Set the caffe conv's permutation kernel and -mean bias, when `layers` (built) hold it."""
    for layer in layers:
        if layer.name == "pre_caffe_bgr_mean":
            kernel = np.zeros((1, 1, 3, 3), np.float32)
            for out_c, in_c in enumerate((2, 1, 0)):     # output BGR from input RGB
                kernel[0, 0, in_c, out_c] = 1.0
            layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
