"""`inspect(dataset)`: find the junk in a labelled image set, by rule, with a reason per flagged image.

Rules (each can be switched off; `clean` removes what the chosen rules flag):

- exact_duplicates  byte-identical copy of an earlier image with the same label; the first copy is not flagged.
- near_duplicates   near-identical copy (re-encoded, brightness shift, noise) of an earlier image with the same
                    label: pHash (64-bit DCT hash) Hamming distance <= 6 *and* 32x32 grayscale thumbnail
                    correlation >= 0.97 *and* mean colour within 16 levels (the hash finds candidates, the rest
                    confirms: distinct blood cells share low-frequency structure and reach pHash distance 6
                    with correlation < 0.95).
- label_conflicts   identical or near-identical images that carry different labels: every copy is flagged,
                    since nothing says which label is right.
- outliers          not a blood-cell crop, or a crop with a picture blended over it: robust Mahalanobis distance
                    (scikit-learn MinCovDet, fitted per class on up to 500 distinct images; one model of all
                    images for classes with < 150) on 15 colour/texture features (`features.FEATURE_NAMES`)
                    above 25. An exact copy of an outlier is an outlier too,
                    whatever its label, so a junk group (AN2DL's 200 overlaid copies of one cell) goes whole.
- grey_background   background colour saturation below 0.12 (about 3% of the PBC images). These are real cells:
                    reported, not removed unless asked for.

Copies are grouped (exact copies, plus near copies of a group's first image) before the rules look at them: in
a clean group the lowest index is kept and the others are duplicates; a group whose labels disagree is a label
conflict; exact copies of an outlier are junk and go whole.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..datasets import image_hashes
from ..errors import DataError, SubbenchError
from . import features as F

RULES: dict[str, str] = {
    "exact_duplicates": "byte-identical copies of an earlier image with the same label (the first is kept)",
    "near_duplicates": "near-identical copies of an earlier image with the same label (the first is kept)",
    "label_conflicts": "identical or near-identical images with different labels (every copy)",
    "outliers": "not a blood-cell crop, or one with a picture blended in (and every copy of it)",
    "grey_background": "grey (unsaturated) background; real cells, not removed by default",
}
DEFAULT_CLEAN_RULES = ("exact_duplicates", "near_duplicates", "label_conflicts", "outliers")


class RuleError(SubbenchError):
    """An unknown inspect/clean rule name was given."""


@dataclass(frozen=True)
class InspectSettings:
    near_hamming: int = 6            # pHash bits that may differ between near-copies (pHash distances are even)
    near_correlation: float = 0.97   # thumbnail correlation a near-copy must reach
    near_colour: float = 16.0        # most a near-copy's mean R, G or B may differ (re-encoding, brightness)
    outlier_distance: float = 25.0   # robust Mahalanobis distance above which an image is an outlier
    grey_saturation: float = 0.12    # background saturation below which a background is grey
    min_class_fit: int = 10          # a class gets its own outlier model with >= this x #features distinct images
    fit_sample: int = 500            # distinct images per outlier model (seeded sample; see _outlier_distances)

    def methods(self) -> dict[str, str]:
        """How each rule decides, with the numbers in force (printed and written into the JSON report)."""
        return {
            "exact_duplicates": "same bytes (blake2b of the pixels)",
            "near_duplicates": f"pHash (DCT of the 32x32 grayscale thumbnail, 64 bits) Hamming <= "
                               f"{self.near_hamming}, thumbnail correlation >= {self.near_correlation}, mean "
                               f"colour within {self.near_colour:g}",
            "label_conflicts": "exact or near copies (as above) with different labels",
            "outliers": f"robust Mahalanobis distance (MinCovDet per class) on {len(F.FEATURE_NAMES)} "
                        f"colour/texture features > {self.outlier_distance}",
            "grey_background": f"background colour saturation < {self.grey_saturation}",
        }


@dataclass
class CopyGroup:
    members: list[int]      # sorted indices of images that are copies of one another
    labels: list[int]       # their labels, in the same order
    exact: bool             # all byte-identical


@dataclass
class InspectReport:
    n: int
    labels: np.ndarray
    rules: tuple[str, ...]
    settings: InspectSettings
    flagged: dict[str, np.ndarray]                 # rule -> sorted flagged indices
    reasons: dict[str, dict[int, str]]             # rule -> index -> why
    groups: list[CopyGroup]
    outlier_distance: np.ndarray | None = None     # (N,) per image, when the outlier rule ran
    background_saturation: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    n_distinct: int = 0                            # images left when byte-identical copies count once
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def indices(self, rules: Iterable[str]) -> np.ndarray:
        """Sorted union of the indices the given rules flagged."""
        sets = [self.flagged[r] for r in rules if r in self.flagged]
        return np.unique(np.concatenate(sets)) if sets else np.empty(0, np.int64)

    def reasons_for(self, index: int, rules: Iterable[str] | None = None) -> list[str]:
        return [f"{r}: {self.reasons[r][index]}" for r in (rules or self.rules)
                if r in self.reasons and index in self.reasons[r]]

    def class_counts(self) -> dict[str, int]:
        k = max(int(self.labels.max()) + 1 if self.n else 0, len(self.class_names or ()))
        counts = np.bincount(self.labels, minlength=k)
        names = self.class_names or tuple(str(i) for i in range(k))
        return {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(counts)}

    def summary(self, clean_rules: Sequence[str] = DEFAULT_CLEAN_RULES) -> str:
        lines = [f"{self.n} images ({self.n_distinct} distinct); per class: "
                 + ", ".join(f"{k} {v}" for k, v in self.class_counts().items())]
        methods = self.settings.methods()
        for rule in self.rules:
            idx = self.flagged[rule]
            lines.append(f"{rule:17s} {len(idx):6d}  ({methods[rule]})")
        big = [g for g in self.groups if len(g.members) >= 10]
        if big:
            lines.append("copy groups of 10+: " + ", ".join(
                f"{len(g.members)} x #{g.members[0]}" + (" (outliers)" if self._group_flagged(g, "outliers") else "")
                for g in big[:12]) + (" ..." if len(big) > 12 else ""))
        chosen = [r for r in clean_rules if r in self.rules]
        lines.append(f"clean would remove {len(self.indices(chosen))} images (rules: {', '.join(chosen)})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _group_flagged(self, group: CopyGroup, rule: str) -> bool:
        return rule in self.flagged and bool(np.isin(group.members, self.flagged[rule]).any())

    def to_json(self, data: str | None = None, fingerprint: str | None = None) -> dict:
        """A JSON-ready dict: counts, methods, flagged indices and reasons per rule, copy groups."""
        out = {
            "format": 1, "kind": "subbench-inspect", "data": data, "data_fingerprint": fingerprint, "n": self.n,
            "n_distinct": self.n_distinct,
            "class_counts": self.class_counts(), "settings": asdict(self.settings),
            "methods": {r: m for r, m in self.settings.methods().items() if r in self.rules},
            "rules": {r: {"count": int(len(self.flagged[r])), "description": RULES[r],
                          "indices": [int(i) for i in self.flagged[r]],
                          "reasons": {str(i): s for i, s in self.reasons[r].items()}} for r in self.rules},
            "groups": [{"members": g.members, "labels": g.labels, "exact": g.exact} for g in self.groups],
            "clean_default_removes": int(len(self.indices(DEFAULT_CLEAN_RULES))),
            "notes": self.notes, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        return out


def check_rules(rules: Iterable[str] | None, default: Sequence[str] = tuple(RULES)) -> tuple[str, ...]:
    """Validate rule names ("all" means every rule); keeps the canonical order."""
    if rules is None:
        return tuple(default)
    chosen = set()
    for r in rules:
        r = r.strip().replace("-", "_")
        if not r:
            continue
        if r == "all":
            chosen.update(RULES)
        elif r in RULES:
            chosen.add(r)
        else:
            raise RuleError(f"unknown rule {r!r}", f"choose from {', '.join(RULES)} (or 'all')")
    return tuple(r for r in RULES if r in chosen)


def _label_name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)


def _copy_groups(n: int, rep_of: np.ndarray, reps: np.ndarray, near_i: np.ndarray, near_j: np.ndarray
                 ) -> list[np.ndarray]:
    """Connected components of 'is a copy of' (exact: image -> first copy; near: member -> leader), size >= 2."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    src = np.concatenate([np.arange(n), near_i])
    dst = np.concatenate([reps[rep_of], near_j])
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    return [g for g in np.split(order, bounds) if len(g) > 1]


