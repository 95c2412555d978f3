"""The comparison with the original If3D code runs end to end in its smoke mode against a stand-in "original"
checkout generated here (CI needs no network), and measures what it says it measures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# benchmarks/ is not an installed package: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import vs_original  # noqa: E402
from benchmarks.report import BEGIN, END, update_block  # noqa: E402

#: A stand-in with the original's layout: ``networks/`` without ``__init__.py`` (a namespace package, which a
#: regular ``networks`` package earlier on sys.path would shadow), the fusion module importing its sibling
#: ``MixedFeatureNet`` as the original does, the original's constructor and its six outputs. Every forward
#: call is logged, so the test knows the stand-in is what was timed.
STAND_IN_MFN = """
import torch.nn as nn

class MixedFeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=16, padding=1)
"""
STAND_IN_FUSION = """
from pathlib import Path
import torch
import torch.nn as nn
import torch.nn.functional as F
from networks import MixedFeatureNet

class DDAMNet_Smirk_Spatial_Alignment_GateFusion(nn.Module):
    def __init__(self, num_class=8, num_head=2, pretrained=True):
        super().__init__()
        assert not pretrained, "the benchmark must not ask for the MS-Celeb-1M file"
        self.photo, self.render = MixedFeatureNet.MixedFeatureNet(), MixedFeatureNet.MixedFeatureNet()
        self.heads = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(num_head))
        self.out = nn.Linear(4 * 7 * 7, num_class + 2)

    def forward(self, orig_pic, smirk_pic):
        assert orig_pic.shape[1:] == (3, 112, 112), orig_pic.shape
        with open(Path(__file__).with_name("calls.log"), "a") as f:
            f.write("forward\\n")
        p, r = self.photo.conv(orig_pic), self.render.conv(smirk_pic)
        ph, rh = [h(p) for h in self.heads], [h(r) for h in self.heads]
        out = self.out((p + r).flatten(1))
        return out[:, :8], ph, rh, out[:, 8], out[:, 9], F.mse_loss(p, r)
"""


def _stand_in(root: Path) -> Path:
    (root / "networks").mkdir(parents=True)
    (root / "networks" / "MixedFeatureNet.py").write_text(textwrap.dedent(STAND_IN_MFN))
    (root / "networks" / "DDAM_smirkpic_fusion.py").write_text(textwrap.dedent(STAND_IN_FUSION))
    return root


def test_original_loss_is_cross_entropy_when_valence_arousal_heads_and_features_agree():
    g = torch.Generator().manual_seed(0)
    logits, label = torch.randn(6, 8, generator=g), torch.randint(0, 8, (6,), generator=g)
    # unit (unbiased) variance: the original's concordance term is 1 for a perfect prediction only there
    valence = torch.tensor([-1.0, 1, -1, 1, -1, 1]) * (5 / 6) ** 0.5
    arousal = valence.flip(0)
    heads = [torch.ones(6, 4, 7, 7)] * 4
    outputs = (logits, heads, heads, arousal.clone(), valence.clone(), torch.tensor(0.0))
    loss = vs_original.original_loss(outputs, label, valence, arousal, np.random.default_rng(0))
    assert torch.allclose(loss, F.cross_entropy(logits, label), atol=1e-5)
    # disagreeing heads and features add 0.1 × their MSEs
    h2 = [torch.zeros(6, 4, 7, 7), torch.ones(6, 4, 7, 7)]  # one pair, MSE 1
    outputs = (logits, h2, heads[:1], arousal.clone(), valence.clone(), torch.tensor(2.0))
    loss = vs_original.original_loss(outputs, label, valence, arousal, np.random.default_rng(0))
    assert torch.allclose(loss, F.cross_entropy(logits, label) + 0.1 + 0.2, atol=1e-5)
    # at another variance the original's formula (variances where Lin's CCC has standard deviations) is not 1
    outputs = (logits, heads, heads, 2 * arousal, 2 * valence, torch.tensor(0.0))
    loss = vs_original.original_loss(outputs, label, 2 * valence, 2 * arousal, np.random.default_rng(0))
    gamma = np.random.default_rng(0).random(3)
    assert torch.allclose(loss, F.cross_entropy(logits, label) + gamma[2] / gamma.sum() * (1 - 4), atol=1e-4)


def test_update_block_replaces_only_its_own_block(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# R\n\nprose\n\n{BEGIN}\nrun's table\n{END}\n\ntail\n")
    update_block(md, vs_original.BEGIN, vs_original.END, "first")
    update_block(md, vs_original.BEGIN, vs_original.END, "second")
    text = md.read_text()
    assert text.count(vs_original.BEGIN) == 1
    assert "second" in text
    assert "first" not in text
    assert f"{BEGIN}\nrun's table\n{END}" in text
    assert "prose" in text
    assert "tail" in text


def test_the_originals_networks_replaces_ours_even_when_ours_was_imported_first(tmp_path, repo_root):
    original = _stand_in(tmp_path / "If3d")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import networks; assert networks.create_model; "
            "from benchmarks.vs_original import import_original; cls = import_original(sys.argv[2]); "
            "print(sys.modules['networks.MixedFeatureNet'].__file__, cls.__module__)")
    proc = subprocess.run([sys.executable, "-c", code, str(repo_root), str(original)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mfn, module = proc.stdout.split()
    assert Path(mfn) == original / "networks" / "MixedFeatureNet.py"
    assert module == "networks.DDAM_smirkpic_fusion"


def test_a_folder_without_the_original_model_is_refused(tmp_path, capsys):
    assert vs_original.main(["--original", str(tmp_path), "--smoke"]) == 2
    assert "DDAM_smirkpic_fusion.py" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_times_the_stand_in_original_and_our_gate_model(tmp_path, repo_root):
    original = _stand_in(tmp_path / "If3d")
    out, md = tmp_path / "r.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.vs_original", "--original", str(original), "--smoke",
                           "--configs", "original", "ours_default", "--out", str(out), "--markdown", str(md)],
                          cwd=repo_root, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    assert report["mode"] == "smoke"
    assert "not available" in report["pretrained_note"]
    assert not md.exists()  # smoke figures never go into the results page
    rows = {r["config"]: r for r in report["rows"]}
    assert set(rows) == {"original", "ours_default"}
    orig, ours = rows["original"], rows["ours_default"]
    for r in (orig, ours):
        assert "error" not in r, r
        f = r["img_pairs_per_s"]
        assert 0 < f["min"] <= f["median"] <= f["max"]
        assert len(f["runs"]) == 1
    # the stand-in was timed: the first step plus one timed step, nothing else
    assert (original / "networks" / "calls.log").read_text().split() == ["forward"] * 2
    assert orig["model_class"].endswith("DDAM_smirkpic_fusion.DDAMNet_Smirk_Spatial_Alignment_GateFusion")
    assert orig["fast_path"] == {"amp": "off", "channels_last": False, "optimizer_impl": "default",
                                 "compile": False, "malloc_tuning": False}
    assert orig["ratio_vs_original"] == 1.0
    # ours: the training command's defaults for if3d_gate on CPU
    assert ours["backbone"] == "mobilenetv2"
    assert ours["heads"] == 2
    assert ours["preset"] == "fer_imagenet"
    assert ours["fast_path"]["channels_last"]
    assert ours["fast_path"]["optimizer_impl"] == "fused"
    assert ours["ratio_vs_original"] == pytest.approx(ours["img_pairs_per_s"]["median"]
                                                      / orig["img_pairs_per_s"]["median"], rel=1e-2)
    assert "| ours_default |" in vs_original.render_markdown(report)
