"""Fitting the cpu recipe to the host and training it faster: the model size picked from real steps timed (printed,
recorded, built), the whitened stem, Lookahead."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import short_cpu_build
from subbench.builder.autosize import choose_size
from subbench.builder.backbones import ModelConfigError
from subbench.builder.models import build_model
from subbench.builder.recipe import RecipeError, load_recipe, with_overrides
from subbench.builder.train import _compile_plain, one_hot


def _probe_builder(recipe):
    def build(size, width):
        model = build_model("custom_cnn", input_size=size, width=width, seed=0).model
        _compile_plain(model, recipe)
        return model
    return build


def test_choose_size_times_real_steps_and_stops_at_the_first_that_fits():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (8, 96, 96, 3)).astype(np.uint8), one_hot(rng.integers(0, 8, 8), 8)
    recipe = load_recipe("cpu")
    lines = []
    roomy = choose_size(_probe_builder(recipe), batch=batch, steps_per_epoch=10, val_images=16,
                        seconds_left=lambda: 1e6, target_epochs=5, candidates=((48, 8), (32, 4)), echo=lines.append)
    assert (roomy.input_size, roomy.width) == (48, 8) and len(roomy.rows) == 1   # the cheaper one is not timed
    assert "largest size" in roomy.reason and roomy.epochs >= 5
    row = roomy.rows[0]
    assert row["step_s"] > 0 and row["images_per_s"] == pytest.approx(8 / row["step_s"], rel=0.01)
    # an epoch: the steps of a pass plus a third of a step per validation batch
    assert row["seconds_per_epoch"] == pytest.approx(row["step_s"] * (10 + 16 / 8 / 3), abs=0.051)  # rounded
    assert lines and "48 px, width 8" in lines[0]
    tight = choose_size(_probe_builder(recipe), batch=batch, steps_per_epoch=10, val_images=16,
                        seconds_left=lambda: 0.0, target_epochs=5, candidates=((48, 8), (32, 4)), echo=lines.append)
    assert (tight.input_size, tight.width) == (32, 4) and len(tight.rows) == 2
    assert "no size reaches the target of 5 epochs" in tight.reason and tight.epochs == 0
    assert json.loads(json.dumps(tight.to_dict()))["candidates"] == tight.rows


def test_with_progressive_resizing_the_smaller_size_is_timed_too_and_its_epochs_counted():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (8, 96, 96, 3)).astype(np.uint8), one_hot(rng.integers(0, 8, 8), 8)
    built = []

    def probe(size, width):
        built.append((size, width))
        return _probe_builder(load_recipe("cpu"))(size, width)

    lines = []
    choice = choose_size(probe, batch=batch, steps_per_epoch=10, val_images=16, seconds_left=lambda: 1000.0,
                         target_epochs=10**6, candidates=((64, 8), (48, 8)), progressive=0.5, echo=lines.append)
    assert built == [(64, 8), (48, 8), (32, 8)]            # 48 px timed once, as the first's small size and itself
    first, second = choice.rows
    assert first["lowres"]["input_size"] == 48 and second["lowres"]["input_size"] == 32
    assert first["lowres"]["seconds_per_epoch"] == second["seconds_per_epoch"]
    per_epoch = 10 + 16 / 8 / 3                            # steps of a pass + validation at a third of a step
    want = 0.5 * 1000 / (second["step_s"] * per_epoch) + 0.5 * 1000 / (first["step_s"] * per_epoch)
    assert first["epochs_in_budget"] == pytest.approx(want, rel=0.02)
    assert "(50% of it at 48 px" in lines[0]


def test_width_sets_custom_cnn_stages_and_is_refused_elsewhere():
    model = build_model("custom_cnn", input_size=48, width=8, seed=0).model
    backbone = model.get_layer("custom_cnn")
    assert backbone.get_layer("stem_conv").filters == 8
    assert backbone.get_layer("stage4_block1_conv1").filters == 64
    assert backbone.output.shape[1:] == (3, 3, 64)   # 48 px / 16
    with pytest.raises(ModelConfigError, match="width applies to custom_cnn"):
        build_model("mobilenetv3_small", width=8)
    with pytest.raises(RecipeError, match="width = 2"):
        with_overrides(load_recipe("cpu"), width=2)


def _built_sizes(zip_path: Path) -> tuple[int, int]:
    """(Resizing height, stem filters) of the model in a zip's weights.keras."""
    with zipfile.ZipFile(zip_path) as outer, zipfile.ZipFile(outer.open("weights.keras")) as keras_zip:
        config = json.loads(keras_zip.read("config.json"))
    layers = {l["config"]["name"]: l for l in config["config"]["layers"]}
    backbone = {l["config"]["name"]: l for l in layers["custom_cnn"]["config"]["layers"]}
    return layers["pre_resize"]["config"]["height"], backbone["stem_conv"]["config"]["filters"]


