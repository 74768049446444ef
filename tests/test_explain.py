"""Heat maps (Grad-CAM, gradient saliency) with the real TensorFlow: a measured check on a model that must look at a
coloured square, the feature map found in Sequential, Functional and nested keras.applications models, the
saliency fallback, a real zip explained in a fresh process, and `subbench explain` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_zip
from subbench.local_bench import _gradcam as core
from subbench.local_bench.explain import (ExplainInputError, ExplainRunError, ExplainTimeoutError, Explanation,
                                          NoConvLayerError, NoKerasModelError, explain_grid_png, explain_model,
                                          explain_zip, gradcam, last_conv_layer)

SIDE = 24                                                          # the square's side, px
PLACES = [(8, 8), (8, 64), (64, 8), (64, 64)]                      # class k: top-left corner, jittered +-6 px
COLOURS = [(230, 40, 40), (40, 200, 40), (40, 80, 230), (230, 200, 30)]
# The background's grey noise, in grey levels. Measured over 5 training seeds: at 10, Grad-CAM's maximum lay on the
# square for 100% of the test images with every seed; at 35 for 67% to 100% depending on the seed (the model also
# learns noise detectors whose weights the softmax leaves free, and their peaks land on the background).
NOISE = 10


def squares(n: int, seed: int):
    """(images uint8, labels, boxes (r0, r1, c0, c1)): each image's class is a coloured square at a class-specific
    place on a grey noise background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PLACES), n)
    images = np.clip(rng.normal(120, NOISE, (n, 96, 96, 3)), 0, 255)
    boxes = []
    for i, k in enumerate(labels):
        r, c = (p + int(rng.integers(-6, 7)) for p in PLACES[k])
        images[i, r:r + SIDE, c:c + SIDE] = COLOURS[k]
        boxes.append((r, r + SIDE, c, c + SIDE))
    return images.astype(np.uint8), labels.astype(np.int64), np.array(boxes)


@pytest.fixture(scope="module")
def square_model():
    """A small CNN trained for a few seconds (measured: 10-20 s on 2 cores) until it finds the squares: 4 classes
    used of the profile's 8 outputs, so that `subbench.package` takes it."""
    import keras

    x, y, _ = squares(512, seed=0)
    xv, yv, _ = squares(128, seed=5)
    L = keras.layers
    # Seeded, but oneDNN's thread scheduling still varies between hosts and loads: train until it has found the
    # squares (measured: 10 epochs usually, up to 30 under load) rather than for a fixed number of epochs; one
    # initialisation in 5 measured stalls at 0.67 after 30 epochs, so a stalled one is started again.
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((96, 96, 3)), L.Rescaling(1 / 255.0),
                                  L.Conv2D(16, 3, activation="relu", padding="same"), L.MaxPooling2D(2),
                                  L.Conv2D(16, 3, activation="relu", padding="same"), L.MaxPooling2D(2),
                                  L.Conv2D(16, 1, activation="relu", name="last_conv"), L.GlobalAveragePooling2D(),
                                  L.Dense(8, activation="softmax")], name="squares")
        model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
        for _ in range(6):
            model.fit(x, y, epochs=5, batch_size=32, verbose=0)
            if (model.predict(xv, verbose=0).argmax(1) == yv).mean() >= 0.97:
                return model
    return model


@pytest.fixture(scope="module")
def square_test():
    return squares(64, seed=1)


@pytest.fixture(scope="module")
def square_zip(square_model, tmp_path_factory):
    import subbench

    return subbench.package(square_model, tmp_path_factory.mktemp("zips") / "squares.zip", echo=None)


# Share of Grad-CAM maxima that must lie on the square. Measured: 100% over 5 training seeds on one host, 87.5%
# once on a clean-clone CI run of another (oneDNN's scheduling changes the weights); the square with its one-cell
# margin covers about 11% of the image (32 x 32 of 96 x 96), so a map that does not localise lands there far less.
ON_SQUARE = 0.8
CELL = 4    # the last feature map's cell, px (two 2x poolings): Grad-CAM cannot place a maximum finer than that


