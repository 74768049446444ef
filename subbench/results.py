"""What every typed result shares: a schema version, JSON round trips, saving, and an inline HTML view.

The result types themselves live where they are made (`subbench.local_bench.results.Score` and `Leaderboard`,
`subbench.local_bench.check.CheckReport`, `subbench.builder.result.BuildResult`). Each is a dataclass whose fields
hold data only (numbers, enum statuses, nested dataclasses); the words and figures a person reads are drawn
from them by the `html()` of each type, which `_repr_html_` shows inline in Jupyter and Colab.

    from_plain(Score, json.loads(text))      # nested dataclasses, enums and tuples rebuilt from the type hints
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from pathlib import Path

import numpy as np

from .atomic import atomic_path

# Version of the JSON files written by results (scores.json, check.json, leaderboard.json, build.json). 2 added
# the version itself, typed statuses and dropped the display strings (title, subtitle) that version 1 held.
# 3: bundle runs (`score --bundle`) write scores.json too (kind "bundle", the leaderboard key first), not
# bundle_score.json; a schema-2 Score file reads unchanged.
SCHEMA_VERSION = 3

# The stylesheet of every result's HTML view, scoped under `.sbr` so that a view shown inline in a notebook
# styles itself only.
CSS = """
.sbr{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;color:#222;padding:0 1rem;
margin:1rem auto;background:#fff}
.sbr h1{font-size:1.5rem;margin-bottom:.2rem} .sbr h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sbr .sub{color:#666;margin-top:0}
.sbr .headline{display:flex;gap:2.5rem;align-items:baseline;flex-wrap:wrap;margin:1rem 0}
.sbr .score{font-size:3rem;font-weight:700;margin:0}
.sbr .ci{color:#555}
.sbr .status{display:inline-block;padding:.15rem .6rem;border-radius:.3rem;font-weight:600;color:#fff}
.sbr .status.ok{background:#2e7d32} .sbr .status.bad{background:#c62828}
.sbr .warn{background:#fff4e5;border-left:4px solid #ef6c00;padding:.5rem .8rem;margin:.4rem 0}
.sbr .warn.loud{background:#fdecea;border-left-color:#c62828;font-weight:600}
.sbr table{border-collapse:collapse;margin:.5rem 0}
.sbr td,.sbr th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
.sbr th{background:#f5f5f5} .sbr td:first-child,.sbr th:first-child{text-align:left}
.sbr .bar{position:relative;height:28px;background:#eee;border-radius:4px;overflow:hidden;margin:.4rem 0 0}
.sbr .seg{position:absolute;top:0;height:100%}
.sbr .seg.start{background:#90a4ae}.sbr .seg.import{background:#7986cb}.sbr .seg.init{background:#4db6ac}
.sbr .seg.predict{background:#ffb74d}
.sbr .seg.projected{background:repeating-linear-gradient(45deg,#ffe0b2,#ffe0b2 6px,#fff3e0 6px,#fff3e0 12px)}
.sbr .legend span{display:inline-block;margin-right:1rem;font-size:.9rem}
.sbr .legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
.sbr table.kv td:last-child{text-align:left}
.sbr pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem;max-height:20rem}
.sbr img.fig{max-width:100%}
.sbr .pass{color:#2e7d32;font-weight:600} .sbr .fail{color:#c62828;font-weight:600}
.sbr .warned{color:#ef6c00;font-weight:600}
"""


def to_plain(value):
    """JSON-ready copy: dataclasses to dicts (fields marked `serialize=False` left out), enums to their values,
    tuples to lists, numpy scalars/arrays and paths to Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("serialize", True)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _convert(arg, value)
    if origin is dict:
        _, vt = typing.get_args(tp) or (str, typing.Any)
        return {k: _convert(vt, v) for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp) or (typing.Any,)
        return [_convert(et, v) for v in value]
    if origin is tuple:
        return tuple(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_plain(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is Path:
        return Path(value)
    return value


def from_plain(cls, data: dict):
    """The dataclass `cls` rebuilt from `to_plain`'s output; keys it does not know are ignored, so files written
    by a newer subbench still load."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)
              if f.init and f.name in data}
    return cls(**kwargs)


class TextEnum(str, enum.Enum):
    """An enum of names that prints, formats and serialises as its plain value (a status such as "ok").
    (enum.StrEnum does this from Python 3.11; the project supports 3.10.)"""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ResultMixin:
    """`to_dict`, `to_json`, `save(folder)` and `_repr_html_` for a result dataclass.

    A subclass sets `file_stem` (the JSON file's name in a saved folder) and implements `html()`: a
    self-contained fragment (scoped CSS, images as data URIs, no script, no network)."""

    file_stem = "result"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **to_plain(self)}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent) + "\n"

    def html(self) -> str:  # pragma: no cover - every result type overrides it
        raise NotImplementedError

    def page(self) -> str:
        """The fragment as a whole HTML page (report.html)."""
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>subbench {self.file_stem}</title></head><body>{self.html()}</body></html>")

    def _repr_html_(self) -> str:
        return self.html()

    def _extra_files(self) -> dict[str, bytes]:
        return {}

    def save(self, folder, force: bool = False) -> Path:
        """Write `<file_stem>.json` and `report.html` (plus any files of the result type) into `folder`,
        atomically: the folder appears whole or not at all; an existing one needs force=True."""
        with atomic_path(folder, force=force) as tmp:
            tmp.mkdir(parents=True)
            (tmp / f"{self.file_stem}.json").write_text(self.to_json(), encoding="utf-8")
            (tmp / "report.html").write_text(self.page(), encoding="utf-8")
            for name, data in self._extra_files().items():
                (tmp / name).write_bytes(data)
        return Path(folder)
