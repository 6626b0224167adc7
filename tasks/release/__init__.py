"""The release: what decides what production serves.

* :mod:`tasks.release.push`: copy a blessed SavedModel into a claimed version of the model store,
  every file verified;
* :mod:`tasks.release.model_store`: versions and their claims, the champion pointer and its
  two-phase promotion, retention;
* :mod:`tasks.release.models_config`: TF Serving's ``models.config``, written from the pointers;
* :mod:`tasks.release.sync`: ``serving-sync``, a verified local mirror of a store for TF Serving;
* :mod:`tasks.release.serving`: warm-up requests, and the checks that a version serves;
* :mod:`tasks.release.promotion`: promotion, rollback and recovery as plain functions, with the
  registry passed in (no MLflow inside).

The invariants they keep, and the faults tried against them: ``docs/release.md``.
"""
