"""The ResNet zoo models (DAN, Ada-DF, MFER, GSDNet) and the ``resnet18`` / ``resnet50`` backbones.

Facts checked here come from the authors' repositories (read for facts, not copied): the module layouts of
DAN (github.com/yaoing/DAN ``networks/dan.py``) and Ada-DF (github.com/taylor-xy0827/Ada-DF ``model.py``)
are rebuilt below from their descriptions with the authors' module names, so their ``state_dict()`` gives
the authors' key names and shapes; GSDNet's (github.com/476037156/GSDNet ``model/resnet1.py``) keys and
shapes are listed from its description. Parameter counts are those of the zoo table.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from _train_helpers import make_dataset, random_state_dict

import networks
from if3d.data.dataset import load_image
from if3d.data.transforms import normalize
from networks.backbones.resnet import ResNetBackbone
from networks.weights import (
    CheckpointFormatError,
    UnsafePickleError,
    WeightLoadError,
    build_model_from_checkpoint,
    load_state_dict_checked,
)
from networks.zoo import ZOO_MODELS
from networks.zoo.ada_df import ClassDistributions, fusion_weights, loss_scales, rank_regularization
from networks.zoo.dan import affinity_loss, partition_loss
from networks.zoo.gsdnet import distillation_cross_entropy
from networks.zoo.mfer import center_loss

MODELS = ("dan", "ada_df", "mfer", "gsdnet")
#: (builder kwargs, parameters in the zoo table (authors' code), our exact count)
PARAMS = {
    "dan": ({"num_classes": 8, "num_heads": 4}, 19.72e6, 19_728_344),  # + 8×512 class centres (in the loss there)
    "ada_df": ({"num_classes": 7}, 22.2e6, 22_203_728),
    "gsdnet": ({"num_classes": 7}, 29.70e6, 29_700_628),
    "mfer": ({"num_classes": 7}, None, 28_135_349),  # no count in the table (the authors' is on ConvNeXt-Base)
}
TERMS = {"dan": ("ce", "affinity", "partition"), "ada_df": ("ce", "kld", "rank"), "mfer": ("ce", "center"),
         "gsdnet": ("ce", "feature", "distill")}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (so a wrong mapping changes the outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn.weight", "running_mean")) or ".bn" in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / math.sqrt(max(1, t[0].numel()))))
    return module


@pytest.fixture(scope="module")
def faces(data_dir) -> torch.Tensor:
    """Four real FER2013 faces (angry, happy, sad, surprise), 48×48 grey → [4, 3, 64, 64] normalised."""
    root = data_dir / "fer2013" / "train"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    paths = [sorted((root / c).glob("*.jpg"))[0] for c in ("angry", "happy", "sad", "surprise")]
    return normalize(torch.stack([load_image(p, 64) for p in paths]), MEAN, STD)


FACE_LABELS = torch.tensor([6, 1, 2, 3])  # AffectNet order: Angry, Happy, Sad, Surprise


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches: one intra-op thread (with other jobs on the cores, two OpenMP threads wait for each other
    at every barrier and a 4-image step takes seconds instead of a fraction of one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ================================================================================ registry and sizes


def test_zoo_models_are_registered_with_criterion_recipe_and_paper_size():
    assert set(MODELS) <= set(ZOO_MODELS)
    assert {"resnet18", "resnet50"} <= set(networks.list_backbones())
    for name in MODELS:
        info = networks.model_info(name)
        assert info.criterion == name
        assert name in networks.list_criteria()
        assert info.recipe
        assert {"optimizer", "lr", "scheduler", "epochs", "batch_size"} <= set(info.recipe)
        kwargs, published, exact = PARAMS[name]
        model = networks.create_model(name, **kwargs)
        count = sum(p.numel() for p in model.parameters())
        assert count == exact, name
        if published is not None:
            assert abs(count - published) / published < 0.01, name
        assert model.input_streams == ("photo",)
        assert model.backbone_spec.input_size == 224
        assert model.backbone_spec.mean == MEAN
    from if3d.train.config import default_preset, preset_recipe

    recipe = preset_recipe(default_preset("dan"))  # the paper's recipe is the model's default preset
    assert (recipe.optimizer, recipe.lr, recipe.exp_gamma, recipe.batch_size, recipe.epochs) == ("adam", 1e-4, 0.6,
                                                                                                  256, 40)
    assert preset_recipe("gsdnet").weight_decay == 1e-4
    assert not preset_recipe("gsdnet").balanced_sampling
    for name in MODELS:  # --faithful is an If3D option: bad input (a ValueError), and a TypeError as Python's
        with pytest.raises(TypeError, match="unexpected keyword arguments: faithful"):
            networks.create_model(name, faithful=True)
        with pytest.raises(ValueError, match="unexpected keyword arguments: faithful"):
            networks.create_model(name, faithful=True)
    with pytest.raises(ValueError, match="not a ResNet"):
        networks.create_model("mfer", backbone="mixedfeaturenet")


def test_resnet_backbones_are_torchvisions_up_to_layer4():
    for name, depth, channels in (("resnet18", 18, 512), ("resnet50", 50, 2048)):
        backbone = networks.create_backbone(name).eval()
        spec = networks.backbone_spec(name)
        x = torch.randn(1, 3, spec.input_size, spec.input_size)
        assert backbone.forward_features(x).shape == (1, channels, spec.feature_size, spec.feature_size)
        reference = getattr(torchvision.models, f"resnet{depth}")().eval()
        expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
        assert {k: v.shape for k, v in backbone.state_dict().items()} == expected
        backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
        with torch.no_grad():
            body = nn.Sequential(*list(reference.children())[:-2])
            assert torch.allclose(backbone.forward_features(x), body(x), atol=1e-5)
    caffe = networks.create_backbone("resnet50", stride_in_1x1=True)
    assert caffe.layer2[0].conv1.stride == (2, 2)
    assert caffe.layer2[0].conv2.stride == (1, 1)
    assert caffe.maxpool.ceil_mode
    assert caffe.maxpool.padding == 0
    assert [m.shape[-1] for m in caffe.forward_stages(torch.zeros(1, 3, 224, 224))] == [56, 28, 14, 7]
    with pytest.raises(ValueError, match="basic blocks"):
        ResNetBackbone(18, stride_in_1x1=True)


# ================================================================================ forward / backward


@pytest.mark.parametrize("name", MODELS)
def test_each_model_learns_from_real_faces(name, faces):
    torch.manual_seed(0)
    model = networks.create_model(name, num_classes=8).train()
    criterion = networks.create_criterion(name)
    out = model(faces)
    assert out.logits.shape == (4, 8)
    loss = criterion(out, {"label": FACE_LABELS})
    assert tuple(loss.terms) == TERMS[name]
    assert all(torch.isfinite(v) for v in loss.terms.values())
    assert torch.isfinite(loss.total)
    loss.total.backward()
    learning = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in learning if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad[:5]}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if name == "ada_df":  # the authors freeze the shared stem and layer1
        assert frozen
        assert all(n.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1")) for n in frozen)
        assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    elif name == "gsdnet":  # the deepest embedding is only a gradient-stopped teacher
        assert frozen == ["heads.3.embed.weight", "heads.3.embed.bias"]
    else:
        assert not frozen
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(faces).logits).all()


def test_ada_df_renews_class_distributions_when_an_epoch_ends(faces):
    torch.manual_seed(0)
    model = networks.create_model("ada_df", num_classes=8).train()
    criterion = networks.create_criterion("ada_df")
    tracker = model.class_distributions
    start = tracker.distributions.clone()
    assert torch.allclose(start.sum(1), torch.ones(8))
    out = model(faces)
    criterion(out, {"label": FACE_LABELS})
    assert tracker.count.tolist() == [0, 1, 1, 1, 0, 0, 1, 0]
    probs = F.softmax(out.aux_logits.detach().float(), dim=1)
    assert torch.allclose(tracker.prob_sum[6], probs[0])
    model.eval()  # leaving training mode closes the epoch
    assert int(tracker.epochs_done) == 1
    assert tracker.count.sum() == 0
    assert torch.allclose(tracker.distributions.sum(1), torch.ones(8))
    model.train()
    model.eval()  # no training step in between: nothing to renew
    assert int(tracker.epochs_done) == 1


# ================================================================================ losses by hand


def test_dan_losses_match_hand_computed_values():
    features = torch.tensor([[1.0, 2.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([1, 2])
    # centre variances per dimension (unbiased over 3 centres): dim0 var(0,1,2)=1, dim1 var(0,1,0)=1/3
    spread = 1.0 + 1.0 / 3.0
    d0 = (1 - 1) ** 2 + (2 - 1) ** 2  # sample 0 to centre 1
    d1 = (0 - 2) ** 2 + (-1 - 0) ** 2  # sample 1 to centre 2
    assert affinity_loss(features, labels, centers).item() == pytest.approx((d0 / spread + d1 / spread) / 2)
    heads = torch.tensor([[[0.0, 2.0], [2.0, 2.0]]])  # B=1, K=2, D=2: per-dim variances 2 and 0, mean 1
    assert partition_loss(heads).item() == pytest.approx(math.log(1 + 2 / 1.0))
    assert partition_loss(heads[:, :1]).item() == 0.0


def test_ada_df_losses_match_hand_computed_values():
    assert loss_scales(1, 5) == pytest.approx((1.0, math.exp(-0.64)))
    assert loss_scales(5, 5) == (1.0, 1.0)
    assert loss_scales(10, 5) == pytest.approx((math.exp(-0.25), 1.0))
    assert fusion_weights(torch.tensor([0.5, 0.7, 0.9])).tolist() == pytest.approx([0.2, 0.6, 1.0])
    assert fusion_weights(torch.tensor([0.3, 0.3])).tolist() == pytest.approx([0.2, 0.2])
    # B=10, top 7 high: high mean 0.8, low mean 0.75 → 0.75 − 0.8 + 0.07 = 0.02
    att = torch.tensor([0.8] * 7 + [0.75] * 3)
    assert rank_regularization(att).item() == pytest.approx(0.02, abs=1e-6)
    assert rank_regularization(torch.tensor([0.9] * 7 + [0.1] * 3)).item() == 0.0
    assert rank_regularization(torch.tensor([0.5])).item() == 0.0

    tracker = ClassDistributions(3, threshold=0.5)
    assert tracker.distributions[0].tolist() == pytest.approx([0.5, 0.25, 0.25])
    tracker.accumulate(torch.tensor([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]]), torch.tensor([0, 0, 2]))
    tracker.end_epoch()
    # class 0: mean (0.7, 0.2, 0.1) reaches 0.5 → kept; class 1: no sample → smoothed; class 2: 0.5 ≥ 0.5 → kept
    expected = [[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]
    assert np.allclose(tracker.distributions.numpy(), expected)

    from networks.zoo.ada_df import AdaDFCriterion, AdaDFOutput

    aux = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target_logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    attention = torch.tensor([0.4, 0.6])
    labels = torch.tensor([0, 2])
    out = AdaDFOutput(logits=target_logits, aux_logits=aux, attention=attention, class_distributions=tracker,
                      training=False, beta=5.0)
    loss = AdaDFCriterion()(out, {"label": labels})
    p_aux = np.exp(aux.numpy()) / np.exp(aux.numpy()).sum(1, keepdims=True)
    ce = -np.mean([np.log(p_aux[0, 0]), np.log(p_aux[1, 2])])
    w = np.array([0.2, 1.0])  # min-max of (0.4, 0.6) into [0.2, 1]
    ld = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])  # rows of classes 0 and 2
    q = (1 - w[:, None]) * p_aux + w[:, None] * ld
    log_p = target_logits.numpy() - np.log(np.exp(target_logits.numpy()).sum(1, keepdims=True))
    kld = np.sum(q * (np.log(q) - log_p)) / 2
    rank = max(0.0, 0.4 - 0.6 + 0.07)  # B=2: one high (0.6), one low (0.4)
    assert loss.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert loss.terms["kld"].item() == pytest.approx(kld, rel=1e-5)
    assert loss.terms["rank"].item() == pytest.approx(rank, abs=1e-7)
    a_ce, a_kld = 1.0, math.exp(-((1 - 2 / 5) ** 2))  # epoch 2 (one epoch done), beta 5
    assert loss.total.item() == pytest.approx(a_ce * ce + a_kld * kld + rank, rel=1e-5)
    assert tracker.count.sum() == 0  # not training: statistics untouched


def test_mfer_and_gsdnet_losses_match_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = logits.numpy()[0] - np.log(np.exp(logits.numpy()[0]).sum())
    eps = 0.1
    from networks.zoo.mfer import label_smoothing_cross_entropy

    expected = (1 - eps) * -log_p[1] + eps * -log_p.mean()
    assert label_smoothing_cross_entropy(logits, torch.tensor([1]), eps).item() == pytest.approx(expected, rel=1e-6)
    f = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert center_loss(f, torch.tensor([0, 1]), c).item() == pytest.approx(0.5 * (2.0 + 8.0) / 2)

    student, teacher = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    q = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()  # softmax(teacher / 3)
    log_s = np.array([1.0, 0.0]) - np.log(np.exp([1.0, 0.0]).sum())  # log_softmax(student / 3)
    assert distillation_cross_entropy(student, teacher).item() == pytest.approx(-(q * log_s).sum(), rel=1e-6)

    from networks.zoo.gsdnet import GSDNetCriterion, GSDNetOutput

    emb = torch.zeros(4, 2, 128)
    emb[0, 0, 0], emb[1, 0, 0], emb[2, 1, 1] = 3.0, -1.0, 2.0  # distances: |3 − (−1)| = 4, |−1| = 1 and 2, 2
    stage_logits = torch.zeros(4, 2, 3)
    out = GSDNetOutput(logits=stage_logits[-1], stage_logits=stage_logits, stage_embeddings=emb)
    loss = GSDNetCriterion()(out, {"label": torch.tensor([0, 1])})
    feature = 4.0 + math.sqrt(1.0 + 4.0) + 2.0
    assert loss.terms["feature"].item() == pytest.approx(feature, rel=1e-6)
    assert loss.terms["distill"].item() == pytest.approx(3 * math.log(3), rel=1e-6)  # uniform vs uniform
    assert loss.terms["ce"].item() == pytest.approx(math.log(3), rel=1e-6)
    assert loss.total.item() == pytest.approx(math.log(3) + 0.01 * feature + 0.3 * 3 * math.log(3), rel=1e-6)


# ================================================================================ authors' checkpoints


class _DANHeadAsAuthors(nn.Module):
    """One DAN head with the authors' module names (sa.conv1x1 …, ca.attention.{0,1,3})."""

    def __init__(self) -> None:
        super().__init__()
        self.sa = nn.Module()
        self.sa.conv1x1 = nn.Sequential(nn.Conv2d(512, 256, 1), nn.BatchNorm2d(256))
        self.sa.conv_3x3 = nn.Sequential(nn.Conv2d(256, 512, 3, padding=1), nn.BatchNorm2d(512))
        self.sa.conv_1x3 = nn.Sequential(nn.Conv2d(256, 512, (1, 3), padding=(0, 1)), nn.BatchNorm2d(512))
        self.sa.conv_3x1 = nn.Sequential(nn.Conv2d(256, 512, (3, 1), padding=(1, 0)), nn.BatchNorm2d(512))
        self.ca = nn.Module()
        self.ca.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 512),
                                          nn.Sigmoid())

    def forward(self, x):
        sa = self.sa
        y = sa.conv1x1(x)
        y = F.relu(sa.conv_3x3(y) + sa.conv_1x3(y) + sa.conv_3x1(y))
        pooled = (x * y.sum(dim=1, keepdim=True)).mean(dim=(2, 3))
        return pooled * self.ca.attention(pooled)


