"""Video models (Emotion-FAN): forward/backward on real aligned frames, the attention formulas by hand,
padding invariance, per-frame fusion, the frame-level criterion, and loading Emotion-FAN's weight layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import networks
from if3d.data.transforms import normalize
from networks.video import (
    EMOTION_FAN_CLASSES,
    FrameAttentionNet,
    attention_pool,
    relation_attention_pool,
)


@pytest.fixture(scope="module")
def real_frames(data_dir) -> torch.Tensor:
    """uint8 [8, 3, 112, 112]: every 8th frame of the shared CK+ video, aligned like the converter does."""
    from if3d.data.converters.align import align_face, detect_landmarks
    from if3d.data.converters.base import _landmarker
    from if3d.data.converters.video import read_video_frames

    video = data_dir / "video" / "1543684773.avi"
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    faces = []
    for n, rgb in read_video_frames(video):
        if n % 8 == 0 and len(faces) < 8:
            pts = detect_landmarks(_landmarker(), rgb)
            assert pts is not None, f"frame {n}: no face"
            faces.append(torch.from_numpy(align_face(rgb, pts, 112, 0.25)).permute(2, 0, 1))
    return torch.stack(faces)


def _clip(frames: torch.Tensor, b: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised [b, T, 3, size, size] (the frames resized: the models pool their maps at any size)."""
    x = normalize(frames)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.unsqueeze(0).repeat(b, 1, 1, 1, 1)
    mask = torch.ones(b, frames.shape[0], dtype=torch.bool)
    return x, mask


