"""Deterministic splits that hold their ratios, whatever the duplicates and the group sizes.

Hashing each row into a split (what TFX's ExampleGen does) gives a split that does not depend
on the order of the rows, but its sizes are a coin toss: 1,000 rows put 20% +- 1.3 points into
eval, and every copy of a duplicated row lands in the same split (a table whose commonest row
has 128 copies moved 10% of its rows at once). So ingest reads the sources twice:

1. The first pass hashes every row (its values, or ``data.split_key``) and counts each hash
   (:class:`Counter`), with the label's class of each row.
2. :func:`plan_cut` gives every *unit* a position in ``[0, 2**53)`` from its hash: a row's
   unit is the row and its copy number (the k-th copy of a row hashes apart from the others,
   so copies spread over the splits like distinct rows); with a split key, a group is one
   unit, weighted by its size, and a row whose key is empty is a unit of its own. The cut
   points on those positions give each split its fraction exactly (classification without a
   split key: within each class, i.e. stratified; counts apportioned by largest remainder so
   the totals hold too). With a split key, groups fall where their middle row falls, so a
   split is off by at most half a group at each cut.
3. The second pass hands out copy numbers in read order (:class:`Splitter`) and sends each
   row to the split its position falls in.

The result depends only on the multiset of rows, not on their order or batching: copies are
identical, so which copy gets which number changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

_MIX = np.uint64(0x9E3779B97F4A7C15)
_NULL_HASH = np.uint64(0x5851F42D4C957F2D)
_UNGROUPED = np.uint64(0xD6E8FEB86659FD93)  # keeps a row's own unit apart from the split keys' units
_POSITION_BITS = 53
END = np.uint64(1 << _POSITION_BITS)  # above every position
BIG_GROUP = 0.02  # a split-key group above this share of rows can move a split by as much


def split_names(fractions: Mapping[str, float]) -> list[str]:
    """A fixed order (train, eval, then the rest by name) so assignment never depends on dict order."""
    return sorted(fractions, key=lambda s: (s != "train", s != "eval", s))


def row_hashes(batch: pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """A 64-bit hash per row of ``columns`` that depends only on the row's values."""
    import pandas as pd

    from tasks.coders import values_of
    from tasks.sources import kind_of

    hashes = np.zeros(batch.num_rows, dtype=np.uint64)
    for name in columns:
        array = batch.column(batch.schema.get_field_index(name))
        if pa.types.is_null(array.type):
            column = np.full(batch.num_rows, _NULL_HASH, dtype=np.uint64)
        elif kind_of(array.type) == "string":
            encoded = array.dictionary_encode()
            uniques = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
            table = pd.util.hash_array(uniques) if len(uniques) else np.zeros(0, dtype=np.uint64)
            indices = np.asarray(encoded.indices.fill_null(0), dtype=np.int64)
            column = table[indices] if len(table) else np.zeros(batch.num_rows, dtype=np.uint64)
        else:
            floating = kind_of(array.type) == "float"
            column = pd.util.hash_array(values_of(array, pa.float64() if floating else pa.int64(),
                                                  "<f8" if floating else "<i8"))
        if array.null_count:
            column = np.where(np.asarray(array.is_null(), dtype=bool), _NULL_HASH, column)
        hashes = (hashes ^ column) * _MIX
        hashes ^= hashes >> np.uint64(29)
    return hashes


