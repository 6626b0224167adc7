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

from tasks.config import ConfigError, PipelineConfig
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
