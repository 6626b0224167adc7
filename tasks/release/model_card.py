"""A pushed version's model card: what it was trained on, how, how it did against the trivial
baseline and the champion (overall and per slice), its optimized variants, its blessing, its known
limits, its approval and its champion history. Written as Markdown and as a self-contained HTML
page (the MLflow UI shows it among the push run's artifacts), from the run's own records; nothing
here knows MLflow.

A card is a list of sections; a section holds paragraphs, bullet lists and tables, rendered the
same way to both formats. Every value from data or config is escaped in HTML and kept out of
Markdown's table syntax.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    headers: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Bullets] = field(default_factory=list)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_cell(value: Any) -> str:
    return _number(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.headers) + " |")
                lines.append("|" + "---|" * len(block.headers))
                lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


_CODE = re.compile(r"`([^`<>]+)`")
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:left}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "h2{border-bottom:1px solid #ddd;padding-bottom:.2em}code{background:#f6f6f6}")


def to_html(title: str, sections: list[Section]) -> str:
    """A page with no script and no outside resource."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{esc(h)}</th>" for h in block.headers) if any(block.headers) else ""
                body = "".join("<tr>" + "".join(
                    f"<td class='n'>{esc(_number(v))}</td>" if isinstance(v, (int, float)) and not isinstance(v, bool)
                    else f"<td>{esc(_number(v))}</td>" for v in row) + "</tr>" for row in block.rows)
                parts.append(f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
            else:  # `name` spans as code, once escaped
                parts.append("<p>" + _CODE.sub(r"<code>\1</code>", esc(block)) + "</p>")
    parts.append("</body></html>")
    return "".join(parts)


def data_section(manifest: dict[str, Any], statistics: list[dict[str, Any]]) -> Section:
    """Sources (URI, rows, digest), splits with their label counts, and each feature's statistics."""
    section = Section("Data", [f"{_number(manifest.get('rows', 0))} rows ingested; label `{manifest.get('label')}`."])
    section.blocks.append(Table(("source", "rows", "SHA-256"), [
        (s.get("uri"), s.get("rows"), s.get("sha256") or "-") for s in manifest.get("sources", [])]))
    labels = manifest.get("label_stats") or {}
    classes = labels.get("classes") or []
    rows = []
    for split, info in sorted((manifest.get("splits") or {}).items()):
        counts = ((labels.get("splits") or {}).get(split) or {}).get("class_counts") or []
        shares = ", ".join(f"{c} {n}" for c, n in zip(classes, counts)) or "-"
        rows.append((split, info.get("count"), shares))
    section.blocks.append(Table(("split", "examples", "label counts"), rows))
    if statistics:
        section.blocks.append(Table(("feature", "type", "missing %", "mean / top value", "std / unique"), [
            (s["name"], s["type"], s["missing_pct"], s["center"], s["spread"]) for s in statistics]))
    return section


def evaluation_sections(blessing: dict[str, Any]) -> list[Section]:
    """Overall metrics against the trivial baseline and the champion, per slice, and the checks."""
    trivial = blessing.get("trivial") or {}
    champion = blessing.get("baseline") or {}
    version = champion.get("version")
    overall = Section("Evaluation", [
        f"On the eval split, against the trivial baseline ({trivial.get('description', 'none')}) and "
        + (f"the champion v{version}, evaluated on the same examples." if champion else "no champion (the first push).")])
    metrics = blessing.get("metrics") or {}
    overall.blocks.append(Table(("metric", "model", "trivial baseline", f"champion v{version}" if champion else "champion"), [
        (m, v, (trivial.get("metrics") or {}).get(m), (champion.get("metrics") or {}).get(m))
        for m, v in sorted(metrics.items()) if m != "example_count"]))
    slices = blessing.get("slice_metrics") or {}
    if slices:
        names = sorted({k for values in slices.values() for k in values if k != "example_count"})[:4]
        rows = []
        for name, values in slices.items():
            t = ((trivial.get("slice_metrics") or {}).get(name) or {})
            c = ((champion.get("slice_metrics") or {}).get(name) or {})
            rows.append((name, int(values.get("example_count", 0)),
                         *(f"{_number(values.get(n))} ({_number(t.get(n))} / {_number(c.get(n))})" for n in names)))
        overall.blocks += ["Per slice: model (trivial baseline / champion).", Table(("slice", "examples", *names), rows)]
    verdict = "BLESSED" if blessing.get("blessed") else "NOT BLESSED"
    checks = Section("Blessing", [f"{verdict}: every check below passed or was skipped with its reason."
                                  if blessing.get("blessed") else f"{verdict}."])
    checks.blocks.append(Table(("metric", "slice", "check", "value", "bound", "trivial", "champion", "result"), [
        (c["metric"], c.get("slice") or "(overall)", c["kind"], c.get("value"), c.get("bound"), c.get("trivial"),
         c.get("baseline"), {True: "passed", False: "FAILED", None: f"skipped: {c.get('note') or '-'}"}[c.get("passed")])
        for c in blessing.get("checks", [])]))
    return [overall, checks]


def variants_section(report: dict[str, Any] | None) -> Section:
    if not report:
        return Section("Optimized variants", ["None: the pipeline ran without optimize_model."])
    quality = report.get("quality_metric", "accuracy")
    rows, skipped = [], []
    for name, row in (report.get("variants") or {}).items():
        if row.get("skipped"):
            skipped.append(f"{name}: skipped: {row.get('reason')}")
            continue
        rows.append((name, row.get("size_bytes"), row.get(quality), row.get("quality_drop"), row.get("latency_p50_ms"),
                     "yes" if row.get("kept") else f"no: {row.get('reason')}"))
    section = Section("Optimized variants", [
        "Each variant is measured on the eval split; the kept ones are published under the version's variants/.",
        Table(("variant", "bytes", quality, "quality drop", "p50 ms (batch 1)", "kept"), rows)])
    if skipped:
        section.blocks.append(Bullets(skipped))
    return section


def known_limits(manifest: dict[str, Any], blessing: dict[str, Any], model_spec: dict[str, Any],
                 min_slice_examples: int = 30) -> list[str]:
    """What the records say the model cannot promise."""
    limits = []
    evaluated = int((blessing.get("metrics") or {}).get("example_count") or 0)
    if evaluated:
        limits.append(f"Evaluated on {evaluated:,} held-out examples: metrics differ from the true ones by "
                      f"about ±{1 / max(evaluated, 1) ** 0.5:.2f} (one over the square root of the count).")
    small = [f"{n} ({int(v.get('example_count', 0))})" for n, v in (blessing.get("slice_metrics") or {}).items()
             if v.get("example_count", 0) < min_slice_examples]
    if small:
        limits.append(f"Slices under {min_slice_examples} examples, whose figures are noisy: {', '.join(small)}.")
    vocabularies = [f"{f['name']} ({len(f.get('vocabulary') or [])} values)" for f in model_spec.get("features", [])
                    if f.get("kind") == "string"]
    if vocabularies:
        limits.append("Categories unseen in training are treated as one out-of-vocabulary value: "
                      + ", ".join(vocabularies) + ".")
    if manifest.get("unlabeled_rows"):
        limits.append(f"{manifest['unlabeled_rows']:,} rows without a label were left out of training and evaluation.")
    for warning in (manifest.get("split") or {}).get("warnings") or []:
        limits.append(f"Split: {warning}")
    limits.append("Only the slices listed were checked; groups not among the data's columns were not evaluated.")
    return limits


def feature_statistics(data: bytes) -> list[dict[str, Any]]:
    """Per feature of a statistics file (``DatasetFeatureStatisticsList``, as validate writes it):
    type, share missing, mean and standard deviation (numbers) or top value and unique count."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(data)
    if not stats.datasets:
        return []
    dataset, rows = stats.datasets[0], []
    for feature in dataset.features:
        name = ".".join(feature.path.step) or feature.name
        kind = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type).lower()
        if feature.HasField("num_stats"):
            common, center, spread = feature.num_stats.common_stats, feature.num_stats.mean, feature.num_stats.std_dev
        else:
            strings = feature.string_stats
            common = strings.common_stats
            center = strings.top_values[0].value if strings.top_values else "-"
            spread = int(strings.unique)
        total = common.num_missing + common.num_non_missing
        rows.append({"name": name, "type": kind, "missing_pct": 100.0 * common.num_missing / total if total else 0.0,
                     "center": center, "spread": spread})
    return sorted(rows, key=lambda row: row["name"])


def build_card(facts: dict[str, Any]) -> tuple[str, list[Section]]:
    """The card's title and sections from a push's records (see ``tasks.release_steps``)."""
    model = facts["model"]
    title = (f"Model card: {facts['model_name']} v{facts['version']}" if facts.get("version") is not None else
             f"Model card: {facts['model_name']}, the candidate of run {facts.get('run_id')} (awaiting approval)")
    summary = Section("Summary", [
        f"A {facts['task']} model of `{facts['label']}`, trained by pipeline `{facts['pipeline']}` and pushed "
        f"{facts['pushed_at']} by {facts['by']}.",
        Table(("", ""), [("model store", facts["store_uri"]), ("registry version", facts.get("registry_version")),
                         ("MLflow logged model", facts.get("mlflow_model_id")),
                         ("weights SHA-256", facts.get("weights_sha256")), ("code version", facts.get("code_version")),
                         ("data version", facts.get("data_version")), *sorted((facts.get("links") or {}).items())])])
    training = Section("Model and training", [Table(("", ""), [
        ("features", len(facts["model_spec"].get("features", []))), ("epochs", model.get("epochs")),
        ("steps", model.get("steps")), ("best epoch", model.get("best_epoch")),
        ("stopped early", bool(model.get("stopped_early"))), ("strategy", model.get("strategy")),
        ("replicas x workers", f"{model.get('replicas')} x {model.get('workers', 1)}"),
        ("precision", model.get("precision") or ("mixed" if model.get("mixed_precision") else "float32")),
        *((f"final {k}", v) for k, v in sorted((model.get("final_metrics") or {}).items()))])])
    training.blocks.append("Features the model reads (normalized with the train split's mean and standard "
                           "deviation; strings through their vocabulary):")
    training.blocks.append(Table(("feature", "kind", "mean", "std", "vocabulary"), [
        (f["name"], f.get("kind"), f.get("mean") if f.get("kind") != "string" else None,
         f.get("std") if f.get("kind") != "string" else None, len(f.get("vocabulary") or []) or None)
        for f in facts["model_spec"].get("features", [])]))
    training.blocks.append("Training settings:")
    training.blocks.append(Table(("setting", "value"), [(k, str(v)) for k, v in sorted(facts["train_config"].items())]))
    approval = facts.get("approval")
    approved = Section("Approval", [
        f"{approval['event']} by {approval['by']} at {approval['at']}: {approval.get('reason') or '-'}" if approval
        else "Not required by this pipeline (release.approval)."])
    history = Section("Champion history of this version", [Table(("at", "event", "from", "to", "by", "reason"), [
        (e["at"], e["event"], e.get("from_version"), e.get("to_version"), e["by"], e.get("reason"))
        for e in facts.get("history", [])])] if facts.get("history") else ["No champion change yet."])
    sections = [summary, data_section(facts["manifest"], facts.get("statistics") or []), training,
                *evaluation_sections(facts["blessing"]), variants_section(facts.get("optimized")), approved,
                Section("Known limits", [Bullets(known_limits(facts["manifest"], facts["blessing"], facts["model_spec"]))]),
                history]
    return title, sections


def render(facts: dict[str, Any]) -> tuple[str, str]:
    """The card as Markdown and as HTML."""
    title, sections = build_card(facts)
    return to_markdown(title, sections), to_html(title, sections)


def description(facts: dict[str, Any], card_url: str | None) -> str:
    """The registry version's description: one paragraph, and where the card is."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted((facts["blessing"].get("metrics") or {}).items())
                        if k != "example_count")
    champion = (facts["blessing"].get("baseline") or {}).get("version")
    text = (f"{facts['task']} model of `{facts['label']}` from pipeline `{facts['pipeline']}`, store version "
            f"{facts['version']}; eval: {metrics}" + (f" (champion v{champion} compared)" if champion else "") + ".")
    return text + (f"\n\nModel card: {card_url}" if card_url else "\n\nModel card: the push run's artifact "
                   "model_card/model_card.html")
