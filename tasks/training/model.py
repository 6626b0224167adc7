"""The model, built from the schema and the statistics, and its serving signatures.

Numeric features are normalized with the train split's mean and standard deviation; a
missing numeric value is imputed with the mean. String features are looked up in their
vocabulary (the schema's domain, else the statistics' values) and embedded; a missing or
unseen value maps to the out-of-vocabulary slot.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.config import TrainConfig

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_]+")
_PLAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,119}$")


def tensor_name(column: str, index: int) -> str:
    """The name of the feature in column ``index`` inside the model: its layers and its input
    in the ``predict_features`` signature. A name of letters, digits and underscores that starts
    with a letter is kept; any other (dots, dashes, spaces, other scripts: TensorFlow refuses
    some as op names and rewrites others as signature keys) becomes
    ``f<index>_<the name, other characters as _>``, and so does a Python keyword (``yield``,
    ``class``: the signature's inputs become Python parameter names)."""
    if _PLAIN_NAME.match(column) and not keyword.iskeyword(column):
        return column
    return f"f{index}_{_NOT_IN_NAMES.sub('_', column)}"[:120]


def tensor_names(spec: ModelSpec) -> dict[str, str]:
    """Each feature column to its :func:`tensor_name`."""
    return {f.name: tensor_name(f.name, i) for i, f in enumerate(spec.features)}

MAX_VOCABULARY = 10_000


@dataclass(frozen=True)
class FeatureSpec:
    """How one input column is parsed and preprocessed."""

    name: str
    kind: str  # "float", "int" or "string"
    mean: float = 0.0
    std: float = 1.0
    vocabulary: tuple[str, ...] = ()

    @property
    def categorical(self) -> bool:
        return self.kind == "string"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model's inputs and read its outputs."""

    task: str
    label: str
    label_kind: str
    label_vocabulary: tuple[str, ...]
    features: tuple[FeatureSpec, ...]
    hidden_units: tuple[int, ...] = (32, 16)
    embedding_dim: int = 4

    @property
    def num_outputs(self) -> int:
        if self.task == "multiclass":
            return len(self.label_vocabulary)
        return 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["features"] = tuple(FeatureSpec(**{**f, "vocabulary": tuple(f["vocabulary"])}) for f in data["features"])
        data["label_vocabulary"] = tuple(data["label_vocabulary"])
        data["hidden_units"] = tuple(data["hidden_units"])
        return cls(**data)


_KIND_OF_TYPE = {1: "string", 2: "int", 3: "float"}  # schema_pb2.FeatureType: BYTES, INT, FLOAT


def _vocabulary(stats_feature, schema, schema_feature) -> tuple[str, ...]:
    if schema_feature.HasField("domain"):
        for domain in schema.string_domain:
            if domain.name == schema_feature.domain:
                return tuple(domain.value)
    if schema_feature.HasField("string_domain"):
        return tuple(schema_feature.string_domain.value)
    buckets = stats_feature.string_stats.rank_histogram.buckets
    return tuple(sorted(b.label for b in buckets))[:MAX_VOCABULARY]


def model_spec_from(schema, statistics, *, label: str, task: str, features: list[str],
                    hidden_units: list[int], embedding_dim: int) -> ModelSpec:
    """Derive the model's inputs from a TFDV schema and the train split's statistics."""
    stats = {f.path.step[0] if f.path.step else f.name: f for f in statistics.datasets[0].features}
    by_name = {f.name: f for f in schema.feature}
    specs = []
    for name in features:
        if name not in by_name:
            raise ValueError(f"feature {name!r} is not in the schema (schema features: {sorted(by_name)})")
        schema_feature, feature_stats = by_name[name], stats.get(name)
        kind = _KIND_OF_TYPE.get(schema_feature.type, "string")
        if kind == "string":
            vocabulary = _vocabulary(feature_stats, schema, schema_feature)
            specs.append(FeatureSpec(name=name, kind=kind, vocabulary=vocabulary))
        else:
            num = feature_stats.num_stats if feature_stats is not None else None
            mean = float(num.mean) if num is not None else 0.0
            std = float(num.std_dev) if num is not None and num.std_dev > 0 else 1.0
            specs.append(FeatureSpec(name=name, kind=kind, mean=mean, std=std))
    label_feature = by_name[label]
    label_kind = _KIND_OF_TYPE.get(label_feature.type, "string")
    label_vocabulary: tuple[str, ...] = ()
    if task in ("multiclass", "binary") and label_kind == "string":
        label_vocabulary = _vocabulary(stats[label], schema, label_feature)
        if task == "binary" and len(label_vocabulary) != 2:
            raise ValueError(f"binary task: label {label!r} has {len(label_vocabulary)} values {label_vocabulary}, not 2")
    elif task == "multiclass":
        raise ValueError(f"multiclass task: label {label!r} must be a string column (it is {label_kind}); "
                         f"declare it one: data.column_types: {{{label}: string}}")
    elif task == "binary":
        num = stats[label].num_stats if label in stats and stats[label].HasField("num_stats") else None
        if num is not None and (num.min < 0 or num.max > 1):  # 0.0 and 1.0, as some exporters write them, pass
            raise ValueError(f"binary task: a numeric label {label!r} must hold 0 and 1 (it holds {label_kind} "
                             f"values from {num.min:g} to {num.max:g}); for other class values declare it text: "
                             f"data.column_types: {{{label}: string}}")
    return ModelSpec(
        task=task,
        label=label,
        label_kind=label_kind,
        label_vocabulary=label_vocabulary,
        features=tuple(specs),
        hidden_units=tuple(hidden_units),
        embedding_dim=embedding_dim,
    )


def parse_spec(spec: ModelSpec, with_label: bool) -> dict[str, Any]:
    """``tf.io.parse_example`` spec; a missing value becomes the mean or the OOV string."""
    import tensorflow as tf

    parse: dict[str, Any] = {}
    for f in spec.features:
        if f.kind == "string":
            parse[f.name] = tf.io.FixedLenFeature([1], tf.string, default_value=[""])
        elif f.kind == "int":
            parse[f.name] = tf.io.FixedLenFeature([1], tf.int64, default_value=[int(round(f.mean))])
        else:
            parse[f.name] = tf.io.FixedLenFeature([1], tf.float32, default_value=[f.mean])
    if with_label:
        dtype = {"string": tf.string, "int": tf.int64, "float": tf.float32}[spec.label_kind]
        parse[spec.label] = tf.io.FixedLenFeature([1], dtype)
    return parse


def raw_input_signature(spec: ModelSpec) -> dict[str, Any]:
    """One rank-1 tensor per feature: what the ``predict_features`` signature takes."""
    import tensorflow as tf

    dtypes = {"string": tf.string, "int": tf.int64, "float": tf.float32}
    names = tensor_names(spec)
    return {f.name: tf.TensorSpec([None], dtypes[f.kind], name=names[f.name]) for f in spec.features}


def build_model(spec: ModelSpec, seed: int):
    """A Keras functional model taking ``{feature: [batch, 1]}``, returning logits.

    Numeric inputs are float32 (see :func:`prepare`), string inputs raw strings.
    """
    import tf_keras as keras

    initializer = keras.initializers.GlorotUniform(seed=seed)
    inputs, encoded = {}, []
    for i, f in enumerate(spec.features):
        name = tensor_name(f.name, i)  # the column's name may hold characters layer names may not
        if f.categorical:
            inputs[f.name] = keras.Input(shape=(1,), dtype="string", name=name)
            ids = keras.layers.StringLookup(vocabulary=list(f.vocabulary), num_oov_indices=1,
                                            name=f"{name}_lookup")(inputs[f.name])
            embedded = keras.layers.Embedding(len(f.vocabulary) + 1, spec.embedding_dim,
                                              embeddings_initializer=keras.initializers.RandomUniform(seed=seed),
                                              name=f"{name}_embedding")(ids)
            encoded.append(keras.layers.Flatten()(embedded))
        else:
            inputs[f.name] = keras.Input(shape=(1,), dtype="float32", name=name)
            encoded.append(keras.layers.Normalization(mean=f.mean, variance=f.std**2, name=f"{name}_norm")(
                inputs[f.name]))
    x = keras.layers.Concatenate()(encoded) if len(encoded) > 1 else encoded[0]
    for i, units in enumerate(spec.hidden_units):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=initializer, name=f"hidden_{i}")(x)
    # float32 logits even under a mixed_float16 policy, so the loss is computed in float32.
    logits = keras.layers.Dense(spec.num_outputs, kernel_initializer=initializer, name="logits", dtype="float32")(x)
    return keras.Model(inputs=inputs, outputs=logits)


