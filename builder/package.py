"""Write the upload zip: the template's model.py, model_config.json, the exported models, manifest.json.

Every model goes through `export.export_model` for the profile's server Keras, is loaded back and run on the
probe input; the probabilities go into the manifest so `check --env server` can prove the server computes
the same. The zip is written atomically and never over an existing file without `force`.
"""

from __future__ import annotations

import json
import platform
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

import subbench
from subbench.atomic import atomic_path, check_writable
from subbench.builder.export import export_model
from subbench.errors import ExportError
from subbench.keras_compat import load_key_table
from subbench.manifest import (MANIFEST_FORMAT, MANIFEST_NAME, PROBE_SEED, PROBE_TOLERANCE, probe_input,
                               sha256_bytes)
from subbench.profile import Profile

# --tta presets: view names understood by submission_template/model.py (VIEWS there). `--tta auto`
# (subbench.builder.tta_select) picks one of these.
TTA_PRESETS = {
    "none": ["identity"],
    "flips": ["identity", "hflip", "vflip"],
    "d4": ["identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"],
}


@dataclass
class PackageResult:
    zip_path: Path
    manifest: dict
    notes: list[str] = field(default_factory=list)


def template_source() -> bytes:
    return (resources.files("subbench.submission_template") / "model.py").read_bytes()


def _check_io(model, profile: Profile, label: str) -> None:
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape)
    want = tuple(profile.input_shape)
    if len(in_shape) != 4 or any(a is not None and a != b for a, b in zip(in_shape[1:], want)):
        raise ExportError(f"{label} takes inputs of shape {in_shape[1:]}, the competition sends {want}",
                          "rebuild the model with keras.Input(shape=%s); resize inside the model if the backbone "
                          "wants larger images" % (want,))
    if len(out_shape) != 2 or out_shape[-1] != profile.num_classes:
        raise ExportError(f"{label} outputs shape {out_shape[1:]}, the competition has {profile.num_classes} classes",
                          f"end the model with Dense({profile.num_classes}) (softmax or logits)")


def _outputs_kind(probs: np.ndarray) -> str:
    rows_sum_to_one = np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) and probs.min() >= -1e-6
    return "probabilities" if rows_sum_to_one else "logits"


@dataclass
class _Exported:
    """One model as shipped: its file, manifest entry, probe probabilities, and what export changed."""
    name: str
    data: bytes
    entry: dict
    probabilities: list
    outputs: str
    notes: list[str]


def _export_one(model, i: int, weight: float, src: str, profile: Profile, table, probe, tmp: Path) -> _Exported:
    """Strip training-only layers, check the shapes, export for the server's Keras, reload and run the probe."""
    import keras

    from subbench.corrupt.layers import STRIP_NOTE, contains_augmentation, strip_augmentation

    label, notes = f"model {src}", []
    if contains_augmentation(model):   # training-only, and a class the server lacks: never in a zip
        model = strip_augmentation(model)
        notes.append(f"{label}: {STRIP_NOTE}")
    _check_io(model, profile, label)
    name = "weights.keras" if i == 0 else f"weights_{i}.keras"
    dest = tmp / name
    change = export_model(model, dest, table)
    if change["dropped_keys"]:
        notes.append(f"{name}: dropped keys the server's Keras {table.keras_version} lacks (all at their "
                     f"defaults): {', '.join(change['dropped_keys'])}")
    if change["float32_from_mixed"]:
        notes.append(f"{name}: mixed-precision model exported in float32")
    reloaded = keras.models.load_model(dest, compile=False)  # the file we ship must load here too
    probs = np.asarray(reloaded.predict(probe.astype(np.float32), verbose=0), dtype=np.float64)
    return _Exported(name, dest.read_bytes(), {"file": name, "weight": weight, "source": src, **change},
                     np.round(probs, 7).tolist(), _outputs_kind(probs), notes)


