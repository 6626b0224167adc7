"""The trained model as an MLflow model: a ``PythonModel`` over its SavedModel."""

from __future__ import annotations


def saved_model_pyfunc(feature_kinds: dict[str, str]):
    """A ``PythonModel`` over a SavedModel's ``serving_default`` (rows encoded as ``tf.train.Example``).

    Built inside a function so that MLflow pickles the class by value: loading the model needs
    TensorFlow, pandas and mlflow, not tfpipe.
    """
    import mlflow.pyfunc

    class SavedModelPredictor(mlflow.pyfunc.PythonModel):
        def __init__(self, kinds):
            self.kinds = kinds

        def load_context(self, context):
            import tensorflow as tf

            self._serve = tf.saved_model.load(context.artifacts["saved_model"]).signatures["serving_default"]

        def predict(self, context, model_input, params=None):
            import math

            import pandas as pd
            import tensorflow as tf

            frame = pd.DataFrame(model_input)
            missing = sorted(set(self.kinds) - set(frame.columns))
            if missing:
                raise ValueError(f"missing feature columns: {missing}")
            records = []
            for row in frame.to_dict("records"):
                example = tf.train.Example()
                for name, kind in self.kinds.items():
                    value = row[name]
                    if value is None or (isinstance(value, float) and math.isnan(value)):
                        continue  # missing: the model's default (mean, or out of vocabulary)
                    feature = example.features.feature[name]
                    if kind == "string":
                        feature.bytes_list.value.append(str(value).encode())
                    elif kind == "int":
                        feature.int64_list.value.append(int(value))
                    else:
                        feature.float_list.value.append(float(value))
                records.append(example.SerializeToString())
            outputs = self._serve(examples=tf.constant(records, dtype=tf.string))
            columns = {}
            for key, tensor in sorted(outputs.items()):
                value = tensor.numpy()
                if value.dtype == object:
                    value = [v.decode() for v in value.ravel()] if value.ndim == 1 else \
                        [[v.decode() for v in row] for row in value]
                columns[key] = list(value) if getattr(value, "ndim", 1) > 1 else value
            return pd.DataFrame(columns)

    return SavedModelPredictor(feature_kinds)