class _DANAsAuthors(nn.Module):
    """DAN's layout as the authors build it: features = ResNet-18 children[:-2], cat_head{i}, fc, bn."""

    def __init__(self, num_class: int = 8, num_head: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.num_head = num_head
        for i in range(num_head):
            setattr(self, f"cat_head{i}", _DANHeadAsAuthors())
        self.fc = nn.Linear(512, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def forward(self, x):
        f = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(f) for i in range(self.num_head)]).permute(1, 0, 2)
        heads = F.log_softmax(heads, dim=1)
        return self.bn(self.fc(heads.sum(dim=1)))


def test_dan_loads_the_authors_checkpoint_and_computes_what_theirs_does(tmp_path):
    authors = _randomize(_DANAsAuthors(), seed=1).eval()
    path = tmp_path / "affecnet8_epoch5_acc0.6209.pth"
    torch.save({"iter": 5, "model_state_dict": authors.state_dict(), "optimizer_state_dict": {}}, path)
    model, report = build_model_from_checkpoint(path)  # what affectnet_fusion_test.py does
    assert report.ok
    assert report.source == "dan"
    assert not report.discarded
    assert (type(model).__name__, model.num_classes, model.num_heads) == ("DAN", 8, 4)
    assert len(report.loaded) == len(authors.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, authors(x), atol=1e-4, rtol=1e-4)
    # a file with a wrong head renamed is named key by key, the model untouched
    bad = dict(authors.state_dict())
    bad["cat_head0.sa.conv_3x3.0.weight"] = bad.pop("cat_head0.sa.conv_3x3.0.weight")[:, :128]
    fresh = networks.create_model("dan")
    before = fresh.heads[0].spatial.conv1x3[0].weight.clone()
    with pytest.raises(WeightLoadError, match=r"heads\.0\.spatial\.conv3x3\.0\.weight"):
        load_state_dict_checked(fresh, bad, "dan")
    assert torch.equal(fresh.heads[0].spatial.conv1x3[0].weight, before)


