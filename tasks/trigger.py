"""What a trigger conf may change, checked before anything runs.

Whoever can trigger a DAG (the Airflow trigger form, the REST API) is not whoever wrote the
pipeline's YAML. A conf value is data, never code: a data source is substituted textually
(:func:`tasks.sources.render_sources`), must stay within the sources the YAML allows
(``data.trigger_sources``, by default the patterns of ``data.source`` itself), and a gate
threshold may only be made stricter than the YAML's. Anything else is refused with an error
that says what is allowed, before a step opens its run or reads a byte.
"""

from __future__ import annotations

import re
from typing import Any

from collections.abc import Mapping
from dataclasses import dataclass

from tasks.config import STRATEGIES, ConfigError, PipelineConfig
from tasks.errors import DataError
from tasks.sources import TEMPLATE_VARIABLES, check_template

MAX_SOURCE_LENGTH = 1024
_VARIABLES = re.compile(r"\{\{\s*(" + "|".join(TEMPLATE_VARIABLES) + r")\s*\}\}")


def _pattern(text: str) -> re.Pattern:
    """A source pattern as a regular expression: ``*`` within one path segment, ``**`` across
    segments, a template variable as any one segment's text, everything else literal."""
    parts, at = [], 0
    for match in re.finditer(r"\*\*|\*|\?|" + _VARIABLES.pattern, text):
        parts.append(re.escape(text[at:match.start()]))
        token = match.group(0)
        parts.append(".*" if token == "**" else "[^/]" if token == "?" else "[^/]*")
        at = match.end()
    parts.append(re.escape(text[at:]))
    return re.compile("".join(parts) + r"\Z")


def allowed_sources(config: PipelineConfig) -> list[str]:
    """The patterns a trigger's data source must match."""
    return list(config.data.trigger_sources or config.data.source)


def check_source(config: PipelineConfig, value: Any) -> str:
    """A data source from a trigger conf, returned when the pipeline allows it.

    Raises:
        ConfigError: Not a string, too long, other template syntax than the run's variables,
            a ``.`` or ``..`` segment, or outside every allowed pattern.
    """
    if not isinstance(value, str):
        raise ConfigError(f"trigger conf data_source: must be a string (got {type(value).__name__})")
    if len(value) > MAX_SOURCE_LENGTH or "\x00" in value or "\n" in value:
        raise ConfigError(f"trigger conf data_source: longer than {MAX_SOURCE_LENGTH} characters or with control "
                          "characters")
    try:
        check_template(value)
    except DataError as error:
        raise ConfigError(f"trigger conf {error}") from None
    path = value.split("://", 1)[-1]
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ConfigError(f"trigger conf data_source {value!r}: '.' and '..' are not allowed in a path")
    literal = _VARIABLES.sub("x", value)  # a templated value is allowed where the pattern allows its dates
    allowed = allowed_sources(config)
    if not any(_pattern(pattern).match(literal) for pattern in allowed):
        raise ConfigError(f"trigger conf data_source {value!r} is not among the sources pipeline {config.name!r} "
                          f"allows ({', '.join(allowed)}); its YAML's data.trigger_sources lists them")
    return value


