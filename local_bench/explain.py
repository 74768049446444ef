"""Heat maps of what a model looked at: Grad-CAM on its last convolutional feature map, gradient saliency where
it has none, for a keras.Model in memory or a submission zip run in its own process (as scoring runs it).

    last_conv_layer(model)                        -> "MobileNetV3Small/activation_17" (nested models descended)
    gradcam(model, images, class_index=None, method="auto")   -> HeatMaps (.maps (N, H, W) float32 0..1, .method)
    explain_model(model, images, labels, ...)     -> Explanation (in this process)
    explain_zip(zip, images, labels, ...)         -> Explanation (a fresh process, the zip's own Model())
    explain_grid_png(clean, corrupted, heat, true, pred, class_names)   -> a PNG data URI

The maps are computed by `_gradcam` (TensorFlow ops, `tf.GradientTape`), which imports nothing of subbench so that
the zip's process can run it in another interpreter (`--env server`). That process is laid out like a scoring
run: the zip safely extracted into `ingested_program/` (the runner's own extraction), the program copied into
`program/explain.py`, the runner's environment (no PYTHONPATH), the profile's working directory, and one wall
clock over import, Model(), predict and the heat maps, after which the whole process tree is killed. It writes
the maps and the submission's predictions into an npz, which is read back here; the run folder is then removed.
"""

from __future__ import annotations

import html
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from subbench.atomic import atomic_path
from subbench.errors import SubbenchError
from subbench.results import CSS, ResultMixin
from subbench.local_bench import _gradcam as core

METHODS = core.METHODS
MAX_GRID = 48           # images drawn in an explanation's grid
PROGRAM = "explain.py"  # the core's name in the run folder


class NoConvLayerError(SubbenchError):
    """The model's prediction is computed from no convolutional feature map, so Grad-CAM has nothing to weigh."""


class NoKerasModelError(SubbenchError):
    """The submission's Model() holds no keras.Model whose gradients could be taken."""

    exit_code = 1


class ExplainInputError(SubbenchError):
    """The model, images, labels or options given cannot be explained as they are."""


class ExplainRunError(SubbenchError):
    """The zip's explain process failed (import, Model(), predict) or left no heat maps."""

    exit_code = 1


class ExplainTimeoutError(ExplainRunError):
    """The zip's explain process ran past its time limit and was killed."""


_NAMED = {"NoConvLayer": NoConvLayerError, "NoKerasModel": NoKerasModelError, "BadModel": ExplainInputError}


def _named(exc: core.ExplainFailure) -> SubbenchError:
    return _NAMED.get(type(exc).__name__, ExplainInputError)(exc.cause, exc.hint)


# ------------------------------------------------------------------------------------------------ in memory
@dataclass
class HeatMaps:
    """Heat maps of N images: `maps` (N, H, W) float32 in 0..1 at the input size (np.asarray gives them)."""
    maps: np.ndarray
    method: str                  # "gradcam" or "saliency"
    layer: str | None            # the feature map's path (outer/inner layer names); None for saliency
    classes: np.ndarray          # (N,) the class each map explains
    predicted: np.ndarray        # (N,) the model's argmax
    note: str = ""               # why saliency was used, which ensemble member was explained

    def __array__(self, dtype=None, copy=None):
        return self.maps if dtype is None else self.maps.astype(dtype)

    def __len__(self) -> int:
        return len(self.maps)


def last_conv_layer(model) -> str:
    """The path ("outer/inner", layer names) of the last 4-D (N, h, w, c) output with h, w > 1 that follows a
    convolution and that the prediction is computed from, descending into nested models. NoConvLayerError when
    there is none."""
    try:
        path, _ = core.find_layer(model)
    except core.ExplainFailure as exc:
        raise _named(exc) from None
    return core.path_name(path)


