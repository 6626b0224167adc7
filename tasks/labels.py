"""The label at ingest: its classes, what its values say about the task, and its statistics.

The first pass sees every label value (:class:`LabelScan`), so a label that does not fit the
task stops the run before anything is written, with what to change: a "binary" label with
three values, a regression target written as text, a label with one value. A binary label
written with two numbers other than 0 and 1 (1 and 2, as many surveys code yes and no) is
taken as two class names, like a multiclass label's codes; the second in sorted order is the
positive class, as it is for text labels ("no"/"yes"). The classes also stratify the split
(:mod:`tasks.splitting`), and the manifest records each split's class counts (or mean and
spread) for the gate's trivial baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.errors import DataError

MAX_CLASSES = 1000


def _dictionary(array: pa.Array) -> tuple[list[Any], np.ndarray]:
    """The distinct values of ``array`` (no nulls) and each row's index into them."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    encoded = array.dictionary_encode()
    return encoded.dictionary.to_pylist(), np.asarray(encoded.indices, dtype=np.int64)


def class_name(value: Any) -> str:
    """A label value as a class name: whole numbers without a fraction (``2.0`` is ``"2"``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(values: list[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass
class LabelScan:
    """What the first pass learns of the label: its classes in the order first seen, or its range."""

    label: str
    task: str
    ids: dict[Any, int] = field(default_factory=dict)
    low: float = float("inf")
    high: float = float("-inf")

    @property
    def classifies(self) -> bool:
        return self.task != "regression"

    def strata(self, array: pa.Array, uri: str) -> np.ndarray:
        """Each row's class id (0 for regression); raises once the label has too many values."""
        if not self.classifies:
            if len(array):
                values = np.asarray(array.cast(pa.float64()), dtype=np.float64)
                self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
            return np.zeros(len(array), dtype=np.int32)
        values, indices = _dictionary(array)
        mapped = np.array([self.ids.setdefault(v, len(self.ids)) for v in values], dtype=np.int32)
        if len(self.ids) > MAX_CLASSES:
            raise DataError(f"{uri}: the label {self.label!r} holds more than {MAX_CLASSES} distinct values "
                            f"(task: {self.task} needs a few classes); if it is a quantity, use task: regression")
        return mapped[indices] if len(mapped) else np.zeros(0, dtype=np.int32)

    def settle(self, kind: str, declared: str | None, uris: str) -> LabelPlan:
        """The label's classes and whether they are written as names; raises when they do not fit the task."""
        where, label = uris, self.label
        if not self.classifies:
            if self.low == self.high:
                raise DataError(f"{where}: the label {label!r} is {self.low:g} in every row: nothing to learn")
            return LabelPlan(self.task, (), False, np.zeros(0, dtype=np.int32))
        classes = sorted(self.ids)
        if len(classes) < 2:
            raise DataError(f"{where}: the label {label!r} holds one value ({_describe(classes)}) in every row; "
                            f"task {self.task} needs at least two classes")
        if self.task == "binary" and len(classes) > 2:
            raise DataError(f"{where}: the label {label!r} holds {len(classes)} values ({_describe(classes)}); "
                            "task binary needs exactly two: use task: multiclass (or regression for a quantity)")
        names = kind != "string" and not (self.task == "binary" and set(classes) <= {0, 1})
        if names and declared in ("int", "float"):
            raise DataError(f"{where}: the label {label!r} is declared {declared} (data.column_types) but holds "
                            f"{_describe(classes)}; a binary label declared a number must hold 0 and 1: remove "
                            f"the declaration to use its values as class names")
        remap = np.empty(len(classes), dtype=np.int32)
        for rank, value in enumerate(classes):
            remap[self.ids[value]] = rank
        return LabelPlan(self.task, tuple(classes), names, remap)


@dataclass(frozen=True)
class LabelPlan:
    """The settled label: its classes (sorted), and whether they are written as names."""

    task: str
    classes: tuple[Any, ...]
    names: bool
    remap: np.ndarray  # first-seen class id to its rank in ``classes``

    def strata(self, array: pa.Array) -> np.ndarray:
        if not self.classes:
            return np.zeros(len(array), dtype=np.int32)
        values, indices = _dictionary(array)
        lookup = {v: i for i, v in enumerate(self.classes)}
        try:
            mapped = np.array([lookup[v] for v in values], dtype=np.int32)
        except KeyError as error:
            raise RuntimeError(f"label value {error} was not seen by the first pass: the source changed "
                               "while it was read") from None
        return mapped[indices] if len(mapped) else np.zeros(0, dtype=np.int32)

    def written(self, array: pa.Array) -> pa.Array:
        """The label as it is written into the examples (class names as text when ``names``)."""
        if not self.names:
            return array
        values, indices = _dictionary(array)
        return pa.array([class_name(v) for v in values], pa.string()).take(pa.array(indices))

    @property
    def class_names(self) -> list[str]:
        return [class_name(c) for c in self.classes]


def split_stats(plan: LabelPlan, split: np.ndarray, strata: np.ndarray, label: pa.Array,
                splits: int) -> np.ndarray:
    """Per split: class counts, or count, sum and sum of squares of the label (summed over batches)."""
    if plan.classes:
        return np.bincount(split * len(plan.classes) + strata,
                           minlength=splits * len(plan.classes)).reshape(splits, -1).astype(np.float64)
    values = np.asarray(label.cast(pa.float64()), dtype=np.float64)
    out = np.zeros((splits, 3))
    for column, weights in enumerate((None, values, values * values)):
        out[:, column] = np.bincount(split, weights=weights, minlength=splits)
    return out


def stats_record(plan: LabelPlan, totals: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The manifest's ``label_stats``: classes and their counts per split, or mean and spread."""
    if plan.classes:
        return {"classes": plan.class_names,
                "splits": {s: {"count": int(row.sum()), "class_counts": [int(c) for c in row]}
                           for s, row in zip(names, totals)}}
    splits = {}
    for s, (count, total, squares) in zip(names, totals):
        mean = total / count if count else 0.0
        splits[s] = {"count": int(count), "mean": mean, "std": float(np.sqrt(max(squares / max(count, 1) - mean**2, 0)))}
    return {"classes": [], "splits": splits}
