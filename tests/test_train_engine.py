"""The training engine end to end on a generated dataset with tiny models: run directory, exact
resumption (mid-epoch and at an epoch boundary), Ctrl-C, non-finite loss, photo-only baseline."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from _train_helpers import CLASS_NAMES_7, TinyFusion, make_dataset
from PIL import Image

import networks
from if3d.train.cli import config_from_args, run
from if3d.train.engine import NonFiniteLossError, TrainingInterrupted, fit

TIMING = {"images_per_s", "epoch_time_s"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", per_class=4, val_per_class=2, missing_renders=0)


def _args(data: Path, out: Path, *extra: str, model: str = "tiny_fusion_test", epochs: int = 2) -> list[str]:
    return ["--model", model, "--data", str(data), "--epochs", str(epochs), "--batch-size", "8",
            "--workers", "0", "--image-size", "24", "--out", str(out), *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa["step"] == sb["step"] and all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_run_directory_contents(data, tmp_path):
    out = tmp_path / "run"
    assert run(_args(data, out)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["model"]["model"] == "tiny_fusion_test"
    assert cfg["config"]["data"]["val_split"] == "val"  # resolved, not left to a default
    assert cfg["config"]["runtime"]["amp"] in ("off", "bf16")  # fast paths resolved for the device
    # not a papers' setting: the attention loss defaults to 0.01, the other terms to the criterion's
    assert cfg["run"]["criterion"] == {"name": "if3d", "weights": {"ce": 1.0, "attention": 0.01, "alignment": 0.1,
                                                                  "va": 1.0}}
    assert cfg["run"]["git"]["commit"]
    assert cfg["run"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert cfg["run"]["num_train_samples"] == 28
    assert cfg["run"]["num_val_samples"] == 14
    assert cfg["run"]["steps_per_epoch"] == 3
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "step", "lr", "lr_mean", "lr_max", "train_loss", "train_ce", "train_attention",
                             "train_alignment", "train_va", "train_accuracy", "val_accuracy", "val_balanced_accuracy",
                             "val_f1_macro", "images_per_s", "epoch_time_s"]  # one column per criterion term
    for col in ("train_loss", "train_ce", "train_attention", "train_alignment", "train_va", "val_accuracy",
                "val_balanced_accuracy", "val_f1_macro", "lr", "lr_mean", "lr_max", "images_per_s"):
        assert all(r[col] != "" for r in rows), col
    assert float(rows[0]["train_va"]) > 0  # half of the photos have valence/arousal
    # the cyclic schedule's peak and mean over the steps of the epoch (1e-6, 1e-4, 1e-6), not one end point
    assert float(rows[0]["lr_max"]) == pytest.approx(1e-4)
    assert float(rows[0]["lr_mean"]) == pytest.approx((2e-6 + 1e-4) / 3)
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    for name in ("last.pth", "best.pth"):
        ck = torch.load(out / name, weights_only=True)
        assert ck["format"] == "if3d-toolkit"
        assert ck["model_name"] == "tiny_fusion_test"
        assert ck["class_names"] == CLASS_NAMES_7
        assert set(ck["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert torch.load(out / "last.pth", weights_only=True)["optimizer"]  # resumable
    assert torch.load(out / "best.pth", weights_only=True)["optimizer"] is None  # weights only
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2
    for png in ("confusion_matrix_best.png", "confusion_matrix_best_normalized.png"):
        with Image.open(out / png) as im:
            im.verify()
        with Image.open(out / png) as im:
            assert im.format == "PNG"
            assert min(im.size) > 200
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # atomic writes leave no temporaries


@pytest.mark.parametrize("stop_at", [4, 3], ids=["mid-epoch", "epoch-boundary"])
def test_interrupted_run_resumes_to_the_same_result(data, tmp_path, stop_at):
    assert run(_args(data, tmp_path / "a")) == 0
    assert run(_args(data, tmp_path / "b", "--interrupt-after-steps", str(stop_at))) == 130
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=True)["step"] == stop_at
    assert run(["--resume", str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a" / "last.pth", tmp_path / "b" / "last.pth")
    assert _same_weights(tmp_path / "a" / "best.pth", tmp_path / "b" / "best.pth")
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")


class _SigintAt(torch.utils.data.Dataset):
    """Sends SIGINT to this process when sample number ``at`` is read (like a Ctrl-C mid-epoch)."""

    def __init__(self, base, at: int) -> None:
        self.base, self.at, self.reads = base, at, 0
        self.labels, self.class_names = base.labels, base.class_names

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.base[i]


def test_sigint_saves_a_resumable_checkpoint(data, tmp_path):
    from if3d.data.dataset import PairedDataset

    train = PairedDataset(data, "train", image_size=24)
    full = config_from_args(_args(data, tmp_path / "a"))
    fit(full, train_dataset=train)
    cfg = config_from_args(_args(data, tmp_path / "b"))
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 1, step 2"):
        fit(cfg, train_dataset=_SigintAt(train, at=12))  # during the second batch of 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = config_from_args(["--resume", str(tmp_path / "b" / "last.pth")])
    fit(resumed, train_dataset=train)
    assert _same_weights(tmp_path / "a" / "last.pth", tmp_path / "b" / "last.pth")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    real = networks.create_model
    monkeypatch.setattr(networks, "create_model",
                        lambda name, **kw: TinyFusion(nan_after=4, **kw) if name == "tiny_fusion_test" else real(name, **kw))
    out = tmp_path / "run"
    cfg = config_from_args(_args(data, out, epochs=3))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, step 5 \(loss=nan"):
        fit(cfg)
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["epoch"] == 1
    assert ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert len(_rows(out / "metrics.csv")) == 1
    monkeypatch.setattr(networks, "create_model", real)


def test_cli_exit_codes_and_final_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    final = tmp_path / "final"
    assert run(_args(data, out, "--final-checkpoint", str(final), epochs=1)) == 0
    assert (final / "tiny_fusion_test.pth").is_file()
    assert torch.load(final / "tiny_fusion_test.pth", weights_only=True)["format"] == "if3d-toolkit"
    assert run(_args(data, out, epochs=1)) == 2  # refuses to overwrite a run
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_from_args(["--resume", str(out), "--lr", "1"])
    assert "cannot change: lr" in capsys.readouterr().err


def test_photo_only_baseline_sees_the_fusion_samples(tmp_path, capsys):
    data = make_dataset(tmp_path / "gaps", per_class=3, val_per_class=2, missing_renders=3)
    assert run(_args(data, tmp_path / "fail", epochs=1)) == 2
    assert "3 of 21 photos" in capsys.readouterr().err  # missing renders are an error by default
    assert run(_args(data, tmp_path / "fusion", "--skip-missing-renders", epochs=1)) == 0
    assert run(_args(data, tmp_path / "photo", "--skip-missing-renders", model="tiny_photo_test", epochs=1)) == 0
    fusion = json.loads((tmp_path / "fusion" / "config.json").read_text())["run"]
    photo = json.loads((tmp_path / "photo" / "config.json").read_text())["run"]
    assert fusion["num_train_samples"] == photo["num_train_samples"] == 18
    assert photo["input_streams"] == ["photo"]
    assert fusion["train_data_report"]["counts"]["missing_render"] == 3


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--amp", "bf16", "--channels-last", "--fused-optimizer"], ("bf16", True, "fused")),
        (["--amp", "off", "--no-channels-last", "--foreach"], ("off", False, "foreach")),
    ],
    ids=["bf16-channels_last-fused", "fp32-foreach"],
)
def test_fast_paths_are_switchable(data, tmp_path, flags, expected):
    out = tmp_path / "run"
    assert run(_args(data, out, *flags, epochs=1)) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]["runtime"]
    assert (cfg["amp"], cfg["channels_last"], cfg["optimizer_impl"]) == expected
    ck = torch.load(out / "last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _can_compile_on_cpu() -> bool:
    import sysconfig

    from if3d.runtime.device import find_cxx

    return find_cxx() is not None and Path(sysconfig.get_paths()["include"], "Python.h").exists()


@pytest.mark.skipif(not _can_compile_on_cpu(), reason="torch.compile's CPU backend needs a C++ compiler and Python headers")
def test_compiled_training_lands_near_eager_and_saves_plain_checkpoints(data, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert run(_args(data, eager, "--no-compile", epochs=1)) == 0
    assert run(_args(data, compiled, "--compile", epochs=1)) == 0
    assert json.loads((compiled / "config.json").read_text())["run"]["compile"] == "on (asked for)"
    e, c = _rows(eager / "metrics.csv")[-1], _rows(compiled / "metrics.csv")[-1]
    # same seed and data; Inductor draws dropout masks from its own generator, so the two runs are
    # not bit-equal, but a broken compiled backward would not land near the eager loss
    assert float(c["train_loss"]) == pytest.approx(float(e["train_loss"]), rel=0.25)
    se = torch.load(eager / "last.pth", weights_only=True)["model"]
    sc = torch.load(compiled / "last.pth", weights_only=True)["model"]
    assert list(sc) == list(se)  # no torch.compile "_orig_mod." prefixes in the checkpoint
    assert all(torch.isfinite(v).all() for v in sc.values() if v.is_floating_point())
    assert any(not torch.equal(sc[k], se[k]) for k in se)  # it did train, differently


def test_default_short_run_is_not_compiled(data, tmp_path):
    out = tmp_path / "run"
    assert run(_args(data, out, epochs=1)) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["runtime"]["compile"] is False
    assert info["run"]["compile"].startswith("auto: off")
    assert "too few" in info["run"]["compile"]


def test_pretrained_backbone_is_loaded(spec_dir, tmp_path):
    from networks import create_model, load_weights

    mfn = spec_dir / "mfn_pickled_module.pth"  # the format of DDAMFN's MFN_msceleb.pth
    data = make_dataset(tmp_path / "d112", per_class=2, val_per_class=1, size=112)
    out = tmp_path / "run"
    # lr 0: the trained parameters must still be the pretrained ones (DDAMFN's setting: MixedFeatureNet)
    assert run(["--model", "ddamfn", "--preset", "ddamfn", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                "--workers", "0", "--out", str(out), "--pretrained", str(mfn), "--scheduler", "none", "--lr", "0"]) == 0
    assert "mfn_module" in json.loads((out / "config.json").read_text())["run"]["pretrained_report"]
    reference = create_model("ddamfn", num_classes=7)
    load_weights(reference, mfn)
    ck = torch.load(out / "last.pth", weights_only=True)
    backbone = [k for k, _ in reference.named_parameters() if k.startswith("backbone.")]
    assert backbone
    for k in backbone:
        assert torch.equal(ck["model"][k], reference.state_dict()[k]), k


def test_a_random_start_says_so_once_and_the_run_records_what_it_started_from(data, tmp_path, capsys):
    from _train_helpers import TINY_BACKBONE

    out = tmp_path / "run"
    # a backbone without packaged weights: the default preset's ImageNet start does not apply
    assert run(["--model", "ddamfn", "--backbone", TINY_BACKBONE, "--data", str(data), "--epochs", "2",
                "--batch-size", "8", "--workers", "0", "--image-size", "24", "--no-compile", "--out", str(out)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "random weights" in line]
    assert notes == [f"note: ddamfn starts from random weights ({TINY_BACKBONE} has no packaged weights); "
                     "--pretrained PATH starts from a weight file, --backbone mobilenetv2 --pretrained imagenet "
                     "from ImageNet"]
    info = json.loads((out / "config.json").read_text())
    model, recipe = info["config"]["model"], info["config"]["recipe"]
    assert (model["backbone"], model["num_heads"], model["pretrained"], recipe["preset"]) == (
        TINY_BACKBONE, 2, None, "fer_imagenet")
    assert (info["run"]["backbone"], info["run"]["pretrained_file"]) == (TINY_BACKBONE, None)
    assert info["run"]["model_kwargs"] == {"num_classes": 7, "num_heads": 2, "backbone": TINY_BACKBONE}
    best = torch.load(out / "best.pth", weights_only=True)
    assert (best["config"]["model"]["backbone"], best["config"]["recipe"]["preset"]) == (TINY_BACKBONE, "fer_imagenet")
    assert run(["--resume", str(out), "--epochs", "3"]) == 0  # a resumed run starts from its checkpoint
    assert "random weights" not in capsys.readouterr().out


def test_cache_gives_the_same_training_and_stale_caches_are_refused(tmp_path, capsys):
    from if3d.data.cache import build_cache

    data = make_dataset(tmp_path / "cached", per_class=3, val_per_class=2)
    for split in ("train", "val"):
        build_cache(data, split, 24, progress=False)
    assert run(_args(data, tmp_path / "jpeg", "--cache", "off", epochs=1)) == 0
    capsys.readouterr()
    assert run(_args(data, tmp_path / "cache", epochs=1)) == 0
    assert "using the pre-decoded cache" in capsys.readouterr().out
    assert _same_weights(tmp_path / "jpeg" / "last.pth", tmp_path / "cache" / "last.pth")
    photo = next((data / "photos" / "train" / "0").iterdir())
    Image.new("RGB", (24, 24), (9, 9, 9)).save(photo)
    os.utime(photo, ns=(1, 1))  # a changed source file
    assert run(_args(data, tmp_path / "stale", epochs=1)) == 2
    assert "stale" in capsys.readouterr().err


def test_early_stopping_ends_the_run_and_a_resume_does_not_continue_it(data, tmp_path, capsys):
    out = tmp_path / "run"
    # lr 0: validation cannot improve after the first epoch
    assert run(_args(data, out, "--lr", "0", "--scheduler", "none", "--early-stopping-patience", "2",
                     "--select-metric", "balanced_accuracy", epochs=6)) == 0
    assert "stopped early" in capsys.readouterr().out
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    best = torch.load(out / "best.pth", weights_only=True)["metrics"]["best"]
    assert (best["metric"], best["epoch"]) == ("balanced_accuracy", 1)
    assert run(["--resume", str(out)]) == 0  # nothing left to do
    assert len(_rows(out / "metrics.csv")) == 3


def test_cosine_schedule_with_warm_up():
    from if3d.train.config import config_from_preset
    from if3d.train.engine import build_optimizer, build_scheduler

    cfg = config_from_preset("if3d", scheduler="cosine", lr=1e-3, epochs=2, warmup_steps=4)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, [p], torch.device("cpu"))
    sched, interval = build_scheduler(cfg, opt, steps_per_epoch=10)
    assert interval == "step"
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)  # 1 % of the rate
    assert lrs[4] == pytest.approx(1e-3)  # warm-up done
    assert lrs[4] > lrs[10] > lrs[19] > 0  # then annealed towards 0 by the end of the run
    assert lrs[12] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 8 / 16)) / 2)
