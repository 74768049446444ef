"""Will the server's Keras load this model? Read from the saved config alone, against a table of keys.

The table (one per target Keras version) lists, for every class that version has, the config keys its
constructor accepts; `keras_introspect.py` generates it inside the server environment and the profile ships
it. A config key the target does not accept is harmless when its value is the key's default (it is dropped
on export) and fatal otherwise: the model really needs a newer Keras.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import ExportError, ProfileError
from .profile import Profile

# Serialized entries that are not classes (tensors, numpy values, functions).
_NOT_CLASSES = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__",
                "__lambda__", "__typespec__", "function", "__function__"}
# Keras 3.8/3.9 added these preprocessing layers; teams left them inside models (training-only, too).
TRAINING_ONLY_LAYERS = {"AugMix", "RandAugment", "RandomFlip", "RandomRotation", "RandomTranslation",
                        "RandomZoom", "RandomContrast", "RandomBrightness", "RandomCrop", "RandomErasing",
                        "RandomGaussianBlur", "RandomShear", "RandomColorJitter", "RandomColorDegeneration",
                        "RandomHue", "RandomSaturation", "RandomSharpness", "RandomPosterization",
                        "RandomInvert", "RandomPerspective", "RandomElasticTransform", "RandomGrayscale",
                        "CutMix", "MixUp", "Solarization", "Equalization", "AutoContrast",
                        "HiddenSetAugmentation"}   # subbench's own: subbench.package removes it


# Private modules whose classes keras_introspect.py lists one by one (keyed "module.ClassName").
PRIVATE_MODULES = ("keras.src.applications.", "keras.src.ops.")


@dataclass(frozen=True)
class KeyTable:
    keras_version: str
    classes: dict[str, dict]
    source: str

    def entry(self, class_name: str, module: str | None = None) -> dict | None:
        """Public classes are keyed by name; classes of private modules by "module.ClassName"."""
        if module and f"{module}.{class_name}" in self.classes:
            return self.classes[f"{module}.{class_name}"]
        if module and module.startswith(PRIVATE_MODULES):
            return None  # a class of these private modules must exist in that very module
        return self.classes.get(class_name)

    def has_class(self, name: str, module: str | None = None) -> bool:
        return self.entry(name, module) is not None

    def accepts(self, class_name: str, key: str, module: str | None = None) -> bool:
        entry = self.entry(class_name, module)
        if entry is None or entry.get("open_kwargs") or not entry.get("checked", True):
            return True
        return key in entry["keys"]


def read_key_table(path: str | Path) -> KeyTable:
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        return KeyTable(str(raw["keras_version"]), dict(raw["classes"]), str(p))
    except FileNotFoundError:
        raise ProfileError(f"Keras key table {p} is missing",
                           "run `subbench env create` then `subbench env keys` to generate it") from None
    except (ValueError, KeyError) as exc:
        raise ProfileError(f"Keras key table {p} is malformed ({exc!r})", "regenerate it: `subbench env keys`") from None


def load_key_table(profile: Profile) -> KeyTable:
    """The table generated in the user's server environment when there is one, else the profile's shipped one."""
    from . import server_env  # local: server_env imports this module's neighbours only

    generated = server_env.env_dir(profile) / "keras-keys.json"
    if generated.exists():
        return read_key_table(generated)
    if profile.keras_keys_file is None:
        raise ProfileError(f"profile {profile.name} names no Keras key table",
                           "add `keras_keys = \"keras-X.Y.Z.json\"` under [server], or run `subbench env keys`")
    return read_key_table(profile.keras_keys_file)


@dataclass(frozen=True)
class Finding:
    kind: str          # lambda | mixed_precision | missing_class | training_only | custom_class | unknown_key
    class_name: str
    layer: str         # name of the enclosing layer, "" at model level
    key: str = ""
    value: Any = None

    def describe(self) -> str:
        where = f"layer {self.layer!r} ({self.class_name})" if self.layer else self.class_name
        if self.kind == "unknown_key":
            return f"{where}: config key {self.key!r}={self.value!r} is not accepted by the target Keras"
        return f"{where}: {self.kind.replace('_', ' ')}"


@dataclass
class _Node:
    obj: dict
    layer: str
    parent_key: str = field(default="")


def iter_objects(config: Any, layer: str = "", parent_key: str = "") -> Iterator[_Node]:
    """Every serialized Keras object ({class_name, config, ...}) inside a saved config, depth first."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            inner = config["config"]
            name = inner.get("name") if isinstance(inner.get("name"), str) else layer
            yield _Node(config, name if _is_layerish(config) else layer, parent_key)
            layer = name if _is_layerish(config) else layer
        for key, value in config.items():
            yield from iter_objects(value, layer, key)
    elif isinstance(config, list):
        for value in config:
            yield from iter_objects(value, layer, parent_key)


def _is_layerish(obj: dict) -> bool:
    module = obj.get("module") or ""
    return "layers" in module or "models" in module or module.startswith("keras.src.models")


def _policy_name(obj: dict) -> str | None:
    if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        return str(obj["config"].get("name"))
    return None


