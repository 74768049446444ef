"""Input branches: more input channels computed inside the model from the raw image, next to its 3 colours.

A model's branches are one `InputBranches` value (the recipe's `[model] inputs = ["edges"]`, the CLI's
`--inputs edges,equalized`, build_model's `inputs=`). Each branch is an `InputBranch` in `INPUT_BRANCHES`: a
name, its channel count and the function that builds its layers. A new branch is its function plus one entry
there; the recipe, the CLI's choices and build_model read the registry.

The branches go with per-image standardisation (custom_cnn): ImageNet weights expect 3 channels of their own
scaling. The model's channels are the image's 3, then each branch's in registry order. Like the rest of the
model they use built-in layers only (the server's Keras 3.4.1 loads them), in float32, frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from subbench.builder.backbones import BackboneSpec, ModelConfigError
from subbench.builder.preprocessing import standardize_layer

EDGE_CHANNELS = 6   # |Sobel x| and |Sobel y| of each of R, G, B
FOLDED_CHANNELS = 3   # min(x, 255 - x) of each of R, G, B
EQUALIZED_CHANNELS = 3   # R, G, B, each equalised by its own CDF
EQUALIZE_KNOTS = 17   # grey levels 0, 15.9, ..., 255 (equalized_channels)
EQUALIZE_SCALE = 2   # equalised at 1/2 of the model's input size, then resized up (equalized_channels)


class InputBranchError(ModelConfigError):
    """An input branch name (--inputs, a recipe's [model] inputs) is unknown."""


def edge_channels(raw, image):
    """(the standardised Sobel gradient magnitudes of R, G, B, the size of `image` x 6; the layers added):
    built-in layers only, the Sobel kernel a frozen DepthwiseConv2D weight saved with the model. `raw`: the
    model's input; `image`: it resized to the backbone's input size (only its size is used here).

    Why: RandAugment's solarize (add ~55 grey levels, then invert the pixels above a threshold) costs the cpu
    recipe the most, 35-40% of its errors on the simulated hidden set (bench_cpu_recipe's errors by op). A
    gradient's magnitude does not change when a brightness is added or a pixel region is inverted, except along
    the threshold's own edge. The Sobel is taken with 'valid' padding (zero padding would add a border that
    inversion changes) on the raw image resized to (height + 2, width + 2), which gives height x width with no
    second resize; bilinear resizing commutes with adding a constant and with x -> 255 - x, so the invariance
    holds.
    """
    from keras import layers

    height, width = image.shape[1:3]
    edge_resize = layers.Resizing(height + 2, width + 2, interpolation="bilinear", dtype="float32",
                                  name="pre_resize_edges")
    sobel = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", use_bias=False, trainable=False,
                                   dtype="float32", name="pre_sobel")
    negate = layers.Rescaling(-1.0, dtype="float32", name="pre_sobel_negate")
    magnitude = layers.Maximum(dtype="float32", name="pre_sobel_abs")   # |g| = max(g, -g): Keras has no Abs layer
    standardize = standardize_layer("pre_standardize_edges")
    grad = sobel(edge_resize(raw))
    edges = standardize(magnitude([grad, negate(grad)]))
    kernel = np.zeros((3, 3, raw.shape[-1], 2), "float32")
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "float32")
    kernel[:, :, :, 0], kernel[:, :, :, 1] = sx[..., None], sx.T[..., None]
    sobel.set_weights([kernel])
    return edges, [edge_resize, sobel, negate, magnitude, standardize]


def folded_channels(raw, image):
    """(each of R, G, B of the raw input folded at mid-grey, min(x, 255 - x), resized to the size of `image`
    and standardised per image; the layers added): built-in layers only. `raw`: the model's input (0..255);
    `image`: it resized to the backbone's input size (only its size is used here).

    Why: solarize at threshold t maps x -> 255 - x for x >= t, and min(x, 255 - x) is the same for x and
    255 - x: the folded channels do not change at all under AugMix's solarize, whatever the threshold, where the
    colours flip and the edges change along the threshold's contour. On the cpu recipe's simulated hidden set the
    images on which AugMix drew solarize scored 0.871 against 0.920 without and carried 67% of the errors (the
    58-minute run). The fold is taken before resizing: bilinear resizing mixes pixels on both sides of the
    threshold, so folding the resized image would not be invariant. It loses which side of mid-grey a pixel is
    on; the colour channels beside it keep that.
    """
    from keras import layers

    invert = layers.Rescaling(-1.0, offset=255.0, dtype="float32", name="pre_fold_invert")
    fold = layers.Minimum(dtype="float32", name="pre_fold")
    added = [invert, fold]
    folded = fold([raw, invert(raw)])
    if tuple(image.shape[1:3]) != tuple(raw.shape[1:3]):
        resize = layers.Resizing(*image.shape[1:3], interpolation="bilinear", dtype="float32",
                                 name="pre_resize_folded")
        folded = resize(folded)
        added.append(resize)
    standardize = standardize_layer("pre_standardize_folded")
    return standardize(folded), [*added, standardize]


