"""A build recipe: every option of `subbench build --model`, as one TOML file or as CLI flags.

`load_recipe(name_or_path)` reads a shipped recipe (builder/recipes/<name>.toml) or a file; `with_overrides`
applies the flags a user typed on top of it. Flat dataclass, grouped in TOML by table ([model], [head],
[loss], [optimizer], [train], [finetune], [tta]) for readability. The values a named option may take come from
the registry of the module that implements it (CHOICES), so a recipe is checked against what exists.

The shipped recipes besides `cpu` follow team reports of the AN2DL 2024 challenge (their `description` says
which) and are named after what they train: convnext-xlarge-focal, efficientnetv2s-lion, vgg16-oversample,
convnext-base-nadam, efficientnetv2b0-lion.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from subbench.builder.backbones import BACKBONES
from subbench.builder.cell_preprocessing import CellPreprocessing, PreprocessError
from subbench.builder.custom_cnn import BLOCKS
from subbench.builder.heads import HEADS
from subbench.builder.input_branches import InputBranchError, InputBranches
from subbench.builder.losses import LOSSES
from subbench.builder.optim import OPTIMIZERS, SCHEDULES
from subbench.builder.pipeline import AUGMENT_PRESETS
from subbench.builder.train import BALANCE_MODES, STRATEGIES
from subbench.builder.tta_select import TTA_CHOICES
from subbench.errors import SubbenchError


class RecipeError(SubbenchError):
    """A recipe file is missing, malformed, or names an unknown option."""


# TOML table -> the fields it may hold (names are the dataclass fields below).
SECTIONS = {
    "model": ("backbone", "weights", "input_size", "width", "block", "whiten_stem", "inputs", "colour_dropout",
              "preprocess"),
    "head": ("head", "head_dense", "head_batchnorm", "head_dropout", "head_l2"),
    "loss": ("loss", "label_smoothing", "focal_gamma", "focal_alpha", "balance"),
    "optimizer": ("optimizer", "learning_rate", "weight_decay", "schedule", "lookahead"),
    "train": ("epochs", "batch_size", "patience", "augment", "heavy_bank", "holdout", "seed", "val_corrupt", "kfold",
              "final", "mixed_precision", "strategy", "limit", "max_train_minutes", "autosize_epochs",
              "progressive"),
    "finetune": ("finetune_phases", "finetune_epochs", "finetune_lr_decay", "unfreeze_to"),
    "tta": ("tta", "time_budget_s"),
}
# [model] keys of older recipes, each a boolean for one input branch: read into `inputs`.
LEGACY_INPUT_KEYS = {"edge_channels": "edges", "equalized_channels": "equalized"}


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    source: str = ""          # where it was read from, for the manifest
    # [model]
    backbone: str = "custom_cnn"
    weights: str = "none"             # none | imagenet | PATH
    input_size: int | None = None     # resize inside the model (e.g. 224 for backbones that want it)
    width: int | None = None          # custom_cnn: channels of its first stage (stages w, 2w, 4w, 8w); None = 32
    block: str = "basic"              # custom_cnn: its stages' blocks, basic (ResNet) | inverted (MobileNetV2)
    whiten_stem: bool = False         # custom_cnn: start its first conv as a whitening of the training patches
    # custom_cnn: more input channels (subbench.builder.input_branches); TOML: inputs = ["edges", "equalized"]
    inputs: InputBranches = field(default_factory=InputBranches)
    # with input branches: the share of training images whose 3 colour channels are zeroed (the model then sees
    # only its branches' channels for them); 0 = off
    colour_dropout: float = 0.0
    # cell preprocessing on the raw image, in this order (subbench.builder.cell_preprocessing); TOML:
    # preprocess = ["illumination", "clahe"], a step with parameters as {name = "clahe", clip_limit = 3.0}
    preprocess: CellPreprocessing = field(default_factory=CellPreprocessing)
    # [head]
    head: str = "gap"                 # gap | inception
    head_dense: tuple[int, ...] = ()
    head_batchnorm: bool = False
    head_dropout: float = 0.2
    head_l2: float = 0.0
    # [loss]
    loss: str = "crossentropy"        # crossentropy | focal
    label_smoothing: float = 0.0
    focal_gamma: float = 0.5
    focal_alpha: float = 1.0
    balance: str = "none"             # none | oversample | weights
    # [optimizer]
    optimizer: str = "adamw"          # adamw | lion | nadam | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "plateau"         # plateau (ReduceLROnPlateau) | cosine | constant
    # >0: Lookahead as in airbench: a moving average of the weights (this momentum a step) written back into the
    # model every LOOKAHEAD_EVERY steps (Keras' optimizer EMA with ema_overwrite_frequency); 0 = off
    lookahead: float = 0.0
    # [train] phase 1: the head (and the whole model when the backbone is trained from scratch)
    epochs: int = 20
    batch_size: int = 64
    patience: int = 5
    augment: str = "light"            # none | light | heavy
    heavy_bank: int = 0               # heavy: K precomputed corrupted copies to draw from; 0 = corrupt every batch
    holdout: float = 0.1
    seed: int = 0
    val_corrupt: str | None = "an2dl"  # validation set corrupted once for early stopping; None = clean
    kfold: int = 0                    # >1: estimate the epoch count by K-fold cross-validation first
    final: bool = False               # after --kfold: fit on all data for the estimated epochs
    mixed_precision: bool = False
    strategy: str = "auto"            # auto | mirrored | multiworker | none
    limit: int | None = None          # use only this many training images (smoke runs)
    max_train_minutes: float | None = None  # stop training (keeping the best weights) after this long
    # custom_cnn with max_train_minutes: measure a step of each (input size, width) of subbench.builder.autosize
    # at the start and train the largest whose epochs in the budget reach this many; 0 = off
    autosize_epochs: int = 0
    # from scratch with max_train_minutes: train the first this share of the time budget at 3/4 of the input size
    # (progressive resizing: cheaper epochs early), then at the full size; 0 = off
    progressive: float = 0.0
    # [finetune] gradual unfreezing of a pretrained backbone; BatchNorm stays frozen
    finetune_phases: int = 0
    finetune_epochs: int = 3
    finetune_lr_decay: float = 0.5
    unfreeze_to: float = 1.0          # fraction of backbone layers unfrozen at the last micro-phase
    # [tta]
    tta: str = "none"                 # none | flips | d4 | auto
    time_budget_s: float | None = None  # for tta=auto: default the profile's time limit
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.inputs = InputBranches.from_names(self.inputs)   # also from a list of names
        self.preprocess = CellPreprocessing.from_spec(self.preprocess)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["head_dense"] = list(self.head_dense)
        d["inputs"] = list(self.inputs.names())
        d["preprocess"] = self.preprocess.to_list()
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}

# Values a field may take: a recipe file is checked as a whole when read, so a typo is one named error before
# any data is loaded, not a traceback an hour into training.
CHOICES = {
    "backbone": tuple(BACKBONES), "head": tuple(HEADS), "loss": tuple(LOSSES), "balance": BALANCE_MODES,
    "optimizer": tuple(OPTIMIZERS), "schedule": SCHEDULES, "augment": AUGMENT_PRESETS, "strategy": STRATEGIES,
    "tta": TTA_CHOICES, "block": BLOCKS,
}
BOOLS = tuple(f.name for f in dataclasses.fields(Recipe) if f.type in (bool, "bool"))
# (type, lowest allowed, highest allowed or None, the lowest bound excluded?)
RANGES = {
    "epochs": (int, 1, None, False), "batch_size": (int, 1, None, False), "patience": (int, 0, None, False),
    "heavy_bank": (int, 0, None, False), "holdout": (float, 0.0, 0.9, False), "seed": (int, 0, None, False),
    "kfold": (int, 0, None, False), "limit": (int, 1, None, False), "max_train_minutes": (float, 0.0, None, True),
    "learning_rate": (float, 0.0, None, True), "weight_decay": (float, 0.0, None, False),
    "label_smoothing": (float, 0.0, 0.99, False), "focal_gamma": (float, 0.0, None, False),
    "focal_alpha": (float, 0.0, None, True), "head_dropout": (float, 0.0, 0.99, False),
    "head_l2": (float, 0.0, None, False), "finetune_phases": (int, 0, None, False),
    "finetune_epochs": (int, 1, None, False), "finetune_lr_decay": (float, 0.0, 1.0, True),
    "unfreeze_to": (float, 0.0, 1.0, False), "input_size": (int, 32, None, False),
    "time_budget_s": (float, 0.0, None, True), "width": (int, 4, None, False), "autosize_epochs": (int, 0, None, False),
    "lookahead": (float, 0.0, 0.9999, False), "progressive": (float, 0.0, 0.95, False),
    "colour_dropout": (float, 0.0, 0.95, False),
}


def check_values(recipe: Recipe, where: str = "recipe") -> Recipe:
    """RecipeError naming the first option whose value is of the wrong kind or out of range."""
    for name, allowed in CHOICES.items():
        value = getattr(recipe, name)
        if value not in allowed:
            raise RecipeError(f"{where}: {name} = {value!r} is not one of {list(allowed)}",
                              f"set {name} to one of {', '.join(allowed)}")
    for name in BOOLS:
        value = getattr(recipe, name)
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {name} = {value!r} is not true or false", f"set {name} = true or false")
    for name, (kind, low, high, open_low) in RANGES.items():
        value = getattr(recipe, name)
        if value is None:
            continue
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type or value < low or (open_low and value == low) or (high is not None and value > high):
            bound = f"{'above' if open_low else 'at least'} {low}" + (f" and at most {high}" if high is not None
                                                                         else "")
            raise RecipeError(f"{where}: {name} = {value!r} is not {'an integer' if kind is int else 'a number'} "
                              f"{bound}", f"set {name} to {'an integer' if kind is int else 'a number'} {bound}")
    if recipe.colour_dropout and not recipe.inputs:
        raise RecipeError(f"{where}: colour_dropout = {recipe.colour_dropout} needs input branches (a dropped "
                          "image would be blank)", "add inputs (e.g. [\"edges\", \"folded\"]), or set "
                          "colour_dropout = 0")
    return recipe


def shipped_recipes() -> list[str]:
    folder = Path(str(resources.files("subbench.builder") / "recipes"))
    return sorted(p.stem for p in folder.glob("*.toml"))


def _coerce(name: str, value):
    if name == "head_dense":
        return tuple(int(v) for v in value)
    if name == "inputs":   # a list of names (TOML), "edges,equalized" or "none" (CLI), or an InputBranches
        return InputBranches.from_names(value)
    if name == "preprocess":   # a list of steps (TOML), "clahe,mask" or "none" (CLI), or a CellPreprocessing
        return CellPreprocessing.from_spec(value)
    if name in ("input_size", "width", "limit", "max_train_minutes") and value in (0, "", None):
        return None
    if name in ("val_corrupt",) and value in ("", "none", None, False):
        return None
    return value


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = Path(name_or_path)
    if not path.exists():
        path = Path(str(resources.files("subbench.builder") / "recipes" / f"{name_or_path}.toml"))
        if not path.exists():
            raise RecipeError(f"no recipe named {str(name_or_path)!r}",
                              f"use one of {shipped_recipes()} or give a path to a recipe .toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {path} is not valid TOML ({exc})", "fix the syntax error it names") from None
    values: dict = {"name": raw.pop("name", path.stem), "description": raw.pop("description", ""),
                    "source": str(path)}
    for section, table in raw.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise RecipeError(f"recipe {path}: unknown table [{section}]", f"use tables {sorted(SECTIONS)}")
        try:
            if section == "model":
                table = _legacy_inputs(table, f"recipe {path}")
            for key, value in table.items():
                if key not in SECTIONS[section]:
                    raise RecipeError(f"recipe {path}: [{section}] has no option {key!r}",
                                      f"[{section}] takes {list(SECTIONS[section])}")
                values[key] = _coerce(key, value)
        except (InputBranchError, PreprocessError) as exc:   # an unknown branch or step name: say which file
            raise type(exc)(f"recipe {path}: {exc.cause}", exc.hint) from None
    return check_values(Recipe(**values), f"recipe {path}")


def _legacy_inputs(table: dict, where: str) -> dict:
    """[model] with the older boolean keys (edge_channels = true, ...) read into `inputs`; a copy."""
    legacy = {key: table[key] for key in LEGACY_INPUT_KEYS if key in table}
    if not legacy:
        return table
    for key, value in legacy.items():
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {key} = {value!r} is not true or false", f"set {key} = true or false")
    names = [LEGACY_INPUT_KEYS[key] for key, on in legacy.items() if on]
    if "inputs" in table:
        given = InputBranches.from_names(table["inputs"])
        if set(given.names()) & {LEGACY_INPUT_KEYS[k] for k in legacy} != set(names):
            raise RecipeError(f"{where}: [model] inputs = {table['inputs']!r} contradicts "
                              + ", ".join(f"{k} = {str(v).lower()}" for k, v in legacy.items()),
                              f"give inputs only ({', '.join(legacy)}: its older spelling)")
        names += given.names()
    rest = {k: v for k, v in table.items() if k not in LEGACY_INPUT_KEYS}
    return {**rest, "inputs": list(InputBranches.from_names(names).names())}


def with_overrides(recipe: Recipe, **overrides) -> Recipe:
    """A copy with every override that is not None applied (CLI flags the user typed)."""
    changes = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise RecipeError(f"unknown recipe options {unknown}", f"options are {sorted(_FIELDS)}")
    return check_values(dataclasses.replace(recipe, **changes), "options")
