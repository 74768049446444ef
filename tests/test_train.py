"""`subbench build --model`: real training on a tiny generated set, the zip, resume after kill -9, recipes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, short_cpu_build
from subbench.builder.input_branches import InputBranchError, InputBranches
from subbench.builder.recipe import CHOICES, RecipeError, load_recipe, shipped_recipes, with_overrides
from subbench.local_bench.check import check_zip
from subbench.profile import load_profile

PROFILE = load_profile()
FAST = ["--model", "custom_cnn", "--batch-size", "16", "--val-corrupt", "none", "--augment", "light"]


def _manifest(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read("manifest.json"))


SHIPPED = {"cpu": "custom_cnn", "convnext-xlarge-focal": "convnext_xlarge", "efficientnetv2s-lion": "efficientnetv2_s",
           "vgg16-oversample": "vgg16", "convnext-base-nadam": "convnext_base",
           "efficientnetv2b0-lion": "efficientnetv2_b0"}


def test_shipped_recipes_load():
    assert set(SHIPPED) <= set(shipped_recipes())
    for name, backbone in SHIPPED.items():
        recipe = load_recipe(name)
        assert (recipe.name, recipe.backbone) == (name, backbone)
        assert name == "cpu" or "team report" in recipe.description    # where it comes from
    focal = load_recipe("convnext-xlarge-focal")
    assert (focal.backbone, focal.head, focal.loss, focal.label_smoothing, focal.focal_gamma) == \
        ("convnext_xlarge", "inception", "focal", 0.05, 0.5)
    assert focal.kfold == 5 and focal.final and focal.finetune_phases == 3
    assert load_recipe("cpu").inputs == InputBranches(("edges",))
    assert with_overrides(focal, epochs=3, tta=None).epochs == 3


def test_bad_recipe(tmp_path):
    (tmp_path / "r.toml").write_text("[train]\nepochs = 3\nspeed = 'fast'\n")
    with pytest.raises(RecipeError, match="speed"):
        load_recipe(tmp_path / "r.toml")
    with pytest.raises(RecipeError, match="no recipe named"):
        load_recipe("nope")


@pytest.mark.parametrize("line, named", [("[train]\naugment = 'strong'", "augment = 'strong' is not one of"),
                                         ("[train]\nepochs = 2.5", "epochs = 2.5 is not an integer"),
                                         ("[train]\nheavy_bank = -1", "heavy_bank = -1"),
                                         ("[optimizer]\nlearning_rate = 0", "learning_rate = 0 is not a number above"),
                                         ("[loss]\nlabel_smoothing = 'yes'", "label_smoothing = 'yes'"),
                                         ("[head]\nhead_batchnorm = 1", "head_batchnorm = 1 is not true or false"),
                                         ("[train]\nmixed_precision = 'yes'", "mixed_precision = 'yes' is not"),
                                         ("[model]\nedge_channels = 'on'", "edge_channels = 'on' is not true"),
                                         ("[model]\nblock = 'dense'", "block = 'dense' is not one of"),
                                         ("[model]\ninputs = ['folded']\ncolour_dropout = 1.0",
                                          "colour_dropout = 1.0 is not a number at least 0.0 and at most 0.95"),
                                         ("[model]\ncolour_dropout = 0.3", "colour_dropout = 0.3 needs input "
                                                                          "branches")])
def test_recipe_values_are_checked_when_read(tmp_path, line, named):
    (tmp_path / "r.toml").write_text(line + "\n")
    with pytest.raises(RecipeError, match=named):
        load_recipe(tmp_path / "r.toml")


@pytest.mark.parametrize("model, inputs", [("inputs = ['edges', 'equalized']", ("edges", "equalized")),
                                           ("inputs = []", ()),
                                           ("edge_channels = true", ("edges",)),
                                           ("edge_channels = true\nequalized_channels = false", ("edges",)),
                                           ("equalized_channels = true\ninputs = ['edges', 'equalized']",
                                            ("edges", "equalized"))])
def test_recipe_inputs_and_the_older_boolean_keys(tmp_path, model, inputs):
    (tmp_path / "r.toml").write_text(f"[model]\n{model}\n")
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.inputs.names() == inputs and recipe.to_dict()["inputs"] == list(inputs)


def test_a_build_from_before_inputs_resumes():
    """state.json of an older build holds edge_channels/equalized_channels: read as inputs, so --resume goes on."""
    from subbench.builder.train import _current_form

    now = load_recipe("cpu").to_dict()
    older = {k: v for k, v in now.items() if k != "inputs"}
    older.update(edge_channels=True, equalized_channels=False)
    assert _current_form(older) == now and _current_form(now) == now
    # a build from before the options added since (preprocess, block, colour_dropout): at their defaults
    before = {k: v for k, v in now.items() if k not in ("preprocess", "block", "colour_dropout")}
    assert _current_form(before) == now


def test_unknown_or_contradicting_input_branches_are_named_errors(tmp_path):
    (tmp_path / "r.toml").write_text("[model]\ninputs = ['edges', 'sobel']\n")
    with pytest.raises(InputBranchError, match=r"r.toml: unknown input branch 'sobel'") as err:
        load_recipe(tmp_path / "r.toml")
    assert "edges, folded, equalized" in err.value.hint
    (tmp_path / "r.toml").write_text("[model]\ninputs = ['edges']\nedge_channels = false\n")
    with pytest.raises(RecipeError, match="contradicts edge_channels = false"):
        load_recipe(tmp_path / "r.toml")
    with pytest.raises(InputBranchError, match="unknown input branch 'sobel'"):
        with_overrides(load_recipe("cpu"), inputs="sobel")
    assert with_overrides(load_recipe("cpu"), inputs="none").inputs == InputBranches()
    with pytest.raises(RecipeError, match="backbone = 'resnet18' is not one of"):
        with_overrides(load_recipe("cpu"), backbone="resnet18")


def test_cli_choices_are_the_registries(tmp_path):
    """Each choice-taking option of `subbench build` offers what its module's registry holds, as the recipe check
    accepts it; --inputs reads the branch registry, a wrong name is one named error."""
    import click

    from subbench.cli.build import build

    params = {p.name: p for p in build.params}
    for option, field in (("head", "head"), ("loss", "loss"), ("optimizer", "optimizer"), ("schedule", "schedule"),
                          ("augment", "augment"), ("balance", "balance"), ("strategy", "strategy"), ("tta", "tta")):
        assert isinstance(params[option].type, click.Choice)
        assert tuple(params[option].type.choices) == tuple(CHOICES[field]), option
    assert CHOICES["tta"] == ("none", "flips", "d4", "auto")
    assert params["inputs"].metavar == "edges,folded,equalized|none"
    res = run_cli("build", "--recipe", "cpu", "--inputs", "edges,sobel", "--data", "x.npz", "-o", "x.zip",
                  cwd=tmp_path)
    assert res.returncode == 2 and not any(tmp_path.iterdir()) and "InputBranchError" in res.stderr and "'sobel'" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_bad_recipe_value_is_one_named_error_on_the_command_line(tmp_path, tiny_npz):
    (tmp_path / "r.toml").write_text("[train]\naugment = 'strong'\n")
    res = run_cli("build", "--recipe", str(tmp_path / "r.toml"), "--data", str(tiny_npz), "-o",
                  str(tmp_path / "sub.zip"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "RecipeError" in res.stderr and "augment = 'strong'" in res.stderr and "hint:" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]
    res = run_cli("build", "--recipe", "cpu", "--heavy-bank", "-2", "--data", str(tiny_npz), "-o",
                  str(tmp_path / "sub.zip"))
    assert res.returncode != 0 and "heavy_bank = -2" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("build", "--recipe", "cpu", "--weight-decay", "-0.1", "--data", str(tiny_npz), "-o",
                  str(tmp_path / "sub.zip"))
    assert res.returncode != 0 and "weight_decay = -0.1" in res.stderr and "Traceback" not in res.stderr


def test_build_trains_packages_and_records_the_split(tiny_npz, tmp_path):
    out = tmp_path / "sub.zip"
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "2", "--holdout", "0.25", "--tta", "auto",
                  "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = _manifest(out)
    split = manifest["split"]
    labels = np.load(tiny_npz)["labels"].ravel()
    hold, train = np.asarray(split["holdout"]), np.asarray(split["train"])
    assert len(hold) == 24 and len(train) == 72 and not set(hold) & set(train)
    assert np.array_equal(np.bincount(labels[hold], minlength=8), np.full(8, 3))   # stratified
    assert len(split["train_hashes"]) == 72
    assert manifest["training"]["recipe"]["backbone"] == "custom_cnn"
    tta = manifest["training"]["tta"]           # the chooser's rule re-applied to the candidates it recorded
    cands = tta["candidates"]
    assert [c["preset"] for c in cands] == ["none", "flips", "d4"]
    kept = [c for c in cands if c["fits"] and c["accuracy"] >= cands[0]["accuracy"]]
    want = max(kept, key=lambda c: len(c["views"])) if kept else cands[0]
    assert tta["preset"] == want["preset"] and [c["preset"] for c in cands if c["chosen"]] == [want["preset"]]
    assert manifest["tta"]["views"] == tta["views"] == want["views"]          # and the zip applies those views
    build_dir = tmp_path / "sub.build"
    for name in ("curves.png", "summary.json", "main/log.jsonl", "main/state.json"):
        assert (build_dir / name).exists(), name
    rows = [json.loads(line) for line in (build_dir / "main/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_accuracy" in r for r in rows)
    with open(build_dir / "main/log.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in table] == [0, 1]          # Keras counts epochs from 0
    np.testing.assert_allclose([float(r["val_accuracy"]) for r in table], [r["val_accuracy"] for r in rows])
    assert check_zip(out, PROFILE).ok


def test_cpu_recipe_builds_with_its_heavy_bank_and_sizes_itself(tiny_npz, tmp_path):
    """The cpu recipe end to end, shortened: heavy augmentation from a bank of corrupted copies, the model size it
    times and picks (on 72 images every candidate fits: the largest), the input branches (the recipe's edges and, by
    flag, the equalised ones too) inside a model that takes the profile's 96 px, a zip that passes check."""
    out = tmp_path / "sub.zip"
    res = short_cpu_build(tiny_npz, out, "--heavy-bank", "2", "--weight-decay", "0.02", "--inputs",
                          "equalized,edges")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "heavy augmentation: 2 corrupted copies of the training set" in res.stdout
    assert "model size: 64 px, width 32: the largest size" in res.stdout
    assert _manifest(out)["training"]["model_size"]["input_size"] == 64
    recipe = _manifest(out)["training"]["recipe"]
    assert (recipe["augment"], recipe["heavy_bank"], recipe["input_size"]) == ("heavy", 2, 64)
    assert recipe["weight_decay"] == 0.02 and recipe["learning_rate"] == 3e-3   # flag over recipe, rest kept
    assert recipe["inputs"] == ["edges", "equalized"]                          # the flag's, registry order
    config = zipfile.ZipFile(zipfile.ZipFile(out).open("weights.keras")).read("config.json").decode()
    assert '"pre_with_extra_channels"' in config and '"pre_eq_lookup"' in config and '"pre_sobel"' in config
    assert check_zip(out, PROFILE).ok


