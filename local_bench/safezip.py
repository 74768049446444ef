"""Reading a submission zip safely: every entry is vetted before anything is written to disk.

Refused before extraction: a file that is not a zip or fails its CRCs, entries that escape the target folder
(`../`, absolute paths, drive letters), symlinks, a zip bomb (uncompressed size far above compressed), a zip
over the profile's size limit. Layout: `model.py` must sit at the root; a single enclosing folder is the
classic mistake of zipping the folder instead of its contents.
"""

from __future__ import annotations

import posixpath
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from subbench.errors import ZipError
from subbench.profile import Profile

# A model zip compresses weights poorly (ratio ~1.1); text files reach ~10. 100 is far beyond honest content.
MAX_RATIO = 100.0
# Below this total uncompressed size the ratio is not worth refusing (a tiny, very repetitive file).
RATIO_FLOOR_BYTES = 10 * 1024 * 1024


class NotAZipError(ZipError):
    """The file is not a zip archive, or it is truncated/corrupt."""


class ZipSlipError(ZipError):
    """An entry would be written outside the extraction folder."""


class ZipSymlinkError(ZipError):
    """An entry is a symbolic link."""


class ZipBombError(ZipError):
    """Uncompressed size is far above the compressed size."""


class ZipTooLargeError(ZipError):
    """The zip is above the competition's upload limit."""


class NestedFolderError(ZipError):
    """model.py is inside a folder instead of at the zip's root."""


class MissingModelPyError(ZipError):
    """No model.py anywhere in the zip."""


@dataclass(frozen=True)
class ZipSummary:
    names: tuple[str, ...]        # file entries (no directories)
    compressed_bytes: int
    uncompressed_bytes: int
    zip_bytes: int


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _escapes(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def vet_archive(zip_path: str | Path, what: str = "", max_ratio: float = MAX_RATIO,
                ratio_floor: int = RATIO_FLOOR_BYTES) -> list[zipfile.ZipInfo]:
    """The entries of any zip, after refusing (named ZipErrors) what is not a zip or fails its CRCs, entries that
    escape the target folder, symlinks and a bomb. `what` names the archive in messages ("bundle", ...)."""
    path = Path(zip_path)
    where = f"{what} {path.name}" if what else path.name
    if not zipfile.is_zipfile(path):
        raise NotAZipError(f"{where} is not a zip archive", "create it with `subbench build` or `zip -r`, or give a "
                                                            "folder where a folder is accepted")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise NotAZipError(f"{where} is corrupt ({exc})", "re-create the zip; the upload may have been cut") from None
    if bad is not None:
        raise NotAZipError(f"{where}: entry {bad!r} fails its CRC check", "re-create the zip")
    for info in infos:
        if _escapes(info.filename):
            raise ZipSlipError(f"{where}: entry {info.filename!r} points outside the extraction folder",
                               "zip the files with relative paths only")
        if _is_symlink(info):
            raise ZipSymlinkError(f"{where}: entry {info.filename!r} is a symbolic link",
                                  "copy the real file into the zip instead of linking it (zip without -y)")
    files = [i for i in infos if not i.is_dir()]
    comp, uncomp = sum(i.compress_size for i in files), sum(i.file_size for i in files)
    if uncomp > ratio_floor and uncomp > max_ratio * max(comp, 1):
        raise ZipBombError(f"{where} expands from {comp / 2**20:.1f} MB to {uncomp / 2**20:.1f} MB "
                           f"(ratio {uncomp / max(comp, 1):.0f} > {max_ratio:.0f})",
                           "remove the padding or generated content; an honest archive compresses far less")
    return infos


def extract_vetted(zip_path: str | Path, dest_dir: str | Path, what: str = "") -> Path:
    """Extract a zip that vet_archive accepted into dest_dir (created); every target is checked again to lie
    inside it. Returns the resolved folder."""
    root = Path(dest_dir)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:  # second line of defence after the vetting
                raise ZipSlipError(f"{what or 'zip'} entry {info.filename!r} resolves outside {root}",
                                   "use relative paths")
            zf.extract(info, root)
    return root


def vet_zip(zip_path: str | Path, profile: Profile) -> ZipSummary:
    """Raise a named ZipError for anything unsafe or mislaid; return the entry list when all is well."""
    path = Path(zip_path)
    if not path.is_file():
        raise NotAZipError(f"{path} does not exist or is not a file", "give the path of the submission .zip")
    size = path.stat().st_size
    if size > profile.max_zip_mb * 1024 * 1024:
        raise ZipTooLargeError(f"{path.name} is {size / 2**20:.1f} MB, the limit is {profile.max_zip_mb:.0f} MB",
                               "use a smaller backbone, fewer ensemble members or float16-free smaller weights")
    files = [i for i in vet_archive(path) if not i.is_dir()]
    names = tuple(i.filename for i in files)
    if profile.entry not in names:
        nested = [n for n in names if posixpath.basename(n) == profile.entry]
        if nested:
            raise NestedFolderError(f"{profile.entry} is at {nested[0]!r}, not at the zip's root",
                                    "zip the folder's contents, not the folder: `cd folder && zip -r ../sub.zip .`")
        raise MissingModelPyError(f"no {profile.entry} in {path.name}",
                                  f"the zip must contain {profile.entry} defining class {profile.class_name}")
    return ZipSummary(names, sum(i.compress_size for i in files), sum(i.file_size for i in files), size)


def safe_extract(zip_path: str | Path, dest_dir: str | Path, profile: Profile) -> Path:
    """Vet the zip, then extract it into dest_dir (created if needed); return dest_dir."""
    vet_zip(zip_path, profile)
    extract_vetted(zip_path, dest_dir)
    return Path(dest_dir)


def read_member(zip_path: str | Path, name: str) -> bytes | None:
    """Bytes of one entry, or None when absent. Callers vet the zip first."""
    with zipfile.ZipFile(zip_path) as zf:
        try:
            return zf.read(name)
        except KeyError:
            return None