def test_build_with_autosize_prints_records_and_builds_its_choice(tiny_npz, tmp_path):
    out = tmp_path / "sub.zip"
    # a target no host reaches in 5 minutes: the cheapest candidate, every candidate timed
    res = short_cpu_build(tiny_npz, out, "--heavy-bank", "1", "--max-train-minutes", "5", "--autosize-epochs",
                          "100000")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "model size: timing a training step of each size" in res.stdout
    # the heavy bank is computed first, so the time the probe sees left already excludes it (no estimate)
    assert res.stdout.index("heavy augmentation: 1 corrupted copies") < res.stdout.index("model size: timing")
    assert "model size: 48 px, width 16: no size reaches the target of 100000 epochs" in res.stdout
    summary = json.loads((tmp_path / "sub.build" / "summary.json").read_text())
    assert (summary["model_size"]["input_size"], summary["model_size"]["width"]) == (48, 16)
    assert len(summary["model_size"]["candidates"]) == 5
    assert _built_sizes(out) == (48, 16)


def test_a_size_the_user_gives_is_the_size_trained(tiny_npz, tmp_path):
    out = tmp_path / "sub.zip"
    res = short_cpu_build(tiny_npz, out, "--heavy-bank", "1", "--max-train-minutes", "5", "--input-size", "40",
                          "--width", "8", "--lookahead", "0.9", "--whiten-stem")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "timing a training step" not in res.stdout
    summary = json.loads((tmp_path / "sub.build" / "summary.json").read_text())
    assert summary["model_size"] is None and summary["recipe"]["autosize_epochs"] == 0
    assert summary["recipe"]["lookahead"] == 0.9 and summary["recipe"]["whiten_stem"]
    assert "stem: whitening of the training patches, 4 directions" in res.stdout
    assert _built_sizes(out) == (40, 8)


def test_whiten_stem_makes_the_stem_output_white_on_the_training_patches():
    from subbench.builder.custom_cnn import whiten_stem
    from subbench.data.synthetic import cell_like_images

    images, _ = cell_like_images(64, seed=2)
    built = build_model("custom_cnn", input_size=48, width=8, inputs=("edges",), seed=0)
    k = whiten_stem(built, images, samples=64)
    assert k == 4
    stem = built.backbone.get_layer("stem_conv")
    kernel = stem.kernel.numpy()
    np.testing.assert_allclose(kernel[..., 4:], -kernel[..., :4])          # each direction and its negative
    import keras
    out = keras.Model(built.backbone.input, stem.output)(built.preprocess(images.astype(np.float32))).numpy()
    flat = out[..., :4].reshape(-1, 4).astype(np.float64)
    cov = flat.T @ flat / len(flat)
    # unit variance along each direction (less the eps share), uncorrelated with each other
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=0.02)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    with pytest.raises(ModelConfigError, match="whiten_stem applies to custom_cnn"):
        whiten_stem(build_model("mobilenetv3_small", seed=0), images)


