"""tfpipe: the pipeline steps, a plain Python library that never imports Airflow.

Each step is one function with explicit inputs and a small frozen result; it runs from
pytest, from the ``tfpipe`` CLI and from Airflow alike.
"""

import os

# Both must be set before TensorFlow is first imported: Keras 2 (tf-keras) is what
# tensorflow-model-optimization supports, and TensorFlow's C++ start-up chatter
# (CUDA probing on CPU machines) would otherwise bury each task's log.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
