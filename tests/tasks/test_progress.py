"""Progress of long steps: log records with progress fields, drawn as a bar on a terminal."""

import io
import logging

from tasks.progress import TerminalProgress, install, render


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_render_known_and_unknown_totals():
    line = render({"task": "train epoch 2/5", "done": 30, "total": 120, "unit": "steps", "rate": 12.5,
                   "eta": 75, "detail": "loss 0.3100"})
    assert line == ("train epoch 2/5  [######..................]  25%  30/120 steps  12 steps/s  ETA 1:15  "
                    "loss 0.3100")
    assert render({"task": "ingest", "done": 1_500_000, "unit": "rows", "rate": 410_000.0}) == \
        "ingest  1,500,000 rows  410,000 rows/s"


def test_terminal_handler_redraws_one_line_and_keeps_warnings():
    stream = _Terminal()
    handler = TerminalProgress(stream, min_interval=0)
    logger = logging.getLogger("tasks.test_progress")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for done in (10, 20):
            logger.debug("step %d", done, extra={"progress": {"task": "train", "done": done, "total": 40, "unit": "steps"}})
        logger.info("plain info is not shown")
        logger.warning("disk almost full")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\r\033[K") == 3  # two redraws, one clear before the warning
    assert "50%  20/40 steps" in out and "plain info" not in out
    assert out.endswith("warning: disk almost full\n")


def test_no_bar_when_not_a_terminal():
    assert install(io.StringIO()) is None


def test_ingest_reports_rows_as_it_reads(monkeypatch, caplog, tmp_path, penguins_frame):
    from tasks import ingest
    from tasks.config import load_pipeline
    from tests.helpers import write_pipeline

    monkeypatch.setattr(ingest, "BAR_SECONDS", -1.0)  # a record per batch
    path = tmp_path / "big.csv"
    penguins_frame.sample(20_000, replace=True, random_state=0).to_csv(path, index=False)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(path)}))
    with caplog.at_level(logging.DEBUG, logger="tasks.ingest"):
        ingest.ingest_examples(config, [str(path)], str(tmp_path / "examples"), tmp_path / "work")
    reports = [r.progress for r in caplog.records if hasattr(r, "progress")]
    assert reports and all(r["task"] == "ingest" and r["unit"] == "rows" for r in reports)
    done = [r["done"] for r in reports]
    assert done == sorted(done) and 0 < done[-1] <= 20_000


def test_training_reports_steps_with_rate_and_eta(monkeypatch, caplog, tmp_path):
    from tasks.training import loop as train
    from tasks.bench.common import prepare_examples
    from tasks.config import TrainConfig

    monkeypatch.setattr(train, "BAR_SECONDS", -1.0)  # a record per call of the step function
    data = prepare_examples(tmp_path / "data", 2000, columns=6)
    params = TrainConfig(epochs=2, batch_size=64, steps_per_execution=5, tensorboard=False)
    with caplog.at_level(logging.DEBUG, logger="tasks.training.loop"):
        train.train_model(data.uri, data.spec, params, str(tmp_path / "model"), tmp_path / "ckpt",
                          tmp_path / "cache", tmp_path / "work")
    reports = [r.progress for r in caplog.records if hasattr(r, "progress")]
    total = 2 * (data.counts["train"] // 64)
    done = [r["done"] for r in reports]
    assert done[-1] == total and all(0 < b - a <= 5 for a, b in zip(done, done[1:]))  # every call, in order
    assert {r["task"] for r in reports} == {"train epoch 1/2", "train epoch 2/2"}
    assert all(r["total"] == total and r["eta"] >= 0 and r["rate"] > 0 for r in reports)