def _check_images(images, what: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ExplainInputError(f"the {what} are {x.dtype} of shape {x.shape}, not uint8 (N, H, W, C)",
                                "pass the raw uint8 images (0..255), before any rescaling")
    return x


def gradcam(model, images_uint8, class_index=None, method: str = "auto", *, batch_size: int = 32) -> HeatMaps:
    """Heat maps of `images_uint8` for `class_index` (None: each image's predicted class; an int; or (N,)),
    computed with tf.GradientTape: method "gradcam" (NoConvLayerError without a conv feature map), "saliency",
    or "auto" (Grad-CAM, else gradient saliency; `.method` and `.note` say which). Images go to the model as
    float32 0..255, as the subbench template feeds them."""
    x = _check_images(images_uint8)
    try:
        r = core.heat_maps(model, x, class_index, method=method, batch_size=batch_size)
    except core.ExplainFailure as exc:
        raise _named(exc) from None
    return HeatMaps(r["maps"], r["method"], r["layer"], r["classes"], r["predicted"], r["note"])


# ------------------------------------------------------------------------------------------------ the result
@dataclass
class ExplainedImage:
    index: int                   # in the images given
    true: int | None             # None when no labels were given
    predicted: int               # the model's (the submission's, for a zip) label
    explained_class: int         # the class the heat map is for
    method: str
    layer: str | None

    @property
    def correct(self) -> bool | None:
        return None if self.true is None else self.true == self.predicted


@dataclass
class Explanation(ResultMixin):
    """Heat maps of a model's predictions; `html()` draws each image (its clean original beside it when known),
    the map over it, true and predicted class."""
    source: str                  # the zip's path, or the model's name
    class_names: list[str]
    method: str
    layer: str | None
    items: list[ExplainedImage]
    n_images: int                # images predicted
    n_misclassified: int | None  # of those, when labels were given
    note: str = ""
    seconds: float = 0.0
    simulate_hidden: str | None = None
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)
    created: str = ""
    heat: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})
    images: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})
    clean: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"serialize": False})

    file_stem = "explain"

    def html(self) -> str:
        return render_explanation(self)

    def summary_lines(self) -> list[str]:
        """One line per explained image (what `subbench explain` prints)."""
        names = self.class_names
        lines = []
        for item, m in zip(self.items, self.heat if self.heat is not None else [None] * len(self.items)):
            true = names[item.true] if item.true is not None else "?"
            where = ""
            if m is not None:
                r, c = np.unravel_index(int(np.argmax(m)), m.shape)
                where = f"  peak at row {r}, col {c}"
            mark = {True: "ok   ", False: "WRONG", None: "     "}[item.correct]
            lines.append(f"#{item.index:<5} {mark} true {true:<22} predicted {names[item.predicted]:<22}"
                         f"{item.method}{where}")
        return lines

    def save(self, folder, force: bool = False) -> Path:
        """explain.json, explain.html and heatmaps.npz into `folder`, atomically (force=True to overwrite)."""
        import io

        with atomic_path(folder, force=force) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "explain.json").write_text(self.to_json(), encoding="utf-8")
            (tmp / "explain.html").write_text(self.page(), encoding="utf-8")
            if self.heat is not None:
                buf = io.BytesIO()
                np.savez_compressed(buf, heat=self.heat, indices=np.array([i.index for i in self.items]),
                                    predicted=np.array([i.predicted for i in self.items]))
                (tmp / "heatmaps.npz").write_bytes(buf.getvalue())
        return Path(folder)


def _class_names(class_names, k: int) -> list[str]:
    if class_names is not None:
        return [str(c) for c in class_names]
    from subbench.profile import load_profile

    names = list(load_profile(None).class_names)
    return names if len(names) >= k else [str(i) for i in range(k)]


def _assemble(source, images, labels, clean, idx, predictions, r: dict, class_names, seconds) -> Explanation:
    labels = None if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    k = int(max(np.max(predictions, initial=0), np.max(labels, initial=0) if labels is not None else 0)) + 1
    items = [ExplainedImage(int(i), None if labels is None else int(labels[i]), int(predictions[i]), int(c),
                            r["method"], r["layer"] or None) for i, c in zip(idx, r["classes"])]
    return Explanation(source=str(source), class_names=_class_names(class_names, k), method=r["method"],
                       layer=r["layer"] or None, items=items, n_images=len(predictions),
                       n_misclassified=None if labels is None else int((labels != predictions).sum()),
                       note=r["note"], seconds=round(seconds, 3), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       heat=r["maps"], images=images[idx], clean=None if clean is None else clean[idx])


