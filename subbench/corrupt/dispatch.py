"""One entry point for a preset or a single suite corruption, with every argument checked before any work.

    corrupt_images(images, "an2dl", seed=0)                   # a preset: how the AN2DL hidden set was made
    corrupt_images(images, "noise", sigma=10)                 # a preset with its parameter
    corrupt_images(images, "motion_blur", severity=3)         # one corruption of the suite at a severity

The `subbench corrupt` command and `subbench.corrupt(...)` both call it.
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptionInputError, SeverityError, UnknownCorruptionError, check_seed, check_severity
from .presets import CORRUPTIONS, PRESETS, _check_preset, apply_preset, corrupt


def check_request(preset_or_name: str, severity: int | None = None, seed: int = 0, **params) -> dict:
    """The checked request: {"preset": name, "params": {...}} or {"corruption": name, "severity": s}.

    Raises the simulator's named errors for an unknown name, a severity where none applies (or missing where
    one must be given), parameters of another preset, a bad seed."""
    check_seed(seed)
    if preset_or_name in PRESETS:
        if severity is not None:
            raise CorruptionInputError(f"severity applies to a single corruption, not to preset {preset_or_name!r}",
                                       "drop the severity, or name one corruption, e.g. 'motion_blur'")
        return {"preset": preset_or_name, "params": _check_preset(preset_or_name, params)}
    if preset_or_name in CORRUPTIONS:
        if params:
            raise CorruptionInputError(f"{sorted(params)} apply to presets, not to corruption {preset_or_name!r}",
                                       "drop them")
        if severity is None:
            raise SeverityError(f"corruption {preset_or_name!r} needs a severity", "give severity=1..5 (--severity)")
        check_severity(severity)
        return {"corruption": preset_or_name, "severity": int(severity)}
    raise UnknownCorruptionError(f"no preset or corruption named {preset_or_name!r}",
                                 f"presets: {', '.join(PRESETS)}; corruptions: {', '.join(CORRUPTIONS)}")


def corrupt_images(images: np.ndarray, preset_or_name: str = "an2dl", severity: int | None = None, seed: int = 0,
                   cache: bool = False, progress: bool = False, **params) -> np.ndarray:
    """A corrupted uint8 copy of `images` (N, H, W, 3): a preset (an2dl, noise) or one suite corruption at
    `severity` 1..5. Same images + name + seed give the same bytes. The suite as a whole is `iter_suite`."""
    request = check_request(preset_or_name, severity, seed, **params)
    if "corruption" in request:
        return corrupt(images, request["corruption"], request["severity"], seed=seed)
    return apply_preset(images, request["preset"], seed=seed, cache=cache, progress=progress, **request["params"])
