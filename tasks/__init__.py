"""tfpipe: the pipeline steps, a plain Python library that never imports Airflow.

Each step is one function with explicit inputs and a small frozen result; it runs from
pytest, from the ``tfpipe`` CLI and from Airflow alike.
"""

import os

# Both must be set before TensorFlow is first imported: Keras 2 (tf-keras) is what
# tensorflow-model-optimization supports, and TensorFlow's C++ start-up chatter would
# otherwise bury each task's log. Level 3 (errors too): TensorFlow 2.16 logs "Unable to
# register cuFFT/cuDNN/cuBLAS factory" at error level on every import, and Airflow shows each
# as an error of a successful task; a real failure still raises its Python exception. Set
# TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
