"""What counts as an anomaly, and a report a person can act on.

Three comparisons stop a run:

* **Each split against the schema** (TFDV's ``validate_statistics``): types, new or missing
  columns, values outside a domain. A curated schema is authoritative. A recorded or just
  inferred one is a summary of one sample, so rare events are expected in the next: up to
  ``validation.max_unseen_fraction`` of a column's values may be outside its domain (more
  when the train split itself is full of values seen once: Good-Turing's estimate of the
  unseen share), a column may be missing in up to ``validation.max_missing_increase`` more of
  the examples than when it was inferred, and a 0/1 column may hold other integers.
* **Eval against train** (``validation.skew``) and **train against the last run's train**
  (``validation.drift``): two samples of a distribution. The eval split is a random,
  stratified sample of the same source as train, so any difference is sampling noise; what
  noise can do depends on the sample sizes. A feature is flagged only when its distance is
  larger than both a practical effect size (``numeric_ks``, ``categorical_linf``) and what
  chance allows at ``significance`` for those sizes (family-wise over the features and
  categories compared). Numeric features use the Kolmogorov-Smirnov distance that their
  quantile sketches prove (20 quantiles; :func:`ks_distance`): robust to outliers, unlike a
  distance on equal-width histograms whose buckets move with the extremes. Categorical features use the largest difference of a
  category's share (L-infinity), each category tested against its own standard error.

Every row of the report names the comparison, the feature, what was expected and observed,
and the config key and value that would accept it (or the command that resets a recorded
schema, or the file to edit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from tasks.config import DistanceConfig, ValidateConfig

CURATED, RECORDED, INFERRED = "curated", "recorded", "inferred"


@dataclass(frozen=True)
class Where:
    """What a report's hints name: the pipeline (for ``tfpipe schema NAME --reset``), the schema's
    origin and, for a curated schema, its file."""

    pipeline: str
    schema_source: str
    schema_file: str = ""

    def schema_fix(self) -> str:
        if self.schema_source == CURATED:
            return f"edit the curated schema {self.schema_file}"
        return (f"if the data changed on purpose, discard the recorded schema: tfpipe schema {self.pipeline} --reset"
                if self.schema_source == RECORDED else "")


# --- the schema a split is checked against ----------------------------------------------------

def _feature_stats(statistics, name: str):
    if statistics is None or not statistics.datasets:
        return None
    for feature in statistics.datasets[0].features:
        path = ".".join(feature.path.step) if feature.HasField("path") else feature.name
        if path == name:
            return feature
    return None


def _string_counts(feature) -> dict[str, float]:
    if feature is None or not feature.HasField("string_stats"):
        return {}
    return {b.label: b.sample_count for b in feature.string_stats.rank_histogram.buckets}


def unseen_allowance(settings: ValidateConfig, train_statistics, name: str) -> float:
    """The share of a column's values that may be outside its domain: the configured share, or
    twice Good-Turing's estimate of the unseen mass (values seen once in train) when larger."""
    counts = _string_counts(_feature_stats(train_statistics, name))
    total = sum(counts.values())
    singletons = sum(1 for c in counts.values() if c == 1)
    return min(1.0, max(settings.max_unseen_fraction, 2 * singletons / total if total else 0.0))


