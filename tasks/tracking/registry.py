"""The MLflow Model Registry as the release uses it: versions found by their store version, and
the alias ``champion`` that follows the model store's champion."""

from __future__ import annotations

import time
from typing import Any

from tasks.tracking.names import CHAMPION_ALIAS


def registry_version_for(client: Any, name: str, store_version: int) -> str | None:
    """The registry version of ``name`` whose tag ``store_version`` is ``store_version``."""
    found = client.search_model_versions(f"name = '{name}' and tag.store_version = '{store_version}'")
    return str(max(int(v.version) for v in found)) if found else None



class MlflowRegistry:
    """The MLflow Model Registry as :mod:`tasks.release.promotion` uses it (its ``Registry``); the
    client is made on first use."""

    def __init__(self, client_factory) -> None:
        self._factory = client_factory
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def version_for(self, model_name: str, store_version: int) -> str | None:
        return registry_version_for(self.client, model_name, store_version)

    def move_alias(self, model_name: str, registry_version: str, verb: str) -> str | None:
        return move_champion_alias(self.client, model_name, registry_version, verb)

    def remove_alias(self, model_name: str) -> None:
        remove_champion_alias(self.client, model_name)

    def record_event(self, model_name: str, entry: dict[str, Any]) -> None:
        """An audit event (:mod:`tasks.release.audit`) as a tag of the registry versions it moved
        between."""
        tag_audit_event(self.client, model_name, entry)



def remove_champion_alias(client: Any, name: str) -> None:
    """Remove the alias ``champion`` of ``name`` (no champion is served); none there is no error."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        pass  # no registered model, or no alias: nothing to remove



def move_champion_alias(client: Any, name: str, version: str, verb: str) -> str | None:
    """Point the alias ``champion`` at ``version``; the version it leaves is tagged
    ``<verb>_as_champion_at`` and ``<verb>_by_version`` (``replaced`` by a push, ``rolled_back``).

    Returns:
        The registry version that was champion before, or None.
    """
    from mlflow.exceptions import MlflowException

    try:
        previous = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        previous = None
    before = str(previous.version) if previous is not None else None
    if before is not None and before != str(version):
        client.set_model_version_tag(name, before, f"{verb}_as_champion_at",
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        client.set_model_version_tag(name, before, f"{verb}_by_version", str(version))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    return before


def tag_audit_event(client: Any, name: str, entry: dict[str, Any]) -> list[str]:
    """Tag the registry versions of ``entry``'s from and to store versions with it: the key
    ``audit.<time>.<event>``, the value one line (who, from which version to which, why).
    Returns the registry versions tagged."""
    from tasks.release.audit import describe

    stamp = "".join(ch for ch in entry["at"] if ch.isdigit())
    key = f"audit.{stamp}.{entry['event']}"
    tagged = []
    for store_version in {entry.get("from_version"), entry.get("to_version")} - {None}:
        registry_version = registry_version_for(client, name, int(store_version))
        if registry_version is not None:
            client.set_model_version_tag(name, registry_version, key, describe(entry)[:5000])
            tagged.append(registry_version)
    return sorted(tagged)
