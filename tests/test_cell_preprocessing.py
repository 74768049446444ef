"""The team reports' cell preprocessing as Keras layers (subbench.builder.cell_preprocessing): each step against a
numpy implementation of the same definition written here, its properties on synthetic images, the save/load
round trip, the recipe/CLI/API wiring, check on a zip built with them, and (server_env) the server's Keras 3.4.1
loading that zip and computing the same output."""

from __future__ import annotations

import json
import subprocess
import zipfile

import numpy as np
import pytest

import subbench
from conftest import run_cli
from subbench.keras_compat import find_problems, load_key_table
from subbench.profile import load_profile
from subbench.builder.cell_preprocessing import (CellPreprocessing, PreprocessError, clahe_bins, clahe_cdf_matrix,
                                                 preprocess_layer, preprocessing)

ALL = ["illumination", "clahe", "mask"]


def run(layer, x):
    return np.asarray(layer(np.asarray(x, np.float32)))


def random_cells(n=3, seed=0):
    """Smooth, blotchy images (a dark blob on a bright, unevenly lit background) with noise, 0..255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96] / 95.0
    out = []
    for _ in range(n):
        light = 200 + 40 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
        cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
        cell = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2) ** 2)
        img = light[..., None] - cell[..., None] * rng.uniform(80, 170, 3) + rng.normal(0, 8, (96, 96, 3))
        out.append(np.clip(img, 0, 255))
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------------ numpy references
def hats(v, knots):
    """w_k(v) = relu(1 - |v - t_k| / step): the soft bins, (..., knots)."""
    step = 255.0 / (knots - 1)
    return np.maximum(0.0, 1.0 - np.abs(v[..., None] - np.arange(knots) * step) / step)


def resize_weights(out_size, in_size):
    """(out_size, in_size) bilinear weights with half-pixel centres, clamped at the borders (TF's resize)."""
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, in_size - 1)
    w = np.zeros((out_size, in_size))
    w[np.arange(out_size), lo] += 1 - (src - lo)
    w[np.arange(out_size), hi] += src - lo
    return w


def clahe_reference(img, tiles, clip_limit, knots=17):
    """Straightforward CLAHE of one (H, W, C) image on the same soft bins: per tile and colour the bin masses,
    clipped at clip_limit x a uniform bin's mass and the excess spread like a uniform histogram, the CDF at the
    knots (ends fixed at 0 and 1), and each pixel's value read from the tile CDFs bilinearly interpolated."""
    h, w, c = img.shape
    th, tw = h // tiles, w // tiles
    u, cdf = clahe_bins(knots), clahe_cdf_matrix(knots)
    grid = np.zeros((tiles, tiles, c, knots))
    for i in range(tiles):
        for j in range(tiles):
            hist = hats(img[i * th:(i + 1) * th, j * tw:(j + 1) * tw], knots).mean(axis=(0, 1))   # (c, knots)
            excess = np.maximum(hist - clip_limit * u, 0)
            clipped = hist - excess + u * excess.sum(-1, keepdims=True)
            grid[i, j] = clipped @ cdf.T
    per_pixel = np.einsum("yi,xj,ijck->yxck", resize_weights(h, tiles), resize_weights(w, tiles), grid)
    return 255.0 * (per_pixel * hats(img, knots)).sum(-1)


def tf_same_pool(x, size, stride, op):
    """max/mean pooling of (H, W, C) with TF's 'same' padding (the padded cells left out)."""
    h, w, _ = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + size - h, 0) // 2
    pw = max((ow - 1) * stride + size - w, 0) // 2
    out = np.zeros((oh, ow, x.shape[2]))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * stride - ph, j * stride - pw
            win = x[max(y0, 0):y0 + size, max(x0, 0):x0 + size]
            out[i, j] = op(win, axis=(0, 1))
    return out


