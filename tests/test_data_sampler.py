"""ClassBalancedSampler: inverse-frequency balance, per-epoch determinism, disjoint covering DDP shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from if3d.data.sampler import ClassBalancedSampler, inverse_frequency_weights


def _labels() -> np.ndarray:
    return np.array([0] * 1000 + [1] * 10 + [2] * 100 + [3] * 1, dtype=np.int64)


def test_weights_are_inverse_class_frequency():
    w = inverse_frequency_weights(_labels())
    assert w.dtype == torch.float64
    assert w[0].item() == pytest.approx(1 / 1000)
    assert w[1000].item() == pytest.approx(1 / 10)
    assert w[-1].item() == 1.0
    for cls in range(4):
        assert float(w[_labels() == cls].sum()) == pytest.approx(1.0)  # every class has the same mass
    with pytest.raises(ValueError):
        inverse_frequency_weights([])


def test_classes_are_drawn_about_equally():
    labels = _labels()
    s = ClassBalancedSampler(labels, num_samples=40000, seed=0)
    assert len(s) == 40000
    freq = np.bincount(labels[list(s)], minlength=4) / 40000
    assert np.allclose(freq, 0.25, atol=0.015), freq


def test_draws_are_deterministic_per_epoch():
    labels = _labels()
    a, b = ClassBalancedSampler(labels, seed=7), ClassBalancedSampler(labels, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ClassBalancedSampler(labels, seed=8)) != first


@pytest.mark.parametrize("num_samples", [1111, 1000, 3])
def test_ddp_shards_are_disjoint_and_cover_the_global_draw(num_samples):
    labels = _labels()
    world = 4
    shards = [ClassBalancedSampler(labels, num_samples=num_samples, seed=3, rank=r, world_size=world) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
    per_rank = -(-num_samples // world)
    assert all(len(s) == per_rank for s in shards)
    drawn = [list(s) for s in shards]
    assert all(len(d) == per_rank for d in drawn)
    glob = shards[0].global_indices()
    assert all(torch.equal(glob, s.global_indices()) for s in shards)  # one global draw
    # positions r, r + world, ... : disjoint by construction, their union is the whole global draw
    interleaved = torch.tensor(drawn).T.reshape(-1)
    assert torch.equal(interleaved, glob)
    # the global draw is padded to a multiple of world_size by wrapping around
    assert len(glob) == per_rank * world
    assert all(int(glob[k]) == int(glob[k % num_samples]) for k in range(num_samples, len(glob)))


def test_shards_without_replacement_are_disjoint_sets():
    labels = _labels()
    world = 3
    shards = [ClassBalancedSampler(labels, num_samples=999, seed=0, rank=r, world_size=world, replacement=False)
              for r in range(world)]
    sets = [set(s) for s in shards]
    assert all(len(x) == 333 for x in sets)
    assert not (sets[0] & sets[1])
    assert not (sets[0] & sets[2])
    assert not (sets[1] & sets[2])
    with pytest.raises(ValueError):
        ClassBalancedSampler(labels, num_samples=len(labels) + 1, replacement=False)


def test_bad_rank_is_refused():
    with pytest.raises(ValueError):
        ClassBalancedSampler(_labels(), rank=4, world_size=4)
    with pytest.raises(ValueError):
        ClassBalancedSampler(_labels(), num_samples=0)
