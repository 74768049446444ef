"""The typed results of scoring: `Score` (one zip on one image set) and `Leaderboard` (several, ranked).

A `Score` is what `subbench.score(...)` returns and what `subbench score --out DIR` writes as scores.json (via
`to_dict`, keeping the Codabench leaderboard key at the top level beside `schema`); `Score.load(path)` reads it
back, also from files written before the schema was versioned. Figures are numbers, the outcome is a `Status`;
the report's words are drawn from them in `subbench.local_bench.report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subbench.errors import SubbenchError
from subbench.results import SCHEMA_VERSION, ResultMixin, TextEnum, from_plain, to_plain
from subbench.corrupt.record import DrawRecord
from subbench.local_bench.draws import DrawSpread
from subbench.local_bench.breakdown import Breakdown, PairedComparison, paired_comparisons, paired_text
from subbench.local_bench.runner import STATUSES


class _StatusBase(TextEnum):
    @property
    def ok(self) -> bool:
        return self.value == "ok"

    @property
    def exit_code(self) -> int:
        """`subbench score`'s exit code: 0 ok, 11.. one per failure (2 is bad input, a SubbenchError)."""
        return 0 if self.ok else 10 + STATUSES.index(self.value)


# The outcome of a run, one member per name of the runner's STATUSES (Status.ok, Status.Import_Error, ...);
# a str, so `score.status == "ok"` reads naturally and JSON holds the plain name.
Status = _StatusBase("Status", [(s, s) for s in STATUSES], module=__name__)
STATUS_EXIT_CODES = {s.value: s.exit_code for s in Status}


PER_IMAGE_FILE = "per_image.npz"


class ResultNotFoundError(SubbenchError):
    """A path given as a result is neither a score folder (with scores.json) nor a scores.json file."""


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Metrics:
    accuracy: float
    accuracy_ci95: tuple[float, float]
    balanced_accuracy: float
    macro_f1: float
    n: int
    correct: int
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    bootstrap: dict = field(default_factory=dict)


@dataclass
class Projection:
    hidden_size: int
    server_speed: float
    fixed_s: float
    per_image_ms: float
    projected_local_s: float
    projected_s: float
    margin_s: float | None = None
    fits: bool | None = None


@dataclass
class Timing:
    stages: dict[str, float]
    elapsed_s: float
    time_limit_s: float | None = None
    margin_s: float | None = None
    stage_reached: str | None = None
    per_image_ms: float | None = None
    projection: Projection | None = None


@dataclass
class Leakage:
    checked: bool
    in_training_set: int = 0


@dataclass
class ScoredOn:
    data: str
    n_data: int
    part: str                        # "holdout" or "all"
    split_source: str | None = None  # "--split" or "the zip's manifest"
    n: int = 0
    leakage: Leakage = field(default_factory=lambda: Leakage(False))
    simulate_hidden: str | None = None
    seed: int = 0


@dataclass
class CleanResult:
    """The clean (uncorrupted) images scored beside a simulated hidden set."""
    status: Status
    message: str = ""
    metrics: Metrics | None = None
    gap: float | None = None         # clean accuracy minus corrupted accuracy
    timing: Timing | None = None


@dataclass
class Robustness:
    """Accuracy over every corruption x severity of the suite (mCA, rCE: see scorer.RCE_FORMULA)."""
    status: Status
    message: str = ""
    clean_accuracy: float | None = None
    mean_corruption_accuracy: float | None = None
    relative_corruption_error: float | None = None
    severities: list[int] = field(default_factory=list)
    per_corruption_mean: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    n: int = 0
    seconds: float = 0.0
    # Points lost against clean (mean over severities), costliest first (breakdown.suite_ranking).
    drop_points: dict[str, float] = field(default_factory=dict)
    # Against a baseline model's suite result (ImageNet-C's mCE: breakdown.MCE_DEFINITION), when one is given.
    corruption_error: dict[str, float] = field(default_factory=dict)
    mce: float | None = None
    mce_baseline: str | None = None


@dataclass
class CwdCheck:
    cwd_mode: str
    status: Status
    message: str = ""


@dataclass
class OpExplanation:
    """Heat maps (Grad-CAM, or gradient saliency where the model has no conv layer) of misclassified images
    that drew one op; the figure is drawn when scoring and kept in report.html, not in scores.json."""
    op: str
    indices: list[int]               # positions in the scored set
    true: list[int]
    predicted: list[int]
    method: str = ""
    layer: str | None = None
    message: str = ""
    png: str = field(default="", repr=False, metadata={"serialize": False})


