"""Grad-CAM and gradient saliency with Keras/TensorFlow ops, self-contained.

Imported by `subbench.local_bench.explain` for in-memory models, and copied into a run folder as
`program/explain.py` to explain a submission zip in a fresh process with the chosen interpreter (`--env server`
is a virtualenv without subbench): so it imports nothing of subbench, only numpy, TensorFlow and Keras besides
the standard library, and keeps Python 3.8+ syntax.

Grad-CAM (Selvaraju et al., 2017): for class c with pre-softmax score y_c and feature map A (h, w, k), the
weights are the spatial means of dy_c/dA, the map is ReLU(sum_k w_k A_k), bilinearly resized to the input and
divided by its maximum. The feature map is the last 4-D (N, h, w, k) output with h, w > 1 that comes after a
convolution and that the output is computed from, found by walking the layers and descending into nested models
(a keras.applications backbone used as a layer). A nested map is reached by re-wiring: the outer graph is cut
at the nested model's node (`pre`: input -> its input; `post`: its output, and the input for any branch that
bypasses it, -> the output), and the nested model is replaced by one returning its inner map and its output.

Gradient saliency (Simonyan et al., 2014) is the fallback for models without such a map: |dy_c/dx|, the maximum
over colour channels, smoothed with a Gaussian and divided by its maximum.

The score differentiated is the output layer's pre-activation when that layer ends in softmax or sigmoid (the
activation is set to linear for the gradient pass and restored after): a saturated probability has no gradient.
Images go to the model as float32 in 0..255, as the subbench submission template feeds them.

As a program (the child of `explain_zip`):
  explain.py --submission DIR --images X.npy [--labels Y.npy] [--classes C.npy] [--select all|misclassified]
             [--n N] [--method auto|gradcam|saliency] --out OUT.npz --error ERROR.json
imports the submission's model.py, builds Model(), finds the keras.Model it holds (an attribute, or the first of
a list for ensembles), predicts every image with Model().predict, chooses the images to explain and writes the
heat maps and predictions to OUT.npz; a failure writes {"stage", "type", "message"} to ERROR.json and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

import numpy as np

METHODS = ("auto", "gradcam", "saliency")
BATCH_SIZE = 32
GRAPH_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)


class ExplainFailure(Exception):
    """A cause and a fix hint (subbench.local_bench.explain raises them as named SubbenchErrors)."""

    def __init__(self, cause, hint=""):
        super().__init__(cause)
        self.cause, self.hint = cause, hint

    def __str__(self):
        return self.cause


class NoConvLayer(ExplainFailure):
    """The model's output is computed from no convolutional feature map (4-D, h and w > 1)."""


class NoKerasModel(ExplainFailure):
    """The submission's Model() instance holds no keras.Model."""


class BadModel(ExplainFailure):
    """The model cannot be explained as given (inputs, backend, image shape)."""


# ------------------------------------------------------------------------------------------------ the layer
def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model) and bool(getattr(layer, "layers", None))


