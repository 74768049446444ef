"""`build_model(name)`: a backbone with its preprocessing, input branches and head, taking raw pixels; and
`set_backbone_trainable`, which freezes and unfreezes it.

The model is what ships in the zip, so it is built only from layers the server's Keras (3.4.1) has: no Lambda,
no augmentation layers (those stay in the tf.data pipeline), and a float32 softmax even under a mixed_float16
policy. The parts, each in its module:

    subbench.builder.backbones        the registry of backbone names (BACKBONES, get_spec)
    subbench.builder.preprocessing    each family's ImageNet preprocessing as built-in layers
    subbench.builder.custom_cnn       the small from-scratch CNN and its training-time stand-in layers
    subbench.builder.input_branches   extra input channels (edges, equalized) next to the image's 3
    subbench.builder.cell_preprocessing   the team reports' CLAHE, illumination correction and cell masking,
                                      on the raw image before everything else (preprocess=)
    subbench.builder.weights          --weights none | imagenet | PATH
    subbench.builder.heads            the classification heads (HEADS, HeadConfig)

A pretrained backbone (imagenet or PATH) is called with training=False, so its BatchNormalization layers stay
in inference mode and `set_backbone_trainable` keeps them frozen when the top is unfrozen (gradual unfreezing
as in the convnext-xlarge-focal and efficientnetv2s-lion recipes). A backbone trained from scratch (weights
none) is called normally: its BatchNorm must learn statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from subbench.builder.backbones import BackboneSpec, ModelConfigError, get_spec
from subbench.builder.cell_preprocessing import CellPreprocessing
from subbench.builder.heads import HeadConfig, build_head, check_head
from subbench.builder.input_branches import InputBranches, build_branches, check_backbone
from subbench.builder.preprocessing import init_caffe, preprocessing_layers
from subbench.builder.weights import backbone_with_weights, check_weights_option


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
    inputs: InputBranches = field(default_factory=InputBranches)
    preprocess_steps: CellPreprocessing = field(default_factory=CellPreprocessing)
    block: str = "basic"       # custom_cnn's stages' blocks (basic | inverted)
    colour_dropout: float = 0.0  # share of training images whose colour channels are zeroed (input branches kept)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def describe(self) -> dict:
        """For the manifest/log: what was built."""
        return {"backbone": self.spec.name, "family": self.spec.family, "input_size": self.input_size,
                "weights": self.weights, "preprocessing": self.spec.preprocessing, "head": asdict(self.head),
                "block": self.block, "inputs": list(self.inputs.names()), "colour_dropout": self.colour_dropout,
                "preprocess": self.preprocess_steps.to_list(), "params": int(self.model.count_params()),
                "backbone_params": int(self.backbone.count_params())}


def build_model(backbone: str, *, num_classes: int = 8, input_shape=(96, 96, 3), input_size: int | None = None,
                weights: str = "none", head: HeadConfig | None = None, seed: int = 0,
                inputs: InputBranches | None = None, width: int | None = None, block: str = "basic",
                colour_dropout: float = 0.0, preprocess=None) -> BuiltModel:
    """Backbone `backbone` + preprocessing + head, taking raw 0..255 float32 images of `input_shape`.

    input_size: resize inside the model to input_size x input_size first (for backbones that want more
    pixels); None keeps input_shape. seed seeds Keras' global RNG so the initial weights are reproducible.
    inputs: the input branches (backbones with per-image standardisation: custom_cnn), their channels after the
    image's 3 (subbench.builder.input_branches); an InputBranches or what InputBranches.from_names takes.
    width: custom_cnn only, the channels of its first stage (stages width, 2x, 4x, 8x); None = its default.
    block: custom_cnn only, its stages' blocks: basic (ResNet's) or inverted (MobileNetV2's inverted residual).
    colour_dropout: with input branches, the share of training images whose 3 colour channels are zeroed
    (a Dropout that drops the whole image, before the per-image standardisation, which undoes its 1 / (1 - rate)
    scaling of the images it keeps: inference sees the same channels as training); 0 = none.
    preprocess: cell preprocessing steps applied in order to the raw input before everything else (resizing,
    the backbone's preprocessing, the input branches): a CellPreprocessing or what its from_spec takes
    (subbench.builder.cell_preprocessing).
    """
    import keras

    spec = get_spec(backbone)
    head = head or HeadConfig()
    check_head(head)
    inputs = InputBranches.from_names(inputs)
    check_backbone(inputs, spec)
    _check_colour_dropout(colour_dropout, inputs)
    input_shape, size = _checked_input(spec, input_shape, input_size)
    check_weights_option(weights)
    cell = CellPreprocessing.from_spec(preprocess)
    cell_layers = cell.layers(input_shape)   # before the seed: the backbone's initial weights are as without them
    keras.utils.set_random_seed(seed)

    inp = keras.Input(input_shape, dtype="float32", name="image")
    raw = inp
    for layer in cell_layers:
        raw = layer(raw)
    image = raw
    if size and (size, size) != input_shape[:2]:
        image = keras.layers.Resizing(size, size, interpolation="bilinear", dtype="float32", name="pre_resize")(raw)
    spatial = (size, size) if size else input_shape[:2]
    pre = preprocessing_layers(spec.preprocessing)
    kwargs = {"include_top": False, "input_shape": (*spatial, 3 + inputs.channels), **dict(spec.constructor_kwargs),
              **_custom_cnn_kwargs(spec, width, block)}
    net, fix = backbone_with_weights(spec, weights, kwargs)
    x, pre = _preprocessed(raw, image, pre + fix, inputs, colour_dropout, seed)
    pre = cell_layers + pre
    pretrained = weights != "none"
    # Pretrained: inference-mode BatchNorm for good (standard Keras transfer learning); from scratch: normal.
    features = net(x, training=False) if pretrained else net(x)
    model = keras.Model(inp, build_head(features, head, num_classes), name=f"subbench_{spec.name}")
    built = BuiltModel(model=model, backbone=net, backbone_layers=_depth_ordered_layers(net), spec=spec, head=head,
                       input_size=spatial[0], weights=str(weights),
                       preprocess=keras.Model(inp, x, name="preprocess"), preprocess_layers=pre, inputs=inputs,
                       preprocess_steps=cell, block=block, colour_dropout=float(colour_dropout))
    set_backbone_trainable(built, 0.0 if pretrained else 1.0)
    return built


def _custom_cnn_kwargs(spec: BackboneSpec, width: int | None, block: str) -> dict:
    """custom_cnn's constructor arguments for `width` and `block`; ModelConfigError for another backbone."""
    kwargs = {}
    if width is not None:
        if spec.family != "custom":
            raise ModelConfigError(f"width applies to custom_cnn, not to {spec.name}",
                                   "leave --width out for keras.applications backbones")
        kwargs["widths"] = tuple(int(width) * m for m in (1, 2, 4, 8))
    if block != "basic":
        if spec.family != "custom":
            raise ModelConfigError(f"block applies to custom_cnn, not to {spec.name}",
                                   "leave --block out for keras.applications backbones")
        kwargs["block"] = block
    return kwargs


def _checked_input(spec: BackboneSpec, input_shape, input_size) -> tuple[tuple, int | None]:
    """(input_shape as ints, the size to resize to or None); ModelConfigError for shapes the backbone refuses."""
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ModelConfigError(f"input shape {input_shape} is not (H, W, 3)", "use RGB images, channels last")
    size = int(input_size) if input_size else None
    side = size or min(input_shape[:2])
    if side < spec.min_input_size:
        raise ModelConfigError(f"{spec.name} needs inputs of at least {spec.min_input_size}x{spec.min_input_size}, "
                               f"got {side}", f"pass --input-size {max(spec.min_input_size, 96)} (resized inside "
                               "the model)")
    return input_shape, size


def _check_colour_dropout(rate, inputs: InputBranches) -> None:
    if not 0.0 <= float(rate) < 1.0:
        raise ModelConfigError(f"colour dropout {rate} is outside [0, 1)", "give a share of the images, e.g. 0.3")
    if rate and not inputs:
        raise ModelConfigError("colour dropout needs input branches: without them a dropped image is blank",
                               "add --inputs (e.g. edges,folded), or leave --colour-dropout out")


def _preprocessed(raw, image, pre: list, inputs: InputBranches, colour_dropout: float = 0.0, seed: int = 0) -> tuple:
    """(the backbone's input: `image` through the preprocessing layers `pre`, the input branches' channels after
    it; every preprocessing layer, branches' included). The branches take the raw input (edges: the Sobel wants
    2 more pixels than the resized image has) and the resized image before standardisation (equalized).
    colour_dropout: the share of training images whose colour channels are zeroed before `pre`."""
    from keras import layers

    extras, extra_layers = build_branches(inputs, raw, image)
    x = image
    if colour_dropout:
        drop = layers.Dropout(colour_dropout, noise_shape=(None, 1, 1, 1), seed=seed, dtype="float32",
                              name="pre_colour_dropout")
        x = drop(x)
    for layer in pre:
        x = layer(x)
    if colour_dropout:
        pre = [drop] + pre
    if extras:
        concat = layers.Concatenate(dtype="float32", name="pre_with_extra_channels")
        x = concat([x, *extras])
        pre = pre + extra_layers + [concat]
    init_caffe(pre)
    return x, pre


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
    backbone is pretrained). Recompile the model afterwards (Keras reads trainability at compile time). Use
    this rather than `model.trainable = True`, which would also unfreeze the fixed preprocessing conv of
    caffe-mode backbones."""
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
