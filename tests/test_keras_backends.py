"""The builder's training pieces on Keras' JAX backend, as the GPU benchmark (bench/bench_gpu_recipe.py) uses them
on machines without TensorFlow: each test runs a real Keras-on-JAX process (CPU), TensorFlow blocked in it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("jax")

# Run in the child before anything else: `import tensorflow` fails there, as on a machine that lacks it.
NO_TENSORFLOW = textwrap.dedent("""
    import sys
    class _NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"No module named {name!r}")
    sys.meta_path.insert(0, _NoTensorFlow())
""")


def run_on_jax(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", NO_TENSORFLOW + textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_time_cosine_sets_the_learning_rate_on_jax():
    """Keras on JAX keeps the optimizer's state outside its variables during fit: the time cosine must bring it
    back before setting the rate, or the steps ignore it. At the end of its window the rate is 0 and no weight
    moves; in the middle it is half the initial one and they do."""
    proc = run_on_jax("""
        import json, time
        import numpy as np, keras
        from subbench.builder.train import _time_cosine
        x, y = np.random.default_rng(0).random((256, 8), np.float32), np.ones((256, 1), np.float32)
        out = {}
        now = time.monotonic()
        for name, start, deadline in (("spent", now - 100, now - 1), ("middle", now - 1e4, now + 1e4)):
            m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
            m.compile(optimizer=keras.optimizers.AdamW(3e-3), loss="mse")
            before = [w.numpy().copy() for w in m.trainable_weights]
            m.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[_time_cosine(3e-3, start, deadline)])
            moved = sum(float(np.abs(a - b.numpy()).sum()) for a, b in zip(before, m.trainable_weights))
            out[name] = {"moved": moved, "lr": float(m.optimizer.learning_rate)}
        out["tensorflow"] = "tensorflow" in sys.modules
        print(json.dumps(out))
    """)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tensorflow"] is False
    assert out["spent"] == {"moved": 0.0, "lr": 0.0}
    assert out["middle"]["moved"] > 0.01
    assert out["middle"]["lr"] == pytest.approx(1.5e-3, rel=1e-2)


@pytest.mark.slow
def test_gpu_recipe_bench_trains_on_jax_and_packages_with_tensorflow(tiny_npz, tmp_path):
    """The benchmark's two halves: the recipe trained on Keras-JAX with no TensorFlow importable (both
    progressive phases, the best weights saved), then those weights in the recipe's model on TensorFlow here,
    scoring the same validation accuracy, packaged into a zip whose manifest holds the build's split."""
    bench = REPO / "bench" / "bench_gpu_recipe.py"
    there = tmp_path / "there"
    there.mkdir()
    proc = run_on_jax(f"""
        import runpy
        sys.argv = [{str(bench)!r}, "train", "--data", {str(tiny_npz)!r}, "--minutes", "0.6", "--policy",
                    "float32", "--autosize-epochs", "1", "--out", {str(there)!r}]
        runpy.run_path(sys.argv[0], run_name="__main__")
        assert "tensorflow" not in sys.modules
    """)
    log = json.loads((there / "log.json").read_text())
    phases = [row["phase"] for row in log["epochs"]]
    assert phases[0] == "phase1_lowres" and phases[-1] == "phase1", proc.stdout
    assert log["model_size"]["input_size"] == 64 and log["model_size"]["reason"].startswith("the largest size")
    here = subprocess.run([sys.executable, str(bench), "finish", "--weights", str(there / "best.weights.h5"),
                           "--log", str(there / "log.json"), "--data", str(tiny_npz), "--out", str(tmp_path / "here")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert here.returncode == 0, here.stderr[-3000:]
    accs = re.search(r"validation accuracy here ([0-9.]+) \(there ([0-9.]+)\)", here.stdout)
    assert accs and float(accs[1]) == pytest.approx(float(accs[2]), abs=1e-4), here.stdout

    from subbench.builder.recipe import load_recipe
    from subbench.builder.workflow import data_split
    from subbench.datasets import load_dataset
    from subbench.profile import load_profile

    with zipfile.ZipFile(tmp_path / "here" / "sub.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    split = data_split(load_dataset(tiny_npz, load_profile()), load_recipe("cpu"))
    assert manifest["split"]["holdout"] == split["holdout"] and manifest["split"]["train"] == split["train"]
    assert "JAX" in manifest["training"]["trained_on"]
    assert manifest["training"]["epochs_trained"] == len(log["epochs"])