@dataclass
class Score(ResultMixin):
    """One zip scored on one image set, the way Codabench runs it."""

    status: Status
    leaderboard_key: str             # the competition's leaderboard column (the profile's)
    metric: str                      # the profile's metric, whose value is `value`
    value: float | None              # the leaderboard score (None when the run failed)
    message: str
    n: int
    timing: Timing
    scored_on: ScoredOn
    class_names: list[str]
    profile: str
    metrics: Metrics | None = None
    clean: CleanResult | None = None
    robustness: Robustness | None = None
    cwd_check: CwdCheck | None = None
    draws: DrawSpread | None = None       # the simulated hidden score over K corruption draws
    breakdown: Breakdown | None = None   # the simulated hidden score by op (an2dl only), over every draw
    explanations: list[OpExplanation] = field(default_factory=list)
    peak_memory_mb: float | None = None
    memory_limit_mb: float | None = None
    stderr_tail: str = ""
    environment: dict = field(default_factory=dict)
    zip: dict = field(default_factory=dict)
    created: str = ""
    warnings: list[str] = field(default_factory=list)
    subbench_version: str = ""
    # What the model saw and said (for the report's grid of mistakes); not part of scores.json.
    images: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})
    labels: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})
    predictions: np.ndarray | None = field(default=None, repr=False, compare=False,
                                           metadata={"serialize": False})
    clean_images: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})
    # (K, N): every draw's predictions (draw 0 is `predictions`); the record's rows are draw 0's, then draw 1's...
    draw_predictions: np.ndarray | None = field(default=None, repr=False, compare=False,
                                                metadata={"serialize": False})
    record: DrawRecord | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})

    file_stem = "scores"

    @property
    def ok(self) -> bool:
        return Status(self.status).ok

    @property
    def exit_code(self) -> int:
        return Status(self.status).exit_code

    @property
    def leaked(self) -> int:
        """Scored images that are also in the zip's training set."""
        return self.scored_on.leakage.in_training_set

    @property
    def name(self) -> str:
        return Path(self.zip.get("path") or "submission").name

    def to_dict(self) -> dict:
        # Codabench's leaderboard reads the key at the top level: it leads scores.json.
        body = to_plain(self)
        value = body.pop("value")
        return {self.leaderboard_key: value, "schema": SCHEMA_VERSION, **body}

    @classmethod
    def from_dict(cls, data: dict) -> "Score":
        data = dict(data)
        if "schema" not in data:
            data = _from_schema1(data)
        data["value"] = data.get(data["leaderboard_key"])
        return from_plain(cls, data)

    @classmethod
    def load(cls, path) -> "Score":
        """A score folder (written by `score --out DIR` or `Score.save`) or its scores.json; one written by
        `score --bundle` loads as the `BundleScore` it holds."""
        p = Path(path)
        f = p / "scores.json" if p.is_dir() else p
        if not f.is_file():
            raise ResultNotFoundError(f"{p} holds no scores.json",
                                      "give folders written by `subbench score --out DIR`, or scores.json files")
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("kind") == "bundle":  # written by `score --bundle`
                from subbench.local_bench.bundle_result import BundleScore

                return BundleScore.load(f)
            score = cls.from_dict(data)
            score._load_per_image(f.parent)
            return score
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            raise ResultNotFoundError(f"{f} is not a subbench scores.json ({exc!r})",
                                      "re-run `subbench score --out DIR --force`") from None

    def html(self) -> str:
        from subbench.local_bench.report import render_fragment

        return render_fragment(self)

    def _extra_files(self) -> dict[str, bytes]:
        if self.predictions is None:
            return {}
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(self.predictions))
        files = {"predictions.npy": buf.getvalue()}
        if self.labels is not None:
            # Per image: the label, the prediction and what the simulator drew (compare pairs two folders on it).
            buf = io.BytesIO()
            extra = {"draw_predictions": self.draw_predictions} if self.draw_predictions is not None else {}
            np.savez_compressed(buf, labels=np.asarray(self.labels), predictions=np.asarray(self.predictions),
                                **extra, **(self.record.arrays() if self.record is not None else {}))
            files[PER_IMAGE_FILE] = buf.getvalue()
        return files

    def _load_per_image(self, folder: Path) -> None:
        f = folder / PER_IMAGE_FILE
        if not f.is_file():
            return
        with np.load(f, allow_pickle=False) as d:
            self.labels, self.predictions = d["labels"], d["predictions"]
            if "draw_predictions" in d:
                self.draw_predictions = d["draw_predictions"]
            if "record_ops" in d:
                self.record = DrawRecord.from_arrays(d)


_METRIC_KEYS = ("accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "n", "correct", "per_class",
                "confusion_matrix", "bootstrap")


