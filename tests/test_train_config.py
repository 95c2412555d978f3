"""Presets as data, command-line resolution, learning-rate schedules, fast-path defaults."""

from __future__ import annotations

import pytest
import torch

import networks
from if3d.runtime.device import FAST_PATH_DEFAULTS, RuntimeConfig, resolve_amp, resolve_runtime
from if3d.train.cli import config_from_args
from if3d.train.config import PRESETS, ConfigError, TrainConfig, config_from_preset
from if3d.train.engine import build_optimizer, build_scheduler


def test_presets_hold_the_original_recipes():
    if3d, ddamfn = PRESETS["if3d"], PRESETS["ddamfn"]
    assert (if3d.optimizer, if3d.lr, if3d.scheduler, if3d.batch_size, if3d.epochs) == ("adamw", 5e-5, "cyclic", 128, 100)
    assert (if3d.cyclic_base_lr, if3d.cyclic_max_lr, if3d.cyclic_mode) == (1e-6, 1e-4, "triangular")
    assert if3d.cyclic_step_size_up is None  # half an epoch, as If3D's len(train_loader) // 2
    assert (ddamfn.optimizer, ddamfn.lr, ddamfn.weight_decay, ddamfn.scheduler, ddamfn.exp_gamma, ddamfn.epochs) == (
        "adam", 1e-4, 0.0, "exponential", 0.6, 40)
    for r in (if3d, ddamfn):
        assert r.balanced_sampling
        assert r.criterion_weights() == {}  # the loss weights are the model's criterion's
    assert networks.create_criterion("if3d_gate").weights == {"ce": 1.0, "attention": 0.1, "alignment": 0.1, "va": 1.0}
    assert networks.create_criterion("ddamfn").weights == {"ce": 1.0, "attention": 0.1}


def test_cli_resolves_preset_per_model_and_overrides(tmp_path):
    cfg = config_from_args(["--data", str(tmp_path)], "if3d_gate")
    r = cfg.recipe
    assert (cfg.model.model, r.preset, r.optimizer, r.batch_size, r.epochs) == (
        "if3d_gate", "fer_imagenet", "adamw", 32, 2)
    assert cfg.run.out.endswith("if3d_gate")
    own = config_from_args(["--data", str(tmp_path), "--model", "dan"], "if3d_gate")
    assert (own.recipe.preset, own.recipe.optimizer) == ("dan", networks.model_info("dan").recipe["optimizer"])
    base = config_from_args(["--data", str(tmp_path), "--model", "ddamfn", "--preset", "ddamfn", "--lr", "3e-4",
                             "--amp", "bf16", "--fused-optimizer", "--no-channels-last"], "if3d_linear")
    r = base.recipe
    assert (base.model.model, r.preset, r.optimizer, r.scheduler, r.lr) == ("ddamfn", "ddamfn", "adam", "exponential", 3e-4)
    rt = base.runtime
    assert (rt.amp, rt.optimizer_impl, rt.channels_last, rt.compile) == ("bf16", "fused", False, None)
    bare = config_from_args(["--data", str(tmp_path), "--amp", "--final-checkpoint"], "if3d_spp")
    assert bare.runtime.amp == "auto"
    assert bare.run.final_checkpoint == "FinalCheckPoints"
    given = config_from_args(["--data", str(tmp_path), "--final-checkpoint", "F", "--loss-attention", "0.05",
                              "--loss-weights", "ce", "2", "--preset", "ddamfn"], "if3d_spp")
    assert given.run.final_checkpoint == "F"
    assert given.recipe.criterion_weights() == {"attention": 0.05, "ce": 2.0}
    assert given.recipe.preset == "ddamfn"
    assert given.recipe.optimizer == "adam"  # the preset named on the command line, whatever the model


def test_cli_rejects_missing_or_conflicting_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config_from_args([], "if3d_linear")
    assert "--data ROOT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_from_args(["--data", str(tmp_path), "--train-photos", str(tmp_path)], "if3d_linear")
    with pytest.raises(SystemExit):
        config_from_args(["--train-photos", str(tmp_path)], "if3d_linear")