# Keras layers whose ops XLA cannot compile (hash-table lookups, string ops).
UNCOMPILABLE_LAYERS = ("StringLookup", "IntegerLookup", "Hashing", "TextVectorization")


def split_at_lookups(model):
    """``(encoder, core)``: the model cut after its lookup layers, for XLA. The encoder (the
    lookups, no weights) maps the model's inputs to the core's; the core holds every weight, the
    same variables as ``model``, and compiles. ``(None, model)`` for a model without lookups.

    Raises:
        ValueError: The model cannot be cut there (a lookup's input is also used elsewhere, or
            the model is not a functional Keras model).
    """
    import tensorflow as tf
    import tf_keras as keras

    lookups = [layer for layer in model.layers if type(layer).__name__ in UNCOMPILABLE_LAYERS]
    if not lookups:
        return None, model
    looked_up = {id(t) for layer in lookups for t in tf.nest.flatten(layer.input)}
    cut = [layer.output for layer in lookups] + [t for t in model.inputs if id(t) not in looked_up]
    try:
        encoder, core = keras.Model(model.inputs, cut), keras.Model(cut, model.outputs)
    except (ValueError, AttributeError) as error:
        raise ValueError(f"train.jit_compile: the model cannot be cut after its lookup layers "
                         f"({', '.join(layer.name for layer in lookups)}) to compile the rest: {error}") from None
    if {id(v) for v in core.trainable_variables} != {id(v) for v in model.trainable_variables}:
        raise ValueError("train.jit_compile: the model's lookup layers hold trainable weights; set jit_compile: off")
    return encoder, core


