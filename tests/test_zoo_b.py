"""Model zoo, part B: LNSU-Net, POSTER, POSTER++ and their backbones (Swin-T, IR-50, landmark MobileFaceNet).

The authors' state-dict layouts (key → shape) are in ``fixtures/zoo_author_state_dicts.json``, listed from
their code (POSTER ``models/emotion_hyp.py``, POSTER++ ``models/PosterV2_7cls.py``, LNSU-Net
``code/backbones/swin.py`` and ``code/expression/models.py``, face.evoLVe's IR-50, MobileFaceNet): every
remap is checked on random tensors of exactly those names and shapes, written as the authors' checkpoint
files are written. Forward/backward runs on real FER2013 faces; each model trains one step through the
public training command and its checkpoint is evaluated by the test script.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _train_helpers import make_dataset
from torchvision.io import ImageReadMode, read_image
from torchvision.transforms import functional as TF

import networks
from if3d.classes import canonical_label
from if3d.evaluate import run as evaluate_run
from if3d.train.cli import run as train_run
from if3d.train.config import preset_recipe
from networks.backbones.mobilefacenet import LANDMARK_WEIGHTS_ENV
from networks.registry import criterion_class
from networks.zoo.lnsu_net import RAFDB_CLASS_WEIGHTS_AFFECTNET7, LNSUNetOutput, rebalanced_smooth_labels
from networks.zoo.poster import POSTEROutput, label_smoothing_cross_entropy

FIXTURE = Path(__file__).parent / "fixtures" / "zoo_author_state_dicts.json"
MODELS = ("lnsu_net", "poster", "poster_v2")
#: parameters (7 classes): the published/authors' figure and ours (see each model's docstring)
PARAMS = {"lnsu_net": (28.51e6, 27_521_281), "poster": (71.85e6, 71_850_399), "poster_v2": (43.7e6, 43_849_957)}


@pytest.fixture(scope="module")
def author() -> dict[str, dict[str, list[int]]]:
    return json.loads(FIXTURE.read_text())


def synthetic(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(5)
        elif key.endswith(("relative_position_index", "attn_mask")):
            out[key] = torch.zeros(shape, dtype=torch.int64 if key.endswith("index") else torch.float32)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
    return out


def poster_layout(author) -> dict[str, list[int]]:
    """POSTER's full state dict: its own keys, IR-50 stages 1–3 + embedding head, the landmark net."""
    ir = {k: v for k, v in author["ir50_full"].items()
          if not (k.startswith("body.") and int(k.split(".")[1]) >= 21)}
    return {**author["poster_c7"], **{f"ir_back.{k}": v for k, v in ir.items()},
            **{f"face_landback.{k}": v for k, v in author["mobilefacenet"].items()}}


def poster_v2_layout(author) -> dict[str, list[int]]:
    return {**author["poster_v2_c7"], **{f"face_landback.{k}": v for k, v in author["mobilefacenet"].items()}}


