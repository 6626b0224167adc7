"""A training cluster's ``TF_CONFIG``s, the same whoever starts its tasks: the local launcher
(:mod:`tasks.training.launcher`) or Kubernetes (:mod:`tasks.training.kubernetes`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tf_configs(addresses: Sequence[str], ps: Sequence[str] = (), chief: str | None = None) -> list[dict[str, Any]]:
    """One ``TF_CONFIG`` per task of one cluster, chief first, then the workers, then ``ps``.

    Without ``ps``: the workers of a ``multi_worker`` cluster (worker 0 is the chief). With
    ``ps``: a ``parameter_server`` cluster, whose ``chief`` (the coordinator) is required.
    """
    if not addresses:
        raise ValueError("a cluster needs at least one worker address")
    if ps and not chief:
        raise ValueError("a parameter-server cluster needs a chief (the coordinator)")
    every = [*([chief] if chief else []), *addresses, *ps]
    if len(set(every)) != len(every):
        raise ValueError(f"task addresses must be distinct: {every}")
    cluster: dict[str, list[str]] = {**({"chief": [chief]} if chief else {}), "worker": list(addresses)}
    if ps:
        cluster["ps"] = list(ps)
    return [{"cluster": cluster, "task": {"type": kind, "index": i}}
            for kind in ("chief", "worker", "ps") for i in range(len(cluster.get(kind, [])))]