def _check_inputs(images, labels, clean, n, misclassified_only):
    x = _check_images(images)
    if labels is not None and len(np.asarray(labels).reshape(-1)) != len(x):
        raise ExplainInputError(f"{len(x)} images but {len(np.asarray(labels).reshape(-1))} labels",
                                "give one label per image")
    if clean is not None:
        clean = _check_images(clean, "clean images")
        if clean.shape != x.shape:
            raise ExplainInputError(f"clean images {clean.shape} do not match the images {x.shape}",
                                    "give the clean original of each image, in the same order")
    if misclassified_only and labels is None:
        raise ExplainInputError("misclassified images asked for without labels", "pass labels, or show all images")
    if n is not None and n < 0:
        raise ExplainInputError(f"n = {n} is negative", "give n >= 0 (None: every chosen image)")
    return x, clean


def explain_model(model, images, labels=None, *, clean=None, n: int | None = None, misclassified_only: bool = False,
                  class_index=None, method: str = "auto", class_names=None, batch_size: int = 32) -> Explanation:
    """Predict `images` with an in-memory keras model, choose the images (the misclassified ones when asked, the
    first n), and explain each: its heat map for `class_index` (default: its predicted class)."""
    x, clean = _check_inputs(images, labels, clean, n, misclassified_only)
    t0 = time.time()
    probs = np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))
    predictions = probs.reshape(len(x), -1).argmax(axis=1).astype(np.int64)
    idx = core.choose(labels, predictions, "misclassified" if misclassified_only else "all", n)
    classes = predictions[idx] if class_index is None else np.broadcast_to(class_index, (len(x),))[idx]
    hm = gradcam(model, x[idx], classes, method=method, batch_size=batch_size)
    r = {"maps": hm.maps, "method": hm.method, "layer": hm.layer, "classes": hm.classes, "note": hm.note}
    return _assemble(getattr(model, "name", "model"), x, labels, clean, idx, predictions, r, class_names,
                     time.time() - t0)


# ------------------------------------------------------------------------------------------------ a zip
def program_source() -> Path:
    return Path(str(resources.files("subbench.local_bench") / "_gradcam.py"))


def _command(python: str, root: Path, ingested: Path, *, has_labels: bool, has_classes: bool, select: str,
             n: int | None, method: str, profile) -> list[str]:
    cmd = [python, str(root / "program" / PROGRAM), "--submission", str(ingested), "--images",
           str(root / "input" / "images.npy"), "--out", str(root / "output" / "explain.npz"), "--error",
           str(root / "error.json"), "--select", select, "--method", method,
           "--module", Path(profile.entry).stem, "--class-name", profile.class_name]
    if has_labels:
        cmd += ["--labels", str(root / "input" / "labels.npy")]
    if has_classes:
        cmd += ["--classes", str(root / "input" / "classes.npy")]
    return cmd + ([] if n is None else ["--n", str(n)])


def _read_failure(root: Path, ended, time_limit_s) -> SubbenchError | None:
    """The named error for a child that left no heat maps; None when it left them."""
    import json

    from subbench.local_bench.runner import _read_end
    from subbench.local_bench.stderr_filter import summarize

    if ended.killed_for == "time":
        return ExplainTimeoutError(f"the explain process ran past its {time_limit_s:g} s time limit",
                                   "pass a larger time limit (--time-limit), or fewer images (-n)")
    error_file = root / "error.json"
    if error_file.exists():
        err = json.loads(error_file.read_text())
        cls = _NAMED.get(err["type"])
        if cls is not None:
            return cls(err["message"], err.get("hint") or "")
        tail = summarize(_read_end(root / "logs" / "stderr.txt")).strip().splitlines()[-1:] or [""]
        return ExplainRunError(f"the submission failed at {err['stage']}: {err['type']}: {err['message']}",
                               f"`subbench check` the zip first ({tail[0][:160]})")
    if not (root / "output" / "explain.npz").exists():
        tail = summarize(_read_end(root / "logs" / "stderr.txt")).strip().splitlines()[-1:] or ["no stderr"]
        return ExplainRunError(f"the explain process ended with exit code {ended.returncode} and no heat maps",
                               f"its last stderr line: {tail[0][:200]}")
    return None