def load_model_fn(path: str, search_path: tuple[str, ...] = ()):
    """``'package.module:function'`` to the function; errors say what is missing.

    ``search_path`` (the pipeline config's folder) is searched first, so a pipeline can keep
    its model module beside its config.
    """
    import importlib
    import sys

    module_name, _, attribute = path.partition(":")
    for folder in reversed(search_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"train.model_fn {path!r}: cannot import module {module_name!r}: {error}") from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ValueError(f"train.model_fn {path!r}: module {module_name!r} has no function {attribute!r}")
    return fn


def prepare(spec: ModelSpec, parsed: dict[str, Any]) -> dict[str, Any]:
    """Parsed or raw feature tensors to the model's inputs: ``[batch, 1]``, numbers as float32."""
    import tensorflow as tf

    inputs = {}
    for f in spec.features:
        value = parsed[f.name]
        if value.shape.rank == 1:
            value = tf.expand_dims(value, -1)
        inputs[f.name] = value if f.categorical else tf.cast(value, tf.float32)
    return inputs


def build(spec: ModelSpec, params: TrainConfig, search_path: tuple[str, ...] = ()):
    """The pipeline's model: ``train.model_fn`` when set, else built from schema and statistics."""
    if params.model_fn is None:
        return build_model(spec, params.seed)
    model = load_model_fn(params.model_fn, search_path)(spec, params.seed)
    if not callable(model) or not hasattr(model, "trainable_variables"):
        raise ValueError(f"train.model_fn {params.model_fn!r} must return a Keras model (got {type(model).__name__})")
    return model
