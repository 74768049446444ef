"""What the `an2dl` preset drew for each image: the record behind the score's breakdown by op.

`an2dl_record(n, seed)` reads the same random numbers `apply_an2dl` uses (`an2dl.draw`: one generator per field,
so image i's draws depend only on the seed and i), without corrupting anything: the bytes of the corrupted set do
not change, and the record of a cached set is the record of its seed.

Each op of each layer is one column, named "augmix.<op>" or "randaugment.<op>":
- drew (N, ops) bool: the image went through that op at least once (AugMix: in any chain, below the chain's
  depth; RandAugment: in an applied slot);
- magnitude (N, ops) float32: the op's strongest magnitude on the image, NaN where it was not drawn or the op has
  none. AugMix: the severity of the call (0.01..0.3). RandAugment, in the op's own units (rand_augment.py's
  factors): solarize its threshold (grey levels; lower inverts more), color its factor, contrast its factor,
  brightness |delta| (grey levels), shear |factor|, translate |fraction of the size|;
- weight (N, ops) float32: AugMix only, the share of the final image that went through the op (its chains'
  Dirichlet weights times 1 - the Beta weight of the original), 0 where not drawn.
`per_image(i)` gives one image's draws as plain data (for scores files and reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import an2dl as A

# RandAugment ops whose magnitude is a strength in its own units; "lower is stronger" for solarize's threshold.
MAGNITUDE_UNITS = {
    "augmix": "severity",
    "randaugment.solarize": "threshold",
    "randaugment.color": "factor",
    "randaugment.contrast": "factor",
    "randaugment.brightness": "|delta| grey levels",
    "randaugment.shear_x": "|factor|",
    "randaugment.shear_y": "|factor|",
    "randaugment.translate_x": "|fraction|",
    "randaugment.translate_y": "|fraction|",
}


def op_names() -> list[str]:
    return ([f"augmix.{o}" for o in A.AUGMIX_OPS] +
            [f"randaugment.{o}" for o in A.RANDAUGMENT_OPS])


def magnitude_unit(op: str) -> str | None:
    if op.startswith("augmix."):
        return MAGNITUDE_UNITS["augmix"]
    return MAGNITUDE_UNITS.get(op)


@dataclass
class DrawRecord:
    """Per image and op: drawn or not, the strongest magnitude, AugMix's mixing share."""
    ops: list[str]
    drew: np.ndarray        # (N, ops) bool
    magnitude: np.ndarray   # (N, ops) float32, NaN when not drawn or without magnitude
    weight: np.ndarray      # (N, ops) float32, AugMix's share of the final image; 0 for RandAugment ops
    seed: int
    preset: str = "an2dl"

    @property
    def n(self) -> int:
        return int(self.drew.shape[0])

    def column(self, op: str) -> int:
        return self.ops.index(op)

    def per_image(self, i: int) -> dict:
        """Image i's draws as plain data: {op: {"magnitude": m, "weight": w}} for the ops it drew."""
        out = {}
        for j in np.flatnonzero(self.drew[i]):
            m, w = self.magnitude[i, j], self.weight[i, j]
            out[self.ops[j]] = {"magnitude": None if np.isnan(m) else round(float(m), 4),
                                **({"weight": round(float(w), 4)} if self.ops[j].startswith("augmix.") else {})}
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """For an npz beside scores.json (`from_arrays` reads it back)."""
        return {"record_ops": np.array(self.ops), "record_drew": self.drew, "record_magnitude": self.magnitude,
                "record_weight": self.weight, "record_seed": np.int64(self.seed)}

    @classmethod
    def from_arrays(cls, d) -> "DrawRecord":
        return cls(ops=[str(o) for o in d["record_ops"]], drew=np.asarray(d["record_drew"], bool),
                   magnitude=np.asarray(d["record_magnitude"], np.float32),
                   weight=np.asarray(d["record_weight"], np.float32), seed=int(d["record_seed"]))


def _augmix_columns(d: A.Draws, n_ops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = d.depth.shape[0]
    drew = np.zeros((n, n_ops), bool)
    mag = np.full((n, n_ops), np.nan, np.float32)
    weight = np.zeros((n, n_ops), np.float32)
    share = d.chain_weight * (1 - d.mix_weight)[:, None]            # (N, chains)
    rows = np.arange(n)
    for c in range(A.NUM_CHAINS):
        in_chain = np.zeros((n, n_ops), bool)
        for level in range(A.MAX_DEPTH):
            active = d.depth[:, c] > level
            op = d.op[:, c, level]
            sel = rows[active]
            in_chain[sel, op[active]] = True
            sev = d.severity[sel, c, level]
            mag[sel, op[active]] = np.fmax(mag[sel, op[active]], sev)
        drew |= in_chain
        weight += np.where(in_chain, share[:, c:c + 1], 0).astype(np.float32)
    return drew, mag, weight


def _randaugment_magnitude(op: str, z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The op's strength for one slot, as rand_augment.py computes its factor (see an2dl._RANDAUGMENT_FNS)."""
    m, s = A.RA_MAGNITUDE, A.RA_STDDEV
    if op == "solarize":
        return np.clip(255 - m * 255 + s * 255 * z[:, 1], 0, 255)
    if op in ("color", "shear_x", "shear_y"):
        return np.clip(m + s * z[:, 0], 0, 1)
    if op == "contrast":
        return (1 - m) + 2 * m * v
    if op == "brightness":
        return np.abs((-m + 2 * m * v) * 255)
    if op in ("translate_x", "translate_y"):
        return np.abs(-m + 2 * m * v)
    return np.full(len(v), np.nan, np.float32)


def _randaugment_columns(d: A.Draws) -> tuple[np.ndarray, np.ndarray]:
    n = d.ra_op.shape[0]
    k = len(A.RANDAUGMENT_OPS)
    drew = np.zeros((n, k), bool)
    mag = np.full((n, k), np.nan, np.float32)
    for slot in range(A.RA_SLOTS):
        applied = d.ra_u[:, slot] <= np.float32(A.RA_RATE)
        for j, op in enumerate(A.RANDAUGMENT_OPS):
            sel = applied & (d.ra_op[:, slot] == j)
            if not sel.any():
                continue
            drew[sel, j] = True
            m = _randaugment_magnitude(op, d.ra_z[sel, slot], d.ra_v[sel, slot]).astype(np.float32)
            # solarize: a lower threshold is stronger; the others: a larger factor
            prev = mag[sel, j]
            mag[sel, j] = np.fmin(prev, m) if op == "solarize" else np.fmax(prev, m)
    return drew, mag


def an2dl_record(n: int, seed: int) -> DrawRecord:
    """The record of `apply_an2dl(images, seed)` for n images."""
    d = A.draw(n, seed)
    am_drew, am_mag, am_w = _augmix_columns(d, len(A.AUGMIX_OPS))
    ra_drew, ra_mag = _randaugment_columns(d)
    return DrawRecord(
        ops=op_names(), drew=np.concatenate([am_drew, ra_drew], axis=1),
        magnitude=np.concatenate([am_mag, ra_mag], axis=1),
        weight=np.concatenate([am_w, np.zeros_like(ra_mag)], axis=1), seed=int(seed))


def concat(records: list[DrawRecord]) -> DrawRecord:
    """Several draws' records one after the other (the rows of draw 0, then draw 1, ...); seed: the first's."""
    first = records[0]
    return DrawRecord(ops=first.ops, drew=np.concatenate([r.drew for r in records]),
                      magnitude=np.concatenate([r.magnitude for r in records]),
                      weight=np.concatenate([r.weight for r in records]), seed=first.seed, preset=first.preset)