def checked_schema(schema, source: str, settings: ValidateConfig, train_statistics, examples: int):
    """A copy of ``schema`` to check a split of ``examples`` examples against: the tolerances
    above (not for a curated schema) and TFDV's Jensen-Shannon comparators where ``numeric_jsd``
    asks for them. A column so sparse in train that this split may well hold none of it (fewer
    than 5 values expected) need not be present at all."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    checked = type(schema).FromString(schema.SerializeToString())
    train_examples = train_statistics.datasets[0].num_examples if train_statistics.datasets else 0
    for feature in checked.feature:
        if source != CURATED:
            if feature.HasField("presence") and feature.presence.min_fraction > 0:
                feature.presence.min_fraction = max(0.0, feature.presence.min_fraction - settings.max_missing_increase)
            stats = _feature_stats(train_statistics, feature.name)
            present = _count(stats) / train_examples if stats is not None and train_examples else 0.0
            if feature.presence.min_count and present * examples < 5:
                feature.presence.ClearField("min_count")
            if feature.type == schema_pb2.INT and feature.HasField("bool_domain"):
                feature.ClearField("bool_domain")
            domain = feature.HasField("domain") or feature.HasField("string_domain")
            if domain and not feature.distribution_constraints.HasField("min_domain_mass"):
                allowed = unseen_allowance(settings, train_statistics, feature.name)
                feature.distribution_constraints.min_domain_mass = 1.0 - allowed
        _jsd_comparators(feature, settings)
    return checked


def _jsd_comparators(feature, settings: ValidateConfig) -> None:
    from tensorflow_metadata.proto.v0 import schema_pb2

    if feature.type not in (schema_pb2.INT, schema_pb2.FLOAT):
        return
    for distance, comparator in ((settings.drift, feature.drift_comparator), (settings.skew, feature.skew_comparator)):
        if distance.numeric_jsd is None or comparator.HasField("jensen_shannon_divergence"):
            continue
        threshold = distance.features.get(feature.name, distance.numeric_jsd)
        if threshold is not None:
            comparator.jensen_shannon_divergence.threshold = threshold


# --- two samples of a distribution -------------------------------------------------------------

def _quantile_buckets(feature) -> list[tuple[float, float, float]]:
    if feature is None or not feature.HasField("num_stats"):
        return []
    for histogram in feature.num_stats.histograms:
        if histogram.type == histogram.QUANTILES:
            return [(b.low_value, b.high_value, b.sample_count) for b in histogram.buckets if b.sample_count > 0]
    return []


def _cdf_bounds(buckets, x: float, left: bool) -> tuple[float, float]:
    """The least and the most of the values that can be below (``left``) or at most ``x``, given
    only the quantile buckets: a bucket counts wholly when it ends there, possibly when it starts."""
    total = sum(c for _, _, c in buckets) or 1.0
    surely = sum(c for low, high, c in buckets if (high < x if left else high <= x))
    maybe = sum(c for low, high, c in buckets if (low < x if left else low <= x))
    return surely / total, maybe / total


def ks_distance(current, reference) -> float | None:
    """The Kolmogorov-Smirnov distance two features' quantile sketches prove at least (None
    without one): where one distribution must already be past a point the other cannot have
    reached. Integer columns and point masses (41% zeros) put many quantiles on one value; a
    distance interpolated between quantiles would invent differences there."""
    a, b = _quantile_buckets(current), _quantile_buckets(reference)
    if not a or not b:
        return None
    gap = 0.0
    for x in sorted({v for low, high, _ in a + b for v in (low, high)}):
        for left in (False, True):
            (a_least, a_most), (b_least, b_most) = _cdf_bounds(a, x, left), _cdf_bounds(b, x, left)
            gap = max(gap, a_least - b_most, b_least - a_most)
    return gap


def ks_allowance(n: float, m: float, alpha: float) -> float:
    """The largest KS distance two samples of one distribution reach with probability ``1 - alpha``."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def _count(feature) -> float:
    stats = feature.num_stats if feature.HasField("num_stats") else feature.string_stats
    return float(stats.common_stats.num_non_missing)


@dataclass(frozen=True)
class Distance:
    """One feature's distance between two samples, and what it was allowed."""

    feature: str
    kind: str  # numeric or categorical
    value: float
    allowed: float
    by_chance: float
    effect: float
    detail: str

    @property
    def anomalous(self) -> bool:
        return self.value > self.allowed


def _categorical(name: str, current, reference, effect: float, alpha: float) -> Distance:
    """The category whose share moved most beyond what it was allowed (its own noise, or the effect)."""
    a, b = _string_counts(current), _string_counts(reference)
    n, m = sum(a.values()) or 1.0, sum(b.values()) or 1.0
    values = set(a) | set(b)
    z = NormalDist().inv_cdf(1 - alpha / (2 * max(len(values), 1)))
    rows = []
    for value in values:
        p, q = a.get(value, 0.0) / n, b.get(value, 0.0) / m
        pooled = (a.get(value, 0.0) + b.get(value, 0.0)) / (n + m)
        chance = z * math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        rows.append((abs(p - q) - max(effect, chance), abs(p - q), chance, value, p, q))
    if not rows:
        return Distance(name, "categorical", 0.0, effect, 0.0, effect, "no values")
    _, diff, chance, value, p, q = max(rows, key=lambda r: (r[0], str(r[3])))
    largest = max(r[1] for r in rows)
    return Distance(name, "categorical", round(diff, 4), max(effect, chance), chance, effect,
                    f"{value!r}: {p:.1%} of {int(n)} values against {q:.1%} of {int(m)}; the largest difference "
                    f"of any category's share (L-infinity) is {largest:.3f}")