def test_bad_option_values_are_refused_up_front(tmp_path, capsys):
    for argv, message in ((["--epochs", "0"], "--epochs must be a positive whole number, got 0"),
                          (["--batch-size", "-1"], "--batch-size must be a positive whole number"),
                          (["--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
                          (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N, got 'foo'"),
                          (["--workers", "-2"], "--workers must be >= 0"),
                          (["--model", "nope"], "unknown model 'nope'; registered models: ")):
        with pytest.raises(SystemExit) as info:
            config_from_args(["--data", str(tmp_path), *argv], "if3d_gate")
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err
        if argv[0] == "--model":  # the message lists what is registered
            assert "ddamfn" in err
            assert "if3d_gate" in err
        assert err.count("\n") == 1  # one line, no traceback
        if argv[0] == "--model":
            assert "ddamfn, " in err  # the registered models are listed
    with pytest.raises(ConfigError, match="--epochs must be"):
        config_from_preset("if3d", epochs=-1, data="x").validate()


def test_strategy_scripts_train_registered_models():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = sorted(root.glob("affectnet_*_fusion_train.py"))
    assert len(scripts) == 4
    for script in scripts:
        model = re.search(r'default_model="(\w+)"', script.read_text()).group(1)
        assert model in networks.list_models(), script.name
        assert networks.model_info(model).criterion == "if3d"


def _lrs(cfg: TrainConfig, steps_per_epoch: int, n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, [p], torch.device("cpu"))
    sched, interval = build_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, interval


def test_cyclic_schedule_is_one_triangle_per_epoch():
    lrs, interval = _lrs(config_from_preset("if3d"), steps_per_epoch=10, n=11)
    assert interval == "step"
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(1e-4)  # step_size_up = 10 // 2
    assert lrs[10] == pytest.approx(1e-6)
    assert lrs[2] == pytest.approx(1e-6 + (1e-4 - 1e-6) * 2 / 5)


def test_exponential_schedule_decays_per_epoch():
    lrs, interval = _lrs(config_from_preset("ddamfn"), steps_per_epoch=10, n=3)
    assert interval == "epoch"
    assert lrs == pytest.approx([1e-4, 6e-5, 3.6e-5])


def test_fast_path_defaults_live_in_one_table_and_resolve():
    assert set(FAST_PATH_DEFAULTS) == {"cpu", "cuda"}
    assert resolve_amp("off", "cpu") == "off"
    assert resolve_amp("auto", "cpu") in ("off", "bf16")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp("fp16", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_amp("int8", "cpu")


def test_cpu_default_is_the_measured_fast_path_and_each_switch_overrides_it():
    cpu = torch.device("cpu")
    d = resolve_runtime(RuntimeConfig(), cpu)
    # benchmarks/RESULTS.md: fp32 with NHWC, fused AdamW and the allocator tuning beats bf16 on CPU
    assert (d.amp, d.channels_last, d.optimizer_impl, d.compile, d.tune_allocator) == ("off", True, "fused", "auto", True)
    assert d.workers == 0  # loading in the training process: workers would compete with the compute threads
    o = resolve_runtime(config_from_args(["--data", "x", "--no-channels-last", "--foreach", "--no-tune-allocator",
                                          "--amp", "bf16"], "if3d_gate").runtime, cpu)
    assert (o.amp, o.channels_last, o.optimizer_impl, o.tune_allocator) == ("bf16", False, "foreach", False)
    # the allocator switch is a CPU-process setting; a CUDA run never asks for it
    assert resolve_runtime(RuntimeConfig(tune_allocator=True), torch.device("cuda")).tune_allocator is False


def test_compile_auto_compiles_only_runs_long_enough_to_repay_it(monkeypatch):
    from if3d.runtime import device as config_mod
    from if3d.runtime.device import COMPILE_AUTO_MIN_STEPS, resolve_compile

    monkeypatch.setattr(config_mod, "find_cxx", lambda: "/usr/bin/g++")
    assert resolve_compile("auto", "cpu", COMPILE_AUTO_MIN_STEPS) == (
        True, f"auto: on, {COMPILE_AUTO_MIN_STEPS} optimizer steps ≥ {COMPILE_AUTO_MIN_STEPS} and /usr/bin/g++ found")
    assert resolve_compile(None, "cpu", 10_000)[0] is True  # None = the CPU default, "auto"
    on, why = resolve_compile("auto", "cpu", COMPILE_AUTO_MIN_STEPS - 1)
    assert not on
    assert "too few" in why
    assert resolve_compile("auto", "cuda", 10_000)[0] is False
    assert resolve_compile(None, "cuda", 10_000)[0] is False
    assert resolve_compile(True, "cpu", 1) == (True, "on (asked for)")  # the user's choice is kept
    assert resolve_compile(False, "cpu", 10_000) == (False, "off")
    monkeypatch.setattr(config_mod, "find_cxx", lambda: None)
    on, why = resolve_compile("auto", "cpu", 10_000)
    assert not on
    assert "no C++ compiler" in why
    with pytest.raises(ValueError, match="compile must be"):
        resolve_compile("yes", "cpu", 10_000)


_RSS_AFTER_FREE = """
import sys
sys.path.insert(0, {root!r})
import torch
from torch.utils.data import TensorDataset
from if3d.runtime.allocator import tune_glibc_malloc
from if3d.runtime.loaders import make_loader
if {tune}:
    assert tune_glibc_malloc()
def rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20
loader = make_loader(TensorDataset(torch.arange(8.0)), list(range(8)), 4, 1, False, False)
assert sum(len(b[0]) for b in loader) == 8  # a first epoch: everything a worker start needs is loaded
base = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, touched
del x
kept = rss_mib() - base
# the engine's loader hands the free heap back before it forks workers (copy-on-write hazard)
assert sum(len(b[0]) for b in loader) == 8
print(kept, rss_mib() - base)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_allocator_tuning_keeps_freed_activations_for_reuse_and_releases_them_before_a_fork():
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    kept, released = {}, {}
    for tune in (False, True):
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE.format(root=root, tune=tune)],
                             capture_output=True, text=True, check=True).stdout
        kept[tune], released[tune] = map(float, out.split()[-2:])
    # plain glibc unmaps a freed 256 MiB block at once; tuned, it stays in the heap for the next step
    assert kept[False] < 32
    assert kept[True] > 200
    # ... until the engine's loader returns it before forking its workers
    assert released[True] < 32


def test_config_round_trips_through_a_dict():
    cfg = config_from_preset("ddamfn", model="ddamfn", data="x", epochs=3)
    d = cfg.to_dict()
    assert list(d) == ["model", "data", "recipe", "runtime", "run"]
    assert TrainConfig.from_dict({**d, "a_future_section": {}, "recipe": {**d["recipe"], "a_future_field": 1}}) == cfg
    with pytest.raises(KeyError, match="unknown preset"):
        config_from_preset("nope")
    with pytest.raises(TypeError, match="unknown training setting 'learning_rate'"):
        config_from_preset("if3d", learning_rate=1)


def test_a_flat_configuration_of_earlier_versions_still_resumes_and_garbage_is_refused():
    flat = {"model": "if3d_gate", "preset": "if3d", "data": "D", "train_split": "train", "val_split": "val",
            "epochs": 5, "batch_size": 16, "lr": 5e-5, "cyclic_max_lr": 1e-3, "loss_attention": 0.1,
            "loss_alignment": 0.1, "loss_va": 1.0, "amp": "off", "channels_last": True, "optimizer_impl": "fused",
            "compile": False, "tune_allocator": True, "workers": 0, "seed": 3, "out": "runs/g", "_world_size": 1}
    cfg = TrainConfig.from_dict(flat)
    assert (cfg.model.model, cfg.data.data, cfg.recipe.epochs, cfg.recipe.cyclic_max_lr, cfg.run.seed) == (
        "if3d_gate", "D", 5, 1e-3, 3)
    assert cfg.recipe.criterion_weights() == {}  # the stored weights were the criterion's defaults
    assert cfg.runtime.compile is False
    with pytest.raises(ConfigError, match="not a training configuration"):
        TrainConfig.from_dict({"lr": 1})


def test_a_model_can_bring_its_paper_recipe_as_its_own_preset(tmp_path):
    from if3d.train.config import default_preset, list_presets, preset_recipe

    if "recipe_model_test" not in networks.list_models():
        @networks.register_model(criterion="ddamfn", recipe={"optimizer": "adam", "lr": 3e-4, "epochs": 7,
                                                              "loss_weights": {"attention": 0.5}})
        def recipe_model_test(**kwargs):
            return networks.create_model("ddamfn", **kwargs)

    assert "recipe_model_test" in list_presets()
    assert default_preset("recipe_model_test") == "recipe_model_test"
    assert default_preset("ddamfn") == "fer_imagenet"  # the papers' presets are named (--preset ddamfn)
    assert default_preset("if3d_gate") == "fer_imagenet"
    r = preset_recipe("recipe_model_test")
    assert (r.preset, r.optimizer, r.lr, r.epochs, r.criterion_weights()) == (
        "recipe_model_test", "adam", 3e-4, 7, {"attention": 0.5})
    cfg = config_from_args(["--data", str(tmp_path), "--model", "recipe_model_test", "--epochs", "2"])
    assert (cfg.recipe.preset, cfg.recipe.lr, cfg.recipe.epochs) == ("recipe_model_test", 3e-4, 2)
    other = config_from_args(["--data", str(tmp_path), "--model", "recipe_model_test", "--preset", "if3d"])
    assert other.recipe.optimizer == "adamw"


def test_a_pretrained_backbone_can_learn_at_a_fraction_of_the_head_rate():
    from if3d.train.engine import param_groups

    model = networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone="mobilenetv2")
    cfg = config_from_preset("if3d", scheduler="cyclic", lr=1e-3, cyclic_base_lr=1e-5, cyclic_max_lr=1e-3,
                             backbone_lr_scale=0.1)
    groups = param_groups(model, cfg.recipe.backbone_lr_scale)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("photo_backbone.", "render_backbone.")) for p in groups[0]["params"])
    assert not any(names[id(p)].startswith(("photo_backbone.", "render_backbone.")) for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    opt = build_optimizer(cfg, groups, torch.device("cpu"))
    sched, _ = build_scheduler(cfg, opt, steps_per_epoch=10)
    for _ in range(5):  # to the cyclic peak
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    assert len(param_groups(model, 1.0)) == 1


def test_attention_loss_weight_is_the_papers_only_in_the_papers_settings():
    from if3d.train.engine import IMPROVED_ATTENTION_WEIGHT, papers_attention_setting

    assert IMPROVED_ATTENTION_WEIGHT == 0.01
    assert papers_attention_setting("ddamfn", {"num_heads": 2})
    assert papers_attention_setting("ddamfn", {"backbone": "mixedfeaturenet"})
    assert papers_attention_setting("if3d_gate", {"faithful": True})
    assert not papers_attention_setting("ddamfn", {"backbone": "mobilenetv2"})
    assert not papers_attention_setting("if3d_gate", {})
    assert not papers_attention_setting("if3d_gate", {"backbone": "efficientnet_lite0"})


def _entry_point_models() -> dict[str, str]:
    """Script → the model it trains by default: the root training scripts and ``python -m if3d.train``."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = [*sorted(root.glob("affectnet_*_fusion_train.py")), root / "if3d" / "train" / "__main__.py"]
    return {s.name if s.name != "__main__.py" else "if3d.train": re.search(r'default_model="(\w+)"',
                                                                            s.read_text()).group(1) for s in scripts}


def test_a_plain_run_starts_from_the_packaged_imagenet_backbone_with_the_fer_imagenet_recipe(tmp_path):
    from if3d.train.cli import command_default
    from if3d.train.config import DEFAULT_PRESET, default_preset
    from networks.weights import PACKAGED_WEIGHTS

    models = _entry_point_models()
    assert models["if3d.train"] == "ddamfn"
    assert networks.backbone_spec("mobilenetv2").imagenet  # the file the set-up installs
    for script, model in models.items():
        cfg = config_from_args(["--data", str(tmp_path)], model)
        m = cfg.model
        assert (m.model, m.backbone, m.pretrained, m.num_heads) == (model, "mobilenetv2", PACKAGED_WEIGHTS, 2), script
        assert cfg.recipe == PRESETS["fer_imagenet"], script
        assert default_preset(model) == DEFAULT_PRESET == "fer_imagenet"
        # --help shows these defaults without importing the registry
        assert command_default(model) == config_from_args(["--data", str(tmp_path)], model).replace(data=None)
        assert m.builder_kwargs(7) == {"num_classes": 7, "num_heads": 2, "backbone": "mobilenetv2"}


def test_the_papers_presets_reproduce_their_settings(tmp_path):
    data = ["--data", str(tmp_path)]
    for model in ("if3d_gate", "if3d_linear"):
        cfg = config_from_args([*data, "--preset", "if3d"], model)
        assert (cfg.model.backbone, cfg.model.num_heads, cfg.model.pretrained) == ("mixedfeaturenet", 4, None)
        assert cfg.recipe == PRESETS["if3d"]
    mfn = config_from_args([*data, "--preset", "if3d", "--pretrained", "pretrained/MFN_msceleb.pth"], "if3d_gate")
    assert (mfn.model.backbone, mfn.model.pretrained) == ("mixedfeaturenet", "pretrained/MFN_msceleb.pth")
    ddamfn = config_from_args([*data, "--model", "ddamfn", "--preset", "ddamfn"], "if3d_gate")
    assert (ddamfn.model.backbone, ddamfn.model.num_heads, ddamfn.model.pretrained) == ("mixedfeaturenet", 2, None)
    assert ddamfn.recipe == PRESETS["ddamfn"]
    cfg = config_from_preset("if3d", model="if3d_spp")
    assert (cfg.model.backbone, cfg.model.num_heads, cfg.recipe.preset) == ("mixedfeaturenet", 4, "if3d")
    # a paper's preset keeps the heads of the model's own paper: DDAMFN 2, If3D 4
    assert config_from_args([*data, "--model", "ddamfn", "--preset", "if3d"], "if3d_gate").model.num_heads == 2
    assert config_from_args([*data, "--preset", "ddamfn"], "if3d_gate").model.num_heads == 4


def test_explicit_options_win_over_what_a_preset_implies(tmp_path):
    def model(*argv: str):
        m = config_from_args(["--data", str(tmp_path), *argv], "if3d_gate").model
        return m.backbone, m.num_heads, m.pretrained

    assert model("--preset", "if3d", "--backbone", "mobilenetv2") == ("mobilenetv2", 4, None)
    assert model("--preset", "if3d", "--num-heads", "2", "--pretrained", "imagenet") == ("mixedfeaturenet", 2, "imagenet")
    assert model("--num-heads", "4", "--pretrained", "w.pth") == ("mobilenetv2", 4, "w.pth")
    # the ImageNet start goes with a backbone that has packaged ImageNet weights, and only there
    assert model("--backbone", "efficientnet_lite0") == ("efficientnet_lite0", 2, "imagenet")
    assert model("--backbone", "mixedfeaturenet") == ("mixedfeaturenet", 2, None)
    assert model("--backbone=mixedfeaturenet", "--pretrained", "w.pth") == ("mixedfeaturenet", 2, "w.pth")
    assert model("--faithful") == (None, None, None)  # If3D's own architecture: no preset changes it
    assert config_from_preset("fer_imagenet", model="ddamfn", num_heads=3, backbone="mixedfeaturenet").model.num_heads == 3
    cfg = config_from_args(["--data", str(tmp_path), "--preset", "if3d", "--lr", "1e-3", "--epochs", "3"], "if3d_gate")
    assert (cfg.recipe.lr, cfg.recipe.epochs, cfg.recipe.scheduler) == (1e-3, 3, "cyclic")


def test_models_without_a_packaged_imagenet_backbone_keep_their_defaults(tmp_path):
    import _train_helpers  # noqa: F401  registers tiny_fusion_test (no preset, no backbone option)

    expected = {"dan": "dan", "landmark_mlp": "landmark_mlp", "fan_relation": "fan_relation",
                "au_regressor": "au_regressor", "tiny_fusion_test": "if3d"}
    for model, preset in expected.items():
        cfg = config_from_args(["--data", str(tmp_path), "--model", model], "if3d_gate")
        m = cfg.model
        assert (m.backbone, m.num_heads, m.pretrained, cfg.recipe.preset) == (None, None, None, preset), model
        # a preset brings its recipe to them, not the model settings of DDAMFN and the If3D models
        named = config_from_args(["--data", str(tmp_path), "--model", model, "--preset", "fer_imagenet"], "if3d_gate")
        assert (named.model.backbone, named.model.pretrained, named.recipe.lr) == (None, None, 1e-3), model


def test_help_is_quick_shows_the_defaults_and_ends_with_the_exit_statuses():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for command in (["-m", "if3d.train"], ["affectnet_gate_fusion_train.py"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], cwd=root, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                    if line.startswith("import time:") and line.count("|") == 2}
        assert not imported & {"torch", "networks", "numpy"}, sorted(imported & {"torch", "networks", "numpy"})
        lines = proc.stdout.rstrip().splitlines()
        assert lines[-1] == "exit status: 0 done; 1 non-finite loss or weights (or an unexpected error, with its " \
                            "traceback); 2 bad options, data or checkpoint, or an unwritable run directory; 130 " \
                            "interrupted by Ctrl-C or SIGTERM (resumable with --resume RUN_DIR)"
        text = " ".join(proc.stdout.replace("│", " ").split())  # the help's boxes and line breaks away
        for default in ("(default: mobilenetv2)", "(default: imagenet)", "(default: fer_imagenet)", "(default: 2)"):
            assert default in text, default