def _leader_edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member, leader) edges from near pairs, so that every member is near its leader itself.

    Joining all near pairs would chain: A~B and B~C would put A and C in one group however far apart they are
    (200 flat pictures of different greys became one group). Going through the pairs by first image, an image
    not yet taken takes every later untaken image near it.
    """
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    taken: set[int] = set()
    members, leaders = [], []
    for x, y in zip(lo[order].tolist(), hi[order].tolist()):
        if x not in taken and y not in taken:
            taken.add(y)
            members.append(y)
            leaders.append(x)
    return np.asarray(members, np.int64), np.asarray(leaders, np.int64)


def _robust_distances(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each query row to a MinCovDet fit on the train rows (features pre-scaled)."""
    from sklearn.covariance import MinCovDet

    with warnings.catch_warnings():
        # MinCovDet's C-steps warn "Determinant has increased" on rounding-level changes; harmless here.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        mcd = MinCovDet(random_state=0).fit(train)
    # A ridge of 0.05 (features have unit spread over the set) keeps a feature that is nearly constant in a
    # class (no rare colours in most images) from making the covariance singular and its first nonzero value
    # look infinitely strange; 0.05 kept the planted junk 2.5x beyond the 99.9th percentile of real pbc96 cells.
    precision = np.linalg.inv(mcd.covariance_ + 0.05 * np.eye(train.shape[1]))
    diff = query - mcd.location_
    return np.sqrt(np.einsum("ij,ij->i", diff @ precision, diff))