def _run_child(zip_path, root: Path, profile, python, time_limit_s, x, labels, classes, select, n, method):
    from subbench.local_bench.proctree import StartError, run_tree
    from subbench.local_bench.runner import _child_env, _prepare_submission

    for d in ("program", "input", "output", "logs"):
        (root / d).mkdir(parents=True)
    ingested = root / "ingested_program"
    _prepare_submission(zip_path, ingested, profile)   # a zip is vetted and safely extracted
    shutil.copyfile(program_source(), root / "program" / PROGRAM)
    np.save(root / "input" / "images.npy", x)
    if labels is not None:
        np.save(root / "input" / "labels.npy", np.asarray(labels).reshape(-1).astype(np.int64))
    if classes is not None:
        np.save(root / "input" / "classes.npy", np.asarray(classes, dtype=np.int64))
    cmd = _command(python, root, ingested, has_labels=labels is not None, has_classes=classes is not None,
                   select=select, n=n, method=method, profile=profile)
    cwd = root / "program" if profile.cwd == "program" else ingested
    with open(root / "logs" / "stdout.txt", "wb") as out_f, open(root / "logs" / "stderr.txt", "wb") as err_f:
        try:
            ended = run_tree(cmd, cwd=cwd, env=_child_env(), stdout=out_f, stderr=err_f, time_limit_s=time_limit_s)
        except StartError as exc:
            raise ExplainRunError(f"cannot start {python}: {exc.__cause__ or exc}",
                                  "check --env / the interpreter path") from None
    failure = _read_failure(root, ended, time_limit_s)
    if failure is not None:
        raise failure
    with np.load(root / "output" / "explain.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def explain_zip(zip_path, images, labels=None, *, clean=None, n: int | None = None, misclassified_only: bool = False,
                class_index=None, method: str = "auto", env: str = "local", python: str | None = None,
                time_limit_s: float | None = None, profile=None, echo: Callable[[str], None] | None = None
                ) -> Explanation:
    """Explain a submission zip in a fresh process: its Model() predicts every image (those labels are the
    predictions reported), the chosen images (misclassified ones when asked, the first n) get the heat maps of
    the first keras.Model the instance holds, for `class_index` (default: the submission's predicted class).
    One wall clock of `time_limit_s` (default: the profile's) over the whole process; `env` "local"|"server" or
    `python` picks the interpreter."""
    from subbench.profile import Profile, load_profile
    from subbench.server_env import resolve_python

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if method not in METHODS:
        raise ExplainInputError(f"method {method!r} is not one of {METHODS}", "use auto, gradcam or saliency")
    x, clean = _check_inputs(images, labels, clean, n, misclassified_only)
    python = str(python) if python else resolve_python(env, prof)
    limit = prof.time_limit_s if time_limit_s is None else time_limit_s
    classes = None if class_index is None else np.broadcast_to(np.asarray(class_index), (len(x),))
    (echo or (lambda _l: None))(f"explaining {Path(zip_path).name} on {len(x)} images in a fresh process "
                                f"({python}, limit {limit:g} s)")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="subbench-explain-") as tmp:
        d = _run_child(zip_path, Path(tmp), prof, python, limit, x, labels, classes,
                       "misclassified" if misclassified_only else "all", n, method)
    r = {"maps": d["maps"], "method": str(d["method"]), "layer": str(d["layer"]), "classes": d["classes"],
         "note": str(d["note"])}
    expl = _assemble(zip_path, x, labels, clean, d["indices"], d["predictions"], r, prof.class_names,
                     time.time() - t0)
    return expl


# ------------------------------------------------------------------------------------------------ the view
def _short(name: str, k: int = 14) -> str:
    return name if len(name) <= k else name[:k - 1] + "…"