def test_lookahead_pulls_the_weights_back_to_their_average_every_five_steps():
    import keras

    from subbench.builder.train import LOOKAHEAD_EVERY, _lookahead

    model = build_model("custom_cnn", input_size=32, width=4, seed=0).model
    _compile_plain(model, load_recipe("cpu"))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (80, 96, 96, 3)).astype(np.float32), one_hot(rng.integers(0, 8, 80), 8)
    start = [w.numpy() for w in model.weights]
    seen = {"before": [], "after": []}

    def snapshot(key):
        return keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda b, logs: seen[key].append([w.numpy() for w in model.weights]))

    lookahead = _lookahead(0.9, lambda: 0.5)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[snapshot("before"), lookahead, snapshot("after")])
    rho = 0.9 ** LOOKAHEAD_EVERY * 0.5 ** 3
    kernel = [i for i, w in enumerate(model.weights) if "stem_conv" in w.path][0]
    moving = [i for i, w in enumerate(model.weights) if "moving_mean" in w.path][0]   # BatchNorm's too
    for i in (kernel, moving):
        for step in range(1, 5):   # no write-back yet
            np.testing.assert_array_equal(seen["after"][step - 1][i], seen["before"][step - 1][i])
        want = rho * start[i] + (1 - rho) * seen["before"][4][i]
        np.testing.assert_allclose(seen["after"][4][i], want, rtol=1e-5, atol=1e-7)
        want = rho * want + (1 - rho) * seen["before"][9][i]
        np.testing.assert_allclose(seen["after"][9][i], want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(seen["after"][4][kernel], seen["before"][4][kernel])


def test_progressive_resizing_trains_small_then_carries_weights_optimizer_and_cosine_to_the_full_size(tmp_path):
    """The first share of the time budget at 3/4 of the input size, then the full size going on from there: the
    same weights (the last of the small part, not its best), the optimizer's step count and moments, the cosine
    not restarted; the model returned is the full-size one."""
    from subbench.builder.autosize import lowres_size
    from subbench.builder.train import train
    from subbench.data.synthetic import cell_like_images

    images, labels = cell_like_images(64, seed=5)
    # each part ends after its 3 epochs, long before its share of the 10 minutes: the test does not depend on
    # this host's speed (the switch at the share of the budget is the same stop as the budget's own)
    recipe = with_overrides(load_recipe("cpu"), autosize_epochs=0, input_size=40, width=4, heavy_bank=1,
                            batch_size=16, max_train_minutes=10, progressive=0.5, tta="none", epochs=3)
    seen = []
    result = train(recipe, images[:48], labels[:48], images[48:], labels[48:], num_classes=8,
                   build_dir=tmp_path, progress=False, echo=seen.append)
    assert lowres_size(40) == 32 and lowres_size(64) == 48 and lowres_size(96) == 72
    assert "progressive resizing: input 32 px for the first 50% of the time budget, then 40 px" in seen
    assert result.built.input_size == 40 and result.built.model.input_shape == (None, 96, 96, 3)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    low = [r for r in rows if r["phase"] == "phase1_lowres"]
    full = [r for r in rows if r["phase"] == "phase1"]
    assert len(low) == len(full) == 3 and rows == low + full
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < recipe.learning_rate   # one cosine over time, not restarted
    # the step count went on from the small part's 3 x 3 steps (the best epoch's checkpoint, restored at the end,
    # holds the optimizer's state of that epoch)
    steps = int(result.built.model.optimizer.iterations.numpy())
    assert steps == 3 * 3 + 3 * result.best_epochs["phase1"]
    # the small part's last weights were saved (for a resumed build to start the full part from)
    small = build_model("custom_cnn", input_size=32, width=4, inputs=["edges"], seed=0,
                        head=result.built.head).model
    small.load_weights(tmp_path / "phase1_lowres.best.weights.h5")


def test_the_full_size_model_takes_over_every_weight_of_the_small_one_by_name():
    from subbench.builder.train import _take_over_weights

    small = build_model("custom_cnn", input_size=32, width=4, inputs=["edges"], seed=1).model
    full = build_model("custom_cnn", input_size=48, width=4, inputs=["edges"], seed=2).model
    rng = np.random.default_rng(0)
    for w in small.weights:
        w.assign(rng.normal(size=w.shape).astype(w.dtype))
    _take_over_weights(full, small)
    by_name = {w.path: w.numpy() for w in small.weights}
    assert len(by_name) == len(full.weights) > 30
    for w in full.weights:
        np.testing.assert_array_equal(w.numpy(), by_name[w.path])
    with pytest.raises(Exception, match="do not fit"):
        _take_over_weights(build_model("custom_cnn", input_size=48, width=8, seed=0).model, small)


def test_progressive_is_a_share_of_the_budget(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nbackbone = "custom_cnn"\n[train]\nprogressive = 1.5\n')
    with pytest.raises(RecipeError, match="progressive"):
        load_recipe(str(bad))