def _on_square(maps, boxes) -> np.ndarray:
    """Per map: its maximum lies on the square, up to one feature-map cell (the map is upsampled from 24x24,
    so a maximum on the square's edge cell may land up to CELL px outside it)."""
    hit = []
    for m, (r0, r1, c0, c1) in zip(maps, boxes):
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        hit.append(r0 - CELL <= r < r1 + CELL and c0 - CELL <= c < c1 + CELL)
    return np.array(hit)


def test_heat_map_maximum_lies_on_the_square(square_model, square_test):
    x, y, boxes = square_test
    hm = gradcam(square_model, x)
    assert hm.method == "gradcam" and hm.layer == "last_conv" and hm.note == ""
    assert hm.maps.shape == (64, 96, 96) and hm.maps.dtype == np.float32
    assert hm.maps.min() >= 0.0 and hm.maps.max() <= 1.0 and np.allclose(hm.maps.max(axis=(1, 2)), 1.0)
    accuracy = float((hm.predicted == y).mean())
    assert accuracy >= 0.9, accuracy                      # the model found the squares
    np.testing.assert_array_equal(hm.classes, hm.predicted)
    share = float(_on_square(hm.maps, boxes).mean())
    print(f"Grad-CAM maximum on the square: {share:.3f} of 64 images (accuracy {accuracy:.3f})")
    assert share >= ON_SQUARE, share
    # The true class explained gives the same picture.
    assert _on_square(gradcam(square_model, x, class_index=y).maps, boxes).mean() >= ON_SQUARE
    # Gradient saliency is the fallback, not a localisation: measured over 5 training seeds its maximum lay on the
    # square for 20% to 95% of these images. Only its form is checked here.
    sal = gradcam(square_model, x, method="saliency")
    assert sal.method == "saliency" and sal.layer is None and sal.maps.shape == (64, 96, 96)
    assert sal.maps.min() >= 0.0 and np.allclose(sal.maps.max(axis=(1, 2)), 1.0)
    print(f"saliency maximum on the square: {_on_square(sal.maps, boxes).mean():.3f}")


def test_last_conv_layer_in_sequential_functional_and_nested_backbones():
    import keras
    import tensorflow as tf

    L = keras.layers
    seq = keras.Sequential([keras.Input((96, 96, 3)), L.Rescaling(1 / 255.0), L.Conv2D(4, 3, name="c1"),
                            L.ReLU(name="act"), L.GlobalAveragePooling2D(), L.Dense(8)])
    assert last_conv_layer(seq) == "act"                  # the map after the conv's activation
    inp = keras.Input((96, 96, 3))
    a = L.Conv2D(4, 3, strides=2, name="first")(L.Rescaling(1 / 255.0)(inp))
    b = L.Conv2D(4, 3, strides=2, name="second")(a)
    side = L.GlobalAveragePooling2D()(a)                  # a branch: the output depends on both maps
    fun = keras.Model(inp, L.Dense(8, activation="softmax")(L.Concatenate()([L.GlobalAveragePooling2D()(b), side])))
    assert last_conv_layer(fun) == "second"

    backbone = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(96, 96, 3))
    inp = keras.Input((96, 96, 3))
    feats = L.GlobalAveragePooling2D()(backbone(inp))
    skip = L.GlobalAveragePooling2D()(inp)                # bypasses the backbone
    nested = keras.Model(inp, L.Dense(8, activation="softmax")(L.Concatenate()([feats, skip])))
    other = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(96, 96, 3),
                                                name="backbone_in_sequential")
    nested_seq = keras.Sequential([keras.Input((96, 96, 3)), other, L.GlobalAveragePooling2D(), L.Dense(8)])
    x = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3)).astype(np.uint8)
    for model, outer in ((nested, backbone.name), (nested_seq, "backbone_in_sequential")):
        name = last_conv_layer(model)
        assert name.startswith(outer + "/"), name
        assert tuple(model.get_layer(outer).get_layer(name.split("/")[1]).output.shape[1:3]) == (3, 3)
        path, fn = core.find_layer(model)
        feat, out = fn(tf.constant(x.astype(np.float32)))
        # The re-wired model computes the same output as the model itself, and exposes the inner map.
        np.testing.assert_allclose(np.asarray(out), np.asarray(model(x.astype(np.float32))), atol=1e-5)
        assert tuple(feat.shape) == (3, 3, 3, 576)
        hm = gradcam(model, x)
        assert hm.method == "gradcam" and hm.layer == name and hm.maps.shape == (3, 96, 96)
        assert np.isfinite(hm.maps).all() and hm.maps.min() >= 0 and hm.maps.max() <= 1


