"""Loading labelled image sets: an AN2DL-style npz (`images`, `labels`) or a `<class>/<file>` image folder.

Every command that takes data goes through `load_dataset`, so both forms work everywhere.
"""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, ProfileError
from .profile import Profile

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    images: np.ndarray               # (N, H, W, C) uint8
    labels: np.ndarray               # (N,) int64
    source: str
    names: list[str] = field(default_factory=list)      # per-image file name (folders) or index (npz)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for unreadable files

    def __len__(self) -> int:
        return len(self.labels)


def _check_images(images: np.ndarray, where: str, profile: Profile | None) -> None:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images have shape {images.shape}, expected (N, H, W, 3)",
                        "save images as an array of shape (N, height, width, 3)")
    if len(images) == 0:
        raise DataError(f"{where}: the data set is empty", "give a file or folder with at least one image")
    if profile is not None and tuple(images.shape[1:]) != tuple(profile.input_shape):
        raise DataError(
            f"{where}: images are {images.shape[1:]}, profile {profile.name} expects {profile.input_shape}",
            "convert with `subbench data import FOLDER -o data.npz` or pass the right --profile")


def load_npz(path: Path, profile: Profile | None = None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("images", "labels") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: npz has keys {npz.files}, missing {missing}",
                                "save it with np.savez(path, images=..., labels=...) as in training_set.npz")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})", "give an .npz made with numpy.savez") from None
    _check_images(images, str(path), profile)
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and float(np.nanmax(images)) <= 1.0:
            raise DataError(f"{path}: images are {images.dtype} in 0..1, expected uint8 in 0..255",
                            "store raw pixels: (images * 255).round().astype('uint8')")
        if not (np.issubdtype(images.dtype, np.number) and images.min() >= 0 and images.max() <= 255):
            raise DataError(f"{path}: images are {images.dtype} outside 0..255", "store uint8 pixels 0..255")
        images = images.astype(np.uint8)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels",
                        "save one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{path}: labels have dtype {labels.dtype}, expected integers",
                            "store class indices 0..K-1")
    labels = labels.astype(np.int64)
    if profile is not None and (labels.min() < 0 or labels.max() >= profile.num_classes):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}, profile has "
                        f"{profile.num_classes} classes", "check the labels or the --profile")
    return Dataset(images, labels, str(path), [str(i) for i in range(len(labels))])


def read_image(path: Path, size: tuple[int, int] | None, crop: int | None = None) -> np.ndarray:
    """Read one image as RGB uint8; optionally center-crop to `crop` px then resize with antialiasing."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if crop is not None and (w > crop or h > crop):
            c = min(crop, w, h)
        elif size is not None and (w, h) != (size[1], size[0]) and w != h:
            c = min(w, h)  # square center crop before resizing keeps the aspect ratio
        else:
            c = None
        if c is not None:
            left, top = (w - c) // 2, (h - c) // 2
            img = img.crop((left, top, left + c, top + c))
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)


def list_image_folder(root: Path, profile: Profile) -> list[tuple[Path, int]]:
    """(file, label) for every image under root/<class>/, classes mapped through the profile."""
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders found", "lay images out as FOLDER/<class name>/<image file>")
    items: list[tuple[Path, int]] = []
    for d in classes:
        try:
            label = profile.class_index(d.name)
        except ProfileError as exc:
            raise DataError(exc.cause, exc.hint) from None
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, label))
    if not items:
        raise DataError(f"{root}: class folders hold no images ({sorted(IMAGE_SUFFIXES)})",
                        "put image files inside the class folders")
    return items


def load_folder(root: Path, profile: Profile, crop: int | None = None, progress: bool = False) -> Dataset:
    items = list_image_folder(root, profile)
    size = profile.input_shape[:2]

    def read(item):
        try:
            return read_image(item[0], size, crop), None
        except Exception as exc:  # PIL raises many types for a broken file
            return None, f"{type(exc).__name__}: {exc}"

    # PIL releases the GIL while decoding, so threads scale on JPEG folders.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = pool.map(read, items)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(items), desc=f"reading {root.name}", unit="img")
        images, labels, names, skipped = [], [], [], []
        for (path, label), (img, err) in zip(items, results):
            rel = str(path.relative_to(root))
            if img is None:
                skipped.append((rel, err))
                continue
            images.append(img)
            labels.append(label)
            names.append(rel)
    if not images:
        raise DataError(f"{root}: none of {len(items)} images could be read", "check the image files")
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), str(root), names, skipped)


def load_dataset(path: str | os.PathLike, profile: Profile, progress: bool = False) -> Dataset:
    """An npz file or an image folder, checked against the profile's input shape and classes."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist", "give an .npz file or a folder of <class>/<image> files")
    if p.is_dir():
        ds = load_folder(p, profile, progress=progress)
    else:
        ds = load_npz(p, profile)
    _check_images(ds.images, str(p), profile)
    return ds


