"""Warm start of the If3D fusions from a photo-only DDAMFN (networks.warmstart, each fusion's init_passthrough).

A tiny random photo model (the registered test backbone, random weights and BatchNorm statistics) is saved the way
the trainer saves checkpoints; the fusions started from it must give its logits on real FER2013 photos paired with
arbitrary renders, say where every tensor came from, refuse another backbone, and train.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import networks
from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.train.cli import run
from networks.fusion.common import DepthwiseConvBN
from networks.registry import _FUSIONS, create_fusion, fusion_spec, list_fusions
from networks.warmstart import calibrate_passthrough_norms, warm_start

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import CLASS_NAMES_7, TINY_BACKBONE, make_dataset  # noqa: E402

CHANNELS, SIDE = 8, 3  # the tiny backbone's map
# every registered strategy that can start as the photo model (a plugin registered by another test module, e.g.
# test_registries' sum_test, has no init_passthrough: the warm start leaves its fusion as it was, tested below)
STRATEGIES = [s for s in list_fusions() if hasattr(_FUSIONS.get(s), "init_passthrough")]


def _randomise_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every BatchNorm given random affine parameters and running statistics, as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def _photo_model(seed: int, backbone: str = TINY_BACKBONE) -> networks.DDAMFN:
    """A random photo-only DDAMFN (the builder's initialisation from ``seed``, random BatchNorm statistics)."""
    torch.manual_seed(seed)
    model = networks.create_model("ddamfn", num_classes=7, num_heads=2, backbone=backbone)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)  # logits that differ from photo to photo by tenths, as a trained model's do
    return _randomise_norms(model, seed)


def _save(model: networks.DDAMFN, path: Path, class_names: list[str]) -> Path:
    save_checkpoint(make_checkpoint(model_name="ddamfn", model_kwargs={"num_classes": 7, "num_heads": 2,
                                                                       "backbone": model.backbone_name},
                                    model_state=model.state_dict(), class_names=class_names), path)
    return path


#: the photo checkpoint's classes, in another order than the model's (CLASS_NAMES_7): rows are matched by name
PHOTO_CLASSES = CLASS_NAMES_7[::-1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[networks.DDAMFN, Path]:
    model = _photo_model(seed=1)
    return model, _save(model, tmp_path_factory.mktemp("photo") / "best.pth", PHOTO_CLASSES)


@pytest.fixture(scope="module")
def render_ckpt(tmp_path_factory) -> Path:
    return _save(_photo_model(seed=2), tmp_path_factory.mktemp("render") / "best.pth", CLASS_NAMES_7)


@pytest.fixture(scope="module")
def faces(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real FER2013 PublicTest photos per class at the tiny backbone's 24 px, normalised, and random renders."""
    files = [f for d in sorted((data_dir / "fer2013" / "test").iterdir()) for f in sorted(d.glob("*.jpg"))[:2]]
    assert len(files) == 14
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((24, 24), Image.BILINEAR)) for f in files])
    photos = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    renders = torch.randn(photos.shape, generator=torch.Generator().manual_seed(3))
    return photos, renders


def _fusion(strategy: str, faithful: bool = False):
    return create_fusion(strategy, faithful=faithful, channels=CHANNELS, spatial=SIDE)


def _pool(seed: int) -> DepthwiseConvBN:
    torch.manual_seed(seed)
    return _randomise_norms(DepthwiseConvBN(CHANNELS, kernel_size=SIDE, padding=0), seed)


VARIANTS = [(s, False) for s in STRATEGIES] + [(s, True) for s in STRATEGIES if fusion_spec(s).faithful is not None]


@pytest.mark.parametrize(("strategy", "faithful"), VARIANTS)
def test_each_fusion_reads_out_the_photo_models_pooled_feature(strategy, faithful):
    torch.manual_seed(0)
    fusion, pool = _fusion(strategy, faithful).eval(), _pool(seed=4)
    passthrough = fusion.init_passthrough(pool)
    assert passthrough.weight.shape == (CHANNELS, fusion.out_features)
    assert passthrough.note
    photo_map, render_map = torch.rand(6, CHANNELS, SIDE, SIDE), torch.rand(6, CHANNELS, SIDE, SIDE) * 3
    if not passthrough.exact:  # an approximation must still hold where it claims to: maps constant in space
        photo_map = photo_map[:, :, :1, :1].expand_as(photo_map).contiguous()
    with torch.no_grad():
        fused = fusion(photo_map, render_map)
        expected = pool(photo_map).flatten(1)
    got = fused @ passthrough.weight.T + passthrough.bias
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_spp_is_only_approximate_and_says_why():
    passthrough = _fusion("spp").init_passthrough(_pool(seed=4))
    assert not passthrough.exact
    assert "max" in passthrough.note


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_fusion_started_from_the_photo_checkpoint_gives_its_logits_on_real_photos(strategy, photo, faces):
    photo_model, path = photo
    photos, renders = faces
    torch.manual_seed(0)
    model = networks.create_model(f"if3d_{strategy}", num_classes=7, num_heads=2, backbone=TINY_BACKBONE)
    report = warm_start(model, path, class_names=CLASS_NAMES_7)
    model.eval()
    with torch.no_grad():
        got = model(photos, renders).logits
        expected = photo_model(photos).logits[:, [PHOTO_CLASSES.index(n) for n in CLASS_NAMES_7]]
    error = (got - expected).abs().max().item()
    if report.exact:
        assert error < 1e-4
    else:
        assert strategy == "spp"
        assert "APPROXIMATE" in str(report)
        assert error > 1e-3
    # not by accident: the photo's logits vary from photo to photo far beyond the tolerance
    assert expected.std(dim=0).min().item() > 0.05
    # calibrating the identity BatchNorm layers on real inputs keeps the eval-mode pass-through
    assert calibrate_passthrough_norms(model, [(photos, renders)], report.norms) == 14
    with torch.no_grad():
        assert (model(photos, renders).logits - got).abs().max().item() < 1e-4


