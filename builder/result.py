"""`BuildResult`: what `subbench.train` and `subbench.package` return, and `build.json` in a saved folder.

It is a path-like (`os.fspath(result)` is the zip), so it can be handed straight to `subbench.check` or
`subbench.score`.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from subbench.results import CSS, ResultMixin, from_plain


@dataclass
class Epoch:
    """One row of the training log (Keras' history: loss, accuracy, val_accuracy, lr, seconds ...)."""
    epoch: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class BuildResult(ResultMixin):
    zip_path: Path
    size_mb: float
    models: list[dict]                    # manifest entries: file, weight, source, export changes
    tta_views: list[str]
    outputs: str                          # "probabilities" or "logits"
    notes: list[str] = field(default_factory=list)
    build_dir: Path | None = None         # checkpoints and logs of a trained build
    history: list[Epoch] = field(default_factory=list)
    val_accuracy: float | None = None     # best validation accuracy (held-out images, corrupted like the recipe's)
    epochs_trained: int | None = None
    recipe: dict | None = None
    manifest: dict = field(default_factory=dict, repr=False)

    file_stem = "build"

    def __fspath__(self) -> str:
        return os.fspath(self.zip_path)

    def __str__(self) -> str:  # the zip's path, like str() of a Path; repr() shows the fields
        return os.fspath(self.zip_path)

    @classmethod
    def from_package(cls, package, build_dir: Path | None = None) -> "BuildResult":
        """From builder.package's PackageResult, plus the build folder's summary.json and log.jsonl."""
        m = package.manifest
        zip_path = Path(package.zip_path)
        result = cls(zip_path=zip_path, size_mb=round(zip_path.stat().st_size / 2**20, 3),
                     models=list(m.get("models", [])), tta_views=list(m.get("tta", {}).get("views", [])),
                     outputs=m.get("outputs", ""), notes=list(package.notes), build_dir=build_dir, manifest=m)
        training = m.get("training") or {}
        result.val_accuracy = training.get("val_accuracy")
        result.epochs_trained = training.get("epochs_trained")
        result.recipe = training.get("recipe")
        if build_dir is not None:
            result.history = _history(Path(build_dir))
        return result

    @classmethod
    def from_dict(cls, data: dict) -> "BuildResult":
        return from_plain(cls, data)

    def html(self) -> str:
        rows = [("zip", f"{html.escape(str(self.zip_path))} ({self.size_mb:.1f} MB)"),
                ("models", html.escape(", ".join(f"{e.get('file')} ← {e.get('source')}" for e in self.models))),
                ("TTA views", html.escape(", ".join(self.tta_views))), ("outputs", html.escape(self.outputs))]
        if self.recipe:
            rows.append(("recipe", html.escape(str(self.recipe.get("name") or self.recipe.get("backbone")))))
        if self.epochs_trained is not None:
            rows.append(("epochs trained", str(self.epochs_trained)))
        if self.val_accuracy is not None:
            rows.append(("best validation accuracy", f"<b id=\"val\">{self.val_accuracy:.4f}</b>"))
        rows += [("note", html.escape(n)) for n in self.notes]
        table = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in rows)
        curves = ""
        png = Path(self.build_dir) / "curves.png" if self.build_dir else None
        if png is not None and png.is_file():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            curves = f'<img class="fig" src="data:image/png;base64,{data}" alt="training curves">'
        return (f'<div class="sbr"><style>{CSS}</style><h2>subbench build: {html.escape(self.zip_path.name)}</h2>'
                f'<table class="kv">{table}</table>{curves}</div>')


def _history(build_dir: Path) -> list[Epoch]:
    """The epochs of the last training phase's log.jsonl (main/ or final/)."""
    for phase in ("final", "main"):
        log = build_dir / phase / "log.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            return [Epoch(int(r.get("epoch", i)), {k: float(v) for k, v in r.items()
                                                  if k != "epoch" and isinstance(v, (int, float))})
                    for i, r in enumerate(rows)]
    return []