def test_dense_only_model_has_no_conv_layer_and_falls_back_to_saliency():
    import keras

    L = keras.layers
    dense = keras.Sequential([keras.Input((96, 96, 3)), L.Rescaling(1 / 255.0), L.Flatten(),
                              L.Dense(8, activation="softmax")], name="dense_only")
    with pytest.raises(NoConvLayerError, match="no convolutional feature map") as info:
        last_conv_layer(dense)
    assert "saliency" in info.value.hint
    x = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3)).astype(np.uint8)
    with pytest.raises(NoConvLayerError):
        gradcam(dense, x, method="gradcam")
    hm = gradcam(dense, x)                                # auto
    assert hm.method == "saliency" and hm.layer is None and "no convolutional feature map" in hm.note
    assert hm.maps.shape == (4, 96, 96) and hm.maps.dtype == np.float32 and np.allclose(hm.maps.max((1, 2)), 1)
    with pytest.raises(ExplainInputError, match="uint8"):
        gradcam(dense, x.astype(np.float32))
    with pytest.raises(ExplainInputError, match="do not fit"):
        gradcam(dense, x[:, :64])
    with pytest.raises(ExplainInputError, match="method"):
        gradcam(dense, x, method="lime")


def test_explain_zip_in_a_fresh_process_matches_the_model_here(square_model, square_test, square_zip):
    built = square_zip
    x, y, boxes = square_test
    x, y, boxes = x[:12], y[:12].copy(), boxes[:12]
    here = explain_model(square_model, x, y)
    zipped = explain_zip(built, x, y)
    assert zipped.method == "gradcam" and zipped.layer == "last_conv"
    assert zipped.note == ""                              # one model in the zip
    assert [i.predicted for i in zipped.items] == [i.predicted for i in here.items]
    np.testing.assert_allclose(zipped.heat, here.heat, atol=2e-3)

    wrong = y.copy()
    wrong[[2, 5, 7]] = (wrong[[2, 5, 7]] + 1) % 4         # three labels the model must contradict
    only = explain_zip(built, x, wrong, clean=x, misclassified_only=True, n=2)
    assert [i.index for i in only.items] == [2, 5] and only.n_misclassified == 3 and only.n_images == 12
    assert all(i.correct is False and i.explained_class == i.predicted for i in only.items)
    assert only.heat.shape == (2, 96, 96) and only.clean.shape == (2, 96, 96, 3)
    page = only._repr_html_()
    assert page.count("<img") == 1 and 'id="explain-grid"' in page and "data:image/png;base64," in page
    assert json.loads(only.to_json())["items"][0]["index"] == 2


