"""`subbench corrupt DATA -o OUT.npz`: corrupt a labelled set like the hidden test set, or with the suite."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import click
import numpy as np

from . import main, profile_option


def _write_npz_stream(path: Path, force: bool, arrays) -> None:
    """Write (key, array) pairs into an .npz one at a time (bounded memory), atomically."""
    from ..atomic import atomic_path

    with atomic_path(path, force, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays:
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _checked(preset, corruption, severity, seed, sigma) -> tuple[str | None, dict]:
    """The command's choice, checked: (preset or None, its parameters). Raises the simulator's named errors."""
    from .. import corrupt as C
    from ..corrupt.errors import CorruptionInputError, check_seed

    if corruption is not None and preset is not None:
        raise CorruptionInputError("both --preset and --corruption given", "use one of them")
    params = {} if sigma is None else {"sigma": sigma}
    if corruption is None:
        preset = preset or "an2dl"
        if preset not in C.PRESETS:
            raise C.UnknownPresetError(f"no preset named {preset!r}", f"choose one of: {', '.join(C.PRESETS)}")
        if sigma is not None and preset != "noise":
            raise CorruptionInputError("--sigma applies to --preset noise only", "drop --sigma")
        if preset == "suite":
            if severity is not None:
                raise CorruptionInputError("--severity applies to --corruption only", "drop --severity")
            check_seed(seed)
        else:
            C.check_request(preset, severity, seed, **params)
    else:
        if corruption not in C.CORRUPTIONS:
            raise C.UnknownCorruptionError(f"no corruption named {corruption!r}",
                                           f"choose one of: {', '.join(C.CORRUPTIONS)}")
        if severity is None:
            raise C.SeverityError("--corruption needs --severity", "add --severity 1..5")
        C.check_request(corruption, severity, seed, **params)
    return preset, params


@main.command("corrupt")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--preset", default=None, metavar="NAME",
              help="an2dl (default: keras_cv AugMix + RandAugment, the AN2DL hidden set), noise, or suite.")
@click.option("--corruption", default=None, metavar="NAME",
              help="One suite corruption instead of a preset (e.g. motion_blur); needs --severity.")
@click.option("--severity", type=int, default=None, help="1..5, with --corruption.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .npz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same data + preset + seed = same bytes.")
@click.option("--sigma", type=float, default=None,
              help="noise preset: standard deviation in grey levels, 0..255 (default 25).")
@click.option("--preview", type=click.Path(path_type=Path), default=None, metavar="PNG",
              help="Also write a PNG grid: clean images over their corrupted versions.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the corrupted-set cache.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT / PNG if they exist.")
@profile_option
def corrupt_cmd(data, preset, corruption, severity, output, seed, sigma, preview, no_cache, force, profile):
    """Corrupt DATA (an .npz or a <class>/<image> folder) and write OUT.npz with `images` and `labels`.

    \b
    Presets:
      an2dl  keras_cv 0.9 AugMix then RandAugment, default parameters, sampled per image:
             how the AN2DL 2024 hidden test set was made; score on it to estimate the hidden score
      noise  additive Gaussian white noise (--sigma grey levels, default 25)
      suite  every corruption at severities 1-5; OUT.npz holds `labels` and one `<name>_s<severity>`
             array per step (about 65 times the size of DATA)
    Corruptions: pixelate, jpeg_compression, defocus_blur, motion_blur, brightness_up, brightness_down,
    contrast_up, contrast_down, saturate, stain_deposit, bubble, gaussian_noise, shot_noise.
    """
    from .. import corrupt as C
    from ..atomic import check_writable
    from ..corrupt.errors import CorruptionInputError
    from ..corrupt.preview import preview_indices, write_preview
    from ..datasets import load_dataset
    from ..profile import load_profile

    # Every check before any work, so bad input writes nothing.
    preset, params = _checked(preset, corruption, severity, seed, sigma)
    if output.suffix != ".npz":
        raise CorruptionInputError(f"output {output} does not end in .npz", "name it e.g. hidden_sim.npz")
    if data.exists() and output.resolve() == data.resolve():
        raise CorruptionInputError("output is the input file", "write the corrupted set to a new path")
    check_writable(output, force)
    if preview is not None:
        check_writable(preview, force)

    ds = load_dataset(data, load_profile(profile), progress=True)
    images, labels = ds.images, ds.labels
    idx = preview_indices(len(images))
    rows = [("clean", images[idx])]
    t0 = time.perf_counter()
    if preset == "suite":
        def steps():
            yield "labels", labels
            for name, sev, arr in C.iter_suite(images, seed=seed):
                click.echo(f"  {name} severity {sev}", err=True)
                if sev == 3:
                    rows.append((f"{name} s3", arr[idx]))
                yield f"{name}_s{sev}", arr
        _write_npz_stream(output, force, steps())
        what = f"suite ({len(C.CORRUPTIONS)} corruptions x 5 severities)"
    else:
        out = C.corrupt_images(images, corruption or preset, severity, seed=seed, cache=not no_cache,
                               progress=True, **params)
        what = (f"{corruption} severity {severity}" if corruption else
                f"preset {preset}" + (f" sigma {params['sigma']}" if params else ""))
        rows.append((what, out[idx]))
        _write_npz_stream(output, force, [("images", out), ("labels", labels)])
    elapsed = time.perf_counter() - t0
    click.echo(f"wrote {output}: {len(images)} images, {what}, seed {seed} ({elapsed:.1f} s)")
    if preview is not None:
        write_preview(preview, rows, force)
        click.echo(f"wrote {preview}")
