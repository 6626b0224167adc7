"""A client of Airflow's public REST API, as a user's script drives it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import quote


class Api:
    """A REST client of Airflow's public API, with a JWT from /auth/token."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password},
                               auth=False)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")

    def status_of(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        try:
            self.call(method, path, body)
            return 200, ""
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def wait(self, what, timeout: float, poll: float = 3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(poll)
        raise TimeoutError(f"gave up after {timeout}s")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]

    def finished(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        try:
            return self.wait(lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s, timeout)
        except TimeoutError as error:  # say where the run stood
            raise TimeoutError(f"{error}: {dag_id} {run_id} tasks {self.task_states(dag_id, run_id)}") from None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        found = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}