def _single(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _nodes(layer) -> list:
    return list(getattr(layer, "_inbound_nodes", None) or [])


def _out_shape(layer):
    try:
        return tuple(layer.output.shape)
    except GRAPH_ERRORS:  # a layer called more than once has no single .output
        for node in reversed(_nodes(layer)):
            if len(node.output_tensors) == 1:
                return tuple(node.output_tensors[0].shape)
    return None


def _leaves(model, prefix=()):
    for layer in model.layers:
        if _is_model(layer):
            yield from _leaves(layer, prefix + (layer,))
        else:
            yield prefix + (layer,)


def candidates(model) -> list:
    """Paths (outer layer, ..., inner layer) to spatial feature maps that follow a convolution, last first."""
    found, seen_conv = [], False
    for path in _leaves(model):
        layer = path[-1]
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        seen_conv = seen_conv or "Conv" in kind
        shape = _out_shape(layer)
        if seen_conv and shape is not None and len(shape) == 4 and all((s or 0) > 1 for s in shape[1:3]):
            found.append(path)
    return found[::-1]


def path_name(path) -> str:
    return "/".join(layer.name for layer in path)


def check_model(model) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise BadModel(f"Keras runs on {keras.backend.backend()}; the heat maps use tf.GradientTape",
                       "set KERAS_BACKEND=tensorflow")
    try:
        inputs = model.inputs
    except GRAPH_ERRORS:
        inputs = None
    if not inputs:
        raise BadModel(f"model {model.name} is not built (it has no inputs)",
                       "build it with keras.Input((96, 96, 3)) first, or call it once on a batch")
    if len(inputs) != 1:
        raise BadModel(f"model {model.name} has {len(inputs)} inputs; heat maps need a single image input",
                       "explain a model that takes the image alone")


def _identity(x, training=False):
    return x


def _post(mid, inp, out):
    """(mid, x) -> output: the graph from the nested model's output on, the image input kept for any branch
    that bypasses the nested model."""
    import keras

    if out is mid:
        return lambda m, x, training=False: m
    post = keras.Model([mid, inp], out)
    return lambda m, x, training=False: post([m, x], training=training)


def feature_fn(model, path):
    """x -> (feature map of path[-1], model output), re-wired through nested models along the path."""
    import keras

    first, out = path[0], _single(model.outputs)
    for node in reversed(_nodes(first)):
        try:
            if len(path) == 1:
                tap = keras.Model(model.inputs, [node.output_tensors[0], out])
                return lambda x, tap=tap: tuple(tap(x, training=False))
            inp, mid_in = _single(model.inputs), _single(node.input_tensors)
            pre = _identity if mid_in is inp else keras.Model(inp, mid_in)
            post = _post(node.output_tensors[0], inp, out)
        except GRAPH_ERRORS:  # a node of another graph (the layer is used elsewhere too): try the next
            continue
        inner = feature_fn(first, path[1:])

        def run(x, pre=pre, post=post, inner=inner):
            feat, mid = inner(pre(x, training=False))
            return feat, post(mid, x, training=False)
        return run
    raise NoConvLayer(f"the output of {model.name} cannot be computed from {path_name(path)} alone")


def find_layer(model):
    """(path, fn): the last feature map that the output is computed from, and x -> (map, output)."""
    check_model(model)
    for path in candidates(model):
        try:
            return path, feature_fn(model, path)
        except NoConvLayer:
            continue
    raise NoConvLayer(f"model {model.name} has no convolutional feature map (4-D output with h, w > 1 after a "
                      "convolution) that its prediction is computed from",
                      "use method='saliency' (or 'auto', which falls back to gradient saliency)")


# ------------------------------------------------------------------------------------------------ the maps
def _final_layer(model):
    for _ in range(16):
        history = getattr(_single(model.outputs), "_keras_history", None)
        layer = history[0] if history else model.layers[-1]
        if not _is_model(layer):
            return layer
        model = layer
    return None


@contextlib.contextmanager
def pre_activation(model):
    """Within: the output layer's softmax/sigmoid is linear, so the model returns the scores it squashes."""
    import keras

    layer = _final_layer(model)
    act = getattr(layer, "activation", None)
    if getattr(act, "__name__", "") not in ("softmax", "sigmoid"):
        yield False
        return
    layer.activation = keras.activations.linear
    try:
        yield True
    finally:
        layer.activation = act


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W) maps, edges replicated."""
    r = max(1, int(round(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = maps
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out


def normalize(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    safe = np.where(peak > 0, peak, 1.0)
    return np.clip(maps / safe[:, None, None], 0.0, 1.0).astype(np.float32)


def _batch(fn, x, classes, method, size):
    """(maps (n, H, W), predicted (n,)) for one batch; classes None: each image's predicted class."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        feat, out = fn(x)
        out = tf.reshape(tf.convert_to_tensor(out), (tf.shape(x)[0], -1))
        predicted = tf.argmax(out, axis=1, output_type=tf.int32)
        chosen = predicted if classes is None else tf.convert_to_tensor(classes, tf.int32)
        score = tf.reduce_sum(tf.gather(out, chosen, axis=1, batch_dims=1))
    if method == "saliency":
        grads = tape.gradient(score, x)
        maps = tf.reduce_max(tf.abs(grads), axis=-1).numpy()
        return smooth(maps, sigma=max(1.0, size[0] / 48.0)), predicted.numpy()
    grads = tape.gradient(score, feat)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feat, axis=-1, keepdims=True))
    return tf.image.resize(cam, size, method="bilinear")[..., 0].numpy(), predicted.numpy()


