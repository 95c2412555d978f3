"""Shared pytest fixtures: where ``../shared`` is, and skips with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (set IF3D_SHARED to the shared folder holding it)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    return _require(SHARED / "spec")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(SHARED / "data")


@pytest.fixture(scope="session")
def smirk_assets_dir() -> Path:
    return _require(SHARED / "assets" / "smirk")


@pytest.fixture
def one_torch_thread():
    """Tiny models train faster on one thread, and the tests then leave the other core to the rest."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
