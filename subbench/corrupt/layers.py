"""The hidden-set corruption as a training-only Keras 3 layer, and its removal before a model ships.

`hidden_set_augmentation()` (example in its docstring) goes right after the model's input. With
`training=True` (model.fit, train_on_batch) it casts the batch to uint8 (rounded, clipped to 0..255), corrupts it
with the numpy simulator through tf.numpy_function (`augment_fn`: each image draws its own ops and magnitudes,
as keras_cv 0.9 did), and casts back to the input dtype. With training False/None it returns its input
unchanged. The seed of each call comes from a keras.random.SeedGenerator, so keras.utils.set_random_seed (or the
layer's `seed`) makes a run repeatable. TensorFlow backend only for training (the identity at inference works on
any backend); the call cannot be XLA-compiled, so the layer sets `supports_jit = False` and `fit` runs the model
without XLA. It has no gradient: nothing trainable may come before it.

`subbench build` / `subbench.package` (builder/package.py `package_models`) remove it before export with
`strip_augmentation(model)`: the server's Keras does not have the class, and it does nothing at inference.
"""

from __future__ import annotations

import keras

from ..errors import ExportError
from .augment import augment_fn
from .errors import CorruptionInputError

_SEED_MAX = 2 ** 31 - 1
STRIP_NOTE = "removed the training-only HiddenSetAugmentation layer"
STRIP_HINT = ("apply the augmentation in tf.data with subbench.augment_fn, or build the model functionally "
              "(keras.Input -> hidden_set_augmentation -> ...) or as a keras.Sequential")


class AugmentationStripError(ExportError):
    """A model holds a HiddenSetAugmentation layer that cannot be removed before export (e.g. a subclassed model)."""


@keras.saving.register_keras_serializable(package="subbench")
class HiddenSetAugmentation(keras.layers.Layer):
    """Corrupts raw 0..255 images like the hidden set when training; the exact identity at inference.

    Args:
        preset: a preset `subbench.corrupt.augment_fn` accepts: "an2dl" (keras_cv 0.9 AugMix then RandAugment,
            defaults, per image) or "noise" (Gaussian, `sigma` grey levels). Unknown: UnknownPresetError.
        params: the preset's parameters, e.g. {"sigma": 10} for "noise".
        seed: int seed of the layer's SeedGenerator (None: drawn; keras.utils.set_random_seed fixes it).
        **kwargs: keras.layers.Layer arguments (name, ...).
    Input: (N, H, W, 3) uint8 or float tensors of 0..255 pixels; the output has the same shape and dtype.
    """

    def __init__(self, preset: str = "an2dl", params: dict | None = None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self._fn = augment_fn(preset, **dict(params or {}))     # validates: UnknownPresetError, bad params
        self.preset = preset
        self.params = dict(self._fn.params)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False          # tf.numpy_function cannot be XLA-compiled

    def build(self, input_shape=None):
        shape = tuple(input_shape) if input_shape is not None else None
        if shape is not None and (len(shape) != 4 or shape[-1] != 3):
            raise CorruptionInputError(f"{self.name} receives inputs of shape {shape}, expected (N, H, W, 3)",
                                       "put hidden_set_augmentation right after keras.Input((H, W, 3)), on the "
                                       "raw 0..255 RGB images")
        self.built = True

    def call(self, inputs, training=None):
        if training is None or training is False:
            return inputs
        if isinstance(training, bool):
            return self._augment(inputs)
        import tensorflow as tf                                  # a boolean tensor

        return tf.cond(tf.cast(training, tf.bool), lambda: self._augment(inputs), lambda: tf.identity(inputs))

    def _augment(self, inputs):
        if keras.backend.backend() != "tensorflow":
            raise CorruptionInputError(f"HiddenSetAugmentation trains with the TensorFlow backend only, not "
                                       f"{keras.backend.backend()}",
                                       "set KERAS_BACKEND=tensorflow, or apply subbench.augment_fn in tf.data")
        import tensorflow as tf

        x = tf.convert_to_tensor(inputs)
        if len(x.shape) != 4 or x.shape[-1] != 3:
            raise CorruptionInputError(f"{self.name} receives inputs of shape {tuple(x.shape)}, expected "
                                       "(N, H, W, 3)", "put the layer right after keras.Input((H, W, 3))")
        dtype = x.dtype
        if dtype == tf.uint8:
            pixels = x
        elif dtype.is_floating:
            pixels = tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float32)), 0.0, 255.0), tf.uint8)
        else:
            pixels = tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
        seed = keras.random.randint((), 0, _SEED_MAX, dtype="int32", seed=self.seed_generator)
        out = self._fn(pixels, seed=tf.cast(seed, tf.int64))
        out.set_shape(x.shape)
        return out if dtype == tf.uint8 else tf.cast(out, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "preset": self.preset, "params": dict(self.params), "seed": self.seed}