def test_the_report_names_where_every_tensor_came_from(photo, render_ckpt):
    _, path = photo
    model = networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone=TINY_BACKBONE)
    report = warm_start(model, path, render_ckpt, class_names=CLASS_NAMES_7)
    assert report.origin["photo_backbone.conv.weight"] == "photo checkpoint backbone.*"
    assert report.origin["render_backbone.conv.weight"] == "render checkpoint backbone.*"
    assert report.origin["heads.0.conv_h.weight"] == "photo checkpoint heads.*"
    assert report.origin["fusion.gate.bias"].startswith("pass-through")
    assert report.origin["classifier.fc1.weight"].startswith("pass-through")
    assert set(report.origin) | set(report.left) == set(model.state_dict())
    assert "classifier.fc1.weight" not in report.left
    assert "fusion.depthwise.bn.num_batches_tracked" in report.left
    text = str(report)
    assert str(path) in text
    assert str(render_ckpt) in text
    assert "left as they were" in text
    assert "not used: render heads.*" in text
    assert "not used: photo unused_bn.*" in text
    # without the photo model: the render backbone only, nothing passed through
    only_render = warm_start(networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone=TINY_BACKBONE),
                             render=render_ckpt)
    assert only_render.passthrough is None
    assert "photo_backbone.conv.weight" in only_render.left


def test_checkpoints_that_do_not_fit_are_clear_errors(photo, render_ckpt, tmp_path):
    _, path = photo
    other = _save(_photo_model(seed=5, backbone="mobilefacenet"), tmp_path / "mfn.pth", CLASS_NAMES_7)
    model = networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone=TINY_BACKBONE)
    with pytest.raises(ValueError, match=f"--init-photo {other}: its backbone is mobilefacenet, this model's is "
                                         f"{TINY_BACKBONE}"):
        warm_start(model, other)
    with pytest.raises(ValueError, match="2 DDA heads, this model 3; build it with --num-heads 2"):
        warm_start(networks.create_model("if3d_gate", num_classes=7, num_heads=3, backbone=TINY_BACKBONE), path)
    with pytest.raises(ValueError, match="runs one backbone on both streams"):
        warm_start(networks.create_model("if3d_linear", num_classes=7, num_heads=2, backbone=TINY_BACKBONE),
                   render=render_ckpt)
    with pytest.raises(ValueError, match="two-stream If3D fusion model"):
        warm_start(_photo_model(seed=6), path)


def test_training_from_the_warm_start_runs_and_a_resume_keeps_its_settings(photo, render_ckpt, tmp_path, capsys,
                                                                           one_torch_thread):
    _, path = photo
    data = make_dataset(tmp_path / "data", per_class=2, val_per_class=1)
    out = tmp_path / "run"
    common = ["--model", "if3d_gate", "--backbone", TINY_BACKBONE, "--data", str(data), "--epochs", "1",
              "--batch-size", "7", "--workers", "0", "--image-size", "24", "--no-compile"]
    assert run([*common, "--out", str(out), "--init-photo", str(path), "--init-render", str(render_ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "warm start of If3DNet(gate)" in printed
    assert "pass-through BatchNorm layers measured on 14" in printed
    assert "random weights" not in printed
    info = json.loads((out / "config.json").read_text())
    assert (info["config"]["model"]["init_photo"], info["config"]["model"]["init_render"]) == (str(path),
                                                                                               str(render_ckpt))
    assert "render checkpoint backbone.*" in info["run"]["warm_start_report"]
    assert torch.isfinite(torch.load(out / "last.pth", weights_only=True)["model"]["fusion.gate.weight"]).all()
    with pytest.raises(SystemExit) as refused:  # options are checked before anything runs
        run(["--resume", str(out), "--init-photo", str(render_ckpt)])
    assert refused.value.code == 2
    assert "cannot change: init_photo" in capsys.readouterr().err
    # a photo checkpoint of another backbone: status 2, one line naming the file, no traceback
    other = _save(_photo_model(seed=5, backbone="mobilefacenet"), tmp_path / "mfn.pth", CLASS_NAMES_7)
    assert run([*common, "--out", str(tmp_path / "bad"), "--init-photo", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: --init-photo {other}: its backbone is mobilefacenet")


def test_a_fusion_without_a_pass_through_is_left_as_it_was_and_the_report_says_so(photo):
    """A plugin strategy that defines no init_passthrough still warm-starts its photo stream; its fusion and
    classifier keep their initialisation, and the report names the strategy."""
    from torch import nn

    _, path = photo

    class SumOnly(nn.Module):
        def __init__(self, channels: int, spatial: int, **_):
            super().__init__()
            self.out_features = channels

        def forward(self, photo_map, render_map):
            return (photo_map + render_map).mean(dim=(2, 3))

    if "no_passthrough_test" not in list_fusions():  # registered once per session
        networks.register_fusion("no_passthrough_test")(SumOnly)
    model = networks.create_model("if3d_no_passthrough_test", num_classes=7, num_heads=2, backbone=TINY_BACKBONE)
    before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    report = warm_start(model, path, class_names=CLASS_NAMES_7)
    assert any("SumOnly has no init_passthrough" in note for note in report.notes)
    assert all(torch.equal(before[k], v) for k, v in model.classifier.state_dict().items())
