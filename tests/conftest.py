"""Shared test helpers: tiny real Keras models and hand-made submission zips (no ../shared needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (addopts: -n auto --dist loadgroup) the server-environment tests share one worker: they
    may create ~/.cache/subbench/envs/..., and two workers must not build it at once."""
    for item in items:
        if item.get_closest_marker("server_env"):
            item.add_marker(pytest.mark.xdist_group("server_env"))


def tiny_model(num_classes: int = 8, activation: str = "softmax", extra=None):
    """Conv/BatchNorm/Dense on 96x96x3 with rescaling inside: the structure that broke on Keras 3.4.1."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    if extra is not None:
        x = extra(x)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="session")
def tiny_keras_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    tiny_model().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """96 generated cell-like images, 12 of each class, as a training .npz (images, labels)."""
    import numpy as np

    from subbench.data.synthetic import cell_like_images

    images, labels = cell_like_images(96, seed=3)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=labels.reshape(-1, 1))
    return path


@pytest.fixture
def keras_policy():
    """keras_policy("mixed_float16") sets Keras' global dtype policy for the test; float32 comes back after it
    (the policy is process-wide: a test that left it set would change every later model on the worker)."""
    import keras

    try:
        yield keras.mixed_precision.set_global_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def write_zip(path: Path, files: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900):
    """The real `subbench` command in a fresh process."""
    return subprocess.run([sys.executable, "-m", "subbench.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def short_cpu_build(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`subbench build --recipe cpu` shortened to one epoch of batches of 16, no TTA, plus `extra` options."""
    return run_cli("build", "--recipe", "cpu", "--data", str(data), "--epochs", "1", "--batch-size", "16",
                   "--tta", "none", *extra, "-o", str(out))