def find_problems(model_config: dict, table: KeyTable) -> list[Finding]:
    """Everything in a saved model config that the table's Keras would refuse or that must not ship."""
    out: list[Finding] = []
    for node in iter_objects(model_config):
        obj, cls = node.obj, node.obj["class_name"]
        if cls in _NOT_CLASSES:
            continue
        if cls == "Lambda":
            out.append(Finding("lambda", cls, node.layer))
            continue
        policy = _policy_name(obj)
        if policy and policy.startswith("mixed"):
            out.append(Finding("mixed_precision", cls, node.layer, "dtype", policy))
        inner_dtype = obj["config"].get("dtype")
        if isinstance(inner_dtype, str) and inner_dtype.startswith("mixed"):
            out.append(Finding("mixed_precision", cls, node.layer, "dtype", inner_dtype))
        if cls in TRAINING_ONLY_LAYERS and _is_layerish(obj):
            out.append(Finding("training_only", cls, node.layer))
            if (obj.get("registered_name") or "").startswith("subbench>"):
                continue   # one finding for our layer, not a second as an unknown custom class
        registered = obj.get("registered_name")
        module = obj.get("module") or ""
        if registered and registered != cls and not module.startswith("keras"):
            out.append(Finding("custom_class", cls, node.layer, "registered_name", registered))
            continue
        if not table.has_class(cls, module):
            if module.startswith("keras") or not registered:
                out.append(Finding("missing_class", cls, node.layer))
            continue
        for key, value in obj["config"].items():
            if not table.accepts(cls, key, module):
                out.append(Finding("unknown_key", cls, node.layer, key, value))
    return out


def _local_default(obj: dict, key: str) -> tuple[bool, Any]:
    """(found, default) of `key` in the local Keras class's constructor, followed up the MRO."""
    cls = _resolve_local_class(obj)
    if cls is None:
        return False, None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        if key in params and params[key].default is not inspect.Parameter.empty:
            return True, params[key].default
    return False, None


def _resolve_local_class(obj: dict):
    import keras

    cls_name, module = obj["class_name"], obj.get("module") or "keras"
    for mod_name in (module, "keras.layers", "keras.initializers", "keras.regularizers", "keras.constraints",
                     "keras.dtype_policies", "keras"):
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name, None)
        except ImportError:
            continue
        if inspect.isclass(cls):
            return cls
    return None


def _same(value: Any, default: Any) -> bool:
    # Constructors often take None meaning "off" and store False (InputLayer ragged=None -> False).
    if default is None and value is False:
        return True
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(value, float) and isinstance(default, (int, float)):
        return math.isclose(value, default)
    return value == default


def strip_for_target(model_config: dict, table: KeyTable) -> tuple[dict, list[Finding]]:
    """A copy of the config without keys the target does not accept; those keys must hold their defaults.

    Raises ExportError naming the layer and key when a value differs from the default (the model needs a
    newer Keras than the server has), and for any other finding (Lambda, missing class, mixed precision).
    """
    config = json.loads(json.dumps(model_config))  # deep copy, JSON types only
    blockers = [f for f in find_problems(config, table) if f.kind != "unknown_key"]
    if blockers:
        f = blockers[0]
        raise ExportError(f"{f.describe()}: Keras {table.keras_version} (the server's) cannot load this model",
                          _HINTS.get(f.kind, "rebuild the model with layers the server's Keras has"))
    dropped: list[Finding] = []
    for node in iter_objects(config):
        obj = node.obj
        if obj["class_name"] in _NOT_CLASSES:
            continue
        for key in [k for k in obj["config"] if not table.accepts(obj["class_name"], k, obj.get("module"))]:
            value = obj["config"][key]
            found, default = _local_default(obj, key)
            if not found or not _same(value, default):
                raise ExportError(
                    f"layer {node.layer!r} ({obj['class_name']}): {key}={value!r} is not a default, and Keras "
                    f"{table.keras_version} (the server's) has no {key!r} option",
                    f"build that layer without {key!r} (use its default), or target a newer server Keras")
            dropped.append(Finding("unknown_key", obj["class_name"], node.layer, key, value))
            del obj["config"][key]
    return config, dropped


_HINTS = {
    "lambda": "replace the Lambda layer with a built-in layer (Lambda code does not survive saving across versions)",
    "mixed_precision": "export a float32 copy: rebuild the model under keras.mixed_precision.set_global_policy"
                       "('float32') and copy the weights (subbench build does this for models it trains)",
    "missing_class": "that layer class does not exist in the server's Keras; rebuild without it",
    "training_only": "augmentation layers belong in the training pipeline: rebuild the model without them "
                     "(they are identity at inference anyway); subbench.package / build --from remove "
                     "subbench's hidden_set_augmentation by themselves",
    "custom_class": "a custom class must be defined and registered in model.py before loading; prefer built-in "
                    "layers",
}


def hint_for(kind: str) -> str:
    return _HINTS.get(kind, "the model needs a newer Keras than the server's: drop that option or use its default")