def check_gate_bound(config: PipelineConfig, key: str, value: Any) -> float:
    """A gate bound from a trigger conf, returned when it is at least as strict as the YAML's.

    Args:
        key: ``gate.metrics.<metric>.lower_bound`` or ``...upper_bound``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"trigger conf {key}: must be a number (got {value!r})")
    _, _, metric, bound = key.split(".")
    configured = getattr(config.gate.metrics[metric], bound)
    looser = value < configured if bound == "lower_bound" else value > configured
    if configured is not None and looser:
        word = "below" if bound == "lower_bound" else "above"
        raise ConfigError(f"trigger conf: the {metric} gate cannot be set {word} the pipeline's {configured:g} "
                          f"(got {value:g}); a trigger may only make the gate stricter")
    return float(value)


# Trigger-form parameters: name -> dotted config key. Type, bounds and description come from the
# config model's field (tasks/config.py), so the form cannot disagree with the config.
_PARAMS: dict[str, str] = {"epochs": "train.epochs", "batch_size": "train.batch_size",
                           "learning_rate": "train.learning_rate", "strategy": "train.strategy",
                           "data_source": "data.source"}


_SOURCE_HELP = ("CSV/Parquet URI (path, s3://, gs://, https://, ...) among those the pipeline allows (data.trigger_sources); "
                "{{ ds }} selects a partition.")


_UNIT_METRICS = {"accuracy", "auc", "precision", "recall"}


@dataclass(frozen=True)
class ParamSpec:
    """One field of the Airflow trigger form; the DAG turns it into an ``airflow.sdk.Param``."""

    name: str
    key: str
    default: Any
    type: str
    minimum: float | None
    maximum: float | None
    description: str
    choices: tuple[str, ...] = ()
    exclusive_minimum: bool = False  # the value must be greater than ``minimum``


def _field_schema(key: str) -> tuple[str, float | None, float | None, bool, str]:
    """JSON-schema type, bounds (and whether the lower one is exclusive) and description of a
    config field, read from the config model."""
    import annotated_types

    from tasks.config import PipelineConfig

    model: Any = PipelineConfig
    *parents, name = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    field = model.model_fields[name]
    low = high = None
    exclusive = False
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low, exclusive = rule.gt, True
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    kind = {int: "integer", float: "number"}.get(field.annotation, "string")
    return kind, low, high, exclusive, field.description or ""


def param_specs(config: PipelineConfig) -> list[ParamSpec]:
    """The trigger form of a pipeline: training knobs, the data source and each gate bound."""
    raw = config.model_dump(mode="json")
    specs = []
    for name, key in _PARAMS.items():
        value: Any = raw
        for part in key.split("."):
            value = value[part]
        kind, low, high, exclusive, text = _field_schema(key)
        choices: tuple[str, ...] = ()
        if name == "data_source":
            value, kind, low, high = value[0] if len(value) == 1 else "", "string", None, None
            text = _SOURCE_HELP + " Empty: the sources in the pipeline config."
        if name == "strategy":
            choices = STRATEGIES
        specs.append(ParamSpec(name, key, value, kind, low, high, text, choices, exclusive))
    for metric, bounds in config.gate.metrics.items():
        for bound in ("lower_bound", "upper_bound"):
            value = getattr(bounds, bound)
            if value is not None:
                word = "minimum" if bound == "lower_bound" else "maximum"
                name = f"{metric}_threshold" if bound == "lower_bound" or bounds.lower_bound is None else f"{metric}_{word}"
                # A trigger may make the gate stricter, never looser than the YAML's bound.
                low, high = (value, 1.0 if metric in _UNIT_METRICS else None) if bound == "lower_bound" else (
                    0.0 if metric in _UNIT_METRICS else None, value)
                specs.append(ParamSpec(
                    name, f"gate.metrics.{metric}.{bound}", value, "number", low, high,
                    f"Gate: the eval {metric} {word} a model needs to be pushed (at least as strict as the "
                    f"pipeline's {value:g}).",
                ))
    return specs


def overrides_from_params(config: PipelineConfig, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Airflow params (or ``dag_run.conf``) to dotted config overrides; unknown names are ignored
    here because Airflow itself holds other params (they were validated by the form)."""
    if not params:
        return {}
    overrides = {}
    for spec in param_specs(config):
        if spec.name in params and params[spec.name] is not None:
            value = params[spec.name]
            if spec.name == "data_source":
                if value == "" or [value] == list(config.data.source):
                    continue
                value = [check_source(config, value)]
            elif spec.key.startswith("gate."):
                value = check_gate_bound(config, spec.key, value)
            overrides[spec.key] = value
    return overrides
