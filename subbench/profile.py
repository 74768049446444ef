"""Competition profiles: a TOML file per competition, loaded into a frozen `Profile`.

`load_profile(None)` gives the shipped default (an2dl-2024); a name loads a shipped profile, a path loads a file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import ProfileError

DEFAULT_PROFILE = "an2dl-2024"
# The metrics a profile may name: those `subbench score` computes (sklearn's, in local_bench.scorer).
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    input_shape: tuple[int, int, int]
    input_dtype: str
    input_range: tuple[float, float]
    class_names: tuple[str, ...]
    class_aliases: dict[str, str]
    metric: str
    leaderboard_key: str
    entry: str
    class_name: str
    max_zip_mb: float
    cwd: str
    time_limit_s: float
    server_tensorflow: str
    server_keras: str
    keras_keys_file: Path | None
    hidden_size: int
    source: Path
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, folder_name: str) -> int:
        """Label of a class folder name (case-insensitive; aliases from the profile allowed)."""
        key = folder_name.strip().lower()
        names = [n.lower() for n in self.class_names]
        aliases = {k.lower(): v.lower() for k, v in self.class_aliases.items()}
        key = aliases.get(key, key)
        key = aliases.get(key.replace(" ", "_"), key)
        for candidate in (key, key.replace("_", " ")):
            if candidate in names:
                return names.index(candidate)
        if key.isdigit() and int(key) < len(names):
            return int(key)
        raise ProfileError(
            f"folder name {folder_name!r} is not a class of profile {self.name!r}",
            f"name class folders after one of {list(self.class_names)} (or add an alias to the profile)",
        )


def _shipped(name: str) -> Path:
    return Path(str(resources.files("subbench") / "profiles" / f"{name}.toml"))


def shipped_profiles() -> list[str]:
    folder = Path(str(resources.files("subbench") / "profiles"))
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_profile(name_or_path: str | Path | None = None) -> Profile:
    """Load a profile by shipped name (e.g. 'an2dl-2024') or by path to a TOML file."""
    ref = str(name_or_path) if name_or_path else DEFAULT_PROFILE
    path = Path(ref)
    if not (path.suffix == ".toml" or path.exists()):
        path = _shipped(ref)
        if not path.exists():
            raise ProfileError(f"no profile named {ref!r}",
                               f"use one of {shipped_profiles()} or pass --profile PATH/TO/profile.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist", "check the path given to --profile") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML ({exc})", "fix the syntax error it names") from None
    try:
        shape = tuple(int(v) for v in raw["input"]["shape"])
        if len(shape) != 3:
            raise ValueError("input.shape must have 3 entries (height, width, channels)")
        names = tuple(str(n) for n in raw["classes"]["names"])
        if len(names) < 2:
            raise ValueError("classes.names needs at least two classes")
        server = raw["server"]
        metric = str(raw["output"].get("metric", "accuracy"))
        if metric not in METRICS:
            raise ProfileError(f"profile {path}: output.metric {metric!r} is not a metric subbench computes",
                               f"use one of {', '.join(METRICS)}")
        keys_file = server.get("keras_keys")
        return Profile(
            name=str(raw["name"]),
            title=str(raw.get("title", raw["name"])),
            input_shape=shape,  # type: ignore[arg-type]
            input_dtype=str(raw["input"].get("dtype", "uint8")),
            input_range=tuple(float(v) for v in raw["input"].get("range", [0, 255])),  # type: ignore[arg-type]
            class_names=names,
            class_aliases=dict(raw["classes"].get("aliases", {})),
            metric=metric,
            leaderboard_key=str(raw["output"].get("leaderboard_key", "accuracy")),
            entry=str(raw["submission"].get("entry", "model.py")),
            class_name=str(raw["submission"].get("class_name", "Model")),
            max_zip_mb=float(raw["submission"].get("max_zip_mb", 500)),
            cwd=str(raw["submission"].get("cwd", "submission")),
            time_limit_s=float(server.get("time_limit_s", 600)),
            server_tensorflow=str(server["tensorflow"]),
            server_keras=str(server["keras"]),
            keras_keys_file=(path.parent / keys_file) if keys_file else None,
            hidden_size=int(raw.get("hidden_set", {}).get("expected_size", 2500)),
            source=path,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"profile {path} is incomplete or malformed ({exc!r})",
                           "compare it with the shipped an2dl-2024.toml") from None