def unit_hashes(batch: pa.RecordBatch, columns: Sequence[str], split_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's unit hash, and whether the row belongs to a split-key group (else it is its own unit)."""
    rows = row_hashes(batch, columns)
    if not split_key:
        return rows, np.zeros(len(rows), dtype=bool)
    key = batch.column(batch.schema.get_field_index(split_key))
    grouped = ~np.asarray(key.is_null(), dtype=bool) if key.null_count else np.ones(len(rows), dtype=bool)
    return np.where(grouped, row_hashes(batch, [split_key]), rows ^ _UNGROUPED), grouped


def mix(hashes: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer of ``hash ^ copy * golden``: a well-spread 64-bit value per unit."""
    with np.errstate(over="ignore"):
        z = hashes ^ (copies.astype(np.uint64) * _MIX)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def positions(mixed: np.ndarray) -> np.ndarray:
    return mixed >> np.uint64(64 - _POSITION_BITS)


def _copy_ranks(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct hashes (sorted), how often each occurs, the row of its first occurrence, and each
    row's rank among its copies in this batch."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(ordered)])
    ranks = np.empty(len(hashes), dtype=np.int64)
    ranks[order] = np.arange(len(hashes)) - np.repeat(starts, counts)
    return ordered[starts], counts, order[starts], ranks


@dataclass
class Counter:
    """How often each unit hash occurs (first pass), with each hash's stratum (the label's class)
    and whether it is a split-key group. Memory: 17 bytes per distinct unit."""

    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    strata: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    grouped: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    _parts: list = field(default_factory=list)
    _pending: int = 0

    def add(self, hashes: np.ndarray, strata: np.ndarray, grouped: np.ndarray) -> None:
        distinct, counts, first, _ = _copy_ranks(hashes)
        self._parts.append((distinct, counts, strata[first], grouped[first]))
        self._pending += len(distinct)
        if self._pending > max(1 << 20, len(self.hashes)):
            self.merge()

    def merge(self) -> Counter:
        if not self._parts:
            return self
        parts = [(self.hashes, self.counts, self.strata, self.grouped), *self._parts]
        hashes, counts, strata, grouped = (np.concatenate([p[i] for p in parts]) for i in range(4))
        order = np.argsort(hashes, kind="stable")
        hashes, counts, strata, grouped = hashes[order], counts[order], strata[order], grouped[order]
        starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, np.int64)
        self.hashes, self.counts = hashes[starts], np.add.reduceat(counts, starts) if len(starts) else counts
        self.strata, self.grouped = strata[starts], grouped[starts]
        self._parts, self._pending = [], 0
        return self

    @property
    def rows(self) -> int:
        return int(self.merge().counts.sum())


def apportion(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Integer shares of ``sizes`` close to ``fraction`` of each, summing to ``round(fraction * total)``
    (largest remainder; ties go to the lower stratum)."""
    ideal = sizes * fraction
    base = np.floor(ideal + 1e-9).astype(np.int64)
    extra = int(round(float(sizes.sum()) * fraction)) - int(base.sum())
    if extra > 0:
        remainder = np.where(base < sizes, ideal - base, -1.0)
        base[np.argsort(-remainder, kind="stable")[:extra]] += 1
    elif extra < 0:
        base[np.argsort(ideal - base, kind="stable")[:-extra]] -= 1
    return np.clip(base, 0, sizes)


@dataclass(frozen=True)
class Cut:
    """Cut points per stratum: a unit whose position is below ``thresholds[stratum, j]`` goes to a
    split before ``j + 1``."""

    thresholds: np.ndarray  # (strata, splits - 1) uint64
    big_groups: dict[int, float]  # split-key group hash to its share of the rows, when above BIG_GROUP


def _unit_positions(counter: Counter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unit's position, weight and stratum: a group is one unit, an ungrouped hash one per copy."""
    copies = np.where(counter.grouped, 1, counter.counts)
    hashes = np.repeat(counter.hashes, copies)
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    number = np.arange(len(hashes), dtype=np.int64) - starts
    weights = np.where(np.repeat(counter.grouped, copies), np.repeat(counter.counts, copies), 1)
    return positions(mix(hashes, number)), weights, np.repeat(counter.strata, copies)


def _weighted_cut(units: np.ndarray, weights: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """Cut points on positions so that each unit falls in the split its middle row falls in."""
    order = np.argsort(units, kind="stable")
    units, weights = units[order], weights[order]
    middle = (np.cumsum(weights) - weights / 2) / max(float(weights.sum()), 1.0)
    split = np.searchsorted(cumulative, middle, side="right")
    return np.array([units[np.argmax(split > j)] if (split > j).any() else END
                     for j in range(len(cumulative))], dtype=np.uint64)


def plan_cut(counter: Counter, fractions: Sequence[float], strata: int) -> Cut:
    """The cut points that give each split its fraction of the counted rows (see the module)."""
    counter.merge()
    cumulative = np.cumsum(fractions)[:-1]
    units, weights, unit_strata = _unit_positions(counter)
    thresholds = np.full((max(strata, 1), len(cumulative)), END, dtype=np.uint64)
    total = max(int(weights.sum()), 1)
    big = {int(h): float(c) / total for h, c, g in zip(counter.hashes, counter.counts, counter.grouped)
           if g and c > BIG_GROUP * total}
    if counter.grouped.any():
        thresholds[:] = _weighted_cut(units, weights, cumulative)
        return Cut(thresholds, big)
    sizes = np.bincount(unit_strata, minlength=strata)
    previous = np.zeros(len(sizes), dtype=np.int64)
    by_stratum = [np.sort(units[unit_strata == s]) for s in range(len(sizes))]
    for j, fraction in enumerate(cumulative):
        targets = np.maximum(apportion(sizes, float(fraction)), previous)
        for s, ordered in enumerate(by_stratum):
            if targets[s] < len(ordered):
                thresholds[s, j] = ordered[targets[s]]
        previous = targets
    return Cut(thresholds, big)


class Splitter:
    """Second pass: hands out copy numbers in read order and sends each row to its split."""

    def __init__(self, counter: Counter, cut: Cut) -> None:
        counter.merge()
        # Only rows with copies need numbering; most rows of most tables have none.
        copied = (counter.counts > 1) & ~counter.grouped
        self.copied, self.cut = counter.hashes[copied], cut
        self.seen = np.zeros(len(self.copied), dtype=np.int64)

    def _copy_numbers(self, hashes: np.ndarray, grouped: np.ndarray) -> np.ndarray:
        copies = np.zeros(len(hashes), dtype=np.int64)
        if not len(self.copied):
            return copies
        at = np.minimum(np.searchsorted(self.copied, hashes), len(self.copied) - 1)
        rows = np.flatnonzero((self.copied[at] == hashes) & ~grouped)
        if len(rows):
            distinct, counts, _, ranks = _copy_ranks(hashes[rows])
            where = np.searchsorted(self.copied, distinct)
            before = self.seen[where]
            self.seen[where] += counts
            copies[rows] = before[np.searchsorted(distinct, hashes[rows])] + ranks
        return copies

    def assign(self, hashes: np.ndarray, strata: np.ndarray, grouped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split index and a 64-bit mixed value (for the shard) of each row.

        Call it once per batch, in the order the first pass read them.
        """
        mixed = mix(hashes, self._copy_numbers(hashes, grouped))
        place = positions(mixed)
        limits = self.cut.thresholds[np.clip(strata, 0, len(self.cut.thresholds) - 1)]
        return (place[:, None] >= limits).sum(axis=1).astype(np.int64), mixed