def illumination_reference(img, window=48):
    coarse = tf_same_pool(img, window, window // 3, np.max)
    coarse = tf_same_pool(coarse, 3, 1, np.mean)
    h, w, _ = img.shape
    background = np.einsum("yi,xj,ijc->yxc", resize_weights(h, coarse.shape[0]), resize_weights(w, coarse.shape[1]),
                           coarse)
    return np.clip(img - background + coarse.mean(axis=(0, 1)), 0, 255)


def mask_reference(img, threshold=150.0, softness=10.0, open_size=3, close_size=7):
    m = np.clip((threshold - img[..., 1]) / softness + 0.5, 0, 1)[..., None]
    dilate = lambda a, k: tf_same_pool(a, k, 1, np.max)           # noqa: E731
    erode = lambda a, k: -tf_same_pool(-a, k, 1, np.max)          # noqa: E731
    m = erode(dilate(dilate(erode(m, open_size), open_size), close_size), close_size)
    return img * m


# ------------------------------------------------------------------------------------------------ CLAHE
@pytest.mark.parametrize("tiles,clip_limit", [(4, 2.0), (2, 4.0), (1, 1.5)])
def test_clahe_matches_the_numpy_definition(tiles, clip_limit):
    x = random_cells(2, seed=tiles)
    got = run(preprocess_layer("clahe", tiles=tiles, clip_limit=clip_limit), x)
    want = np.stack([clahe_reference(img.astype(np.float64), tiles, clip_limit) for img in x])
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 0.02      # grey levels
    assert got.min() >= -0.01 and got.max() <= 255.01


def test_clahe_a_uniform_histogram_and_a_constant_image_stay_as_they_are():
    rng = np.random.default_rng(0)
    tile = np.linspace(0, 255, 24 * 24).reshape(24, 24)
    # each 24 px tile holds every grey level once (permuted): a uniform histogram in each tile
    img = np.block([[rng.permutation(tile.ravel()).reshape(24, 24) for _ in range(4)] for _ in range(4)])
    x = np.repeat(img[None, ..., None], 3, axis=-1)
    assert np.abs(run(preprocess_layer("clahe"), x) - x).max() < 0.6
    const = np.full((1, 96, 96, 3), 127.5)
    assert np.abs(run(preprocess_layer("clahe"), const) - 127.5).max() < 0.01


def test_clahe_is_monotone_and_its_clip_limit_bounds_the_slope():
    """One tile: one map for every pixel. A low-contrast image (grey levels 90..150) is stretched, but by no more
    than clip_limit + 1 (the clipped bins plus the spread excess); without the limit far more."""
    rng = np.random.default_rng(1)
    v = np.sort(np.concatenate([rng.normal(120, 12, 96 * 96 - 256), np.linspace(0, 255, 256)]))
    x = np.clip(rng.permutation(v), 0, 255).reshape(1, 96, 96, 1).repeat(3, axis=-1)
    for clip_limit, bound in ((2.0, 3.0), (4.0, 5.0)):
        out = run(preprocess_layer("clahe", tiles=1, clip_limit=clip_limit), x)[0, ..., 0].ravel()
        order = np.argsort(x[0, ..., 0].ravel(), kind="stable")
        vin, vout = x[0, ..., 0].ravel()[order], out[order]
        assert (np.diff(vout) >= -1e-3).all()                               # monotone
        at = np.unique(np.searchsorted(vin, np.arange(0, 256, 2.0)).clip(0, len(vin) - 1))   # ~2 grey levels apart
        slopes = np.diff(vout[at]) / np.maximum(np.diff(vin[at]), 1e-6)
        assert slopes.max() > 1.5                                         # it does stretch
        assert slopes.max() <= bound + 0.05
    free = run(preprocess_layer("clahe", tiles=1, clip_limit=1000.0), x)[0, ..., 0]
    middle = (x[0, ..., 0] > 110) & (x[0, ..., 0] < 130)
    stretch = np.ptp(free[middle]) / np.ptp(x[0, ..., 0][middle])
    assert stretch > 5.0    # plain equalisation stretches the crowded middle much more than the limit allows


# ------------------------------------------------------------------------------------------------ illumination
def test_illumination_matches_the_numpy_definition_and_removes_a_gradient():
    x = random_cells(2, seed=3)
    got = run(preprocess_layer("illumination"), x)
    want = np.stack([illumination_reference(img.astype(np.float64)) for img in x])
    assert np.abs(got - want).max() < 0.02
    # a background lit 170 at the left to 250 at the right, a dark cell in the middle
    yy, xx = np.mgrid[:96, :96]
    light = 170 + 80 * xx / 95.0
    cell = np.hypot(yy - 48, xx - 48) < 14
    img = np.where(cell, 60.0, light)[None, ..., None].repeat(3, axis=-1)
    out = run(preprocess_layer("illumination"), img)[0, ..., 0]
    outside = np.hypot(yy - 48, xx - 48) > 30
    assert np.std(out[outside]) < np.std(img[0, ..., 0][outside]) / 3
    assert out[cell].mean() < out[outside].mean() - 100          # the cell stays dark
    divided = run(preprocess_layer("illumination", mode="divide"), img)[0, ..., 0]
    assert np.std(divided[outside]) < np.std(img[0, ..., 0][outside]) / 2   # the max-pooled estimate leads a slope


# ------------------------------------------------------------------------------------------------ mask
def test_mask_matches_the_numpy_definition_and_keeps_only_the_cell():
    x = random_cells(2, seed=4)
    got = run(preprocess_layer("mask"), x)
    want = np.stack([mask_reference(img.astype(np.float64)) for img in x])
    assert np.abs(got - want).max() < 0.02
    yy, xx = np.mgrid[:96, :96]
    cell = np.hypot(yy - 48, xx - 48) < 20
    img = np.where(cell[..., None], [150.0, 60.0, 170.0], [235.0, 228.0, 230.0])
    img[48, 48] = (235, 228, 230)         # a one-pixel hole in the cell: the closing fills it
    img[5, 5] = (150, 60, 170)            # a one-pixel dark speck in the background: the opening removes it
    out = run(preprocess_layer("mask"), img[None])[0]
    assert (out[~cell] == 0).all()                                  # background zeroed, speck included
    assert np.allclose(out[cell], img[cell])                        # the cell kept as it was, hole included
    filled = run(preprocess_layer("mask", fill=128.0), img[None])[0]
    assert np.allclose(filled[~cell], 128.0) and np.allclose(filled[cell], img[cell])


# ------------------------------------------------------------------------------------------------ as Keras layers
def test_chained_layers_round_trip_through_save_and_load(tmp_path):
    import keras

    layer = preprocessing(ALL)
    assert [l.name for l in layer.layers[1:]] == ["pre_illumination", "pre_clahe", "pre_mask"]
    assert not layer.trainable_weights and layer.count_params() > 0
    x = random_cells(2, seed=5)
    inp = keras.Input((96, 96, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(layer(inp))))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    table = load_key_table(load_profile())          # what the server's Keras 3.4.1 has: no Lambda, no custom class
    assert [f for f in find_problems(config, table) if f.kind != "unknown_key"] == []
    assert np.array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    direct = run(preprocess_layer("mask"), run(preprocess_layer("clahe"), run(preprocess_layer("illumination"), x)))
    assert np.abs(run(loaded.layers[1], x) - direct).max() < 1e-3


def _objects(config):
    """Every serialised Keras object in a saved config."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for v in config.values():
            yield from _objects(v)
    elif isinstance(config, list):
        for v in config:
            yield from _objects(v)


def test_float32_and_frozen_in_build_model_under_mixed_precision(keras_policy):
    from subbench.builder.models import build_model, set_backbone_trainable

    keras_policy("mixed_bfloat16")
    built = build_model("custom_cnn", input_size=32, width=4, preprocess="mask,clahe")
    names = [l.name for l in built.model.layers]
    assert names.index("pre_mask") < names.index("pre_clahe") < names.index("pre_resize")   # order as given
    set_backbone_trainable(built, 1.0)
    for step in ("pre_mask", "pre_clahe"):
        layer = built.model.get_layer(step)
        assert not layer.trainable_weights
        assert layer.dtype_policy.name == "float32"
        assert all(sub.dtype_policy.name == "float32" for sub in layer.layers)
    assert built.describe()["preprocess"] == ["mask", "clahe"]
    assert build_model("custom_cnn", input_size=32, width=4).describe()["preprocess"] == []


# ------------------------------------------------------------------------------------------------ names, errors
def test_bad_names_and_parameters_are_named_errors(tmp_path):
    cases = [(lambda: preprocess_layer("blur"), "unknown preprocessing step 'blur'"),
             (lambda: preprocess_layer("clahe", tiles=5), "5 tiles do not divide"),
             (lambda: preprocess_layer("clahe", clip_limit=0.5), "clip_limit 0.5"),
             (lambda: preprocess_layer("clahe", tile=4), "clahe has no parameter 'tile'"),
             (lambda: preprocess_layer("illumination", mode="log"), "mode 'log'"),
             (lambda: preprocess_layer("mask", channel_weights=(1, 1)), "channel_weights"),
             (lambda: preprocess_layer("mask", open_size=2.5), "open_size 2.5"),
             (lambda: CellPreprocessing.from_spec("clahe,none"), "none goes alone"),
             (lambda: CellPreprocessing.from_spec([{"clip_limit": 3}]), "has no name")]
    for make, message in cases:
        with pytest.raises(PreprocessError, match=message) as info:
            make()
        assert info.value.hint
    assert CellPreprocessing.from_spec("none").names() == () and not CellPreprocessing.from_spec(None)
    spec = CellPreprocessing.from_spec(["clahe", {"name": "mask", "threshold": 140.0}])
    assert spec.to_list() == ["clahe", {"name": "mask", "threshold": 140.0}]
    assert CellPreprocessing.from_spec(spec.to_list()) == spec


def test_recipe_key_cli_option_and_api(tmp_path):
    from subbench.builder.recipe import load_recipe, with_overrides

    path = tmp_path / "r.toml"
    path.write_text('[model]\nbackbone = "custom_cnn"\npreprocess = ["illumination", {name = "clahe", '
                    'clip_limit = 3.0}]\n')
    recipe = load_recipe(path)
    assert recipe.preprocess.names() == ("illumination", "clahe")
    assert recipe.to_dict()["preprocess"] == ["illumination", {"name": "clahe", "clip_limit": 3.0}]
    assert with_overrides(recipe, preprocess="none").preprocess.names() == ()
    from subbench.builder.train import _current_form

    now = load_recipe("cpu").to_dict()
    assert _current_form({k: v for k, v in now.items() if k != "preprocess"}) == now   # older builds resume
    path.write_text('[model]\npreprocess = ["sharpen"]\n')
    with pytest.raises(PreprocessError, match="recipe .*r.toml: unknown preprocessing step 'sharpen'"):
        load_recipe(path)
    res = run_cli("build", "--model", "custom_cnn", "--data", str(tmp_path / "none.npz"), "--preprocess",
                  "clahe,blur", "-o", str(tmp_path / "x.zip"))
    assert res.returncode == 2 and "unknown preprocessing step 'blur'" in res.stdout + res.stderr
    help_text = run_cli("build", "--help").stdout
    assert "--preprocess" in help_text and "clahe,illumination,mask" in help_text
    code = "import sys, subbench; subbench.preprocess_layer; print('tensorflow' in sys.modules)"
    assert subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    assert subbench.preprocessing(["mask"]).layers[1].name == "pre_mask"


def _tiny_model(steps, divide=False):
    import keras

    inp = keras.Input((96, 96, 3), name="image")
    x = preprocessing(steps)(inp)
    if divide:
        x = preprocess_layer("illumination", mode="divide", name="pre_divide")(x)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(8, activation="softmax")(x))


def test_check_passes_on_a_zip_built_with_them(tmp_path):
    zip_path = subbench.package(_tiny_model(ALL, divide=True), tmp_path / "sub.zip", echo=None)
    report = subbench.check(zip_path)
    assert report.ok, report.failures


def test_train_records_the_steps_in_the_zip(tmp_path):
    from subbench.data.synthetic import cell_like_images

    images, labels = cell_like_images(32, seed=2)
    result = subbench.train(None, data=(images, labels.reshape(-1).astype(np.int64)), out=tmp_path / "t.zip",
                            epochs=1, batch_size=16, augment="none", val_corrupt=None, tta="none", width=4,
                            input_size=32, holdout=0.25, preprocess=["mask"], echo=None)
    assert result.recipe["preprocess"] == ["mask"]
    config = zipfile.ZipFile(result.zip_path).read("weights.keras")
    with zipfile.ZipFile(__import__("io").BytesIO(config)) as inner:
        names = {o["config"].get("name") for o in _objects(json.loads(inner.read("config.json")))}
    assert "pre_mask" in names


# ------------------------------------------------------------------------------------------------ the server's Keras
SERVER_SCRIPT = """
import sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
for name in sys.argv[4:]:
    x = np.asarray(model.get_layer(name)(x))
np.save(sys.argv[3], x)
print(keras.__version__)
"""


@pytest.mark.server_env
def test_the_servers_keras_loads_the_zip_and_computes_the_same(tmp_path):
    from subbench import server_env

    assert run_cli("env", "create", timeout=1200).returncode == 0
    python = server_env.resolve_python("server", load_profile())
    model = _tiny_model(ALL, divide=True)
    zip_path = subbench.package(model, tmp_path / "sub.zip", echo=None)
    report = subbench.check(zip_path, env="server")
    assert report.ok, report.failures
    with zipfile.ZipFile(zip_path) as zf:
        zf.extract("weights.keras", tmp_path)
    x = random_cells(3, seed=7)
    np.save(tmp_path / "x.npy", x)
    chain = ["cell_preprocessing", "pre_divide"]
    res = subprocess.run([python, "-c", SERVER_SCRIPT, str(tmp_path / "weights.keras"), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy"), *chain], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "3.4.1"
    local = x
    for name in chain:
        local = run(model.get_layer(name), local)
    server = np.load(tmp_path / "y.npy")
    assert server.shape == local.shape and np.abs(server - local).max() < 0.01
    assert np.abs(local - x).max() > 50      # the steps did change the images