def image_hashes(images: np.ndarray) -> list[str]:
    """A 16-hex-digit content hash per image (blake2b of its raw bytes): identity for leakage/duplicate checks."""
    import hashlib

    return [hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=8).hexdigest() for img in images]


# ------------------------------------------------------------------------------------------------ demo data
# A balanced subset of the public PBC images (CC BY 4.0, credited in demo_data/LICENSE.txt), shipped inside the
# package so that `subbench demo` and the tests run on real cells without a download. Made by
# subbench/data/demo_subset.py; the package folder is only ever read.
DEMO_ZIP = "pbc96_demo.zip"
DEMO_ATTRIBUTION = "LICENSE.txt"
DEMO_NPZ = "pbc96_demo.npz"


def _demo_resource(name: str):
    from importlib import resources

    return resources.files("subbench") / "demo_data" / name


def demo_attribution() -> str:
    """The demo images' source, licence (CC BY 4.0) and changes made: show it wherever the images are used."""
    return _demo_resource(DEMO_ATTRIBUTION).read_text(encoding="utf-8")


def demo(profile: Profile | None = None) -> Dataset:
    """The shipped demo set: real PBC blood-cell crops, 96x96 RGB uint8, the same number per class.

    Images in the zip's order (class folder, then file name sorted); labels through the profile's class names
    and aliases (`ig` = immature granulocyte); `names` are the zip entries (`<class>/<file>.jpg`). No image is
    repeated (decoded pixels), so any split of it is free of exact leakage.
    """
    from io import BytesIO

    from PIL import Image

    if profile is None:
        from .profile import load_profile

        profile = load_profile()
    where = f"subbench demo data ({DEMO_ZIP})"
    res = _demo_resource(DEMO_ZIP)
    try:
        with res.open("rb") as f, zipfile.ZipFile(f) as zf:
            entries = sorted(n for n in zf.namelist()
                             if "/" in n and Path(n).suffix.lower() in IMAGE_SUFFIXES)
            blobs = [zf.read(n) for n in entries]
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where} is missing or unreadable ({exc})",
                        "reinstall subbench (the demo zip ships as package data)") from None
    try:
        labels = np.asarray([profile.class_index(n.split("/", 1)[0]) for n in entries], dtype=np.int64)
    except ProfileError as exc:
        raise DataError(f"{where}: {exc.cause}", "use a profile with the AN2DL blood-cell classes") from None

    def decode(blob: bytes) -> np.ndarray:
        with Image.open(BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        images = list(pool.map(decode, blobs))
    if not images:
        raise DataError(f"{where} holds no images", "reinstall subbench")
    images = np.stack(images)
    _check_images(images, where, profile)
    return Dataset(images, labels, f"subbench demo: {len(labels)} PBC images (CC BY 4.0, see LICENSE.txt)",
                   list(entries))


def demo_path(dest: str | os.PathLike, profile: Profile | None = None, force: bool = False) -> Path:
    """Write the demo set as an AN2DL-style npz for commands that take a data path; returns the npz's path.

    `dest` is the npz file, or an existing folder to write `pbc96_demo.npz` into; nothing else is written (the
    npz carries `names` and the `attribution` text too). An existing file is replaced only with force.
    """
    from .atomic import atomic_path

    target = Path(dest)
    if target.is_dir():
        target = target / DEMO_NPZ
    ds = demo(profile)
    with atomic_path(target, force=force) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=ds.images, labels=ds.labels, names=np.asarray(ds.names),
                     attribution=np.asarray(demo_attribution()))
    return target
