"""The DAG-run listener runs in the scheduler: an MLflow server that hangs must not stall it."""

import socket
import threading
from types import SimpleNamespace


def test_a_hung_mlflow_does_not_hold_the_scheduler(tmp_path, monkeypatch):
    from plugins import tfpipe_listener

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts connections and never answers
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{hung.getsockname()[1]}")
    monkeypatch.setenv("TFPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tfpipe_listener, "WAIT_SECONDS", 0.5)
    try:
        tfpipe_listener.on_dag_run_failed(SimpleNamespace(dag_id="penguins", run_id="hung-1"), msg="")
        # The hook returned while its update still waits on the server: it went on in the background.
        assert any(t.name == "tfpipe-end-hung-1" and t.is_alive() for t in threading.enumerate())
    finally:
        hung.close()