def test_explain_zip_failures_are_named(tmp_path):
    no_keras = write_zip(tmp_path / "nokeras.zip", {"model.py": (
        "import numpy as np\nclass Model:\n    def __init__(self):\n        self.w = np.zeros(8)\n"
        "    def predict(self, X):\n        return np.zeros(len(X), dtype=np.int64)\n")})
    x = np.zeros((2, 96, 96, 3), np.uint8)
    with pytest.raises(NoKerasModelError, match="holds no keras.Model"):
        explain_zip(no_keras, x, time_limit_s=120)
    broken = write_zip(tmp_path / "broken.zip", {"model.py": (
        "class Model:\n    def __init__(self):\n        raise RuntimeError('weights missing')\n")})
    with pytest.raises(ExplainRunError, match="init: RuntimeError: weights missing"):
        explain_zip(broken, x, time_limit_s=120)
    slow = write_zip(tmp_path / "slow.zip", {"model.py": (
        "import time\nclass Model:\n    def __init__(self):\n        time.sleep(60)\n")})
    with pytest.raises(ExplainTimeoutError, match="2 s time limit"):
        explain_zip(slow, x, time_limit_s=2)
    with pytest.raises(ExplainInputError, match="without labels"):
        explain_zip(slow, x, misclassified_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip", "nokeras.zip", "slow.zip"]


def test_cli_explain_end_to_end(tmp_path, square_test, square_zip):
    from click.testing import CliRunner

    from subbench.cli import main

    built = square_zip
    x, y, _ = square_test
    data = tmp_path / "squares.npz"
    np.savez(data, images=x[:16], labels=y[:16].reshape(-1, 1))
    before = set(tmp_path.iterdir())
    args = ["explain", str(built), "--data", str(data), "--every-image", "--all", "-n", "3",
            "--simulate-hidden", "an2dl", "-o", str(tmp_path / "out")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "gradcam on last_conv: 3 images explained of 16" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("#")]) == 3
    assert set(tmp_path.iterdir()) - before == {tmp_path / "out"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["explain.html", "explain.json", "heatmaps.npz"]
    saved = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert saved["simulate_hidden"] == "an2dl" and len(saved["items"]) == 3 and saved["method"] == "gradcam"
    page = (tmp_path / "out" / "explain.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="explain-grid"' in page and "http" not in page

    again = CliRunner().invoke(main, args)                # the folder exists: --force needed
    assert again.exit_code == 2 and "OutputExistsError" in again.output and "Traceback" not in again.output
    assert CliRunner().invoke(main, args + ["--force"]).exit_code == 0
    missing = CliRunner().invoke(main, ["explain", str(built), "--data", str(tmp_path / "nope.npz"), "-o",
                                        str(tmp_path / "out2")])
    assert missing.exit_code == 2 and "error: DataError" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "out2").exists()


def test_api_explain_in_memory_and_the_grid(square_model, square_test):
    import subbench

    x, y, _ = square_test
    expl = subbench.explain(square_model, x[:8], y[:8], clean=x[:8], n=4)
    assert isinstance(expl, subbench.Explanation) and isinstance(expl, Explanation)
    assert len(expl.items) == 4 and expl.items[0].true == int(y[0]) and expl.class_names[0] == "basophil"
    assert 'id="explain-grid"' in expl._repr_html_() and len(expl.summary_lines()) == 4
    assert explain_grid_png(None, x[:0], np.zeros((0, 96, 96)), [], [], expl.class_names) is None
    png = explain_grid_png(None, x[:3], expl.heat[:3], y[:3], y[:3], expl.class_names, titles=["a", "b", "c"])
    assert png.startswith("data:image/png;base64,")
    with pytest.raises(subbench.SubbenchError, match="no images"):
        subbench.explain(square_model)


def test_explain_page_renders_in_chromium(tmp_path, square_model, square_test):
    from test_report_browser import open_in_chromium

    x, y, _ = square_test
    folder = explain_model(square_model, x[:6], y[:6], clean=x[:6]).save(tmp_path / "out")
    seen, console = open_in_chromium(folder / "explain.html", tmp_path)
    assert console == [] and seen["errors"] == [] and seen["broken"] == 0 and seen["images"] == 1