def inspect(dataset, rules: Iterable[str] | None = None, settings: InspectSettings | None = None,
            class_names: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> InspectReport:
    """Run the chosen rules (default all) on a Dataset (or anything with `.images` (N,H,W,3) and `.labels`)."""
    rules = check_rules(rules)
    settings = settings or InspectSettings()
    say = progress or (lambda msg: None)
    images = dataset.images
    labels = np.asarray(dataset.labels).reshape(-1).astype(np.int64)
    n = len(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != n or n == 0:
        raise DataError(f"inspect needs RGB images (N, H, W, 3) with one label each, got images {images.shape} "
                        f"and {n} labels", "give 3-channel images, e.g. an AN2DL-style npz")
    seconds: dict[str, float] = {}
    notes: list[str] = []
    flags = _Flags(rules)

    # 1. exact identity: every image maps to its first byte-identical copy
    t = time.perf_counter()
    say("hashing images")
    _, reps, rep_of = np.unique(np.asarray(image_hashes(images)), return_index=True, return_inverse=True)
    rep_of = rep_of.reshape(-1)                     # reps[k]: first index of distinct image k
    seconds["exact"] = time.perf_counter() - t

    # 2. near-identity on the distinct images, then the copy groups and what they flag
    near = None
    if {"near_duplicates", "label_conflicts"} & set(rules):
        t = time.perf_counter()
        say(f"perceptual hashes of {len(reps)} distinct images")
        near = _NearCopies(images, reps, rep_of, settings)
        seconds["near"] = time.perf_counter() - t
    groups = _flag_copy_groups(flags, labels, reps, rep_of, near, class_names)

    # 3. colour/texture statistics of the distinct images: outliers and grey backgrounds
    distance = bg_sat = None
    if {"outliers", "grey_background"} & set(rules):
        t = time.perf_counter()
        say(f"colour/texture features of {len(reps)} distinct images")
        feats, backgrounds = F.cell_features(images, index=reps)
        seconds["features"] = time.perf_counter() - t
        bg_sat = F.background_saturation(backgrounds)[rep_of]
        hit = np.zeros(n, bool)
        if "outliers" in rules:
            t = time.perf_counter()
            distance = _outlier_distances(feats, rep_of, labels, settings, notes)
            if distance is not None:
                hit = _flag_outliers(flags, distance, reps, rep_of, settings)
            seconds["outliers"] = time.perf_counter() - t
        if "grey_background" in rules:               # of the images that are cells at all
            for i in np.flatnonzero((bg_sat < settings.grey_saturation) & ~hit):
                flags.flag("grey_background", i, f"background saturation {bg_sat[i]:.3f} < "
                           f"{settings.grey_saturation}")

    return InspectReport(
        n=n, labels=labels, rules=rules, settings=settings,
        flagged={r: np.array(sorted(flags.flagged[r]), np.int64) for r in rules}, reasons=flags.reasons,
        groups=groups, outlier_distance=distance, background_saturation=bg_sat,
        class_names=tuple(class_names) if class_names else None, n_distinct=int(len(reps)), notes=notes,
        seconds=seconds)


class _Flags:
    """The images each rule flags, each with its reason (the first reason given is kept)."""

    def __init__(self, rules):
        self.flagged: dict[str, set[int]] = {r: set() for r in rules}
        self.reasons: dict[str, dict[int, str]] = {r: {} for r in rules}

    def flag(self, rule: str, index: int, why: str) -> None:
        if rule in self.flagged and index not in self.flagged[rule]:
            self.flagged[rule].add(int(index))
            self.reasons[rule][int(index)] = why


class _NearCopies:
    """Near-identical pairs of the distinct images: pHash candidates confirmed by the thumbnails' correlation
    and by the mean colour, which grayscale cannot see."""

    def __init__(self, images, reps, rep_of, settings: InspectSettings):
        self.rep_of = rep_of
        self.thumbs, colours = F.thumbnails(images, index=reps)
        self.phashes = F.phash(self.thumbs)
        ci, cj, _ = F.hamming_pairs(self.phashes, settings.near_hamming)
        keep = (F.thumbnail_correlation(self.thumbs, ci, cj) >= settings.near_correlation) & (
            np.abs(colours[ci] - colours[cj]).max(1) <= settings.near_colour)
        self.i, self.j = _leader_edges(reps[ci[keep]], reps[cj[keep]])

    def evidence(self, a: int, b: int) -> str:
        ka, kb = self.rep_of[a], self.rep_of[b]        # their distinct images
        d = int(np.bitwise_count(self.phashes[ka] ^ self.phashes[kb]))
        c = float(F.thumbnail_correlation(self.thumbs, np.array([ka]), np.array([kb]))[0])
        return f" (pHash distance {d}, thumbnail correlation {c:.3f})"


def _flag_copy_groups(flags: _Flags, labels, reps, rep_of, near: _NearCopies | None, class_names) -> list:
    """The copy groups (exact copies, and near ones when `near`); flags label conflicts within a group, else
    every member after the first as an exact or a near duplicate."""
    empty = np.empty(0, np.int64)
    groups_idx = _copy_groups(len(labels), rep_of, reps, near.i if near else empty, near.j if near else empty)
    groups: list[CopyGroup] = []
    for members in groups_idx:
        members = np.sort(members)
        labs = labels[members]
        exact = bool(np.all(rep_of[members] == rep_of[members[0]]))
        groups.append(CopyGroup([int(m) for m in members], [int(v) for v in labs], exact))
        if len(set(labs.tolist())) > 1:
            for m in members:
                others = [f"#{o} ({_label_name(labels[o], class_names)})" for o in members if o != m][:4]
                more = f" and {len(members) - 5} more" if len(members) > 5 else ""
                flags.flag("label_conflicts", m, f"labelled {_label_name(labels[m], class_names)}; "
                           f"{'same' if exact else 'near-identical'} image as " + ", ".join(others) + more)
            continue
        keeper = int(members[0])
        for m in members[1:]:
            first_copy = int(reps[rep_of[m]])
            if first_copy < m:
                flags.flag("exact_duplicates", m, f"exact copy of #{first_copy}")
            else:
                flags.flag("near_duplicates", m, f"near copy of #{keeper}"
                           + (near.evidence(keeper, int(m)) if near else ""))
    return groups


def _flag_outliers(flags: _Flags, distance, reps, rep_of, settings: InspectSettings) -> np.ndarray:
    """Flags the images beyond the outlier distance and the exact copies of one; returns that mask."""
    hit = distance > settings.outlier_distance
    for i in np.flatnonzero(hit):
        flags.flag("outliers", i, f"colour/texture distance {distance[i]:.1f} > {settings.outlier_distance}")
    # An exact copy of junk is junk, whatever its label (distances are per class). Near copies are
    # judged on their own: re-encoding can push a copy over the line while its original is fine.
    first_hit = np.full(len(reps), -1)
    for i in np.flatnonzero(hit)[::-1]:
        first_hit[rep_of[i]] = i
    for i in np.flatnonzero(~hit & (first_hit[rep_of] >= 0)):
        j = first_hit[rep_of[i]]
        flags.flag("outliers", i, f"exact copy of outlier #{j} (distance {distance[j]:.1f})")
    return first_hit[rep_of] >= 0


def _outlier_distances(feats: np.ndarray, rep_of: np.ndarray, labels: np.ndarray, settings: InspectSettings,
                       notes: list[str]) -> np.ndarray | None:
    """(N,) distance of each image to its class's robust fit (or the pooled fit for small classes)."""
    p = feats.shape[1]
    if len(feats) < 5 * p:
        notes.append(f"outliers: not checked, {len(feats)} distinct images are too few to model "
                     f"{p} features (need {5 * p})")
        return None
    # Scale each feature to unit spread over the bulk of the set (values between its 1st and 99th percentile,
    # so junk does not set the unit), which makes the ridge in _robust_distances the same for every feature.
    lo, hi = np.percentile(feats, [1, 99], axis=0)
    bulk = (feats >= lo) & (feats <= hi)
    scale = np.array([feats[bulk[:, k], k].std() for k in range(p)])
    scale = np.where(scale > 0, scale, feats.std(axis=0))
    x = (feats - np.median(feats, axis=0)) / np.where(scale > 0, scale, 1.0)
    xi = x[rep_of]                                       # every image, by its distinct copy
    # MinCovDet runs exact C-steps up to 500 rows (0.05 s) and a subset-merging search above (1-2 s per class,
    # 10-20 s in all on AN2DL); a seeded sample of 500 distinct images per model separates pbc96 junk as well.
    rng = np.random.default_rng(0)

    def sample(rows: np.ndarray) -> np.ndarray:
        return rows if len(rows) <= settings.fit_sample else np.sort(rng.choice(rows, settings.fit_sample, False))

    distance = np.empty(len(labels))
    pooled = None
    small = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        fit = np.unique(rep_of[rows])                    # distinct images carrying label c
        if len(fit) >= settings.min_class_fit * p:
            distance[rows] = _robust_distances(x[sample(fit)], xi[rows])
        else:
            if pooled is None:
                pooled = _robust_distances(x[sample(np.arange(len(x)))], x)
            distance[rows] = pooled[rep_of[rows]]
            small.append(int(c))
    if small:
        notes.append(f"outliers: classes {small} have fewer than {settings.min_class_fit * p} distinct images; "
                     "they were measured against one model of all images")
    return distance