def equalized_channels(raw, image, knots: int = EQUALIZE_KNOTS, scale: int = EQUALIZE_SCALE):
    """(each of R, G, B of `image` histogram-equalised by its own soft CDF, in -1..1; the layers added): built-in
    layers only. `image`: the model's input resized to the backbone's input size, before standardisation (which
    equalising does not need); `raw` is not used.

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

    del raw
    full_size = image.shape[1:3]
    down = layers.Resizing(full_size[0] // scale, full_size[1] // scale, interpolation="bilinear",
                           dtype="float32", name="pre_eq_down")
    up = layers.Resizing(*full_size, interpolation="bilinear", dtype="float32", name="pre_eq_up")
    image = down(image)
    height, width, channels = image.shape[1:]
    ramps_per_channel = knots + 1
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
    ramps.set_weights(_ramp_weights(knots, channels))
    lookup_table.set_weights([_equalize_table(knots, channels)])
    return out, [down, ramps, means, lookup_table, as_matrix, as_rows, lookup, as_image, center, up]


def _ramp_weights(knots: int, channels: int) -> list:
    """The ramps Conv2D's kernel and bias: ramp r_m, m = -1..K, at ramp index m + 1 of each colour,
    relu(v / step - m)."""
    step = 255.0 / (knots - 1)
    kernel = np.kron(np.eye(channels, dtype="float32"), np.full((1, knots + 1), 1.0 / step, "float32"))
    return [kernel[None, None], np.tile(-np.arange(-1, knots, dtype="float32"), channels)]


def _equalize_table(knots: int, channels: int) -> np.ndarray:
    """The fixed Dense kernel: the ramps' image means -> each colour's (ramps x colour) lookup matrix."""
    ramps_per_channel = knots + 1
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
    return table.reshape(channels * ramps_per_channel, -1)


@dataclass(frozen=True)
class InputBranch:
    name: str
    channels: int                  # input channels it adds
    build: Callable                # (raw, image) -> (its output tensor, the layers added); see edge_channels
    help: str                      # one line for --inputs


INPUT_BRANCHES: dict[str, InputBranch] = {b.name: b for b in (
    InputBranch("edges", EDGE_CHANNELS, edge_channels,
                "the Sobel gradient magnitudes of R, G, B (6 channels, unchanged by solarize)"),
    InputBranch("folded", FOLDED_CHANNELS, folded_channels,
                "R, G, B folded at mid-grey, min(x, 255 - x) (3 channels, unchanged by solarize)"),
    InputBranch("equalized", EQUALIZED_CHANNELS, equalized_channels,
                "R, G, B each histogram-equalised (3 channels, barely changed by equalize and auto_contrast)"),
)}
NO_BRANCHES = "none"   # what --inputs and describe() say for no branch


@dataclass(frozen=True)
class InputBranches:
    """The input branches of a model, by name, kept in registry order (the order of the model's channels)."""

    branches: tuple[str, ...] = ()

    def __post_init__(self):
        names = (self.branches,) if isinstance(self.branches, str) else tuple(self.branches)
        unknown = [n for n in names if n not in INPUT_BRANCHES]
        if unknown:
            raise InputBranchError(f"unknown input branch {unknown[0]!r}",
                                   f"use one or more of {', '.join(INPUT_BRANCHES)} (comma-separated), "
                                   f"or {NO_BRANCHES}")
        object.__setattr__(self, "branches", tuple(n for n in INPUT_BRANCHES if n in names))

    @classmethod
    def from_names(cls, names: InputBranches | str | Iterable[str] | None) -> InputBranches:
        """From "edges,equalized", "none", [], ["edges"] (a recipe's list), None or an InputBranches."""
        if isinstance(names, InputBranches):
            return names
        if names is None:
            return cls()
        if isinstance(names, str):
            names = names.split(",")
        if not all(isinstance(n, str) for n in names):
            raise InputBranchError(f"input branches {names!r} are not names",
                                   f"give a list of names: {', '.join(INPUT_BRANCHES)}")
        names = [n.strip() for n in names if n.strip()]
        if NO_BRANCHES in names:
            if len(names) > 1:
                raise InputBranchError(f"input branches {','.join(names)}: {NO_BRANCHES} goes alone",
                                       f"give {NO_BRANCHES}, or branch names without it")
            names = []
        return cls(tuple(names))

    def names(self) -> tuple[str, ...]:
        return self.branches

    def describe(self) -> str:
        return ",".join(self.branches) or NO_BRANCHES

    @property
    def channels(self) -> int:
        """Input channels the branches add to the image's 3."""
        return sum(b.channels for b in self)

    def __iter__(self) -> Iterator[InputBranch]:
        return (INPUT_BRANCHES[n] for n in self.branches)

    def __contains__(self, name: str) -> bool:
        return name in self.branches

    def __bool__(self) -> bool:
        return bool(self.branches)


def check_backbone(inputs: InputBranches, spec: BackboneSpec) -> None:
    """ModelConfigError unless `spec` standardises each image (ImageNet weights expect 3 channels)."""
    for branch in inputs:
        if spec.preprocessing != "standardize":
            raise ModelConfigError(f"input branch {branch.name} needs a backbone with per-image standardisation, "
                                   f"not {spec.name}", f"use it with custom_cnn, or leave {branch.name} out of "
                                   "the inputs")


def build_branches(inputs: InputBranches, raw, image) -> tuple[list, list]:
    """(each branch's output tensor, all the layers they added), in registry order."""
    tensors, added = [], []
    for branch in inputs:
        tensor, layers = branch.build(raw, image)
        tensors.append(tensor)
        added.extend(layers)
    return tensors, added
