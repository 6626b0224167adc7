"""``tfpipe datagen``: realistic synthetic tabular data of any size, for benchmarks and tests.

Columns are numeric (normal and log-normal floats), integer (Poisson counts) and categorical
(Zipf-distributed vocabularies); feature values go missing at a configurable rate; the label
is a noisy function of the features, so a model can learn it (binary, multiclass or
regression). Data is generated and written in chunks, so any number of rows fits in memory.

``drift`` moves the distributions (numeric means by ``drift`` standard deviations,
categorical frequencies toward the tail), as tomorrow's data might; ``corrupt`` is the
fraction of rows that get one defect each: text in a numeric column (CSV), an out-of-range
value, infinity, an unseen category or a missing label. The same seed gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

TASKS = ("binary", "multiclass", "regression")
_CLASSES = np.array(["class_a", "class_b", "class_c"])


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # float, lognormal, int, category
    mean: float
    scale: float
    weight: float
    vocabulary: np.ndarray | None = None
    effects: np.ndarray | None = None


def _design(columns: int, seed: int) -> list[_Column]:
    rng = np.random.default_rng([seed, 0])
    features = max(columns - 1, 1)
    n_float = max(1, round(features * 0.45))
    n_int = max(0, round(features * 0.25))
    n_cat = max(0, features - n_float - n_int)
    design = []
    for i in range(n_float):
        kind = "lognormal" if i % 3 == 2 else "float"
        design.append(_Column(f"num_{i:02d}", kind, float(rng.normal(0, 10)), float(rng.uniform(0.5, 5)),
                              float(rng.normal(0, 1))))
    for i in range(n_int):
        design.append(_Column(f"int_{i:02d}", "int", float(rng.uniform(1, 20)), 1.0, float(rng.normal(0, 0.5))))
    for i in range(n_cat):
        size = int(rng.integers(4, 40))
        vocabulary = np.array([f"c{i}_{v:02d}" for v in range(size)], dtype=object)
        design.append(_Column(f"cat_{i:02d}", "category", 0.0, 1.1 + i % 3 * 0.3, 1.0, vocabulary,
                              rng.normal(0, 1, size)))
    return design


def _chunk(design: list[_Column], rows: int, rng: np.random.Generator, task: str, missing: float,
           drift: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    values: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    score = np.zeros(rows)
    for column in design:
        if column.kind in ("float", "lognormal"):
            z = rng.normal(drift, 1.0, rows)
            if column.kind == "lognormal":
                data = np.exp(z * 0.5 + drift * 0.5) * column.scale
            else:
                data = column.mean + column.scale * z
            values[column.name] = np.round(data, 4)
            score += column.weight * z
        elif column.kind == "int":
            data = rng.poisson(column.mean * (1 + 0.5 * drift), rows)
            values[column.name] = data
            score += column.weight * (data - column.mean) / np.sqrt(column.mean)
        else:
            ranks = np.arange(1, len(column.vocabulary) + 1, dtype=np.float64)
            probs = ranks ** -(column.scale / (1 + drift))
            probs /= probs.sum()
            index = rng.choice(len(column.vocabulary), size=rows, p=probs)
            values[column.name] = column.vocabulary[index]
            score += column.effects[index]
        masks[column.name] = rng.random(rows) < missing
    score /= np.sqrt(len(design))
    noise = rng.normal(0, 0.3, rows)
    if task == "binary":
        label = (score + noise > 0).astype(np.int64)
    elif task == "multiclass":
        label = _CLASSES[np.digitize(score + noise, [-0.4, 0.4])]
    else:
        label = np.round(50 + 10 * (score + noise), 4)
    return values, masks, label


def _corrupt(values: dict, masks: dict, label: np.ndarray, design: list[_Column], rng: np.random.Generator,
             fraction: float, text_allowed: bool) -> tuple[dict[str, pa.Array], pa.Array]:
    rows = len(label)
    defects = np.flatnonzero(rng.random(rows) < fraction)
    kinds = rng.integers(0, 5, len(defects))
    arrays = {}
    label_mask = np.zeros(rows, dtype=bool)
    text_cells: dict[str, dict[int, str]] = {}
    numeric = [c for c in design if c.kind != "category"]
    categorical = [c for c in design if c.kind == "category"]
    for row, kind in zip(defects.tolist(), kinds.tolist()):
        if kind == 0 and text_allowed and numeric:
            column = numeric[row % len(numeric)]
            text_cells.setdefault(column.name, {})[row] = "n/a?"
        elif kind == 1 and numeric:
            column = numeric[row % len(numeric)]
            values[column.name][row] = 10**12
        elif kind == 2 and any(c.kind != "int" for c in numeric):
            column = next(c for c in numeric if c.kind != "int")
            values[column.name][row] = np.inf
        elif kind == 3 and categorical:
            column = categorical[row % len(categorical)]
            values[column.name][row] = f"UNSEEN_{row}"
        else:
            label_mask[row] = True
    for column in design:
        data, mask = values[column.name], masks[column.name]
        if column.name in text_cells:
            text = data.astype(object).astype(str)
            for row, cell in text_cells[column.name].items():
                text[row] = cell
            arrays[column.name] = pa.array(text, mask=mask)
        else:
            arrays[column.name] = pa.array(data, mask=mask)
    return arrays, pa.array(label, mask=label_mask)


def generate(
    out: str | Path,
    rows: int,
    columns: int = 20,
    task: str = "binary",
    seed: int = 0,
    missing: float = 0.02,
    drift: float = 0.0,
    corrupt: float = 0.0,
    data_format: str = "auto",
    chunk_rows: int = 100_000,
) -> dict:
    """Write ``rows`` rows of ``columns`` columns (the last one ``label``) to ``out``.

    Returns:
        What was written: path, rows, format, the column names and kinds.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (got {task!r})")
    if rows < 1 or columns < 2:
        raise ValueError("need at least 1 row and 2 columns (one feature and the label)")
    out = Path(out)
    fmt = data_format if data_format != "auto" else ("parquet" if out.suffix in (".parquet", ".pq") else "csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    design = _design(columns, 0)  # the same columns for every seed: --seed draws other rows
    parquet = None
    written = 0
    with out.open("wb") as handle:
        try:
            for index, start in enumerate(range(0, rows, chunk_rows)):
                n = min(chunk_rows, rows - start)
                rng = np.random.default_rng([seed, 1, index])
                values, masks, label = _chunk(design, n, rng, task, missing, drift)
                arrays, label_array = _corrupt(values, masks, label, design, rng, corrupt, text_allowed=fmt == "csv")
                table = pa.table({**arrays, "label": label_array})
                if fmt == "csv":  # chunk by chunk, so a chunk's defects may change its column types
                    pacsv.write_csv(table, handle, pacsv.WriteOptions(include_header=index == 0))
                else:
                    if parquet is None:
                        parquet = pq.ParquetWriter(handle, table.schema)
                    parquet.write_table(table.cast(parquet.schema))
                written += n
        finally:
            if parquet is not None:
                parquet.close()
    return {
        "path": str(out),
        "rows": written,
        "format": fmt,
        "task": task,
        "columns": {c.name: ("string" if c.kind == "category" else "int" if c.kind == "int" else "float")
                    for c in design} | {"label": "float" if task == "regression" else
                                        ("int" if task == "binary" else "string")},
    }


def pipeline_yaml(name: str, source: str, task: str) -> str:
    """A pipeline config for generated data."""
    return (
        f"# Generated by tfpipe datagen.\n"
        f"description: Synthetic {task} data from tfpipe datagen.\n"
        f"model_name: {name}\n"
        f"data:\n  source: {source}\n  split: {{train: 0.8, eval: 0.2}}\n  num_shards: 4\n"
        f"label: label\ntask: {task}\n"
        f"train:\n  epochs: 5\n  batch_size: 256\n  learning_rate: 0.003\n"
    )
