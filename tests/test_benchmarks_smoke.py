"""The benchmark command runs end to end in its tiny smoke mode and writes the documented report.

CI runs only this smoke mode; its figures mean nothing (batch 2, one repeat), so nothing here is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import BEGIN, END, update_markdown  # noqa: E402


def _figure(d: dict) -> None:
    assert set(d) >= {"median", "min", "max", "runs"}
    assert d["min"] <= d["median"] <= d["max"]
    assert d["min"] > 0
    assert len(d["runs"]) >= 1


@pytest.mark.slow
def test_smoke_run_writes_the_documented_report(tmp_path, repo_root, data_dir):
    if not (data_dir / "fer2013").is_dir():
        pytest.skip(f"{data_dir / 'fer2013'} is absent")
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written analysis stays\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out), "--markdown", str(md)],
                          cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report  # printed and written
    assert report["mode"] == "smoke"
    assert "ERROR" not in proc.stderr, proc.stderr[-3000:]

    envr = report["environment"]
    assert envr["cpu"]["logical_cores"] >= 1
    assert "avx512_bf16" in envr["cpu"]["flags"]
    assert envr["libraries"]["torch"]
    assert "commit" in envr["git"]
    assert "cpu" in report["devices"]
    if "cuda" not in report["devices"]:
        assert "no CUDA" in report["cuda_note"]

    rows = report["model"]
    for model in ("ddamfn", "if3d_linear"):
        for mode in ("train", "eval"):
            configs = {r["config"]: r for r in rows if r["model"] == model and r["mode"] == mode}
            assert {"fp32_eager", "default"} <= set(configs), (model, mode, sorted(configs))
            for r in configs.values():
                assert "error" not in r, r
                _figure(r["img_pairs_per_s"])
                assert r["peak_rss_mib"] > 0
                assert r["speedup_vs_fp32_eager"] > 0
    ablations = {r["config"] for r in rows if r["model"] == "ddamfn" and r["mode"] == "train"}
    assert {"channels_last", "bf16", "bf16_channels_last"} <= ablations

    (opt,) = report["optimizer"]
    for impl in ("default", "foreach", "fused"):
        _figure(opt[impl]["step_ms"])

    loaders = {(r["path"], r["workers"]): r for r in report["loader"]}
    assert set(loaders) == {("jpeg", 0), ("jpeg", 2), ("cache", 0)}
    for r in loaders.values():
        _figure(r["img_pairs_per_s"])
    assert loaders[("cache", 0)]["dataset"] == "CachedPairedDataset"
    assert loaders[("jpeg", 0)]["dataset"] == "PairedDataset"
    _figure(loaders[("cache", 0)]["augment_img_pairs_per_s"])

    e2e = {(r["model"], r["path"]): r for r in report["e2e"]}
    assert {("ddamfn", "cache"), ("ddamfn", "jpeg")} <= set(e2e)
    for r in e2e.values():
        _figure(r["img_pairs_per_s"])  # the training command's second epoch
        _figure(r["first_epoch_img_pairs_per_s"])
        _figure(r["model_only_img_pairs_per_s"])
        assert r["ratio_e2e_to_model_only"] > 0
        assert r["steps_per_epoch"] == report["settings"]["plan"]["e2e_steps"]
    assert e2e[("ddamfn", "cache")]["dataset"] == "CachedPairedDataset"
    assert e2e[("ddamfn", "jpeg")]["dataset"] == "PairedDataset"

    acc = report["accuracy"]
    assert [r["config"] for r in acc["runs"]] == ["fp32_eager", "default"]
    for r in acc["runs"]:
        assert 0.0 <= r["val_accuracy"] <= 1.0
        assert r["val_samples"] > 0
    assert "within_noise" in acc
    assert 0.0 <= acc["prediction_agreement_default_vs_fp32"] <= 1.0

    assert report["render"]["results"]
    assert report["dataset"]["counts"]["train"] > 0
    targets = report["targets"]
    assert {"cpu_e2e_cache_vs_model_only", "cpu_default_vs_fp32_eager_training"} <= set(targets)

    text = md.read_text()
    assert text.startswith("# Results\n\nhand-written analysis stays\n")
    assert BEGIN in text
    assert END in text
    assert "### Model only" in text
    assert "### End to end" in text


def test_update_markdown_replaces_only_the_generated_block(tmp_path):
    md = tmp_path / "R.md"
    md.write_text(f"intro\n\n{BEGIN}\nold tables\n{END}\n\noutro\n")
    update_markdown(md, {"command": "x", "mode": "full", "model": [], "targets": {"gpu": "none"}})
    text = md.read_text()
    assert text.startswith("intro\n\n" + BEGIN)
    assert text.endswith(END + "\n\noutro\n")
    assert "old tables" not in text
    assert '"gpu": "none"' in text