def test_build_refuses_an_existing_build_folder(tiny_npz, tmp_path):
    (tmp_path / "sub.build").mkdir()
    (tmp_path / "sub.build" / "state.json").write_text("{}")
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "1", "-o", str(tmp_path / "sub.zip"))
    assert res.returncode == 2 and "BuildDirError" in res.stderr and "--resume" in res.stderr


def test_resume_after_kill_loses_at_most_the_current_epoch(tiny_npz, tmp_path):
    out = tmp_path / "sub.zip"
    args = [sys.executable, "-m", "subbench.cli", "build", *FAST, "--data", str(tiny_npz), "--epochs", "4",
            "--patience", "10", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "sub.build" / "main" / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 4 and not out.exists()
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "4", "--patience", "10", "-o", str(out),
                  "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    # the interrupted epochs are not trained again: the resumed run continues with the next one
    assert epochs[:done_before] == list(range(1, done_before + 1))
    assert epochs[done_before:] == list(range(done_before + 1, 5))
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "5", "-o", str(tmp_path / "o2.zip"),
                  "--build-dir", str(tmp_path / "sub.build"), "--resume")
    assert res.returncode == 2 and "other options" in res.stderr


def test_mixed_precision_build_exports_float32(tiny_npz, tmp_path):
    """--mixed-precision trains under the policy this machine supports (float16 on a GPU, bfloat16 on a CPU with
    AMX, else float32, said in the log), records it, and ships a float32 model."""
    from subbench.builder.precision import mixed_precision_policy

    out = tmp_path / "mp.zip"
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "1", "--limit", "32",
                  "--holdout", "0", "--mixed-precision", "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    policy, why = mixed_precision_policy()
    assert f"mixed precision: {why}" in res.stdout
    summary = json.loads((tmp_path / "mp.build" / "summary.json").read_text())
    assert summary["compute_policy"] == policy
    assert _manifest(out)["training"]["compute_policy"] == policy
    with zipfile.ZipFile(out) as zf:
        config = zipfile.ZipFile(zf.open("weights.keras")).read("config.json").decode()
    assert "mixed_" not in config
    assert check_zip(out, PROFILE, live=False).ok


def test_mirrored_strategy_on_two_logical_cpus(tiny_npz, tmp_path):
    out = tmp_path / "mirrored.zip"
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "1", "--limit", "32", "--strategy",
                  "mirrored", "--cpu-devices", "2", "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 replicas" in res.stdout and out.exists()


def test_kfold_then_final_fit_on_all_data(tiny_npz, tmp_path):
    out = tmp_path / "kf.zip"
    res = run_cli("build", *FAST, "--data", str(tiny_npz), "--epochs", "2", "--kfold", "2", "--final",
                  "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = _manifest(out)
    assert manifest["split"]["holdout"] == [] and len(manifest["split"]["train"]) == 96
    assert len(manifest["training"]["kfold"]) == 2
    assert "k-fold: best epochs" in res.stdout