def compare(current, reference, settings: DistanceConfig, significance: float) -> list[Distance]:
    """Every feature present in both statistics, compared as in the module's docstring."""
    names = [f for f in _names(current) if _feature_stats(reference, f) is not None]
    names = [f for f in names if settings.features.get(f, 0.0) is not None]
    alpha = significance / max(len(names), 1)
    found = []
    for name in names:
        a, b = _feature_stats(current, name), _feature_stats(reference, name)
        if a.HasField("num_stats") and b.HasField("num_stats") and settings.numeric_ks is not None:
            value = ks_distance(a, b)
            if value is None or not _count(a) or not _count(b):
                continue
            effect = settings.features.get(name, settings.numeric_ks)
            chance = ks_allowance(_count(a), _count(b), alpha)
            found.append(Distance(name, "numeric", round(value, 4), max(effect, chance), chance, effect,
                                  f"Kolmogorov-Smirnov distance of the quantiles, {int(_count(a))} against "
                                  f"{int(_count(b))} values"))
        elif a.HasField("string_stats") and b.HasField("string_stats") and settings.categorical_linf is not None:
            effect = settings.features.get(name, settings.categorical_linf)
            found.append(_categorical(name, a, b, effect, alpha))
    return found


def _names(statistics) -> list[str]:
    if statistics is None or not statistics.datasets:
        return []
    return [".".join(f.path.step) if f.HasField("path") else f.name for f in statistics.datasets[0].features]


def distance_rows(split: str, comparison: str, key: str, distances: list[Distance]) -> list[dict[str, str]]:
    """Report rows of the distances that are too large, each with the key that accepts it."""
    rows = []
    for d in distances:
        if not d.anomalous:
            continue
        measure = "KS distance" if d.kind == "numeric" else "L-infinity distance"
        knob = "numeric_ks" if d.kind == "numeric" else "categorical_linf"
        accept = math.ceil(d.value * 105) / 100
        rows.append({
            "split": split, "comparison": comparison, "feature": d.feature,
            "anomaly": f"{'Numeric' if d.kind == 'numeric' else 'Category'} distribution differs",
            "expected": (f"{measure} <= {d.allowed:.3f} (the larger of {key}.{knob} {d.effect:g} and "
                         f"{d.by_chance:.3f}, what chance allows for these sample sizes)"),
            "observed": f"{measure} {d.value:.3f}",
            "detail": d.detail, "severity": "ERROR",
            "fix": f"{key}.features: {{{d.feature}: {accept:g}}}   (null: do not compare {d.feature})",
        })
    return rows


# --- TFDV's anomalies, in words --------------------------------------------------------------

def _fmt(value: float) -> str:
    return f"{value:.6g}"


def expected_of(schema, name: str) -> str:
    """What the schema asks of a feature, in a few words."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    feature = next((f for f in schema.feature if f.name == name), None)
    if feature is None:
        return "not in the schema"
    parts = [schema_pb2.FeatureType.Name(feature.type)]
    if feature.HasField("presence") and feature.presence.min_fraction:
        parts.append(f"present in >= {feature.presence.min_fraction:.0%} of examples")
    values = _domain(schema, feature)
    if values is not None:
        parts.append("one of " + ", ".join(values[:12]) + (f" (+{len(values) - 12} more)" if len(values) > 12 else ""))
        if feature.distribution_constraints.HasField("min_domain_mass"):
            parts.append(f"at most {1 - feature.distribution_constraints.min_domain_mass:.1%} of values outside it")
    for field in ("float_domain", "int_domain"):
        if feature.HasField(field):
            dom = getattr(feature, field)
            if dom.HasField("min") or dom.HasField("max"):
                low = _fmt(dom.min) if dom.HasField("min") else "-inf"
                high = _fmt(dom.max) if dom.HasField("max") else "+inf"
                parts.append(f"in [{low}, {high}]")
    return "; ".join(parts)


def _domain(schema, feature) -> list[str] | None:
    if feature.HasField("domain"):
        found = next((d for d in schema.string_domain if d.name == feature.domain), None)
        return list(found.value) if found is not None else None
    if feature.HasField("string_domain"):
        return list(feature.string_domain.value)
    return None


def observed_of(statistics, name: str) -> str:
    """What the statistics show for a feature, in a few words."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    feature = _feature_stats(statistics, name)
    examples = statistics.datasets[0].num_examples if statistics is not None and statistics.datasets else 0
    if feature is None:
        return f"absent from all {examples} examples"
    parts = [statistics_pb2.FeatureNameStatistics.Type.Name(feature.type)]
    if feature.HasField("num_stats"):
        stats = feature.num_stats
        parts.append(f"present in {stats.common_stats.num_non_missing}/{examples}")
        parts.append(f"min {_fmt(stats.min)}, max {_fmt(stats.max)}, mean {_fmt(stats.mean)}")
    elif feature.HasField("string_stats"):
        stats = feature.string_stats
        parts.append(f"present in {stats.common_stats.num_non_missing}/{examples}")
        top = ", ".join(f"{v.value} ({int(v.frequency)})" for v in stats.top_values[:6])
        parts.append(f"{stats.unique} unique: {top}")
    return "; ".join(parts)


