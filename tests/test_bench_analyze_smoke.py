"""``benchmarks/bench_analyze.py --smoke`` runs and reports frames/s per pipeline (figures mean nothing here)."""

from __future__ import annotations

import json


def test_the_analysis_benchmark_smoke_run_reports_every_pipeline(data_dir, tmp_path):
    from benchmarks.bench_analyze import main

    out = tmp_path / "bench.json"
    assert main(["--smoke", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["pipeline"] for r in report["results"]] == ["faces", "photo_model", "default_model", "fusion_model"]
    for r in report["results"]:
        assert r["frames"] == 8
        assert r["frames_per_s"]["median"] > 0
        assert set(r["ms_per_frame_by_stage"]) == {"decode", "faces", "models", "total"}
    assert report["results"][0]["ms_per_frame_by_stage"]["models"] == 0.0  # no model in the faces pipeline
    assert report["smoke"] is True
