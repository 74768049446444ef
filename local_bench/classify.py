"""How a run ended, named: the status and a one-line cause, from plain values only (no processes, no files).

The runner gathers what the run left (exit code, whether it killed the run and why, the stage the ingestion
program reached, its error record, the predictions read back) and `classify` names the outcome. Order matters
and follows what the server would show: a run killed at a limit is that limit whatever else happened; an error
the ingestion program recorded names its stage; a death without a record is named by the stage it reached; only
a clean exit gets its predictions checked against the output contract.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import numpy as np

STATUSES = ("ok", "Import_Error", "Init_Error", "Predict_Error", "Output_Shape_Error",
            "Output_Value_Error", "Execution_Time_Limit_Exceeded", "Out_Of_Memory")
STAGES = ("start", "import", "init", "predict")

OOM_PATTERNS = re.compile(r"MemoryError|std::bad_alloc|ResourceExhaustedError|OOM when allocating|"
                          r"Cannot allocate memory|out of memory", re.IGNORECASE)

# One set's output as read back: its name, its image count and the array, or why it could not be read (a str),
# or None when the file was never written.
Output = tuple[str, int, Union[np.ndarray, str, None]]


@dataclass(frozen=True)
class Verdict:
    status: str
    message: str = ""
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # every set's validated labels (ok only)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_predictions(pred, n: int, n_classes: int) -> tuple[str, str, np.ndarray | None]:
    """(status, message, labels): the output contract, predictions (N,) integer labels in 0..n_classes-1."""
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[0] == n and pred.shape[1] > 1:
        kind = "one-hot" if np.isin(pred, (0, 1)).all() else "probabilities"
        return ("Output_Shape_Error", f"predict returned {kind} of shape {pred.shape} "
                f"(probabilities/one-hot); return argmax labels: np.argmax(p, axis=1) of shape ({n},)", None)
    if pred.ndim != 1:
        return ("Output_Shape_Error", f"predict returned shape {pred.shape}, expected ({n},): one integer label "
                "per image (flatten/argmax it)", None)
    if len(pred) != n:
        return ("Output_Shape_Error", f"predict returned {len(pred)} labels for {n} images; return one per image",
                None)
    if pred.dtype == bool or not (np.issubdtype(pred.dtype, np.integer) or np.issubdtype(pred.dtype, np.floating)):
        return ("Output_Value_Error", f"predict returned dtype {pred.dtype}; return integer class labels", None)
    if np.issubdtype(pred.dtype, np.floating):
        if not np.isfinite(pred).all():
            bad = int((~np.isfinite(pred)).sum())
            return ("Output_Value_Error", f"predict returned {bad} non-finite values (NaN/inf); "
                    "check the model's outputs", None)
        frac = pred != np.round(pred)
        if frac.any():
            return ("Output_Value_Error", f"predict returned non-integer values (e.g. {pred[frac][0]:.4g}); "
                    "return integer class labels, not scores", None)
    if n and (pred.min() < 0 or pred.max() > n_classes - 1):
        return ("Output_Value_Error", f"labels span {pred.min():g}..{pred.max():g}, outside 0..{n_classes - 1}; "
                "check the class order/count", None)
    return "ok", "", pred.astype(np.int64)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def classify(*, returncode: int, n_classes: int, stage_reached: str, killed_for: str | None = None,
             error: Mapping | None = None, outputs: Sequence[Output] = (), stderr: str = "",
             elapsed_s: float = 0.0, time_limit_s: float | None = None, memory_limit_mb: float | None = None,
             peak_memory_mb: float | None = None, images_done: int = 0, images_total: int = 0) -> Verdict:
    """Name how a run ended.

    returncode      the exit code as `subprocess` gives it (negative: killed by that signal)
    killed_for      "time" or "memory" when the runner killed the process tree at that limit, else None
    stage_reached   the stage running when the process ended: start, import, init, predict, or done
    error           the ingestion program's error record {"stage", "type", "message"} (stage "output": the
                    predictions could not be made into one numeric array), or None
    outputs         every set expected, in order, as (name, n_images, array | unreadable reason | None)
    stderr          the end of the submission's stderr, searched for out-of-memory messages
    the rest        plain figures for the messages (elapsed time, limits, peak memory, images predicted)
    """
    where = f"during {stage_reached}" if stage_reached != "done" else "after predicting"
    if killed_for == "time":
        extra = f", {images_done}/{images_total} images predicted" if stage_reached == "predict" else ""
        limit = f"{time_limit_s:g} s" if time_limit_s is not None else "time"
        return Verdict("Execution_Time_Limit_Exceeded",
                       f"killed {where} at the {limit} limit (elapsed {elapsed_s:.1f} s{extra})")
    if killed_for == "memory":
        return Verdict("Out_Of_Memory", f"resident memory reached {peak_memory_mb or 0:.0f} MB > limit "
                       f"{memory_limit_mb or 0:g} MB {where}; the process tree was killed as the OOM killer would")
    if killed_for is not None:
        raise ValueError(f"killed_for must be 'time', 'memory' or None, not {killed_for!r}")
    if error:
        kind, stage = str(error.get("type", "Error")), str(error.get("stage", stage_reached))
        what = f"{kind}: {error.get('message', '')}".strip()
        first_line = what.splitlines()[0] if what else kind
        if kind in ("MemoryError", "ResourceExhaustedError") or OOM_PATTERNS.search(what):
            return Verdict("Out_Of_Memory", f"{first_line} (during {stage})")
        if stage == "output":
            return Verdict("Output_Shape_Error" if kind == "ShapeMismatch" else "Output_Value_Error", first_line)
        stage_text = "from model import Model" if stage == "import" else stage
        return Verdict({"import": "Import_Error", "init": "Init_Error"}.get(stage, "Predict_Error"),
                       f"{first_line} (in {stage_text})")
    stage_status = {"start": "Import_Error", "import": "Import_Error", "init": "Init_Error"}.get(stage_reached,
                                                                                                 "Predict_Error")
    if returncode < 0:
        sig = _signal_name(-returncode)
        if -returncode == signal.SIGKILL or OOM_PATTERNS.search(stderr):
            return Verdict("Out_Of_Memory", f"the process was killed by {sig} {where}, not by subbench: the "
                           "kernel's out-of-memory killer sends that")
        return Verdict(stage_status, f"the process died with {sig} {where}")
    if returncode != 0:
        if OOM_PATTERNS.search(stderr):
            return Verdict("Out_Of_Memory", f"out of memory {where} (exit code {returncode})")
        return Verdict(stage_status, f"the process exited with code {returncode} {where}")
    if stage_reached != "done" or not outputs or any(raw is None for _, _, raw in outputs):
        return Verdict(stage_status, f"the process exited (code 0) {where} without writing all predictions")
    labels: dict[str, np.ndarray] = {}
    for name, n, raw in outputs:
        if isinstance(raw, str):
            return Verdict("Output_Value_Error", f"predictions for {name} unreadable: {raw}")
        status, message, checked = check_predictions(raw, n, n_classes)
        if status != "ok":
            return Verdict(status, message if len(outputs) == 1 else f"set {name}: {message}")
        labels[name] = checked
    return Verdict("ok", "", labels)
