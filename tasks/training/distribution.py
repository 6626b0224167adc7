"""Where training runs: this process's role in a cluster, the devices, the ``tf.distribute``
strategy, mixed precision, and the two things every worker does together (adding values across
workers, writing only where the chief may).

* ``one_device``; ``mirrored`` (all local GPUs; on a CPU-only machine the CPU split into
  ``train.cpu_replicas`` logical devices); ``multi_worker`` (``MultiWorkerMirroredStrategy``,
  ``TF_CONFIG`` from the environment or the local workers of :mod:`tasks.training.launcher`);
  ``parameter_server`` (this process is the chief and coordinates with a ``ClusterCoordinator``).
  ``auto`` mirrors over several GPUs, else one device.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a ``TF_CONFIG`` cluster (a lone process is the chief)."""

    task_type: str = "worker"
    index: int = 0
    num_workers: int = 1  # training workers (under parameter_server, the chief coordinates and is not one)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self._has_chief)

    _has_chief: bool = False
    parameter_servers: int = 0

    @property
    def node_id(self) -> str:
        return f"{self.task_type}-{self.index}"

    @property
    def worker_id(self) -> int:
        """This worker's place among all workers (a chief counts first)."""
        if self.task_type == "chief":
            return 0
        return self.index + (1 if self._has_chief else 0)

    @classmethod
    def from_tf_config(cls, raw: str | None) -> WorkerRole:
        if not raw:
            return cls()
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        ps = len(cluster.get("ps", []))
        workers = len(cluster.get("worker", [])) + (0 if ps else len(cluster.get("chief", [])))
        return cls(task.get("type", "worker"), int(task.get("index", 0)), max(workers, 1), "chief" in cluster, ps)


class DevicesAlreadyInitialized(RuntimeError):
    """The device layout a strategy needs can only be set before TensorFlow runs its first op."""


def configure_devices(strategy: str, cpu_replicas: int) -> None:
    """Split the CPU into logical devices for ``mirrored`` on a machine without GPUs.

    Must run before TensorFlow initializes its runtime (the first op); a process that already
    ran TensorFlow code gets a clear error instead of silently training on one replica.
    """
    import tensorflow as tf

    if strategy != "mirrored" or cpu_replicas <= 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
    if len(tf.config.get_logical_device_configuration(cpu) or []) == cpu_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise DevicesAlreadyInitialized(
            f"train.cpu_replicas={cpu_replicas} needs a process in which TensorFlow has not run yet"
        ) from None


def resolve_strategy(name: str) -> str:
    import tensorflow as tf

    if name == "auto":
        return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    return name


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for a config name (``auto`` resolved first)."""
    import tensorflow as tf

    name = resolve_strategy(name)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        jobs = resolver.cluster_spec().as_dict()
        if "ps" not in jobs or resolver.task_type != "chief":
            raise ValueError("train.strategy parameter_server runs in the chief of a cluster with ps tasks "
                             f"(TF_CONFIG jobs: {sorted(jobs) or 'none'}, this task: {resolver.task_type}); "
                             "without TF_CONFIG the pipeline starts such a cluster on this machine")
        return tf.distribute.ParameterServerStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}")


def cpu_has_bfloat16() -> bool:
    """The CPU computes bfloat16 natively (AMX or AVX512-BF16), where oneDNN's bfloat16 kernels pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no native bfloat16 assumed
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def precision_policy(mode: str) -> str:
    """The Keras dtype policy of ``train.mixed_precision``: ``float32``, ``mixed_float16`` (a GPU's
    half precision, with loss scaling) or ``mixed_bfloat16`` (float32's range, no loss scaling).
    ``auto`` takes float16 on a GPU and float32 on a CPU: bfloat16 paid (1.22x) only on a CPU
    with AMX and at large batches (docs/training.md#precision), so a CPU run opts in with ``on``
    or ``bfloat16``."""
    import tensorflow as tf

    if mode in ("float16", "bfloat16"):
        return f"mixed_{mode}"
    if mode == "off":
        return "float32"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if mode == "on" else "float32"


def apply_graph_options(options: dict[str, bool]) -> None:
    """Set Grappler's passes (``train.graph_options``) for every graph this process instantiates
    from now on: a function traced or a SavedModel loaded later is optimized with them."""
    if options:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options(options)


def use_xla(mode: str) -> bool:
    """``train.jit_compile``: ``auto`` compiles on a GPU only, where XLA's fused kernels pay; on
    this project's CPUs the compiled steps measured slower (docs/training.md)."""
    import tensorflow as tf

    return mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))


def sum_across_workers(strategy, role: WorkerRole, values: tuple[float, ...]) -> tuple[float, ...]:
    """Add each worker's values (every worker gets the totals) with one collective."""
    import tensorflow as tf

    local = tf.constant(values, tf.float64)
    summed = strategy.run(
        lambda v: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v), args=(local,))
    # Each local replica contributed the worker's values once: divide by the replicas per worker.
    per_worker = strategy.num_replicas_in_sync // role.num_workers
    totals = strategy.experimental_local_results(summed)[0].numpy() / per_worker
    return tuple(float(v) for v in totals)


class Writer:
    """Where this worker writes: the real folder for the chief, a scratch folder for the others."""

    def __init__(self, role: WorkerRole, base: Path) -> None:
        self.role = role
        self.base = base
        self._scratch: Path | None = None

    def path(self, target: Path) -> Path:
        if self.role.is_chief:
            return target
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.role.node_id}-", dir=self.base))
        return self._scratch / target.name

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
