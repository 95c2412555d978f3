"""The benchmark protocol: splits (FER-crossval's sizes, subject independence on real CK+ subjects),
run views, a tiny sweep that is killed and resumed, the Ray executor giving the same numbers as the
local one, and the tables and paired comparisons."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _train_helpers import make_dataset

from if3d.crossval.__main__ import main as crossval
from if3d.crossval.protocols import PooledSample, make_splits, pooled_samples
from if3d.crossval.results import paired_comparison, summary_markdown
from if3d.crossval.views import build_view
from if3d.data.layout import write_subjects

HELPERS = str(Path(__file__).with_name("_train_helpers.py"))


def _disjoint(split) -> None:
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not train & val
    assert not train & test
    assert not val & test


def test_shufflesplit_has_fer_crossval_sizes_and_is_reproducible():
    samples = [PooledSample(f"photos/train/{i % 7}/{i}.jpg", i % 7, "train", None) for i in range(500)]
    splits = make_splits(samples, "shufflesplit", 3)
    assert [len(s.test) for s in splits] == [100] * 3  # test_size 0.2
    assert [len(s.val) for s in splits] == [100] * 3  # 25 % of the 400 left
    for s in splits:
        _disjoint(s)
        assert len(s.train) + len(s.val) + len(s.test) == 500
    assert splits[0].test != splits[1].test
    assert make_splits(samples, "shufflesplit", 3) == splits  # random_state 42 and per-run seeds


def test_subject_protocol_never_puts_a_subject_on_two_sides(data_dir, tmp_path):
    from if3d.data.converters import convert

    root = tmp_path / "ck"
    convert("ckplus", data_dir / "ckplus48", root, verbose=False)
    samples = pooled_samples(root)
    assert len(samples) == 981
    subject = {s.path: s.subject for s in samples}
    splits = make_splits(samples, "subject", 5)
    tested = set()
    for s in splits:
        _disjoint(s)
        train, val, test = ({subject[p] for p in part} for part in (s.train, s.val, s.test))
        assert not train & val
        assert not train & test
        assert not val & test
        tested |= set(s.test)
    assert len(tested) == 981  # the folds cover every photo once
    with pytest.raises(ValueError, match="needs the subject of every photo"):
        make_splits([PooledSample("photos/train/0/a.jpg", 0, "train", None)] * 4, "subject", 2)


def test_a_view_links_the_listed_photos_renders_and_annotations(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, val_per_class=1)
    samples = pooled_samples(root)
    split = make_splits(samples, "official", 1)[0]
    assert set(split.test) == {s.path for s in samples if s.split == "val"}
    view = build_view(root, split, tmp_path / "view")
    photos = sorted(p.relative_to(view / "photos").as_posix() for p in (view / "photos").rglob("*.jpg"))
    assert len(photos) == len(split.train) + len(split.val) + len(split.test)
    one = next((view / "photos" / "test").rglob("*.jpg"))
    assert one.is_symlink()
    assert (view / "renders" / "test" / one.parent.name / (one.stem + ".png")).resolve().is_file()
    assert json.loads((view / "classes.json").read_text()) == json.loads((root / "classes.json").read_text())
    assert (view / "annotations" / "test.csv").is_file()
    mtime = (view / ".view.json").stat().st_mtime_ns
    build_view(root, split, tmp_path / "view")  # the same split again: reused, not rebuilt
    assert (view / ".view.json").stat().st_mtime_ns == mtime


def _sweep_dataset(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "tiny", per_class=4, val_per_class=2)
    rows = [(p.relative_to(root).as_posix(), f"S{i % 6}") for i, p in enumerate(sorted((root / "photos").rglob("*.jpg")))]
    write_subjects(root, rows)
    return root


def _sweep(root: Path, out: Path, *extra: str) -> int:
    return crossval(["--data", str(root), "--models", "tiny_fusion_test", "tiny_photo_test", "--runs", "2",
                     "--protocol", "subject", "--out", str(out), "--threads", "1", "--import", HELPERS,
                     "--epochs", "2", "--batch-size", "8", "--image-size", "24", "--workers", "0", *extra])


def test_a_tiny_sweep_writes_its_tables_and_a_killed_sweep_resumes(tmp_path, capsys):
    root = _sweep_dataset(tmp_path)
    out = tmp_path / "sweep"
    # every run stops after its first optimizer step, as a killed sweep would
    assert _sweep(root, out, "--interrupt-after-steps", "1") == 1
    assert "failed:" in capsys.readouterr().err
    assert not list(out.glob("runs/*/*/run*/result.json"))
    assert all((p / "last.pth").is_file() for p in out.glob("runs/*/*/run*"))
    assert _sweep(root, out) == 0  # resumes every run from its last.pth
    results = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert len(results) == 4
    assert {(r["model"], r["run"]) for r in results} == {(m, r) for m in ("tiny_fusion_test", "tiny_photo_test")
                                                        for r in ("0", "1")}
    assert all(r["epochs_run"] == "2" and r["protocol"] == "subject" for r in results)
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in results)
    summary = (out / "summary.md").read_text()
    assert "| dataset | tiny_fusion_test | tiny_photo_test |" in summary
    assert "## Paired comparisons" in summary
    assert (out / "tiny_accuracy.png").is_file()
    for k in range(2):
        for part in ("train", "val", "test"):
            assert (out / "splits" / "tiny" / "subject" / f"run{k}" / f"{part}.txt").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run*/result.json")}
    assert _sweep(root, out) == 0  # a re-run skips finished runs
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run*/result.json")} == stamp
    capsys.readouterr()
    # the folder belongs to its settings: other epochs, runs or protocol are refused in one line, nothing trains
    for extra, what in ((("--epochs", "3"), "training_options"), (("--runs", "3"), "runs 2 there, 3 here"),
                        (("--protocol", "shufflesplit"), "protocol 'subject' there, 'shufflesplit' here")):
        assert _sweep(root, out, *extra) == 2
        err = capsys.readouterr().err
        assert what in err
        assert "another --out" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run*/result.json")} == stamp
    # a report holds exactly what is asked for
    assert _sweep(root, out, "--report-only", "--models", "tiny_photo_test") == 0
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert {(r["model"], r["run"]) for r in rows} == {("tiny_photo_test", "0"), ("tiny_photo_test", "1")}
    assert _sweep(root, out, "--models", "tiny_photo_test", "tiny_photo_test") == 2
    assert "more than once" in capsys.readouterr().err
    assert _sweep(root, tmp_path / "nothing", "--report-only") == 2
    assert "no sweep to report" in capsys.readouterr().err
    # a misspelt training option is refused before any split or view is written
    assert _sweep(root, tmp_path / "typo", "--epochz", "3") == 2
    assert not (tmp_path / "typo").exists()


def test_the_ray_executor_gives_the_same_numbers_as_the_local_one(tmp_path):
    pytest.importorskip("ray")
    root = _sweep_dataset(tmp_path)
    assert _sweep(root, tmp_path / "local") == 0
    assert _sweep(root, tmp_path / "ray", "--executor", "ray") == 0
    local = pd.read_csv(tmp_path / "local" / "results.csv")
    ray = pd.read_csv(tmp_path / "ray" / "results.csv")
    for col in ("accuracy", "balanced_accuracy", "f1_macro", "val_accuracy_best", "best_epoch"):
        assert local[col].tolist() == ray[col].tolist(), col


def test_paired_comparison_and_the_summary_table():
    rng = np.random.default_rng(0)
    rows = []
    for dataset, shift in (("easy", 0.05), ("same", 0.0)):
        for run in range(5):
            base = 0.6 + rng.normal(0, 0.01)
            noise = 0.0 if dataset == "easy" else rng.normal(0, 0.02)
            rows += [{"dataset": dataset, "model": "a", "run": run, "accuracy": base + shift + noise,
                      "balanced_accuracy": base},
                     {"dataset": dataset, "model": "b", "run": run, "accuracy": base, "balanced_accuracy": base}]
    df = pd.DataFrame(rows)
    cmp = paired_comparison(df, "a", "b").set_index("dataset")
    assert cmp.loc["easy", "mean_diff"] == pytest.approx(0.05)
    assert cmp.loc["easy", "ci_low"] == pytest.approx(0.05)  # no spread: the interval collapses
    assert cmp.loc["easy", "a_wins"] == 5
    d = df[(df.dataset == "same") & (df.model == "a")].accuracy.to_numpy() - df[
        (df.dataset == "same") & (df.model == "b")].accuracy.to_numpy()
    half = 2.7764451051977987 * d.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert cmp.loc["same", "ci_low"] == pytest.approx(d.mean() - half)
    text = summary_markdown(df, [("a", "b")])
    easy = next(line for line in text.splitlines() if line.startswith("| easy |"))
    assert easy.split("|")[2].strip().startswith("**")  # the best mean of the row in bold
    assert "A better" in text