def _from_schema1(d: dict) -> dict:
    """scores.json as written before the schema was versioned: metrics flat at the top level."""
    out = dict(d)
    if d.get("status") == "ok" and "per_class" in d:
        out["metrics"] = {k: d[k] for k in _METRIC_KEYS if k in d}
    clean = d.get("clean")
    if clean is not None:
        out["clean"] = ({"status": "ok", "metrics": {k: clean[k] for k in _METRIC_KEYS if k in clean},
                         "gap": clean.get("gap"), "timing": clean.get("timing")} if "accuracy" in clean else clean)
    rob = d.get("robustness")
    if rob is not None and "status" not in rob:
        out["robustness"] = {"status": "ok", **rob}
    so = dict(d.get("scored_on") or {})
    part = so.get("part", "all")
    if part.startswith("holdout"):
        so["part"], so["split_source"] = "holdout", part.partition("(from ")[2].rstrip(")") or None
    out["scored_on"] = so
    out.setdefault("metric", d.get("leaderboard_key", "accuracy"))
    out.setdefault("profile", d.get("profile", ""))
    return out


# ------------------------------------------------------------------------------------------------ leaderboard
@dataclass
class LeaderboardRow:
    rank: int
    name: str
    status: Status
    key: str
    score: float | None
    ci95: tuple[float, float] | None
    n: int | None
    simulate_hidden: str | None
    data: str | None
    part: str | None
    elapsed_s: float | None
    projected_s: float | None
    hidden_size: int | None
    peak_memory_mb: float | None
    clean: float | None = None
    clean_gap: float | None = None


@dataclass
class Leaderboard(ResultMixin):
    """Local results ranked like Codabench's leaderboard: runs that finished by score, then the failed ones."""

    rows: list[LeaderboardRow]
    comparable: bool = True          # every finished run was scored on the same images, corrupted the same way
    # The leader against the others op by op, where they share images and draws (breakdown.paired_comparisons).
    paired: list[PairedComparison] = field(default_factory=list)

    file_stem = "leaderboard"

    @classmethod
    def from_scores(cls, named: list[tuple[str, Score]]) -> "Leaderboard":
        ranked = []
        for name, s in named:
            proj = s.timing.projection
            clean_m = s.clean.metrics if s.clean else None
            ranked.append((LeaderboardRow(
                rank=0, name=name, status=Status(s.status), key=s.leaderboard_key, score=s.value,
                ci95=s.metrics.accuracy_ci95 if s.metrics else None, n=s.n,
                simulate_hidden=s.scored_on.simulate_hidden, data=s.scored_on.data, part=s.scored_on.part,
                elapsed_s=s.timing.elapsed_s, projected_s=proj.projected_s if proj else None,
                hidden_size=proj.hidden_size if proj else None, peak_memory_mb=s.peak_memory_mb,
                clean=clean_m.accuracy if clean_m else None, clean_gap=s.clean.gap if s.clean else None), s))
        # each row sorted with its own Score (two results may bear the same name)
        ranked.sort(key=lambda rs: (not Status(rs[0].status).ok, -(rs[0].score if rs[0].score is not None else -1.0)))
        rows = [r for r, _ in ranked]
        for i, r in enumerate(rows, 1):
            r.rank = i
        kinds = {(r.data, r.part, r.n, r.simulate_hidden) for r in rows if Status(r.status).ok}
        return cls(rows, comparable=len(kinds) <= 1, paired=paired_comparisons([(r.name, s) for r, s in ranked]))

    @property
    def warning(self) -> str | None:
        if self.comparable:
            return None
        return ("results were scored on different data (data, part, size or simulation differ): "
                "their scores are not directly comparable")

    def table(self) -> list[list[str]]:
        """Header and rows as the text table and the HTML table show them."""
        def num(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) else "–"

        header = ["#", "submission", "status", self.rows[0].key if self.rows else "score", "95% interval", "n",
                  "clean", "time s", "projected s", "peak MB"]
        body = []
        for r in self.rows:
            ok = Status(r.status).ok
            body.append([str(r.rank), r.name, str(r.status), num(r.score, ".4f"),
                         f"{r.ci95[0]:.4f}–{r.ci95[1]:.4f}" if r.ci95 and ok else "–", num(r.n, "d"),
                         num(r.clean, ".4f"), num(r.elapsed_s, ".1f"),
                         num(r.projected_s, ".1f") + (f" ({r.hidden_size})" if r.projected_s else ""),
                         num(r.peak_memory_mb, ".0f")])
        return [header] + body

    def __str__(self) -> str:
        rows = self.table()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        right = {0, 3, 5, 6, 7, 8, 9}

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        text = "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]])
        return text + "".join("\n" + paired_text(p) for p in self.paired)

    def html(self) -> str:
        from subbench.local_bench.report import render_leaderboard

        return render_leaderboard(self)
