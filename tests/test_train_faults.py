"""Training and the test script against the ways a run goes wrong: weights that diverge, a sample that
becomes unreadable mid-run, a full disk, an output path that is a file, a single-class training set, and
datasets whose classes differ from the checkpoint's. Each ends with a clear message and an exit status;
nothing non-finite or half-written is ever saved."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from _train_helpers import CLASS_NAMES_7, TinyFusion, make_dataset

from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.evaluate import run as evaluate_cli
from if3d.train import engine
from if3d.train.cli import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(data: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["--model", "tiny_fusion_test", "--data", str(data), "--epochs", str(epochs), "--batch-size", "8",
            "--workers", "0", "--image-size", "24", "--out", str(out), *extra]


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny", per_class=4, val_per_class=2)


def test_diverged_weights_are_never_saved_and_the_run_fails(data, tmp_path, monkeypatch, capsys):
    """A finite loss with weights that went non-finite in the last step of an epoch (the checks before each
    step only see the loss): nothing is written, exit status 1."""
    real_step = engine.Trainer.train_step

    def step_then_diverge(self, batch, stop, epoch):
        totals = real_step(self, batch, stop, epoch)
        if self.step == self.steps_per_epoch:  # the last step of epoch 1
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return totals

    monkeypatch.setattr(engine.Trainer, "train_step", step_then_diverge)
    out = tmp_path / "run"
    assert run(_args(data, out, "--final-checkpoint", str(tmp_path / "final"))) == 1
    err = capsys.readouterr().err
    assert "weight tensors hold NaN or infinity" in err
    assert not (out / "last.pth").exists()
    assert not (out / "best.pth").exists()
    assert not (tmp_path / "final").exists()


def test_an_unreadable_sample_mid_run_saves_a_resumable_checkpoint_first(data, tmp_path, capsys):
    photo = sorted((data / "photos" / "train" / "3").glob("*.jpg"))[0]
    good = photo.read_bytes()
    photo.write_bytes(good[: len(good) // 3])  # a truncated JPEG, found only when it is read
    out = tmp_path / "run"
    assert run(_args(data, out, "--cache", "off", epochs=2)) == 2
    err = capsys.readouterr().err
    assert str(photo) in err
    assert "resumable checkpoint" in err
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["epoch"] == 0
    photo.write_bytes(good)  # the user fixes the file and continues
    assert run(["--resume", str(out)]) == 0
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run(_args(data, out, epochs=1)) == 0
    before = (out / "last.pth").read_bytes()

    def full_disk(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("if3d.train.rundir.save_checkpoint", full_disk)
    assert run(["--resume", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "Traceback" not in err
    assert (out / "last.pth").read_bytes() == before


def test_an_option_the_model_does_not_take_is_one_line(data, tmp_path, capsys):
    assert run(["--model", "ddamfn", "--data", str(data), "--faithful", "--epochs", "1", "--out",
                str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--model ddamfn does not take these settings" in err
    assert "faithful" in err
    assert "Traceback" not in err


def test_an_output_path_that_is_a_file_is_refused_before_any_work(data, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert run(_args(data, target)) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


def test_a_single_class_training_set_trains_with_a_warning(tmp_path, capsys):
    data = make_dataset(tmp_path / "one", per_class=2, val_per_class=1)
    for c in range(1, 7):
        shutil.rmtree(data / "photos" / "train" / str(c))
    out = tmp_path / "run"
    assert run(_args(data, out, "--batch-size", "2")) == 0
    assert "every training sample has the label 'Neutral'" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["run"]["single_class_training_set"] is True


# ------------------------------------------------------------------------------------------ the test script


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = TinyFusion(num_classes=7).eval()
    path = tmp_path / "tiny.pth"
    save_checkpoint(make_checkpoint(model_name="tiny_fusion_test", model_kwargs={"num_classes": 7},
                                    model_state=model.state_dict(), class_names=CLASS_NAMES_7), path)
    return path


def _evaluate(checkpoint: Path, data: Path, out: Path, *extra: str) -> int:
    return evaluate_cli(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--image-size", "24",
                        "--workers", "0", *extra])


def test_classes_in_another_order_are_remapped_by_name(checkpoint, tmp_path):
    data = make_dataset(tmp_path / "same", per_class=1, val_per_class=2)
    assert _evaluate(checkpoint, data, tmp_path / "a", "--split", "val") == 0
    reference = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # the same photos under a classes.json in reverse order: label folder i now holds class 6 - i
    shuffled = tmp_path / "reversed"
    shutil.copytree(data, shuffled)
    for tree in ("photos", "renders"):
        for split in ("train", "val"):
            root = shuffled / tree / split
            for c in range(7):
                (root / str(c)).rename(root / f"tmp{c}")
            for c in range(7):
                (root / f"tmp{c}").rename(root / str(6 - c))
    (shuffled / "annotations").rename(tmp_path / "no_annotations")  # their paths name the old folders
    (shuffled / "classes.json").write_text(json.dumps(CLASS_NAMES_7[::-1]))
    assert _evaluate(checkpoint, shuffled, tmp_path / "b", "--split", "val") == 0
    got = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert got["class_names"] == CLASS_NAMES_7  # reported under the checkpoint's names
    assert got["accuracy"] == reference["accuracy"]
    assert got["confusion_matrix"] == reference["confusion_matrix"]
    assert got["excluded_samples"] == {}


def test_samples_of_classes_the_model_lacks_are_counted_and_disjoint_classes_refused(checkpoint, tmp_path, capsys):
    data = make_dataset(tmp_path / "eight", per_class=1, val_per_class=2)
    names = [*CLASS_NAMES_7, "Contempt"]
    (data / "classes.json").write_text(json.dumps(names))
    for kind, ext in (("photos", ".jpg"), ("renders", ".png")):
        src = data / kind / "val" / "0"
        dst = data / kind / "val" / "7"
        dst.mkdir()
        for f in sorted(src.glob(f"*{ext}")):
            shutil.copy(f, dst / f"c_{f.name}")
    assert _evaluate(checkpoint, data, tmp_path / "a", "--split", "val") == 0
    assert "2 samples of classes the checkpoint does not have were left out" in capsys.readouterr().err
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["excluded_samples"] == {"Contempt": 2}
    assert m["num_samples"] == 14
    (data / "classes.json").write_text(json.dumps([f"mood{i}" for i in range(8)]))
    assert _evaluate(checkpoint, data, tmp_path / "b", "--split", "val") == 2
    assert "share no class with the checkpoint's" in capsys.readouterr().err


def test_the_test_script_picks_the_held_out_split_that_exists_and_refuses_a_file_as_output(checkpoint, tmp_path,
                                                                                         capsys):
    data = make_dataset(tmp_path / "d", per_class=1, val_per_class=1)  # train and val only, as converted CK+
    assert _evaluate(checkpoint, data, tmp_path / "a") == 0
    assert "evaluating split 'val'" in capsys.readouterr().out
    target = tmp_path / "file_out"
    target.write_text("x")
    assert _evaluate(checkpoint, data, target) == 2
    assert "is a file" in capsys.readouterr().err
    assert _evaluate(checkpoint, data, tmp_path / "c", "--batch-size", "0") == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
