"""The benchmark suites on small data: the GUIDE section 4 output contract and the same-work checks."""

import json

from tasks.cli import main


def _check_contract(result, suite, variants):
    assert result["suite"] == suite
    assert result["machine"]["cpus"] >= 1 and "tensorflow" in result["machine"]["versions"]
    assert set(result["variants"]) == variants
    for row in result["variants"].values():
        assert row["throughput"] > 0 and row["unit"] == "rows/s" and row["seconds"] > 0 and row["peak_rss_mb"] > 0
    for name, ratio in result["ratios"].items():
        a, b = name.split("/")
        assert abs(ratio - result["variants"][a]["throughput"] / result["variants"][b]["throughput"]) < 0.01 * ratio


def test_bench_ingest_contract(tmp_path, capsys):
    out = tmp_path / "ingest.json"
    assert main(["bench", "ingest", "--rows", "8000", "--repeat", "1", "--format", "csv", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "ingest", {"ours", "per_row_reference", "floor"})
    assert result["checks"]["same_examples_on_warmup"] is True
    assert result["stages"]["floor_is"] in ("read", "compress")
    assert "ours/per_row_reference" in capsys.readouterr().out


def test_bench_validate_contract(tmp_path):
    out = tmp_path / "validate.json"
    assert main(["bench", "validate", "--rows", "3000", "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "validate",
                    {"ours", "tfdv_default", "beam_all_cores", "in_memory", "tfdv_sampled_10pct", "floor"})
    checks = result["checks"]
    assert checks["ours_same_as_tfdv_default"] == "identical"
    assert checks["in_memory_same_as_tfdv_default"] == "identical"
    assert checks["tfdv_sampled_10pct_same_as_tfdv_default"] != "identical"  # sampling changes the statistics