@pytest.mark.parametrize("name", ["fan_self", "fan_relation", "fan_baseline"])
def test_models_train_on_real_frames_and_every_parameter_learns(name, real_frames):
    torch.manual_seed(0)
    model = networks.create_model(name, num_classes=7)
    assert model.input_streams == ("clip", "frame_mask")
    x, mask = _clip(real_frames[:3], size=48)
    crit = networks.create_criterion(name)
    out = model.train()(x, mask)
    assert out.logits.shape == (2, 7)
    assert out.frame_features.shape == (2, 3, 512)
    assert torch.allclose(out.final_weights.sum(1), torch.ones(2), atol=1e-5)
    loss = crit(out, {"label": torch.tensor([6, 6])})
    assert torch.isfinite(loss.total)
    loss.total.backward()
    no_grad = [k for k, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []
    n_params = sum(p.numel() for p in model.parameters())
    head = {"fan_self": 513 + 512 * 7 + 7, "fan_relation": 513 + 1025 + 1024 * 7 + 7, "fan_baseline": 512 * 7 + 7}
    assert n_params == 11_176_512 + head[name]  # torchvision ResNet-18 without fc + Emotion-FAN's heads


@pytest.mark.parametrize("name", ["fan_self", "fan_relation", "fan_baseline"])
def test_padding_and_chunking_do_not_change_predictions(name, real_frames):
    torch.manual_seed(0)
    model = networks.create_model(name, num_classes=7, eval_chunk=3).eval()
    x, mask = _clip(real_frames[:4], b=1)
    with torch.no_grad():
        ref = model(x, mask)
        padded = torch.cat([x, torch.randn(1, 2, *x.shape[2:])], 1)
        pmask = torch.cat([mask, torch.zeros(1, 2, dtype=torch.bool)], 1)
        out = model(padded, pmask)
    assert torch.allclose(ref.logits, out.logits, atol=1e-5)
    assert (out.final_weights[0, 4:] == 0).all()
    assert (out.frame_features[0, 4:] == 0).all()
    with pytest.raises(ValueError, match="valid frame"):
        model(x, torch.zeros_like(mask))


def test_attention_formulas_by_hand():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    alpha = torch.tensor([[0.5, 0.25, 0.9]])
    clip = attention_pool(f, alpha, mask)
    assert torch.allclose(clip, torch.tensor([[0.5 / 0.75, 0.5 / 0.75]]))
    beta = torch.tensor([[0.5, 1.0, 0.3]])
    g = relation_attention_pool(f, clip, alpha, beta, mask)
    cat0 = torch.tensor([1.0, 0.0, *clip[0]])
    cat1 = torch.tensor([0.0, 2.0, *clip[0]])
    w0, w1 = 0.5 * 0.5, 0.25 * 1.0
    assert torch.allclose(g[0], (w0 * cat0 + w1 * cat1) / (w0 + w1))
    faithful = relation_attention_pool(f, clip, alpha, beta, mask, faithful_eval=True)
    assert torch.allclose(faithful[0], (0.5 * cat0 + 0.25 * cat1) / (w0 + w1))  # Emotion-FAN's evaluation


def test_model_uses_the_formulas(real_frames):
    torch.manual_seed(0)
    model = networks.create_model("fan_relation", num_classes=7).eval()
    x, mask = _clip(real_frames[:4], b=1)
    with torch.no_grad():
        out = model(x, mask)
        f = out.frame_features[0]
        alpha = torch.sigmoid(model.self_attention(f)).squeeze(-1)
        fp = (alpha[:, None] * f).sum(0) / alpha.sum()
        cat = torch.cat([f, fp.expand_as(f)], 1)
        beta = torch.sigmoid(model.relation_attention(cat)).squeeze(-1)
        g = ((alpha * beta)[:, None] * cat).sum(0) / (alpha * beta).sum()
        assert torch.allclose(out.logits[0], model.classifier(g), atol=1e-5)
        assert torch.allclose(out.self_weights[0], alpha)
        assert torch.allclose(out.relation_weights[0], beta)
        faithful = networks.create_model("fan_relation", num_classes=7, faithful=True).eval()
        faithful.load_state_dict(model.state_dict())
        assert faithful.backbone_spec.mean == (0.0, 0.0, 0.0)
        assert faithful.backbone_spec.std == (1.0, 1.0, 1.0)
        g_f = (alpha[:, None] * cat).sum(0) / (alpha * beta).sum()
        assert torch.allclose(faithful(x, mask).logits[0], model.classifier(g_f), atol=1e-4)


def test_frame_cross_entropy_is_the_mean_over_valid_frames():
    logits = torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = type("O", (), {"frame_logits": logits, "frame_mask": mask})()
    got = networks.create_criterion("fan_baseline")(out, {"label": torch.tensor([1, 4])}).terms["ce"]
    want = torch.stack([F.cross_entropy(logits[0, 0:1], torch.tensor([1])), F.cross_entropy(logits[0, 1:2],
                        torch.tensor([1])), F.cross_entropy(logits[1, 0:1], torch.tensor([4]))]).mean()
    assert torch.allclose(got, want)


def test_per_frame_fusion_with_renders(real_frames):
    torch.manual_seed(0)
    model = networks.create_model("fan_relation", num_classes=7, fusion="linear")
    assert model.input_streams == ("clip", "render_clip", "frame_mask")
    assert model.feature_dim == 1024
    assert model.backbone_prefixes == ("backbone.",)
    size = networks.backbone_spec("resnet18").input_size  # the fusion is built for the backbone's map
    x, mask = _clip(real_frames[:1], size=size)
    out = model.train()(x, x.flip(-1), mask)
    out.logits.sum().backward()
    assert out.frame_features.shape == (2, 1, 1024)
    gate = networks.create_model("fan_self", num_classes=7, fusion="gate")
    assert gate.backbone_prefixes == ("photo_backbone.", "render_backbone.")
    with pytest.raises(ValueError, match=str(size)):
        gate.eval()(torch.zeros(1, 2, 3, 96, 96), torch.zeros(1, 2, 3, 96, 96), torch.ones(1, 2, dtype=torch.bool))


def test_mixedfeaturenet_backbone_works_as_is(real_frames):
    model = networks.create_model("fan_self", num_classes=7, backbone="mixedfeaturenet").eval()
    x, mask = _clip(real_frames[:1], b=1)
    with torch.no_grad():
        assert model(x, mask).logits.shape == (1, 7)


def _emotion_fan_state_dict(with_heads: bool) -> dict[str, torch.Tensor]:
    """Emotion-FAN's key names: torchvision ResNet-18 (``module.`` prefix), plus its attention heads."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    sd = {f"module.{k}": v.clone() for k, v in resnet18(num_classes=8).state_dict().items()}
    if with_heads:
        sd.update({"module.alpha.0.weight": torch.randn(1, 512), "module.alpha.0.bias": torch.randn(1),
                   "module.beta.0.weight": torch.randn(1, 1024), "module.beta.0.bias": torch.randn(1),
                   "module.pred_fc1.weight": torch.randn(7, 512), "module.pred_fc1.bias": torch.randn(7),
                   "module.pred_fc2.weight": torch.randn(7, 1024), "module.pred_fc2.bias": torch.randn(7)})
    return sd


def test_emotion_fan_pretrained_resnet18_loads_into_every_backbone(tmp_path):
    sd = _emotion_fan_state_dict(with_heads=False)
    path = tmp_path / "Resnet18_FER+_pytorch.pth.tar"
    torch.save({"epoch": 30, "arch": "resnet18", "state_dict": sd}, path)
    model = networks.create_model("fan_relation", num_classes=7)
    report = networks.load_weights(model, path)
    assert report.source == "torchvision_resnet"
    assert report.ok
    assert sorted(report.discarded) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer3[1].conv2.weight, sd["module.layer3.1.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_mean, sd["module.bn1.running_mean"])
    two = networks.create_model("fan_self", num_classes=7, fusion="spp")
    networks.load_weights(two, path)
    assert torch.equal(two.render_backbone.conv1.weight, sd["module.conv1.weight"])
    mfn = networks.create_model("fan_self", backbone="mixedfeaturenet")
    with pytest.raises(networks.CheckpointFormatError, match="ResNet-18"):
        networks.load_weights(mfn, path)


@pytest.mark.parametrize(("attention", "head"), [("self", "pred_fc1"), ("relation", "pred_fc2")])
def test_trained_emotion_fan_checkpoint_converts_and_evaluates(attention, head, tmp_path):
    from if3d.video import convert_emotion_fan_checkpoint

    sd = _emotion_fan_state_dict(with_heads=True)
    src = tmp_path / f"{attention}_12_0.5118"
    torch.save({"epoch": 12, "state_dict": sd, "accuracy": torch.tensor(51.18)}, src)
    model = networks.create_model(f"fan_{attention}", num_classes=7)
    report = networks.load_weights(model, src)
    assert report.source == "emotion_fan"
    assert report.ok
    assert torch.equal(model.classifier.weight, sd[f"module.{head}.weight"])
    assert torch.equal(model.self_attention.weight, sd["module.alpha.0.weight"])
    other = {"self": ["beta.0.bias", "beta.0.weight", "pred_fc2.bias", "pred_fc2.weight"],
             "relation": ["pred_fc1.bias", "pred_fc1.weight"]}[attention]
    assert sorted(report.discarded) == sorted(["fc.bias", "fc.weight", *other])
    out = tmp_path / "ours.pth"
    convert_emotion_fan_checkpoint(str(src), str(out), attention=attention, classes="afew")
    built, rep = networks.build_model_from_checkpoint(out)
    assert isinstance(built, FrameAttentionNet)
    assert built.faithful
    assert built.attention == attention
    assert rep.metadata["class_names"] == list(EMOTION_FAN_CLASSES["afew"])
    assert torch.equal(built.classifier.bias, sd[f"module.{head}.bias"])
