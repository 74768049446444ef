"""Save a Keras model so that the profile's server Keras loads it, whatever Keras built it.

A `.keras` file is a zip of config.json, metadata.json and model.weights.h5. Newer Keras versions add config
keys older ones reject (measured: Keras 3.4.1 refuses BatchNormalization `renorm` written by 3.15), so the
config is rewritten without the keys the target does not accept, after checking that each holds its default.
The weights file is kept byte for byte. A compiled or mixed-precision model is first copied uncompiled, in float32,
with training-time stand-in layers (subbench.builder.custom_cnn.TRAINING_STANDINS) replaced by the Keras classes
they stand in for.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from subbench.builder.custom_cnn import TRAINING_STANDINS
from subbench.errors import ExportError
from subbench.keras_compat import KeyTable, find_problems, iter_objects, strip_for_target


def _inference_copy(model, config: dict):
    """The same architecture and weights, uncompiled (no optimizer or loss in the file: the server loads
    with compile=False, and training-side classes such as schedules need not exist there), with every dtype
    policy float32 (mixed-precision training keeps float32 master weights) and every training-time stand-in
    layer as its Keras parent class. `config`: the model's serialized config (a JSON copy; edited here)."""
    import keras

    config.pop("compile_config", None)
    for node in iter_objects(config):
        obj = node.obj
        if obj["class_name"] in TRAINING_STANDINS:     # e.g. the fused BatchNorm custom_cnn trains with
            obj["class_name"] = TRAINING_STANDINS[obj["class_name"]]
            obj["module"], obj["registered_name"] = "keras.layers", None
        if (obj["class_name"] in ("DTypePolicy", "FloatDTypePolicy")
                and str(obj["config"].get("name")).startswith("mixed")):
            obj["config"]["name"] = "float32"
            obj["class_name"] = "DTypePolicy"
        if isinstance(obj["config"].get("dtype"), str) and obj["config"]["dtype"].startswith("mixed"):
            obj["config"]["dtype"] = "float32"
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = keras.saving.deserialize_keras_object(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def export_model(model, dest: Path, table: KeyTable) -> dict:
    """Write `model` to `dest` (.keras) loadable by `table`'s Keras. Returns what was changed."""
    import keras

    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    # the same mixed-precision detection `check` reports, so export and check never disagree
    mixed = any(f.kind == "mixed_precision" for f in find_problems(config, table))
    notes = {"float32_from_mixed": mixed, "dropped_keys": []}
    standins = any(node.obj["class_name"] in TRAINING_STANDINS for node in iter_objects(config))
    if mixed or standins or getattr(model, "optimizer", None) is not None:
        model = _inference_copy(model, config)
    raw = dest.with_name(dest.name + ".raw.keras")
    try:
        model.save(raw)
        with zipfile.ZipFile(raw) as src:
            config = json.loads(src.read("config.json"))
            stripped, dropped = strip_for_target(config, table)
            with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as out:
                for info in src.infolist():
                    data = src.read(info.filename)
                    if info.filename == "config.json":
                        data = json.dumps(stripped).encode("utf-8")
                    out.writestr(info.filename, data)
    finally:
        if raw.exists():
            raw.unlink()
    notes["dropped_keys"] = sorted({f"{f.class_name}.{f.key}" for f in dropped})
    return notes


def load_user_model(path: Path):
    """Load a user's model file for packaging, with a named error instead of Keras' traceback."""
    import keras

    import subbench.corrupt.layers  # noqa: F401  registers HiddenSetAugmentation (package_models strips it)

    if not path.exists():
        raise ExportError(f"model file {path} does not exist", "give the path of a .keras (or .h5) model file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError depending on the problem
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Keras cannot load {path.name}: {first}", "save it with model.save('m.keras') in Keras 3; "
                          "custom layers must be built-in ones") from None
