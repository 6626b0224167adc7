"""Training: from TFRecord examples to an exported SavedModel.

* :mod:`tasks.training.loop`: :func:`~tasks.training.loop.train_model`, the loop as a table of
  contents of its phases;
* :mod:`tasks.training.distribution`: the cluster role, devices, ``tf.distribute`` strategy,
  mixed precision, chief-only writes;
* :mod:`tasks.training.optimization`: loss, learning-rate schedule, optimizer;
* :mod:`tasks.training.steps`: the compiled train and eval steps, and the batches they read;
* :mod:`tasks.training.checkpoints`: the loop's state, checkpoints, their copy on shared storage;
* :mod:`tasks.training.export`: the SavedModel's signatures and what is published beside it;
* :mod:`tasks.training.inputs`: the input pipeline (shards to batches);
* :mod:`tasks.training.model`: the model spec and the model built from schema and statistics;
* :mod:`tasks.training.launcher`: local worker processes, ``TF_CONFIG`` and Kubernetes' TFJob.
"""