def build(name: str, num_classes: int = 7, **kwargs):
    if name != "lnsu_net":
        kwargs.setdefault("landmark_weights", False)
    return networks.create_model(name, num_classes=num_classes, **kwargs)


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real FER2013 faces (happy, angry) as float [2, 3, 112, 112] in [0, 1], with their labels."""
    root = data_dir / "fer2013" / "train"
    names = ("happy", "angry")
    images = [TF.resize(read_image(str(sorted((root / n).glob("*.jpg"))[0]), ImageReadMode.RGB), [112, 112],
                        antialias=True).float() / 255.0 for n in names]
    return torch.stack(images), torch.tensor([canonical_label(n) for n in names])


# ------------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("name", MODELS)
def test_registered_with_criterion_recipe_and_parameter_count(name):
    info = networks.model_info(name)
    assert info.criterion == name
    assert info.recipe
    model = build(name)
    published, ours = PARAMS[name]
    count = sum(p.numel() for p in model.parameters())
    assert count == ours
    assert abs(count - published) / published < 0.10
    assert model.input_streams == ("photo",)
    recipe = preset_recipe(name)
    assert recipe.balanced_sampling is False  # the papers shuffle; LNSU-Net re-balances in its loss
    with pytest.raises(TypeError, match="unexpected keyword"):
        networks.create_model(name, nope=1)


def test_backbones_are_registered_with_their_maps():
    shapes = {"ir50": (256, 14), "mobilefacenet": (512, 7), "swin_t": (768, 7)}
    for name, (channels, side) in shapes.items():
        spec = networks.backbone_spec(name)
        assert (spec.out_channels, spec.feature_size) == (channels, side)
        net = networks.create_backbone(name).eval()
        with torch.no_grad():
            out = net.forward_features(torch.randn(1, 3, spec.input_size, spec.input_size))
        assert out.shape == (1, channels, side, side)
    lnsu_swin = networks.create_backbone("swin_t", img_size=112, patch_size=2).eval()
    with torch.no_grad():
        assert lnsu_swin.forward_features(torch.randn(1, 3, 112, 112)).shape == (1, 768, 7, 7)
    # a registered zoo backbone serves DDAMFN too
    ddamfn = networks.create_model("ddamfn", num_classes=7, backbone="ir50").eval()
    with torch.no_grad():
        assert ddamfn(torch.randn(2, 3, 112, 112)).logits.shape == (2, 7)


# ------------------------------------------------------------------------------------------- weights

def _save_and_load(model, payload, path: Path):
    torch.save(payload, path)
    return networks.load_weights(model, path)


def test_poster_checkpoint_loads_strictly_from_the_authors_layout(author, tmp_path):
    sd = synthetic(poster_layout(author))
    model = build("poster")
    report = _save_and_load(model, {"iter": 3, "model_state_dict": {f"module.{k}": v for k, v in sd.items()},
                                    "optimizer_state_dict": {}}, tmp_path / "rafdb_best.pth")
    assert report.source == "poster"
    assert report.ok
    assert report.prefixes is None
    assert report.discarded == []
    own = model.state_dict()
    assert torch.equal(own["head.weight"], sd["head.linear.weight"])
    assert torch.equal(own["image_proj.weight"], sd["ir_layer.weight"])
    assert torch.equal(own["image_backbone.stages.1.0.shortcut.conv.weight"], sd["ir_back.body.3.shortcut_layer.0.weight"])
    assert torch.equal(own["image_backbone.stages.2.13.residual.bn2.running_var"], sd["ir_back.body.20.res_layer.4.running_var"])
    assert torch.equal(own["landmark.net.conv_3.model.1.conv.act.weight"], sd["face_landback.conv_3.model.1.conv.prelu.weight"])
    assert torch.equal(own["fusion.blocks.7.block_s.attn_lm.kv.weight"], sd["pyramid_fuse.blocks.7.block_s.attn_lm.kv.weight"])
    assert torch.equal(own["fusion.unused_cls_token"], sd["pyramid_fuse.cls_token"])
    assert len(report.loaded) == len(own)


def test_poster_v2_checkpoint_loads_strictly_and_reports_the_unused_modules(author, tmp_path):
    sd = synthetic(poster_v2_layout(author))
    model = build("poster_v2")
    report = _save_and_load(model, {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_acc": 0.9},
                            tmp_path / "raf-db-model_best.pth")
    assert report.source == "poster_v2"
    assert report.ok
    unused = {k for k in sd if k.startswith(("VIT.patch_embed.", "VIT.CON1.", "VIT.IRLinear", "VIT.eca_block.",
                                             "ir_back.output_layer.")) or (k.startswith("VIT.blocks.") and ".conv." in k)
              or k.endswith("relative_position_index")}
    assert set(report.discarded) == unused
    assert sum(sd[k].numel() for k in unused if sd[k].is_floating_point()) == pytest.approx(14.47e6, rel=0.01)
    own = model.state_dict()
    assert torch.equal(own["scales.2.attn.kv.weight"], sd["attn3.qkv.weight"])
    assert torch.equal(own["scales.0.gamma2"], sd["ffn1.gamma2"])
    assert torch.equal(own["scales.1.ffn_norm.weight"], sd["ffn2.norm.weight"])
    assert torch.equal(own["image_backbone.stages.2.0.shortcut.conv.weight"], sd["ir_back.body3.0.shortcut_layer.0.weight"])
    assert torch.equal(own["embed_v.weight"], sd["embed_v.proj.weight"])
    assert torch.equal(own["blocks.1.attn.qkv.weight"], sd["VIT.blocks.1.attn.qkv.weight"])
    assert torch.equal(own["head.weight"], sd["VIT.head.linear.weight"])


def test_lnsu_net_loads_the_trained_model_and_the_backbone_file(author, tmp_path):
    sd = synthetic(author["lnsu_net_c7"])
    model = build("lnsu_net")
    report = _save_and_load(model, {"epoch": 1, "global_step": 9, "state_dict_model": sd}, tmp_path / "model.pt")
    assert report.source == "lnsu_net"
    assert report.ok
    assert all(k.startswith(("encoder.feature.", "encoder.norm.")) or k.endswith(("attn_mask", "relative_position_index"))
               for k in report.discarded)
    own = model.state_dict()
    assert torch.equal(own["encoder.norm.weight"], sd["norm.weight"])  # SwinTransFER.norm is the classifier's
    # the original merges patches at the end of stage i, timm at the start of stage i + 1
    assert torch.equal(own["encoder.layers.3.downsample.reduction.weight"], sd["encoder.layers.2.downsample.reduction.weight"])
    assert torch.equal(own["encoder.patch_embed.proj.weight"], sd["encoder.patch_embed.proj.weight"])
    backbone = synthetic(author["lnsu_backbone"], seed=1)
    model = build("lnsu_net")
    report = _save_and_load(model, {"state_dict_backbone": backbone}, tmp_path / "start_0.pt")
    assert report.source == "lnsu_net"
    assert report.ok
    assert report.prefixes == ("encoder.patch_embed.", "encoder.layers.")
    assert torch.equal(model.state_dict()["encoder.layers.2.blocks.5.attn.qkv.weight"],
                       backbone["layers.2.blocks.5.attn.qkv.weight"])


def test_ir50_and_landmark_files_fill_their_streams(author, tmp_path):
    ir = synthetic(author["ir50_full"])
    for name, head in (("poster", True), ("poster_v2", False)):
        report = _save_and_load(build(name), ir, tmp_path / "ir50.pth")
        assert report.source == "ir50"
        assert report.ok
        assert report.prefixes == ("image_backbone.",)
        dropped = {k for k in ir if k.startswith("body.") and int(k.split(".")[1]) >= 21}
        if not head:
            dropped |= {k for k in ir if k.startswith("output_layer.")}
        assert set(report.discarded) == dropped
    lm = synthetic(author["mobilefacenet"])
    report = _save_and_load(build("poster"), {"epoch": 40, "state_dict": lm}, tmp_path / "mobilefacenet_model_best.pth.tar")
    assert report.source == "mobilefacenet"
    assert report.ok
    assert report.prefixes == ("landmark.net.",)
    net = networks.create_backbone("mobilefacenet")
    assert networks.load_weights(net, tmp_path / "mobilefacenet_model_best.pth.tar").ok
    bare_ir = networks.create_backbone("ir50")
    assert networks.load_weights(bare_ir, tmp_path / "ir50.pth").ok


def test_landmark_weights_are_found_loaded_and_frozen(author, tmp_path, monkeypatch):
    path = tmp_path / "lm.pth.tar"
    torch.save({"state_dict": synthetic(author["mobilefacenet"], seed=4)}, path)
    monkeypatch.setenv(LANDMARK_WEIGHTS_ENV, str(path))
    model = networks.create_model("poster_v2", num_classes=7)
    assert model.landmark_weights == str(path)
    assert model.landmark.frozen
    assert not any(p.requires_grad for p in model.landmark.parameters())
    model.train()
    assert not model.landmark.net.training
    assert model.image_backbone.training
    monkeypatch.setenv(LANDMARK_WEIGHTS_ENV, str(tmp_path / "missing.pth.tar"))
    with pytest.raises(FileNotFoundError, match="missing.pth.tar"):
        networks.create_model("poster", num_classes=7)
    monkeypatch.delenv(LANDMARK_WEIGHTS_ENV)
    monkeypatch.chdir(tmp_path)  # no pretrained/mobilefacenet_model_best.pth.tar here
    with pytest.warns(UserWarning, match="trained from scratch"):
        model = networks.create_model("poster", num_classes=7)
    assert not model.landmark.frozen
    assert model.landmark_weights.startswith("none")
    assert model.landmark.net.conv1.conv.weight.requires_grad


# ------------------------------------------------------------------------------------------- losses

def test_rebalanced_smooth_labels_and_lnsu_loss_by_hand():
    w = torch.tensor([1.0, 2.0, 3.0])
    q = rebalanced_smooth_labels(torch.tensor([0, 2]), 3, 0.3, w)
    assert torch.allclose(q, torch.tensor([[0.7, 0.3 * 2 / 5, 0.3 * 3 / 5], [0.3 * 1 / 3, 0.3 * 2 / 3, 0.7]]))
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    cam = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    flipped = cam.flip(-1).clone()
    flipped[0, 1, 0, 0] += 2.0  # one cell differs by 2 in the mirrored map of sample 0, class 1
    out = LNSUNetOutput(logits=logits, features=torch.zeros(2, 4), cam=cam, flipped_cam=flipped)
    criterion = criterion_class("lnsu_net")(class_weights=[1.0, 2.0, 3.0])
    loss = criterion(out, {"label": torch.tensor([0, 2])})
    logp = F.log_softmax(logits, 1)
    ce = -(q * logp).sum(1).mean()
    # flip(flipped)[0,1] differs at (0, 1): squared error 4 over 4 cells → 1, times w_1 = 2, mean over 2 samples
    assert loss.terms["smooth_ce"].item() == pytest.approx(ce.item())
    assert loss.terms["attention_consistency"].item() == pytest.approx(1.0)
    assert loss.total.item() == pytest.approx(ce.item() + 0.1)
    default = networks.create_criterion("lnsu_net")
    assert torch.equal(default._weights_for(7, torch.device("cpu")), torch.tensor(RAFDB_CLASS_WEIGHTS_AFFECTNET7))
    with pytest.warns(UserWarning, match="uniform"):
        assert torch.equal(default._weights_for(8, torch.device("cpu")), torch.ones(8))


def test_poster_losses_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    label = torch.tensor([0, 0])
    p0 = [math.exp(1) / (math.exp(1) + 1), 1 / (1 + math.exp(3))]
    p1 = [1 - p0[0], 1 - p0[1]]
    ce = -(math.log(p0[0]) + math.log(p0[1])) / 2
    smooth = sum(0.8 * -math.log(a) + 0.2 * -(math.log(a) + math.log(b)) / 2 for a, b in zip(p0, p1)) / 2
    assert label_smoothing_cross_entropy(logits, label, 0.2).item() == pytest.approx(smooth)
    out = POSTEROutput(logits=logits, features=torch.zeros(2, 3))
    loss = networks.create_criterion("poster")(out, {"label": label})
    assert loss.terms["ce"].item() == pytest.approx(ce)
    assert loss.total.item() == pytest.approx(ce + 2 * smooth)
    loss = networks.create_criterion("poster_v2")(out, {"label": label})
    assert list(loss.terms) == ["ce"]
    assert loss.total.item() == pytest.approx(ce)


# ------------------------------------------------------------------------------------------- real faces

@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward_on_real_faces(name, faces):
    images, labels = faces
    torch.manual_seed(0)
    model = build(name).train()
    for m in model.modules():  # stochastic depth may drop a whole branch of a batch of two: its weights then rest
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    spec = model.backbone_spec
    x = TF.normalize(images, spec.mean, spec.std)
    out = model(x)
    assert out.logits.shape == (2, 7)
    assert torch.isfinite(out.logits).all()
    if name == "lnsu_net":
        assert out.cam.shape == out.flipped_cam.shape == (2, 7, 7, 7)
    loss = networks.create_criterion(name)(out, {"label": labels})
    assert all(torch.isfinite(v) for v in loss.terms.values())
    loss.total.backward()
    silent = [k for k, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    expected = {"poster": ("image_backbone.embedding.", "landmark.net.output_layer.", "fusion.unused_cls_token"),
                "poster_v2": ("landmark.net.output_layer.",), "lnsu_net": ()}[name]
    assert all(k.startswith(expected) for k in frozen)
    assert (bool(frozen) == bool(expected))
    model.eval()
    with torch.no_grad():
        a, b = model(x).logits, model(x).logits
    assert torch.equal(a, b)
    if name == "lnsu_net":
        assert model(x).flipped_cam is None


# ------------------------------------------------------------------------------------------- commands

@pytest.mark.parametrize(("name", "size"), [("lnsu_net", 56), ("poster", 32), ("poster_v2", 32)])
def test_one_training_step_and_the_test_script(name, size, author, tmp_path, monkeypatch):
    lm = tmp_path / "lm.pth.tar"
    torch.save({"state_dict": synthetic(author["mobilefacenet"], seed=2)}, lm)
    monkeypatch.setenv(LANDMARK_WEIGHTS_ENV, str(lm))
    data = make_dataset(tmp_path / "d", per_class=1, val_per_class=1, size=size)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert train_run(["--model", name, "--data", str(data), "--epochs", "1", "--batch-size", "2",
                          "--image-size", str(size), "--max-train-samples", "2", "--max-val-samples", "2",
                          "--workers", "0", "--no-compile", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert rows[0]["step"] == "1"
    terms = criterion_class(networks.model_info(name).criterion).terms
    assert all(math.isfinite(float(rows[0][f"train_{t}"])) for t in terms)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["recipe"]["preset"] == name  # the paper's recipe is the default
    eval_out = tmp_path / "eval"
    assert evaluate_run(["--checkpoint", str(out / "last.pth"), "--data", str(data), "--split", "val",
                         "--image-size", str(size), "--max-samples", "2", "--workers", "0", "--out", str(eval_out)]) == 0
    metrics = json.loads((eval_out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_the_test_script_builds_each_model_from_its_authors_checkpoint(author, tmp_path):
    from networks.weights import CheckpointFormatError, build_model_from_checkpoint

    files = {
        "poster": {"iter": 1, "model_state_dict": synthetic(poster_layout(author))},
        "poster_v2": {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in synthetic(poster_v2_layout(author)).items()}},
        "lnsu_net": {"state_dict_model": synthetic(author["lnsu_net_c7"])},
    }
    for name, payload in files.items():
        torch.save(payload, tmp_path / f"{name}.pth")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an authors' checkpoint brings its landmark weights: no warning
            model, report = build_model_from_checkpoint(tmp_path / f"{name}.pth")
        assert report.ok
        assert type(model).__name__ == {"poster": "POSTER", "poster_v2": "POSTERV2", "lnsu_net": "LNSUNet"}[name]
        assert model.num_classes == 7
        assert not model.training
    torch.save({"state_dict_backbone": synthetic(author["lnsu_backbone"])}, tmp_path / "start_0.pt")
    with pytest.raises(CheckpointFormatError, match="holds no classifier"):
        build_model_from_checkpoint(tmp_path / "start_0.pt")