def _manifest(profile: Profile, table, probe, exported: list[_Exported], views: list[str], outputs: str,
              files: dict[str, bytes], extra: dict | None) -> dict:
    import keras
    import tensorflow as tf

    return {
        "format": MANIFEST_FORMAT,
        "kind": "subbench-submission",
        "subbench_version": subbench.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile.name,
        "classes": list(profile.class_names),
        "saved_with": {"python": platform.python_version(), "tensorflow": tf.__version__,
                       "keras": keras.__version__},
        "target": {"tensorflow": profile.server_tensorflow, "keras": profile.server_keras,
                   "keys_table_keras": table.keras_version},
        "models": [e.entry for e in exported],
        "tta": {"views": views},
        "outputs": outputs,
        "probe": {"seed": PROBE_SEED, "shape": list(probe.shape), "tolerance": PROBE_TOLERANCE,
                  "probabilities": {e.name: e.probabilities for e in exported}},
        "files": {name: sha256_bytes(data) for name, data in sorted(files.items())},
        **(extra or {}),
    }


def package_models(models: list, out_zip: Path, profile: Profile, *, tta: str | list[str] = "none",
                   ensemble_weights: list[float] | None = None, sources: list[str] | None = None,
                   batch_size: int = 64, extra_manifest: dict | None = None, force: bool = False,
                   echo=print) -> PackageResult:
    """Export Keras models (already in memory) into a submission zip at out_zip."""
    out_zip = Path(out_zip)
    check_writable(out_zip, force)  # fail before minutes of work
    if not models:
        raise ExportError("no models to package", "give --from MODEL.keras (or --model NAME to train one)")
    views = TTA_PRESETS[tta] if isinstance(tta, str) else list(tta)
    weights = list(ensemble_weights) if ensemble_weights else [1.0] * len(models)
    if len(weights) != len(models) or any(w <= 0 for w in weights):
        raise ExportError(f"{len(weights)} ensemble weights for {len(models)} models",
                          "give one positive weight per --from model, e.g. --ensemble-weights 0.6,0.4")
    sources = sources or [getattr(m, "name", f"model{i}") for i, m in enumerate(models)]
    table = load_key_table(profile)
    probe = probe_input(profile)
    with tempfile.TemporaryDirectory(prefix="subbench-build-") as tmp:
        exported = [_export_one(m, i, w, src, profile, table, probe, Path(tmp))
                    for i, (m, w, src) in enumerate(zip(models, weights, sources))]
    kinds = {e.outputs for e in exported}
    if len(kinds) > 1:
        raise ExportError("the ensemble mixes models that output probabilities with models that output logits",
                          "end every model with the same activation (softmax recommended)")
    outputs = kinds.pop()
    config = {"models": [{"file": e.name, "weight": e.entry["weight"]} for e in exported], "tta": views,
              "batch_size": batch_size, "chunk_size": 1024, "outputs": outputs}
    files = {e.name: e.data for e in exported}
    files["model_config.json"] = json.dumps(config, indent=1).encode()
    files["model.py"] = template_source()
    manifest = _manifest(profile, table, probe, exported, views, outputs, files, extra_manifest)
    with atomic_path(out_zip, force=force, suffix=".zip") as tmp_zip:
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1))
    notes = [n for e in exported for n in e.notes]
    for n in notes:
        echo(f"note: {n}")
    echo(f"wrote {out_zip} ({out_zip.stat().st_size / 2**20:.1f} MB): {len(models)} model(s), TTA {views}")
    return PackageResult(out_zip, manifest, notes)


def package_files(model_paths: list[Path], out_zip: Path, profile: Profile, **kwargs) -> PackageResult:
    """`subbench build --from A.keras [--from B.keras]`: load each file, then package_models."""
    from subbench.builder.export import load_user_model

    check_writable(Path(out_zip), kwargs.get("force", False))
    models = [load_user_model(Path(p)) for p in model_paths]
    return package_models(models, out_zip, profile, sources=[Path(p).name for p in model_paths], **kwargs)