class _AdaDFAsAuthors(nn.Module):
    """Ada-DF's layout as the authors build it from a ResNet-18 (children[:-5] shared, [-5:] per branch)."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        resnet.fc = nn.Linear(512, num_classes)
        children = list(resnet.children())
        self.feature = nn.Sequential(*children[:-5])
        self.branch_1 = nn.Sequential(*children[-5:])
        self.branch_1_feature = nn.Sequential(*list(self.branch_1.children())[:-1])
        self.branch_1_classifier = self.branch_1[-1]
        self.branch_2 = copy.deepcopy(self.branch_1)
        self.branch_2_feature = nn.Sequential(*list(self.branch_2.children())[:-1])
        self.branch_2_classifier = self.branch_2[-1]
        self.alpha_1 = nn.Sequential(nn.Linear(512, 1), nn.Sigmoid())
        self.alpha_2 = nn.Sequential(nn.Linear(512, 1), nn.Sigmoid())

    def forward(self, x):
        f0 = self.feature(x)
        f1, f2 = self.branch_1_feature(f0).flatten(1), self.branch_2_feature(f0).flatten(1)
        w1, w2 = self.alpha_1(f1), self.alpha_2(f2)
        return w1 * self.branch_1_classifier(f1), w2 * self.branch_2_classifier(f2), (w1 + w2) / 2


def test_ada_df_loads_the_authors_checkpoint_and_computes_what_theirs_does(tmp_path):
    authors = _randomize(_AdaDFAsAuthors(), seed=2).eval()
    sd = authors.state_dict()
    assert "branch_1_feature.0.0.conv1.weight" in sd
    assert "branch_1.0.0.conv1.weight" in sd
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 10, "state_dict": sd, "acc": 89.5, "best_acc": 90.0, "optimizer": {},
                "class_distributions": torch.eye(7)}, path)
    model, report = build_model_from_checkpoint(path)
    assert report.ok
    assert report.source == "ada_df"
    duplicates = [k for k in sd if k.startswith(("branch_1_feature.", "branch_2_feature.", "branch_1_classifier.",
                                                 "branch_2_classifier."))]
    assert sorted(report.discarded) == sorted(duplicates)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
        aux, target, attention = authors(x)
    assert torch.allclose(out.logits, target, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.aux_logits, aux, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.attention, attention.squeeze(1), atol=1e-5)
    sd = dict(sd)
    sd["branch_1_feature.0.0.conv1.weight"] = sd["branch_1_feature.0.0.conv1.weight"] + 1.0
    with pytest.raises(ValueError, match="differs from branch_1.0.0.conv1.weight"):
        model.remap_state_dict(sd, "ada_df")


def _gsdnet_authors_shapes(num_classes: int = 7) -> dict[str, tuple[int, ...]]:
    """GSDNet's state-dict keys and shapes from ``model/resnet1.py``: ``resnet.`` + a ResNet-50 (no fc) and,
    per stage i with c_i channels, ``cm{i}`` = (ACBAM(c_i), 1×1 conv to 2048, BN, ReLU, pool, flatten)
    (stage 4: ACBAM, pool, flatten), ``fc_{i}`` = Linear(2048, 128), ``fc_{i}_{i}`` = Linear(2048, C)."""
    shapes = {f"resnet.{k}": tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()
              if not k.startswith("fc.")}
    for i, c in enumerate((256, 512, 1024, 2048), start=1):
        gate = f"resnet.cm{i}.0.ChannelGate."
        h = c // 16
        shapes.update({f"{gate}mlp.1.weight": (h, c), f"{gate}mlp.1.bias": (h,), f"{gate}mlp.3.weight": (c, h),
                       f"{gate}mlp.3.bias": (c,)})
        for branch in ("max_weight", "mean_weight"):
            shapes.update({f"{gate}{branch}.1.weight": (h, c), f"{gate}{branch}.1.bias": (h,),
                           f"{gate}{branch}.3.weight": (1, h), f"{gate}{branch}.3.bias": (1,)})
        if i < 4:
            shapes.update({f"resnet.cm{i}.1.weight": (2048, c, 1, 1), f"resnet.cm{i}.1.bias": (2048,)})
            shapes.update({f"resnet.cm{i}.2.{p}": (2048,) for p in ("weight", "bias", "running_mean", "running_var")})
            shapes[f"resnet.cm{i}.2.num_batches_tracked"] = ()
        shapes.update({f"resnet.fc_{i}.weight": (128, 2048), f"resnet.fc_{i}.bias": (128,),
                       f"resnet.fc_{i}_{i}.weight": (num_classes, 2048), f"resnet.fc_{i}_{i}.bias": (num_classes,)})
    return shapes



def test_gsdnet_loads_the_authors_checkpoint_and_its_stage_heads_compute_theirs(tmp_path):
    sd = random_state_dict(_gsdnet_authors_shapes(), seed=3, batches_tracked=3)
    path = tmp_path / "RAF_model.pth"
    torch.save(sd, path)  # the authors save model.state_dict() as it is
    model, report = build_model_from_checkpoint(path)
    assert report.ok
    assert report.source == "gsdnet"
    assert len(report.loaded) == len(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        maps = model.backbone.forward_stages(x)
    for i, m in enumerate(maps, start=1):  # the authors' cm_i, fc_i, fc_i_i on their own keys
        p = f"resnet.cm{i}."
        g = p + "0.ChannelGate."

        def mlp(v, name, g=g):
            return F.linear(F.relu(F.linear(v, sd[f"{g}{name}.1.weight"], sd[f"{g}{name}.1.bias"])),
                            sd[f"{g}{name}.3.weight"], sd[f"{g}{name}.3.bias"])

        avg, mx = m.mean(dim=(2, 3)), m.amax(dim=(2, 3))
        att = m * torch.sigmoid(mlp(avg, "mlp") * mlp(avg, "mean_weight") + mlp(mx, "mlp") * mlp(mx, "max_weight"))[
            :, :, None, None]
        if i < 4:
            att = F.conv2d(att, sd[p + "1.weight"], sd[p + "1.bias"])
            att = F.relu(F.batch_norm(att, sd[p + "2.running_mean"], sd[p + "2.running_var"], sd[p + "2.weight"],
                                      sd[p + "2.bias"], eps=1e-5))
        pooled = att.mean(dim=(2, 3))
        emb = F.linear(pooled, sd[f"resnet.fc_{i}.weight"], sd[f"resnet.fc_{i}.bias"])
        logits = F.linear(pooled, sd[f"resnet.fc_{i}_{i}.weight"], sd[f"resnet.fc_{i}_{i}.bias"])
        assert torch.allclose(out.stage_embeddings[i - 1], emb, atol=1e-4, rtol=1e-4)
        assert torch.allclose(out.stage_logits[i - 1], logits, atol=1e-4, rtol=1e-4)


def test_pretrained_resnet_files_fill_the_backbones(tmp_path):
    reference = _randomize(torchvision.models.resnet18(), seed=4)
    msceleb = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": reference.state_dict()}, msceleb)  # DAN's / Ada-DF's layout, 1000-way fc
    for name in ("dan", "ada_df", "mfer"):
        model = networks.create_model(name, num_classes=7)
        report = networks.load_weights(model, msceleb)
        assert report.ok
        assert report.source == "torchvision_resnet"
        assert sorted(report.discarded) == ["fc.bias", "fc.weight"]
        assert torch.equal(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
        if name == "ada_df":  # both branches start from the same pretrained layers 2–4
            assert torch.equal(model.target.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
            assert report.prefixes == ("backbone.", "target.")
    with pytest.raises(CheckpointFormatError, match="does not say which model it belongs to"):
        build_model_from_checkpoint(msceleb)
    with pytest.raises(WeightLoadError, match="wrong shape"):  # a ResNet-18 file into GSDNet's ResNet-50
        networks.load_weights(networks.create_model("gsdnet"), msceleb)

    # VGGFace2's ResNet-50: a plain Python pickle of numpy arrays, no BatchNorm counters, 8631-way fc
    r50 = _randomize(torchvision.models.resnet50(), seed=5)
    arrays = {k: v.numpy() for k, v in r50.state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays["fc.weight"], arrays["fc.bias"] = np.zeros((8631, 2048), np.float32), np.zeros(8631, np.float32)
    pkl = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
    pkl.write_bytes(pickle.dumps(arrays, protocol=2))
    model = networks.create_model("gsdnet")
    report = networks.load_weights(model, pkl)
    assert report.ok
    assert report.source == "torchvision_resnet"
    assert len(report.discarded) == 2
    assert torch.equal(model.backbone.layer2[0].downsample[1].running_var, r50.layer2[0].downsample[1].running_var)
    assert int(model.backbone.bn1.num_batches_tracked) == 0

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"conv1.weight": Boom()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle global .*print"):
        networks.load_weights(model, evil)


# ================================================================================ the public commands


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("zoo") / "d", per_class=1, val_per_class=1, size=32)


@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_through_the_cli_and_its_checkpoint_is_tested(name, tiny_data, tmp_path):
    from if3d.evaluate import run as evaluate
    from if3d.train.cli import run as train

    out = tmp_path / "run"
    assert train(["--model", name, "--data", str(tiny_data), "--epochs", "1", "--batch-size", "4",
                  "--image-size", "32", "--workers", "0", "--out", str(out), "--seed", "0"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert len(rows) == 1
    assert rows[0]["step"] == "1"
    assert all(math.isfinite(float(rows[0][f"train_{t}"])) for t in TERMS[name])
    run_info = json.loads((out / "config.json").read_text())
    assert run_info["config"]["recipe"]["preset"] == name  # the paper's recipe, by default
    assert run_info["run"]["criterion"]["name"] == name
    ck = torch.load(out / "last.pth", weights_only=True)
    if name == "ada_df":  # the epoch ended (validation), so the class distributions were renewed once
        assert int(ck["model"]["class_distributions.epochs_done"]) == 1
        assert float(ck["model"]["class_distributions.count"].sum()) == 0
    result = tmp_path / "eval"
    assert evaluate(["--checkpoint", str(out / "best.pth"), "--data", str(tiny_data), "--split", "val",
                     "--image-size", "32", "--workers", "0", "--batch-size", "4", "--out", str(result)]) == 0
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["num_samples"] == 7


def test_the_test_script_evaluates_an_authors_dan_checkpoint(tiny_data, tmp_path):
    from if3d.evaluate import run as evaluate

    authors = _randomize(_DANAsAuthors(num_class=8), seed=6).eval()
    path = tmp_path / "affecnet8_epoch5_acc0.6209.pth"
    torch.save({"iter": 5, "model_state_dict": authors.state_dict(), "optimizer_state_dict": {}}, path)
    result = tmp_path / "eval"
    assert evaluate(["--checkpoint", str(path), "--data", str(tiny_data), "--split", "val", "--image-size", "32",
                     "--workers", "0", "--batch-size", "4", "--out", str(result)]) == 0
    rows = list(csv.DictReader(open(result / "predictions.csv", newline="")))
    assert len(rows) == 7
    x = normalize(torch.stack([load_image(r["path"], 32) for r in rows]), MEAN, STD)
    with torch.no_grad():
        expected = authors(x).argmax(1)
    assert [int(r["prediction"]) for r in rows] == expected.tolist()
    assert rows[0]["prob_Contempt"] != ""  # the checkpoint's 8 AffectNet classes


def test_ada_df_class_statistics_survive_an_interruption(tmp_path):
    """The statistics summed during an epoch are model buffers: a run interrupted mid-epoch and resumed ends
    with the same class distributions (and weights) as an uninterrupted one."""
    from if3d.train.cli import run as train

    if "ada_df_low_threshold_test" not in networks.list_models():

        @networks.register_model(criterion="ada_df")
        def ada_df_low_threshold_test(**kwargs):
            """Ada-DF whose class distributions always take the measured means (they depend on every batch)."""
            return networks.create_model("ada_df", threshold=0.01, **kwargs)

    data = make_dataset(tmp_path / "d", per_class=2, val_per_class=1, size=32)  # 14 samples: 3 steps of 4
    common = ["--model", "ada_df_low_threshold_test", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--image-size", "32",
              "--workers", "0", "--seed", "1"]
    assert train([*common, "--out", str(tmp_path / "whole")]) == 0
    assert train([*common, "--out", str(tmp_path / "cut"), "--interrupt-after-steps", "1"]) == 130
    partial = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["model"]
    assert float(partial["class_distributions.count"].sum()) == 4  # one batch recorded, epoch not closed
    assert train(["--resume", str(tmp_path / "cut"), "--workers", "0"]) == 0
    whole = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["model"]
    assert int(resumed["class_distributions.epochs_done"]) == 1
    smoothed = ClassDistributions(7, 0.01).distributions
    assert not torch.allclose(resumed["class_distributions.distributions"], smoothed)  # renewed from the epoch
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
