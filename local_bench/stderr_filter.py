"""The end of a submission's stderr without TensorFlow's start-up chatter, so that its own error comes last.

A Keras submission's stderr interleaves its traceback with what TensorFlow, absl, XLA, CUDA and oneDNN log while
they load (on a CPU machine: "failed call to cuInit", "Unable to register cuDNN factory", the CPU-feature note);
those lines are often written after the traceback, so a plain tail ends with them. `summarize` drops them and
keeps the last lines of the rest. Dropped:
- C++ log lines in absl/glog form, `I0000 00:00:1731579153.12   123 file.cc:52] ...` (severity I, W or E), and in
  TensorFlow's own form, `2024-11-14 10:12:33.123: I tensorflow/... file.cc:52] ...`;
- the lines those messages continue on, and the start-up notes printed on their own (list in `_STARTUP_TEXT`).
Kept even in those forms: fatal lines (severity F: `Check failed`, the cause of an abort) and any line naming an
out-of-memory condition, which may be why the process died. The full stderr stays in the run's log.
"""

from __future__ import annotations

import re

from subbench.local_bench.classify import OOM_PATTERNS

TAIL_LINES = 25

_GLOG_LINE = re.compile(r"^[IWE]\d{4} \d{2}:\d{2}:[\d.]+\s+\d+\s+[\w.+-]+:\d+\]")
_TF_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?: [IWE] [\w./+-]+:\d+\]")
_STARTUP_TEXT = re.compile(
    r"^\s*(?:"
    r"To enable the following instructions:|"
    r"This TensorFlow binary is optimized|"
    r"oneDNN custom operations are on|"
    r"WARNING: All log messages before absl::InitializeLog\(\)|"
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|"
    r"TF-TRT Warning: Could not find TensorRT|"
    r"Could not find cuda drivers on your machine|"
    r"failed call to cuInit|"
    r"Could not load dynamic library|"
    r"Cannot dlopen some GPU libraries|"
    r"Skipping registering GPU devices|"
    r"computation placer already registered|"
    r"Attempting to register factory for plugin"
    r")")


def is_startup_noise(line: str) -> bool:
    """True for a TensorFlow/absl/CUDA/oneDNN/XLA start-up log line (see the module's docstring)."""
    if OOM_PATTERNS.search(line):
        return False
    return bool(_GLOG_LINE.match(line) or _TF_LINE.match(line) or _STARTUP_TEXT.match(line))


def without_startup_noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if not is_startup_noise(line)]


def summarize(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of stderr once start-up chatter is dropped, trailing blank lines too."""
    kept = without_startup_noise(text)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(line.rstrip() for line in kept[-lines:])
