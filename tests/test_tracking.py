"""Experiment tracking of the training command: MLflow run contents in a temporary store, resumption into the same
MLflow run, TensorBoard unchanged as the default, and clear errors for a bad tracking URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._train_helpers import make_dataset

pytest.importorskip("mlflow")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny_photo_test", "--data", str(data), "--epochs", "2", "--batch-size", "4", "--workers", "0",
            "--no-compile", "--image-size", "24", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    import tests._train_helpers  # noqa: F401  registers tiny_photo_test

    return make_dataset(tmp_path_factory.mktemp("tracking") / "d", per_class=2, val_per_class=1)


def test_mlflow_run_holds_parameters_per_epoch_metrics_confusion_matrix_and_checkpoint(data, tmp_path):
    from mlflow.tracking import MlflowClient

    from if3d.train.cli import run

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    out = tmp_path / "run"
    assert run(_args(data, out, "--tracker", "mlflow", "--tracking-uri", uri)) == 0
    assert not (out / "tensorboard").exists()
    state = json.loads((out / "mlflow_run.json").read_text())
    assert state["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    mlrun = client.get_run(state["run_id"])
    assert mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["model.model"] == "tiny_photo_test"
    assert params["recipe.epochs"] == "2"
    assert params["recipe.batch_size"] == "4"
    assert params["run.tracker"] == "mlflow"
    history = client.get_metric_history(mlrun.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    rows = (out / "metrics.csv").read_text().splitlines()
    last_val = float(rows[-1].split(",")[rows[0].split(",").index("val_accuracy")])
    assert mlrun.data.metrics["val_accuracy"] == pytest.approx(last_val, abs=1e-5)
    for key in ("train_loss", "train_ce", "train_accuracy", "val_balanced_accuracy", "val_f1_macro", "lr"):
        assert key in mlrun.data.metrics, key
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id, "checkpoint")}
    assert names == {"checkpoint/best.pth"}
    cm_files = {a.path for a in client.list_artifacts(mlrun.info.run_id, "confusion_matrix")}
    assert {"confusion_matrix/confusion_matrix_best.json", "confusion_matrix/confusion_matrix_best.png"} <= cm_files
    local = Path(client.download_artifacts(mlrun.info.run_id, "confusion_matrix/confusion_matrix_best.json",
                                           str(tmp_path)))
    cm = json.loads(local.read_text())
    info = json.loads((out / "config.json").read_text())["run"]
    assert cm["class_names"] == info["class_names"]
    assert len(cm["confusion_matrix"]) == len(info["class_names"])
    assert sum(map(sum, cm["confusion_matrix"])) == info["num_val_samples"]  # every validation sample once
    best = Path(client.download_artifacts(mlrun.info.run_id, "checkpoint/best.pth", str(tmp_path / "dl")))
    assert best.read_bytes() == (out / "best.pth").read_bytes()


def test_an_interrupted_mlflow_run_is_killed_then_resumed_into_the_same_run(data, tmp_path):
    from mlflow.tracking import MlflowClient

    from if3d.train.cli import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    assert run(_args(data, out, "--tracker", "mlflow", "--tracking-uri", uri, "--interrupt-after-steps", "5")) == 130
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "KILLED"
    assert run(["--resume", str(out), "--interrupt-after-steps", "100000"]) == 0
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_id, "val_accuracy")}) == [1, 2]
    assert len(client.search_runs([finished.info.experiment_id])) == 1


def test_tensorboard_stays_the_default_and_a_bad_tracking_uri_is_one_line(data, tmp_path, capsys):
    from if3d.train.cli import run

    out = tmp_path / "tb"
    assert run(_args(data, out)) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not (out / "mlflow_run.json").exists()
    cfg = json.loads((out / "config.json").read_text())["config"]["run"]
    assert cfg["tracker"] == "tensorboard"
    assert cfg["tracking_uri"] is None
    capsys.readouterr()
    status = run(_args(data, tmp_path / "bad", "--tracker", "mlflow", "--tracking-uri", "nosuchscheme://x"))
    err = capsys.readouterr().err
    assert status == 2
    assert "--tracking-uri nosuchscheme://x" in err
    assert "Traceback" not in err


def test_an_unwritable_or_misparsed_mlflow_store_is_refused_before_anything_is_written(data, tmp_path, capsys):
    import time

    from if3d.train.cli import run

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "runs" / "r"
    t0 = time.perf_counter()
    status = run(_args(data, out, "--tracker", "mlflow", "--tracking-uri", f"sqlite:///{blocker}/sub/mlflow.db"))
    err = capsys.readouterr().err
    assert status == 2
    assert time.perf_counter() - t0 < 30  # no minutes of retries
    assert "cannot be created" in err
    assert "Traceback" not in err
    assert not out.exists()  # no config.json, no header-only metrics.csv
    # the default store sits beside --out: a '#' or '?' in that path would put it elsewhere, so it is refused
    odd = tmp_path / "exp #2?v=1" / "run"
    assert run(_args(data, odd, "--tracker", "mlflow")) == 2
    err = capsys.readouterr().err
    assert "'?' or '#'" in err
    assert not odd.exists()
    assert not (tmp_path / "exp ").exists()
