"""Cell preprocessing from the AN2DL team reports, as Keras layers that go inside the model (the server runs them).

Three steps, each a function returning a small frozen Functional `keras.Model` of built-in layers only (no
Lambda, every layer float32 even under a mixed-precision policy), taking raw 0..255 float images (N, H, W, 3)
and returning the same shape and range, so they compose in any order and go before the backbone's own
preprocessing:

    clahe          contrast-limited adaptive histogram equalisation, each colour on its own: the 'LionIA'
                   report's contrast enhancement (C). The tiled, clipped version of the `equalized` input
                   branch's soft CDF (subbench.builder.input_branches): per tile a histogram on `knots` grey
                   levels, clipped at `clip_limit` times the uniform bin and the excess spread evenly, the
                   tile's CDF as its map, and each pixel reads the maps of the four nearest tile centres,
                   bilinearly weighted (OpenCV's scheme).
    illumination   uneven lighting removed: the background (bright plasma around dark stained cells) estimated
                   by a large-window max-pooling (a grey-level closing), smoothed and resized back, then
                   subtracted (or divided) with the image's mean background added back: the 'LionIA' report's
                   illumination correction (L), pooling instead of its morphology and Gaussian blur.
    mask           the cell kept, the rest set to `fill`: a soft threshold on a weighted channel (the green one
                   by default: stained cells are dark in it), an opening and a closing by pooling
                   (erosion = -maxpool(-m), dilation = maxpool(m)), then mask x image: the 'Overfitting Gods'
                   report's masking (which they found hurt) and the 'LionIA' report's segmentation (S).

`PREPROCESSORS` is the registry (a new step: its function and one entry); `CellPreprocessing` is a model's
list of steps (the recipe's `[model] preprocess = ["clahe", "mask"]`, the CLI's `--preprocess clahe,mask`,
build_model's `preprocess=`); `preprocess_layer(name, **params)` and `preprocessing(steps)` are the public
entry points (`subbench.preprocess_layer`, `subbench.preprocessing`). Importing this module does not import
Keras.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from subbench.builder.backbones import ModelConfigError
from subbench.builder.input_branches import _ramp_weights

NO_PREPROCESS = "none"   # what --preprocess and describe() say for no step
# CLAHE: OpenCV's tutorial values are clipLimit 2.0 on an 8x8 grid of ~45 px tiles of the full-size PBC images;
# at 96 px that content scale is a 4x4 grid of 24 px tiles (8x8 would give 12 px tiles of 144 pixels, too few
# for a histogram). 17 knots as the equalized branch.
CLAHE_TILES = 4
CLAHE_CLIP_LIMIT = 2.0
CLAHE_KNOTS = 17
# Illumination: windows of half the image (48 px at 96), larger than a white cell (~50-70 px across at 96 px
# seldom fills a whole window), so each holds some background; stride of a third of it.
ILLUMINATION_WINDOW = 48
# Mask: on pbc96, green < 150 holds 86% of the pixels within 16 px of the centre and 7% beyond 38 px
# (300 images; the plasma is ~228 in green, red cells ~160-180).
MASK_THRESHOLD = 150.0
MASK_SOFTNESS = 10.0     # grey levels over which the threshold ramps from 1 to 0
MASK_OPEN = 3            # opening: removes specks smaller than this
MASK_CLOSE = 7           # closing: fills holes and gaps smaller than this


class PreprocessError(ModelConfigError):
    """A cell preprocessing step (--preprocess, a recipe's [model] preprocess, preprocess_layer) is unknown or
    has a bad parameter."""


def _layers():
    from keras import layers

    return layers


@contextlib.contextmanager
def _float32_policy():
    """Keras' global dtype policy float32 while a step is built: its layers say float32 themselves, and this
    keeps its input layer and the step's own model float32 too under a mixed-precision policy."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _frozen(inp, out, name: str):
    import keras

    model = keras.Model(inp, out, name=name)
    model.trainable = False
    return model


def _check_shape(input_shape, name: str) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise PreprocessError(f"{name}: input shape {input_shape!r} is not (H, W, C)",
                              "give input_shape=(96, 96, 3) (channels last)")
    return shape


# ------------------------------------------------------------------------------------------------ CLAHE
def _second_difference(knots: int) -> np.ndarray:
    """D (ramps x knots): the hat weight of knot k is w_k = r_{k-1} - 2 r_k + r_{k+1} = sum_m D[m, k] r_m, the
    ramps r_m indexed m + 1 for m = -1..knots-1 (r_knots is 0 on 0..255: left out), as the equalized branch."""
    d = np.zeros((knots + 1, knots))
    for k in range(knots):
        rows = d[k:k + 3, k]
        rows[:] = (1.0, -2.0, 1.0)[:len(rows)]
    return d


def clahe_bins(knots: int) -> np.ndarray:
    """u_k: the mass of knot k's bin under a uniform grey-level distribution (the end bins are half bins)."""
    u = np.ones(knots) / (knots - 1)
    u[[0, -1]] /= 2
    return u


def clahe_cdf_matrix(knots: int) -> np.ndarray:
    """L (knots x knots): the CDF at each knot from the bins, F = L h: F_k = sum_{j<k} h_j + h_k / 2 inside,
    F_0 = 0 and F_last = 1 (all of the mass), so 0 and 255 map to themselves and a uniform histogram to the
    identity."""
    cdf = np.tril(np.ones((knots, knots)), -1) + 0.5 * np.eye(knots)
    cdf[0] = 0.0
    cdf[-1] = 1.0
    return cdf


def _clahe_tables(knots: int, channels: int, clip: float) -> tuple:
    """Kernels and bias of the fixed 1x1 convs on the tiles' ramp means g: the bins h = D^T g, the excess
    e = relu(h - clip u), and the lookup coefficients a = 255 D L (h + M e) over the ramps, M spreading the
    excess evenly (h - e + u sum(e))."""
    d, u, cdf = _second_difference(knots), clahe_bins(knots), clahe_cdf_matrix(knots)
    spread = -np.eye(knots) + np.outer(u, np.ones(knots))
    from_g = 255.0 * d @ cdf @ d.T            # a = from_g g + from_e e
    from_e = 255.0 * d @ cdf @ spread
    eye = np.eye(channels)
    as_kernel = lambda m: np.kron(eye, m.T).astype("float32")[None, None]   # noqa: E731 (x @ kernel per pixel)
    return (as_kernel(d.T), np.tile(-clip * u, channels).astype("float32"), as_kernel(from_g), as_kernel(from_e),
            np.kron(eye, np.ones((knots + 1, 1))).astype("float32")[None, None])


def clahe(input_shape=(96, 96, 3), *, tiles: int = CLAHE_TILES, clip_limit: float = CLAHE_CLIP_LIMIT,
          knots: int = CLAHE_KNOTS, name: str = "pre_clahe"):
    """CLAHE of each colour: `tiles` x `tiles` tiles, histograms on `knots` grey levels clipped at `clip_limit`
    times a uniform bin (the map's slope stays within clip_limit + 1), built-in layers only."""
    height, width, channels = _check_shape(input_shape, name)
    _positive_int(name, "tiles", tiles)
    if height % tiles or width % tiles:
        raise PreprocessError(f"{name}: {tiles} tiles do not divide the {height}x{width} image",
                              f"use a tile count dividing {height} and {width} (e.g. 2, 3, 4, 6 at 96 px)")
    if not isinstance(clip_limit, (int, float)) or isinstance(clip_limit, bool) or clip_limit < 1:
        raise PreprocessError(f"{name}: clip_limit {clip_limit!r} is not a number of at least 1",
                              "use e.g. 2.0 (1: no equalisation at all; larger: closer to plain equalisation)")
    if not isinstance(knots, int) or isinstance(knots, bool) or knots < 3:
        raise PreprocessError(f"{name}: knots {knots!r} is not an integer of at least 3", "use e.g. 17")
    import keras

    L, C = _layers(), channels
    f32 = dict(dtype="float32")
    inp = keras.Input((height, width, C), name=f"{name}_input")
    ramps = L.Conv2D(C * (knots + 1), 1, activation="relu", name=f"{name}_ramps", **f32)
    tile_means = L.AveragePooling2D((height // tiles, width // tiles), name=f"{name}_tile_means", **f32)
    excess = L.Conv2D(C * knots, 1, activation="relu", name=f"{name}_excess", **f32)
    from_g = L.Conv2D(C * (knots + 1), 1, use_bias=False, name=f"{name}_from_bins", **f32)
    from_e = L.Conv2D(C * (knots + 1), 1, use_bias=False, name=f"{name}_from_excess", **f32)
    per_pixel = L.Resizing(height, width, interpolation="bilinear", name=f"{name}_interpolate", **f32)
    read = L.Conv2D(C, 1, use_bias=False, name=f"{name}_read", **f32)
    r = ramps(inp)
    g = tile_means(r)
    coeffs = L.Add(name=f"{name}_coefficients", **f32)([from_g(g), from_e(excess(g))])
    out = read(L.Multiply(name=f"{name}_lookup", **f32)([r, per_pixel(coeffs)]))
    ramps.set_weights(_ramp_weights(knots, C))
    to_bins, bias, k_g, k_e, k_read = _clahe_tables(knots, C, float(clip_limit))
    excess.set_weights([to_bins, bias])
    from_g.set_weights([k_g])
    from_e.set_weights([k_e])
    read.set_weights([k_read])
    return _frozen(inp, out, name)


# ------------------------------------------------------------------------------------------------ illumination
def illumination(input_shape=(96, 96, 3), *, window: int = ILLUMINATION_WINDOW, mode: str = "subtract",
                 name: str = "pre_illumination"):
    """Illumination correction of each colour: background b = the max over `window`-px windows (stride
    window/3), smoothed by a 3x3 mean of those, resized bilinearly to the image; out = x - b + mean(b)
    (mode "subtract") or x * mean(b) / b (mode "divide", keras.ops.divide: an op the server's Keras has),
    clipped to 0..255."""
    height, width, channels = _check_shape(input_shape, name)
    _positive_int(name, "window", window, low=3)
    if mode not in ("subtract", "divide"):
        raise PreprocessError(f"{name}: mode {mode!r} is not subtract or divide", "use mode='subtract' or 'divide'")
    import keras

    L, f32 = _layers(), dict(dtype="float32")
    inp = keras.Input((height, width, channels), name=f"{name}_input")
    coarse = L.MaxPooling2D(window, strides=max(1, window // 3), padding="same", name=f"{name}_max", **f32)(inp)
    coarse = L.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_smooth", **f32)(coarse)
    background = L.Resizing(height, width, interpolation="bilinear", name=f"{name}_background", **f32)(coarse)
    level = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_level", **f32)(coarse)
    level = L.UpSampling2D((height, width), name=f"{name}_level_map", **f32)(level)
    if mode == "subtract":
        flat = L.Subtract(name=f"{name}_subtract", **f32)([inp, background])
        out = L.Add(name=f"{name}_relevel", **f32)([flat, level])
    else:
        ratio = keras.ops.divide(level, keras.ops.maximum(background, 1.0))
        out = L.Multiply(name=f"{name}_flatten", **f32)([inp, ratio])
    out = L.ReLU(max_value=255.0, name=f"{name}_clip", **f32)(out)
    return _frozen(inp, out, name)


# ------------------------------------------------------------------------------------------------ mask
def mask(input_shape=(96, 96, 3), *, threshold: float = MASK_THRESHOLD, channel_weights=(0.0, 1.0, 0.0),
         softness: float = MASK_SOFTNESS, open_size: int = MASK_OPEN, close_size: int = MASK_CLOSE,
         fill: float = 0.0, name: str = "pre_mask"):
    """Cell masking: m = clip((threshold - sum(channel_weights * x)) / softness + 1/2, 0, 1) (1 on the dark,
    stained cell), opened by `open_size` and closed by `close_size` px (erosion -maxpool(-m), dilation
    maxpool(m), stride 1), then out = m * x + (1 - m) * fill."""
    height, width, channels = _check_shape(input_shape, name)
    weights = np.asarray(channel_weights, "float64")
    if weights.shape != (channels,) or not np.isfinite(weights).all() or not weights.any():
        raise PreprocessError(f"{name}: channel_weights {channel_weights!r} are not {channels} finite numbers, "
                              "not all 0", "use e.g. (0, 1, 0): the green channel")
    for key, value in (("threshold", threshold), ("softness", softness), ("fill", fill)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise PreprocessError(f"{name}: {key} {value!r} is not a number", f"give {key} as a number")
    if softness <= 0:
        raise PreprocessError(f"{name}: softness {softness!r} is not above 0", "use e.g. 10 (grey levels)")
    for key, value in (("open_size", open_size), ("close_size", close_size)):
        _positive_int(name, key, value)
    import keras

    L, f32 = _layers(), dict(dtype="float32")
    inp = keras.Input((height, width, channels), name=f"{name}_input")
    soft = L.Conv2D(channels, 1, name=f"{name}_threshold", **f32)
    m = L.ReLU(max_value=1.0, name=f"{name}_binarize", **f32)(soft(inp))
    m = _dilate(_erode(m, open_size, f"{name}_open"), open_size, f"{name}_open")
    m = _erode(_dilate(m, close_size, f"{name}_close"), close_size, f"{name}_close")
    x = L.Rescaling(1.0, offset=-float(fill), name=f"{name}_unfill", **f32)(inp) if fill else inp
    out = L.Multiply(name=f"{name}_apply", **f32)([x, m])
    if fill:
        out = L.Rescaling(1.0, offset=float(fill), name=f"{name}_fill", **f32)(out)
    kernel = np.repeat((-weights / softness)[:, None], channels, axis=1).astype("float32")[None, None]
    soft.set_weights([kernel, np.full(channels, threshold / softness + 0.5, "float32")])
    return _frozen(inp, out, name)


def _dilate(m, size: int, name: str):
    if size <= 1:
        return m
    return _layers().MaxPooling2D(size, strides=1, padding="same", dtype="float32", name=f"{name}_dilate")(m)


def _erode(m, size: int, name: str):
    if size <= 1:
        return m
    L = _layers()
    neg = L.Rescaling(-1.0, dtype="float32", name=f"{name}_erode_neg")(m)
    neg = L.MaxPooling2D(size, strides=1, padding="same", dtype="float32", name=f"{name}_erode_max")(neg)
    return L.Rescaling(-1.0, dtype="float32", name=f"{name}_erode")(neg)


def _positive_int(name: str, key: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise PreprocessError(f"{name}: {key} {value!r} is not an integer of at least {low}",
                              f"give {key} as a whole number >= {low}")


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Preprocessor:
    name: str
    build: Callable          # (input_shape, **params) -> a frozen keras.Model, 0..255 in and out
    help: str                # one line for --preprocess


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("clahe", clahe, "contrast-limited adaptive histogram equalisation of each colour (4x4 tiles, "
                 "clip 2; the 'LionIA' report)"),
    Preprocessor("illumination", illumination, "uneven lighting removed, background by 48 px max-pooling "
                 "(the 'LionIA' report)"),
    Preprocessor("mask", mask, "the stained cell kept, the background zeroed: green threshold, opening and "
                 "closing by pooling (the 'Overfitting Gods' report)"),
)}


def _params_of(name: str) -> tuple[str, ...]:
    sig = inspect.signature(PREPROCESSORS[name].build)
    return tuple(p for p, v in sig.parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "name")


def _unknown_step(name) -> PreprocessError:
    return PreprocessError(f"unknown preprocessing step {name!r}",
                           f"use one or more of {', '.join(PREPROCESSORS)} (comma-separated, applied in that "
                           f"order), or {NO_PREPROCESS}")


def preprocess_layer(step: str, input_shape=(96, 96, 3), **params):
    """One step as a frozen keras.Model of built-in layers (raw 0..255 in and out): "clahe", "illumination" or
    "mask", with its parameters (see each function; `name` names the model) or their defaults from the team
    reports."""
    if step not in PREPROCESSORS:
        raise _unknown_step(step)
    allowed = _params_of(step)
    unknown = sorted(set(params) - set(allowed) - {"name"})
    if unknown:
        raise PreprocessError(f"{step} has no parameter {unknown[0]!r}", f"{step} takes {', '.join(allowed)}")
    with _float32_policy():
        return PREPROCESSORS[step].build(input_shape, **params)


@dataclass(frozen=True)
class CellPreprocessing:
    """A model's preprocessing steps, in the order applied: each (name, ((param, value), ...))."""

    steps: tuple = ()

    @classmethod
    def from_spec(cls, spec: Any) -> CellPreprocessing:
        """From "clahe,mask", "none", None, ["illumination", "clahe"] (a recipe's list), items as
        {"name": "clahe", "clip_limit": 3.0} tables or (name, {params}) pairs, or a CellPreprocessing."""
        if isinstance(spec, CellPreprocessing):
            return spec
        if spec is None:
            return cls()
        items = spec.split(",") if isinstance(spec, str) else spec
        if not isinstance(items, Iterable):
            raise PreprocessError(f"preprocessing {spec!r} is not a list of steps",
                                  f"give names: {', '.join(PREPROCESSORS)}")
        steps = [s for s in (_one_step(item) for item in items) if s is not None]
        if any(n == NO_PREPROCESS for n, _ in steps):
            if len(steps) > 1:
                raise PreprocessError(f"preprocessing {spec!r}: {NO_PREPROCESS} goes alone",
                                      f"give {NO_PREPROCESS}, or step names without it")
            steps = []
        for n, params in steps:
            if n not in PREPROCESSORS:
                raise _unknown_step(n)
            unknown = sorted(set(dict(params)) - set(_params_of(n)))
            if unknown:
                raise PreprocessError(f"{n} has no parameter {unknown[0]!r}", f"{n} takes {', '.join(_params_of(n))}")
        return cls(tuple(steps))

    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.steps)

    def describe(self) -> str:
        return ",".join(self.names()) or NO_PREPROCESS

    def to_list(self) -> list:
        """JSON/TOML form: a name, or {"name": ..., params} for a step with parameters."""
        return [n if not p else {"name": n, **dict(p)} for n, p in self.steps]

    def layers(self, input_shape=(96, 96, 3)) -> list:
        """A frozen keras.Model per step (named pre_<step>, pre_<step>_2 when repeated)."""
        out, seen = [], {}
        for n, params in self.steps:
            seen[n] = seen.get(n, 0) + 1
            suffix = f"_{seen[n]}" if seen[n] > 1 else ""
            out.append(preprocess_layer(n, input_shape, name=f"pre_{n}{suffix}", **dict(params)))
        return out

    def __bool__(self) -> bool:
        return bool(self.steps)


def _one_step(item) -> tuple | None:
    if isinstance(item, str):
        item = item.strip()
        return (item, ()) if item else None
    if isinstance(item, dict):
        if not isinstance(item.get("name"), str):
            raise PreprocessError(f"preprocessing step {item!r} has no name",
                                  'write it as {name = "clahe", clip_limit = 3.0}')
        params = {k: v for k, v in item.items() if k != "name"}
        return item["name"], tuple(sorted(params.items()))
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return item[0], tuple(sorted(item[1].items()))
    raise PreprocessError(f"preprocessing step {item!r} is not a name", f"give names: {', '.join(PREPROCESSORS)}")


def preprocessing(steps, input_shape=(96, 96, 3), name: str = "cell_preprocessing"):
    """The steps (names, or what CellPreprocessing.from_spec takes) chained in order, as one frozen keras.Model
    (raw 0..255 in and out) to put first in a Keras model; no steps: the identity."""
    import keras

    chain = CellPreprocessing.from_spec(steps)
    with _float32_policy():
        inp = keras.Input(tuple(input_shape), name=f"{name}_input")
        x = inp
        for layer in chain.layers(input_shape):
            x = layer(x)
        if x is inp:
            x = _layers().Identity(dtype="float32", name=f"{name}_identity")(inp)
        return _frozen(inp, x, name)