def hidden_set_augmentation(preset: str = "an2dl", *, seed: int | None = None, name: str | None = None,
                            **params) -> HiddenSetAugmentation:
    """A training-only layer: corrupts each image like the hidden set in fit, the identity in predict.

        inputs = keras.Input((96, 96, 3))                           # raw 0..255 pixels, as the server sends them
        x = subbench.corrupt.hidden_set_augmentation("an2dl")(inputs)   # corrupted when training only
        x = keras.layers.Rescaling(1 / 255)(x)                      # ... then your backbone and head
        model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(keras.layers.Flatten()(x)))
        model.compile("adam", "sparse_categorical_crossentropy"); model.fit(images, labels)   # package() strips it

    `preset`: "an2dl" or "noise" (what `augment_fn` takes; unknown: UnknownPresetError); `params`: the preset's
    parameters (e.g. sigma=10 for "noise"); `seed`: the layer's SeedGenerator seed; `name`: the layer name.
    """
    return HiddenSetAugmentation(preset=preset, params=params, seed=seed, name=name)


# ------------------------------------------------------------------------------------------------ removal

def _flat_layers(model) -> list:
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except (AttributeError, TypeError):          # pragma: no cover - private API moved
        out, todo = [], list(getattr(model, "layers", []))
        while todo:
            layer = todo.pop()
            out.append(layer)
            todo.extend(getattr(layer, "layers", []))
        return out


def contains_augmentation(model) -> bool:
    """Whether `model` (or any model/layer nested in it) holds a HiddenSetAugmentation layer."""
    return isinstance(model, HiddenSetAugmentation) or any(
        isinstance(layer, HiddenSetAugmentation) for layer in _flat_layers(model))


def _cannot(model, why: str) -> AugmentationStripError:
    return AugmentationStripError(f"model {getattr(model, 'name', model)!r} holds the training-only "
                                  f"HiddenSetAugmentation layer and it cannot be removed before export: {why}",
                                  STRIP_HINT)


def strip_augmentation(model):
    """`model` without its HiddenSetAugmentation layers, for export; `model` itself when it holds none.

    Sequential: a new Sequential of the same input and the other layers. Functional: the graph rebuilt on new
    inputs of the same shape, dtype and name, each augmentation call replaced by its input. Nested Sequential /
    Functional models that hold the layer are stripped the same way. Every other layer is the same object as in
    `model` (shared, not copied), so the result carries the very same weights and computes the same inference
    output. Anything else that holds the layer (a subclassed model or layer) raises AugmentationStripError.
    """
    if not contains_augmentation(model):
        return model
    if isinstance(model, keras.Sequential):
        stripped = _strip_sequential(model)
    elif _is_functional(model):
        stripped = _strip_functional(model)
    else:
        raise _cannot(model, f"it is a subclassed {type(model).__name__}, whose graph is not known")
    if contains_augmentation(stripped):
        holders = [layer for layer in _flat_layers(stripped) if contains_augmentation(layer)
                   and not isinstance(layer, (HiddenSetAugmentation, keras.Sequential)) and not _is_functional(layer)]
        where = f"{type(holders[0]).__name__} {holders[0].name!r}" if holders else "a layer"
        raise _cannot(model, f"the layer sits inside {where}, a subclassed layer or model")
    return stripped


def _is_functional(model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional) and not isinstance(model, keras.Sequential)


def _strip_nested(layer):
    """Reuse `layer` unless it is a model holding the augmentation (then its stripped copy)."""
    if contains_augmentation(layer) and (isinstance(layer, keras.Sequential) or _is_functional(layer)):
        return strip_augmentation(layer)
    return layer


def _strip_sequential(model):
    try:
        source = model.inputs[0]
    except (AttributeError, IndexError, TypeError, ValueError):
        source = None
    if source is None:
        raise _cannot(model, "the Sequential model has no input yet (never built)")
    inputs = keras.Input(batch_shape=tuple(source.shape), dtype=source.dtype, name=source.name)
    layers = [_strip_nested(layer) for layer in model.layers if not isinstance(layer, HiddenSetAugmentation)]
    return keras.Sequential([inputs, *layers], name=model.name, trainable=model.trainable)


def _strip_functional(model):
    import inspect

    def clone_function(layer):
        return layer if isinstance(layer, HiddenSetAugmentation) else _strip_nested(layer)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, HiddenSetAugmentation):
            return args[0] if args else kwargs["inputs"]
        return layer(*args, **kwargs)

    def new_input(x):          # same shape, dtype and input-layer name
        history = getattr(x, "_keras_history", None)
        name = getattr(history[0], "name", None) if history else None
        return keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=name or x.name)

    source = model.input
    if isinstance(source, dict):
        inputs = {k: new_input(v) for k, v in source.items()}
    elif isinstance(source, (list, tuple)):
        inputs = type(source)(new_input(v) for v in source)
    else:
        inputs = new_input(source)
    if "call_function" in inspect.signature(keras.models.clone_model).parameters:     # Keras >= 3.5
        try:
            return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function,
                                            call_function=call_function)
        except ValueError as exc:
            raise _cannot(model, f"Keras could not rebuild its graph ({str(exc).splitlines()[0][:200]})") from None
    # Keras 3.0-3.4: the same walk clone_model does, through the graph's own runner

    def operation_fn(layer):
        if isinstance(layer, HiddenSetAugmentation):
            return lambda *args, **kwargs: args[0] if args else kwargs["inputs"]
        return _strip_nested(layer)

    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    return keras.Model(inputs, outputs, name=model.name, trainable=model.trainable)
