"""Watching a federation: operators' metrics, run progress and experiment tracking.

- :mod:`shoal.observe.metrics`: the daemons' Prometheus metrics (``--metrics-port``).
- :mod:`shoal.observe.progress`: the round progress bar of ``wait`` and ``shoal simulate``.
- :mod:`shoal.observe.tracking`: a job's parameters, metrics and model sent to
  TensorBoard, MLflow and Weights & Biases (``tracking:`` in job.yml).

Each module is imported on its own: importing this package imports none of
them (MLflow and W&B are optional and slow to import).
"""
