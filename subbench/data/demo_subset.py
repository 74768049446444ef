"""The demo data shipped in the package: a small, balanced, attributed subset of the public PBC images.

    python -m subbench.data.demo_subset --source ../shared/data/pbc96 -o subbench/demo_data/pbc96_demo.zip \
        --attribution subbench/demo_data/LICENSE.txt

Reads a `<class>/<image>` folder of 96x96 crops (class folders mapped through the profile, e.g. `ig`), drops
every image `subbench data inspect` flags with the clean rules (exact and near copies but the first, label
conflicts, outliers) and, to be sure, every second copy of the same decoded pixels, then takes the same number
of images from each class: per class the names sorted, shuffled with a fixed seed, the first N. N is the
largest that keeps the zip within --max-bytes (or --per-class). The JPEG files go in unchanged (original bytes,
stored, not deflated: JPEGs do not compress) as `<class folder>/<file>`, in sorted order with fixed
timestamps, plus LICENSE.txt: the same source and options give the same bytes. Subsets for a smaller N are
prefixes of a larger N's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ZIP_NAME = "pbc96_demo.zip"
ATTRIBUTION_NAME = "LICENSE.txt"
DEFAULT_MAX_BYTES = 10_000_000
DATE_TIME = (1980, 1, 1, 0, 0, 0)

ATTRIBUTION = """\
subbench demo data: {n} images ({per_class} per class x {k} classes) from the public PBC dataset

Source dataset:
  A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar,
  "A dataset of microscopic peripheral blood cell images for development of automatic recognition systems",
  Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474.
  Data: https://data.mendeley.com/datasets/snkd93bnjr/1 (Mendeley Data, doi:10.17632/snkd93bnjr.1)

Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
  https://creativecommons.org/licenses/by/4.0/
  The images are (c) their authors and are redistributed here under that licence; subbench's own MIT licence
  does not apply to them.

Changes made: each original image (a 360x363 or 360x360 px JPEG) was centre-cropped to 200x200 px, resized to 96x96 px
(Lanczos) and saved again as JPEG, like the AN2DL 2024 challenge's images; this subset keeps those 96x96 JPEG
files byte for byte. Images were selected, not edited: duplicates, near-duplicates, identical images with
different labels and outliers (as found by `subbench data inspect`) were left out, then {per_class} images per
class were drawn with a fixed seed ({seed}) from the names in sorted order
(subbench/data/demo_subset.py reproduces the selection).

Class folders: {folders}
(`ig` = immature granulocyte.)
"""


def _pixel_hash(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return hashlib.blake2b(arr.tobytes() + repr(arr.shape).encode(), digest_size=16).hexdigest()


def candidates(source: Path, profile, use_inspect: bool = True, echo=print) -> dict[str, list[Path]]:
    """Class folder name -> image files that may be chosen (flagged images and repeated pixels removed), sorted."""
    from ..datasets import list_image_folder, load_folder

    items = list_image_folder(source, profile)
    excluded: set[Path] = set()
    if use_inspect:
        from .inspect import DEFAULT_CLEAN_RULES, inspect

        ds = load_folder(source, profile)
        if ds.skipped:
            excluded |= {source / rel for rel, _ in ds.skipped}
        report = inspect(ds, rules=DEFAULT_CLEAN_RULES)
        flagged = report.indices(DEFAULT_CLEAN_RULES)
        excluded |= {source / ds.names[i] for i in flagged}
        counts = ", ".join(f"{r} {len(report.flagged[r])}" for r in DEFAULT_CLEAN_RULES)
        echo(f"inspect: {len(flagged)} of {len(ds)} images flagged ({counts})")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(lambda it: _pixel_hash(it[0]), items))
    first_label: dict[str, int] = {}
    conflicts: set[str] = set()
    for (path, label), h in zip(items, hashes):
        if h in first_label and first_label[h] != label:
            conflicts.add(h)
        first_label.setdefault(h, label)
    seen: set[str] = set()
    out: dict[str, list[Path]] = {}
    for (path, label), h in zip(items, hashes):
        folder = path.relative_to(source).parts[0]
        out.setdefault(folder, [])
        if path in excluded or h in conflicts or h in seen:
            seen.add(h)
            continue
        seen.add(h)
        out[folder].append(path)
    return {k: sorted(v) for k, v in sorted(out.items())}


def choose(cands: dict[str, list[Path]], per_class: int | None, max_bytes: int, seed: int
           ) -> tuple[int, dict[str, list[Path]]]:
    """(N, class folder -> the N files chosen, sorted). N: per_class, or the largest that fits max_bytes."""
    rng = np.random.default_rng(seed)
    orders = {k: [v[i] for i in rng.permutation(len(v))] for k, v in cands.items()}
    most = min(len(v) for v in orders.values())
    if per_class is not None:
        if per_class > most:
            raise SystemExit(f"--per-class {per_class}: the smallest class has {most} usable images")
        n = per_class
    else:
        # stored zip: local header 30 + name + data, central directory 46 + name, end record 22 (+ LICENSE.txt)
        total, n = 22 + 2 * (76 + len(ATTRIBUTION_NAME)) + 4096, 0
        while n < most:
            row = sum(p.stat().st_size + 76 + 2 * len(f"{k}/{p.name}".encode()) for k, v in orders.items()
                      for p in [v[n]])
            if total + row > max_bytes:
                break
            total, n = total + row, n + 1
    return n, {k: sorted(v[:n], key=lambda p: p.name) for k, v in orders.items()}


def attribution_text(n_per_class: int, folders: list[str], seed: int) -> str:
    return ATTRIBUTION.format(n=n_per_class * len(folders), per_class=n_per_class, k=len(folders), seed=seed,
                              folders=", ".join(folders))


def write_zip(chosen: dict[str, list[Path]], output: Path, attribution: str) -> int:
    """Write the zip (stored, sorted, fixed timestamps); returns its size in bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        entries = [(ATTRIBUTION_NAME, attribution.encode("utf-8"))]
        entries += [(f"{k}/{p.name}", p.read_bytes()) for k in sorted(chosen) for p in chosen[k]]
        for name, data in entries:
            info = zipfile.ZipInfo(name, DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    data = buf.getvalue()
    from ..atomic import write_bytes_atomic

    write_bytes_atomic(output, data, force=True)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m subbench.data.demo_subset", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="<class>/<image> folder of 96x96 PBC crops")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the zip to write")
    ap.add_argument("--attribution", type=Path, help="also write the attribution text (LICENSE.txt) here")
    ap.add_argument("--per-class", type=int, help="images per class (default: as many as fit --max-bytes)")
    ap.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-inspect", action="store_true", help="skip `data inspect` (exact pixel copies still go)")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    from ..profile import load_profile

    profile = load_profile(args.profile)
    cands = candidates(args.source, profile, use_inspect=not args.no_inspect)
    n, chosen = choose(cands, args.per_class, args.max_bytes, args.seed)
    text = attribution_text(n, sorted(chosen), args.seed)
    size = write_zip(chosen, args.output, text)
    if args.attribution:
        from ..atomic import write_text_atomic

        write_text_atomic(args.attribution, text, force=True)
    print(f"{args.output}: {n} per class x {len(chosen)} classes = {n * len(chosen)} images, {size:,} bytes "
          f"(usable per class: {', '.join(f'{k} {len(v)}' for k, v in cands.items())})")
    if size > args.max_bytes and args.per_class is None:
        print(f"warning: {size} bytes is over --max-bytes {args.max_bytes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
