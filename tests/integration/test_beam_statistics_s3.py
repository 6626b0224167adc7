"""``validation.engine: beam`` on examples in S3: the runner gets object-store URIs and writes its
result on S3, so a runner on other machines could run it. Tested with Beam's multi-process
runner (the pipeline's work runs in separate worker processes that read S3 themselves) against a
real S3 endpoint; the statistics are those of the streaming engine."""

from __future__ import annotations

import pytest

from tests.helpers import PENGUINS_CSV, write_pipeline
from tests.servers import moto_s3

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(monkeypatch):
    import boto3

    from tasks import storage

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "beam", "AWS_SECRET_ACCESS_KEY": "beam",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        boto3.client("s3").create_bucket(Bucket="stats")
        try:
            yield "s3://stats"
        finally:
            storage.reset_clients()


def test_beam_on_s3_examples_matches_the_streaming_engine(tmp_path, bucket):
    from tasks import storage
    from tasks.bench.common import compare_statistics
    from tasks.config import load_pipeline
    from tasks.ingest import ingest_examples
    from tasks.validate import load_statistics, validate_examples

    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(PENGUINS_CSV)}))
    examples = ingest_examples(config, config.data.source, f"{bucket}/run/examples", tmp_path / "work")
    results = {}
    for engine, args in (("streaming", []), ("beam", ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                                                      "--direct_num_workers=2"])):
        cache = tmp_path / f"cache-{engine}"
        validation = config.validation.model_copy(update={"engine": engine, "beam_pipeline_args": args})
        results[engine] = validate_examples(
            examples.uri, f"{bucket}/run/statistics-{engine}", f"{bucket}/run/anomalies-{engine}",
            str(tmp_path / "schema.pbtxt"), "species", cache, tmp_path / "work", config=validation, pipeline="tiny")
        if engine == "beam":  # the runner read the shards from S3: nothing was copied here for it
            assert not list(cache.rglob("*.tfrecord.gz"))
            assert not storage.exists(f"{bucket}/run/statistics-beam.beam/train/statistics.tfrecord")
    for split in ("train", "eval"):
        beam = load_statistics(results["beam"].statistics_uri, split, tmp_path / "read")
        streaming = load_statistics(results["streaming"].statistics_uri, split, tmp_path / "read")
        assert compare_statistics(beam, streaming) == []
        assert beam.datasets[0].num_examples == examples.counts[split]
