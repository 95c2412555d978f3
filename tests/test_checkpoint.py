"""Checkpoint format, weights_only loading, RNG state round trip, atomic writes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from if3d.atomic import atomic_write, atomic_write_json, remove_stale_temporaries
from if3d.checkpoint import (
    REQUIRED_KEYS,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _trained_pieces():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-6, max_lr=1e-4, step_size_up=3,
                                              mode="triangular", cycle_momentum=False)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model, opt, sched = _trained_pieces()
    ck = make_checkpoint(model_name="m", model_kwargs={"num_classes": 3}, model_state=model.state_dict(),
                         class_names=["a", "b", "c"], optimizer_state=opt.state_dict(),
                         scheduler_state=sched.state_dict(), epoch=1, step=4, config={"lr": 5e-5},
                         metrics={"best": {"accuracy": 0.5, "epoch": 1}})
    path = save_checkpoint(ck, tmp_path / "last.pth")
    raw = torch.load(path, weights_only=True)  # no pickled classes, no numpy arrays
    assert set(REQUIRED_KEYS) <= set(raw)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "if3d-toolkit"
    assert loaded["step"] == 4
    assert loaded["class_names"] == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.AdamW(model.parameters(), lr=5e-5)
    sched2 = torch.optim.lr_scheduler.CyclicLR(opt2, base_lr=1e-6, max_lr=1e-4, step_size_up=3,
                                               mode="triangular", cycle_momentum=False)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global state is what is saved
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"v": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_json(tmp_path / "atomic.json", {"v": 1})
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "masked.json", {"v": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "masked.json").stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".last.pth.{dead.pid}.k3j.tmp-if3d"
    live = tmp_path / f".last.pth.{os.getppid()}.a1b.tmp-if3d"  # a process that is certainly alive
    other = tmp_path / ".hidden.tmp"  # not ours: never touched
    for p in (stale, live, other):
        p.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists()
    assert other.exists()
    assert not stale.exists()


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"model_state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth is not an if3d-toolkit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="lacks keys"):
        save_checkpoint({"format": "if3d-toolkit"}, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()