def heat_maps(model, images, classes=None, method="auto", batch_size=BATCH_SIZE) -> dict:
    """Heat maps of `images` (N, H, W, C) for `classes` (None: each image's predicted class; an int; or (N,)).

    Returns {"maps": (N, H, W) float32 in 0..1, "method": "gradcam"|"saliency", "layer": path or None,
    "classes": (N,) the classes explained, "predicted": (N,) the model's argmax, "note": str}."""
    if method not in METHODS:
        raise BadModel(f"method {method!r} is not one of {METHODS}", "use auto, gradcam or saliency")
    x = np.asarray(images)
    check_model(model)
    want = tuple(_single(model.inputs).shape[1:])
    if x.ndim != 4 or any(w is not None and w != s for w, s in zip(want, x.shape[1:])):
        raise BadModel(f"images of shape {x.shape} do not fit the model's input {(None,) + want}",
                       "give a batch (N, H, W, C) of the size the model takes")
    path, fn, note = None, None, ""
    if method != "saliency":
        try:
            path, fn = find_layer(model)
            method = "gradcam"
        except NoConvLayer as exc:
            if method == "gradcam":
                raise
            method, note = "saliency", f"gradient saliency: {exc}"
    if fn is None:
        fn = lambda t: (t, model(t, training=False))  # noqa: E731
    n = len(x)
    if classes is not None:
        classes = np.broadcast_to(np.asarray(classes, dtype=np.int64).reshape(-1), (n,))
    maps, predicted = [], []
    with pre_activation(model):
        for lo in range(0, n, batch_size):
            part = None if classes is None else classes[lo:lo + batch_size]
            m, p = _batch(fn, x[lo:lo + batch_size].astype(np.float32), part, method, x.shape[1:3])
            maps.append(m)
            predicted.append(p)
    predicted = np.concatenate(predicted).astype(np.int64) if n else np.zeros(0, np.int64)
    return {"maps": normalize(np.concatenate(maps)) if n else np.zeros((0,) + x.shape[1:3], np.float32),
            "method": method, "layer": path_name(path) if path else None,
            "classes": predicted if classes is None else np.asarray(classes, np.int64), "predicted": predicted,
            "note": note}


# ------------------------------------------------------------------------------------------------ the program
def keras_models(instance) -> list:
    """(attribute, keras.Model) held by a submission's Model() instance, in attribute order; lists expanded."""
    import keras

    found = []
    for name, value in vars(instance).items():
        if isinstance(value, keras.Model):
            found.append((name, value))
        elif isinstance(value, (list, tuple)):
            found += [("%s[%d]" % (name, i), v) for i, v in enumerate(value) if isinstance(v, keras.Model)]
        elif isinstance(value, dict):
            found += [("%s[%r]" % (name, k), v) for k, v in value.items() if isinstance(v, keras.Model)]
    return found


def choose(labels, predictions, select, n):
    """Indices to explain: every image, or the misclassified ones; the first n of them."""
    idx = np.arange(len(predictions))
    if select == "misclassified":
        if labels is None:
            raise BadModel("--select misclassified needs the labels", "pass --labels")
        idx = idx[np.asarray(labels).reshape(-1) != predictions]
    return idx if n is None else idx[:n]


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _fail(path, stage, exc):
    traceback.print_exc()
    sys.stderr.flush()
    _write_json(path, {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:2000],
                       "hint": getattr(exc, "hint", "")})
    os._exit(1)


def _explain_instance(args, model_obj, X):
    """Predict every image with the submission, then the heat maps of the chosen ones."""
    found = keras_models(model_obj)
    if not found:
        raise NoKerasModel("Model() holds no keras.Model (its attributes: %s)" % ", ".join(sorted(vars(model_obj))),
                           "keep the loaded keras.Model on the instance, e.g. self.model = keras.models.load_model(...)")
    name, keras_model = found[0]
    note = "" if len(found) == 1 else "ensemble of %d models: %s explained" % (len(found), name)
    predictions = np.asarray(model_obj.predict(X))
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    predictions = predictions.reshape(-1).astype(np.int64)
    labels = np.load(args.labels) if args.labels else None
    idx = choose(labels, predictions, args.select, args.n)
    classes = np.load(args.classes)[idx] if args.classes else predictions[idx]
    result = heat_maps(keras_model, X[idx], classes, method=args.method, batch_size=args.batch_size)
    note = "; ".join(t for t in (note, result["note"]) if t)
    return dict(indices=idx, predictions=predictions, maps=result["maps"], classes=result["classes"],
                model_predicted=result["predicted"], method=np.array(result["method"]),
                layer=np.array(result["layer"] or ""), note=np.array(note), attribute=np.array(name))


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="subbench explain: heat maps of a submission's predictions")
    for flag in ("--submission", "--images", "--out", "--error"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--labels")
    parser.add_argument("--classes")
    parser.add_argument("--select", choices=("all", "misclassified"), default="all")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--method", choices=METHODS, default="auto")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--module", default="model")
    parser.add_argument("--class-name", default="Model")
    args = parser.parse_args(argv)
    X = np.load(args.images)
    sys.path.append(args.submission)  # as Codabench's ingestion program does
    try:
        Model = getattr(__import__(args.module), args.class_name)
    except BaseException as exc:
        _fail(args.error, "import", exc)
    try:
        instance = Model()
    except BaseException as exc:
        _fail(args.error, "init", exc)
    try:
        arrays = _explain_instance(args, instance, X)
    except BaseException as exc:
        _fail(args.error, "explain", exc)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