def explain_grid_png(clean, corrupted, heat, true, pred, class_names, titles=None) -> str | None:
    """Per image: its clean original (when `clean` is not None), the image the model saw, and the heat map over
    it titled "true X / predicted Y" (red when wrong). A PNG data URI; None for no images."""
    from matplotlib.figure import Figure

    from subbench.local_bench.report import _png

    n = len(corrupted)
    if n == 0:
        return None
    panels = 2 if clean is None else 3
    groups = min(n, 4 if clean is None else 3)
    rows = int(np.ceil(n / groups))
    fig = Figure(figsize=(1.55 * panels * groups, 1.9 * rows))
    for j in range(n):
        r, g = divmod(j, groups)
        base = r * panels * groups + g * panels
        shown = [] if clean is None else [(clean[j], None, "clean")]
        shown += [(corrupted[j], None, "hidden-like" if clean is not None else "input"), (corrupted[j], heat[j], "")]
        for p, (img, hm, label) in enumerate(shown):
            ax = fig.add_subplot(rows, panels * groups, base + p + 1)
            ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
            if hm is not None:
                ax.imshow(hm, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear")
                t = "?" if true is None or true[j] is None else _short(class_names[int(true[j])])
                wrong = true is not None and true[j] is not None and int(true[j]) != int(pred[j])
                ax.set_title(f"true {t}\npredicted {_short(class_names[int(pred[j])])}", fontsize=7,
                             color="#c62828" if wrong else "#222")
            else:
                extra = f"{titles[j]}\n" if titles is not None and p == 0 else ""
                ax.set_title(f"{extra}{label}", fontsize=7)
            ax.axis("off")
    return _png(fig)


def render_explanation(expl: Explanation) -> str:
    """An Explanation as one self-contained, scoped <div>: the grid, then a table of the images."""
    items = expl.items[:MAX_GRID]
    head = (f"{expl.method}" + (f" on {expl.layer}" if expl.layer else "") + f" · {len(expl.items)} images explained"
            f" of {expl.n_images}" + (f" ({expl.n_misclassified} misclassified)" if expl.n_misclassified is not None
                                       else "")
            + (f" · simulated hidden set ({expl.simulate_hidden}, seed {expl.seed})" if expl.simulate_hidden else ""))
    parts = [f'<div class="sbr"><style>{CSS}</style><h1>subbench explain: {html.escape(Path(expl.source).name)}</h1>',
             f'<p class="sub" id="explain-summary">{html.escape(head)}</p>']
    for w in ([expl.note] if expl.note else []) + list(expl.warnings):
        parts.append(f'<div class="warn">{html.escape(w)}</div>')
    grid = None
    if expl.heat is not None and expl.images is not None and items:
        k = len(items)
        grid = explain_grid_png(None if expl.clean is None else expl.clean[:k], expl.images[:k], expl.heat[:k],
                                [i.true for i in items], [i.predicted for i in items], expl.class_names,
                                titles=[f"#{i.index}" for i in items])
    if grid:
        shown = f" (first {MAX_GRID} shown)" if len(expl.items) > MAX_GRID else ""
        parts.append(f"<h2>Heat maps{shown}</h2><p>red: where the gradient of the predicted class's score points"
                     f" ({html.escape(expl.method)})</p>"
                     f'<img class="fig" id="explain-grid" src="{grid}" alt="heat maps">')
    elif not expl.items:
        parts.append("<p>No image to explain: none was misclassified.</p>")
    rows = "".join(f"<tr><td>{i.index}</td><td>{html.escape(expl.class_names[i.true]) if i.true is not None else '–'}"
                   f"</td><td>{html.escape(expl.class_names[i.predicted])}</td>"
                   f"<td>{html.escape(expl.class_names[i.explained_class])}</td></tr>" for i in expl.items)
    parts.append("<table><tr><th>image</th><th>true</th><th>predicted</th><th>heat map of</th></tr>"
                 f"{rows}</table></div>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ what to explain
SIMULATE_PRESETS = ("an2dl", "noise")


def held_out_images(zip_path, data, profile, *, split=None, use_all: bool = False, seed: int = 0,
                    echo: Callable[[str], None] = print):
    """(images, labels, warnings): the images `score` would score for this zip (the held-out part of the split in
    its manifest or `split`, of `data` or the data the manifest records), chosen by `evaluate.select_images`."""
    from subbench.manifest import read_manifest
    from subbench.local_bench.evaluate import ScoreOptions, select_images

    manifest = read_manifest(zip_path) if Path(zip_path).is_file() else None
    options = ScoreOptions(split=None if split is None else str(split), use_all=use_all, seed=seed)
    images, labels, _, warnings = select_images(data, profile, manifest, options, echo)
    return images, labels, [str(w) for w in warnings]


def simulate(images: np.ndarray, preset: str | None, seed: int) -> np.ndarray:
    """The images corrupted like the hidden set (`subbench.corrupt`'s presets, cached), or themselves."""
    if preset is None:
        return images
    if preset not in SIMULATE_PRESETS:
        raise ExplainInputError(f"--simulate-hidden {preset!r} is not a preset here",
                                f"use one of {', '.join(SIMULATE_PRESETS)}")
    from subbench.corrupt import apply_preset

    return apply_preset(images, preset=preset, seed=seed, cache=True, progress=False)
