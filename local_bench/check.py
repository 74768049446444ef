"""`subbench check sub.zip`: every reason a submission fails on the server, found before upload.

Checks run in order; a zip that is unsafe or mislaid stops the rest (nothing is extracted from it). Each
failure has a name, a one-line cause and a fix hint.
  1. zip: integrity, path traversal, symlinks, zip bomb, size               (safezip, before extraction)
  2. layout: model.py at the root, every referenced file present, manifest hashes (a file edited after build
     is a warning, FilesEditedAfterBuild: the server runs it; the probe comparison is skipped)
  3. interface: class Model callable as Model() and .predict(X) (extra parameters need defaults) - read with
     ast, without importing
  4. model content: the saved configs against the server Keras's key table (Lambda, training-only layers,
     mixed precision, classes or config keys the server lacks)
  5. live: a fresh Python process (cwd elsewhere) imports model.py, builds Model(), predicts the probe;
     output shape, dtype and range; time and peak memory. With a manifest probe: each model's
     probabilities must match what build recorded (in --env server: proof the server computes the same).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subbench.errors import ZipError
from subbench.keras_compat import find_problems, hint_for, load_key_table
from subbench.manifest import probe_input, read_manifest, sha256_bytes
from subbench.profile import Profile
from subbench.results import ResultMixin, from_plain
from subbench.server_env import resolve_python

from subbench.local_bench.safezip import safe_extract

# Names of files model.py may load: string literals with these endings.
_WEIGHT_LITERAL = re.compile(r"""["']([\w./-]+\.(?:keras|h5|weights\.h5|npz|npy|json|pkl|joblib|onnx|tflite))["']""")
# Modules a submission may import on the server (standard library is allowed too).
_SERVER_MODULES = {"numpy", "tensorflow", "keras", "tf_keras", "scipy", "sklearn", "PIL", "h5py"}


@dataclass
class CheckResult:
    name: str           # the check, or the named failure when it failed
    ok: bool
    cause: str = ""
    hint: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class CheckReport(ResultMixin):
    """Every check run on one zip, in order; `ok` when all passed. `failures` names the failed ones."""
    zip_path: str
    env: str
    python: str
    results: list[CheckResult]

    file_stem = "check"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.name for r in self.results if not r.ok]

    @property
    def warnings(self) -> list[str]:
        """What passed but no longer proves what it did (a zip edited after build)."""
        return [r.cause for r in self.results if r.ok and r.details.get("warning")]

    def to_dict(self) -> dict:
        return {**super().to_dict(), "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict) -> "CheckReport":
        return from_plain(cls, data)

    def html(self) -> str:
        from subbench.local_bench.report import render_check

        return render_check(self)


def _fail(name: str, cause: str, hint: str, **details) -> CheckResult:
    return CheckResult(name, False, cause, hint, details)


def check_layout(folder: Path, profile: Profile) -> list[CheckResult]:
    out: list[CheckResult] = []
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    referenced: set[str] = set()
    config_path = folder / "model_config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
            referenced |= {m["file"] for m in config["models"]}
        except (ValueError, KeyError, TypeError) as exc:
            out.append(_fail("BadModelConfig", f"model_config.json is malformed ({exc!r})",
                             "rebuild the zip with `subbench build`"))
    source = (folder / profile.entry).read_text(errors="replace")
    referenced |= {m for m in _WEIGHT_LITERAL.findall(source) if "/" not in m or m.startswith("./")}
    referenced = {r.removeprefix("./") for r in referenced}
    missing = sorted(r for r in referenced if r not in names and r != "model_config.json")
    if missing:
        out.append(_fail("MissingFile", f"{profile.entry} refers to {missing}, which the zip does not contain",
                         "add the weight files at the zip's root beside model.py", missing=missing))
    if not out:
        out.append(CheckResult("layout", True, details={"files": sorted(names)}))
    return out + _edited_after_build(folder, names)


EDITED = "FilesEditedAfterBuild"


def _edited_after_build(folder: Path, names: set[str]) -> list[CheckResult]:
    """A warning (the server runs an edited zip like any other): files that differ from what build recorded in
    manifest.json, and what the manifest's probe and TTA choice no longer prove about them."""
    manifest = read_manifest(folder)
    if not manifest or "files" not in manifest:
        return []
    changed = [n for n, digest in manifest["files"].items()
               if n in names and sha256_bytes((folder / n).read_bytes()) != digest]
    absent = [n for n in manifest["files"] if n not in names]
    if not changed and not absent:
        return []
    what = ", ".join([f"{n} changed" for n in changed] + [f"{n} missing" for n in absent])
    cause = (f"files differ from what build recorded ({what}): the probe prediction and the TTA choice recorded in "
             "manifest.json were measured on the built files and prove nothing about these (the probe comparison "
             "is skipped); the live run decides")
    return [CheckResult(EDITED, True, cause, "rebuild with `subbench build` to record a probe for these files",
                        {"warning": True, "changed": changed, "missing": absent})]


def check_interface(source: str, profile: Profile) -> list[CheckResult]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [_fail("SyntaxError", f"{profile.entry} line {exc.lineno}: {exc.msg}", "fix the syntax error")]
    out: list[CheckResult] = []
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module.split(".")[0]]
        for mod in mods:
            if mod == "subbench" or (mod not in _SERVER_MODULES and mod not in sys.stdlib_module_names):
                out.append(_fail("ForbiddenImport", f"{profile.entry} imports {mod!r}, which the server lacks",
                                 "use only numpy, TensorFlow/Keras and the standard library", module=mod))
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == profile.class_name), None)
    if cls is None:
        return out + [_fail("NoModelClass", f"{profile.entry} defines no top-level class {profile.class_name}",
                            f"define `class {profile.class_name}:` with __init__(self) and predict(self, X)")]
    methods = {f.name: f for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def call_problem(args: ast.arguments, n_given: int) -> str:
        """Why a method cannot be called on an instance with `n_given` positional arguments ("" when it can)."""
        positional = [a.arg for a in args.posonlyargs + args.args]
        if not positional and args.vararg is None:
            return "takes no `self`"
        # The instance fills the first positional slot (or *args); the caller's arguments come next.
        slots = positional[1:] if positional else []
        n_required = max(0, len(positional) - len(args.defaults) - 1) if positional else 0
        if len(slots) < n_given and args.vararg is None:
            return f"takes no positional argument besides self (parameters: {slots or 'none'})"
        if n_required > n_given:
            return f"requires {slots[n_given:n_required]}"
        kw_required = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
        if kw_required:
            return f"requires keyword-only {kw_required}"
        return ""

    init = methods.get("__init__")
    if init is not None:
        problem = call_problem(init.args, n_given=0)
        if problem:
            out.append(_fail("BadInitSignature", f"{profile.class_name}.__init__ {problem}; the server calls "
                             f"{profile.class_name}() with no arguments",
                             "load weights inside __init__(self) from files next to __file__; give any other "
                             "parameter a default"))
    predict = methods.get("predict")
    if predict is None:
        out.append(_fail("NoPredictMethod", f"{profile.class_name} has no predict method",
                         "define predict(self, X) returning (N,) integer labels"))
    else:
        problem = call_problem(predict.args, n_given=1)
        if problem:
            out.append(_fail("BadPredictSignature", f"predict {problem}; the server calls predict(X)",
                             "define predict(self, X); give any other parameter a default"))
    if not out:
        out.append(CheckResult("interface", True))
    return out


def check_models(folder: Path, profile: Profile) -> list[CheckResult]:
    table = load_key_table(profile)
    out: list[CheckResult] = []
    for path in sorted(folder.rglob("*.keras")):
        try:
            with zipfile.ZipFile(path) as zf:
                config = json.loads(zf.read("config.json"))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            out.append(_fail("UnreadableModel", f"{path.name} is not a readable .keras file ({exc})",
                             "save the model with model.save('weights.keras')", file=path.name))
            continue
        for f in find_problems(config, table):
            name = {"lambda": "LambdaLayer", "mixed_precision": "MixedPrecisionPolicy",
                    "missing_class": "LayerMissingOnServer", "training_only": "TrainingOnlyLayer",
                    "custom_class": "CustomClass", "unknown_key": "UnsupportedConfigKey"}[f.kind]
            cause = f"{path.name}: {f.describe()}"
            if f.kind in ("missing_class", "unknown_key"):
                cause += f" (server Keras {table.keras_version})"
            out.append(_fail(name, cause, hint_for(f.kind), file=path.name, layer=f.layer, cls=f.class_name,
                             key=f.key))
    if not out:
        out.append(CheckResult("model-content", True, details={"keras_table": table.keras_version}))
    return out


def check_probe(folder: Path, profile: Profile, python: str, manifest: dict) -> list[CheckResult]:
    probe = manifest.get("probe") or {}
    expected = probe.get("probabilities") or {}
    if not expected:
        return []
    tol = float(probe.get("tolerance", 1e-4))
    with tempfile.TemporaryDirectory(prefix="subbench-probe-") as tmp:
        np.save(Path(tmp) / "probe.npy", probe_input(profile, int(probe.get("shape", [4])[0])))
        script = Path(__file__).with_name("probe_script.py")
        proc = subprocess.run([python, str(script), str(folder), str(Path(tmp) / "probe.npy"),
                               str(Path(tmp) / "out.json")], capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            return [_fail("ProbeRunFailed", "the probe script failed: "
                          + " | ".join(proc.stderr.strip().splitlines()[-3:]), "run the check again with --json")]
        got = json.loads((Path(tmp) / "out.json").read_text())
    out: list[CheckResult] = []
    for name, want in expected.items():
        entry = got["models"].get(name, {"error": "not loaded"})
        if "error" in entry:
            out.append(_fail("ModelLoadError", f"{name} does not load in Keras {got['keras']}: {entry['error']}",
                             "rebuild with `subbench build` (it exports for the profile's server Keras)", file=name))
            continue
        diff = float(np.max(np.abs(np.asarray(entry["probabilities"]) - np.asarray(want))))
        if not diff <= tol:
            out.append(_fail("ProbeMismatch", f"{name} computes different probabilities in Keras {got['keras']} "
                             f"(max difference {diff:.2e} > {tol:g})",
                             "a layer behaves differently in the server's Keras; rebuild without it", file=name,
                             max_abs_diff=diff))
        else:
            out.append(CheckResult("probe", True, details={"file": name, "keras": got["keras"],
                                                           "max_abs_diff": diff, "tolerance": tol}))
    return out


def check_live(folder: Path, profile: Profile, python: str, time_limit_s: float | None) -> list[CheckResult]:
    from subbench.local_bench.runner import run_submission

    images = probe_input(profile, 8)
    result = run_submission(folder, images, n_classes=profile.num_classes, python=python,
                            time_limit_s=time_limit_s or profile.time_limit_s, cwd_mode=profile.cwd)
    details = {"status": result.status, "elapsed_s": round(result.elapsed_s, 2), "stages": result.stages,
               "peak_memory_mb": result.peak_memory_mb}
    if result.status != "ok":
        hints = {
            "Import_Error": "model.py must import with numpy/TensorFlow/Keras only; see the stderr tail",
            "Init_Error": "Model() failed: load files relative to __file__ (os.path.dirname(__file__))",
            "Predict_Error": "predict(X) raised on uint8 (N, H, W, 3) input; see the stderr tail",
            "Output_Shape_Error": "return np.argmax(probabilities, axis=1): shape (N,) of integer labels",
            "Output_Value_Error": "return integer labels in 0..K-1 (no NaN, no floats, no one-hot)",
            "Execution_Time_Limit_Exceeded": "make loading/prediction faster (fewer TTA views, smaller model)",
            "Out_Of_Memory": "predict in smaller batches; fewer models in memory at once",
        }
        return [_fail(result.status, result.message or result.status, hints.get(result.status, ""),
                      stderr_tail=result.stderr_tail, **details)]
    return [CheckResult("live-run", True, details=details)]


def check_zip(zip_path: str | Path, profile: Profile, env: str = "local", time_limit_s: float | None = None,
              live: bool = True) -> CheckReport:
    python = resolve_python(env, profile)
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="subbench-check-") as tmp:
        folder = Path(tmp) / "submission"
        try:
            safe_extract(zip_path, folder, profile)
        except ZipError as exc:
            return CheckReport(str(zip_path), env, python, [_fail(exc.name, exc.cause, exc.hint)])
        results.append(CheckResult("zip", True))
        results += check_layout(folder, profile)
        results += check_interface((folder / profile.entry).read_text(errors="replace"), profile)
        results += check_models(folder, profile)
        structural_ok = all(r.ok for r in results)
        manifest = read_manifest(folder) or {}
        if live and structural_ok:
            results += check_live(folder, profile, python, time_limit_s)
            if (folder / "model_config.json").exists() and not any(r.name == EDITED for r in results):
                results += check_probe(folder, profile, python, manifest)
    return CheckReport(str(zip_path), env, python, results)