def _unseen(schema, statistics, name: str) -> float:
    feature = next((f for f in schema.feature if f.name == name), None)
    values = _domain(schema, feature) if feature is not None else None
    counts = _string_counts(_feature_stats(statistics, name))
    total = sum(counts.values())
    if values is None or not total:
        return 0.0
    return sum(c for v, c in counts.items() if v not in set(values)) / total


def _schema_fix(reason_types: set[str], schema, statistics, name: str, where: Where, settings: ValidateConfig) -> str:
    """The config key (or command, or file) that accepts a schema anomaly."""
    if where.schema_source != CURATED:
        if reason_types & {"ENUM_TYPE_UNEXPECTED_STRING_VALUES", "LOW_DOMAIN_MASS"}:
            share = math.ceil(_unseen(schema, statistics, name) * 105 * 10) / 1000
            return f"validation.max_unseen_fraction: {max(share, settings.max_unseen_fraction):g}"
        if reason_types & {"FEATURE_TYPE_LOW_FRACTION_PRESENT", "FEATURE_TYPE_NOT_PRESENT"}:
            feature = _feature_stats(statistics, name)
            examples = statistics.datasets[0].num_examples or 1
            present = _count(feature) / examples if feature is not None else 0.0
            needed = math.ceil((1.0 - present) * 105) / 100
            return f"validation.max_missing_increase: {min(needed, 1.0):g}"
        if reason_types & {"UNEXPECTED_DATA_TYPE", "SCHEMA_NEW_COLUMN"}:
            hint = where.schema_fix()
            return hint or "data.column_types or features: the column's type or whether it is used"
    return where.schema_fix() or "the data, or the config (data.column_types, features)"


def schema_rows(split: str, anomalies, schema, statistics, where: Where,
                settings: ValidateConfig) -> list[dict[str, str]]:
    """One row per anomaly TFDV found in a split against the schema (and its JS comparators)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    source = f"the {where.schema_source} schema"
    rows = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        types = {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason}
        comparison = f"{split} against {source}"
        if types & {"COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH", "COMPARATOR_L_INFTY_HIGH"}:
            comparison = f"{split} against {'the last run' if 'drift' in info.description else 'train'} (TFDV)"
        rows.append({
            "split": split, "comparison": comparison, "feature": feature,
            "anomaly": info.short_description, "expected": expected_of(schema, feature),
            "observed": observed_of(statistics, feature),
            "detail": " ".join(r.description for r in info.reason) or info.description,
            "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
            "fix": _schema_fix(types, schema, statistics, feature, where, settings),
        })
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        rows.append({"split": split, "comparison": f"{split} against {source}", "feature": "(dataset)",
                     "anomaly": info.short_description, "expected": "", "observed": "", "detail": info.description,
                     "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity), "fix": where.schema_fix()})
    return rows


def format_report(rows: list[dict[str, Any]]) -> str:
    """The anomalies grouped by comparison, every field whole (nothing cut), each with its fix."""
    if not rows:
        return "no anomalies"
    lines: list[str] = []
    for comparison in dict.fromkeys(r.get("comparison") or r.get("split", "") for r in rows):
        group = [r for r in rows if (r.get("comparison") or r.get("split", "")) == comparison]
        lines.append(f"{comparison}: {len(group)} anomal{'y' if len(group) == 1 else 'ies'}")
        for row in group:
            lines.append(f"  {row['feature']}  {row['anomaly']}")
            for label in ("expected", "observed", "detail"):
                if row.get(label):
                    lines.append(f"      {label + ':':<11}{row[label]}")
            if row.get("fix"):
                lines.append(f"      {'to accept:':<11}{row['fix']}")
    return "\n".join(lines)
