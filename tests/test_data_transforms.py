"""PairedAugment: photo and render get the same geometry; photometric changes and erasing touch the photo
only (unless asked); both backends; the batched warp equals torchvision's affine; eval = normalize."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from if3d.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, PairedAugment, normalize

BACKENDS = ["batched", "v2"]


@pytest.fixture(scope="module")
def faces(data_dir) -> torch.Tensor:
    """uint8 [16, 3, 112, 112]: real colour faces."""
    paths = sorted((Path(data_dir) / "wild" / "images").iterdir())[:16]
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (112, 112)) for p in paths]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def test_normalize_is_imagenet_normalisation():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2).contiguous()
    y = normalize(x)
    for c in range(3):
        assert y[0, c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-5)
        assert y[0, c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)
    assert normalize(x[0]).shape == (3, 1, 2)
    with pytest.raises(TypeError):
        normalize(x.float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["affectnet", "rafdb"])
def test_same_image_as_photo_and_render_stays_identical(faces, backend, preset):
    torch.manual_seed(0)
    aug = PairedAugment(preset=preset, backend=backend, erase_p=0.0, geometric_p=1.0)
    photo, render = aug(faces, faces.clone())
    assert photo.shape == render.shape == (16, 3, 112, 112)
    assert photo.dtype == torch.float32
    assert torch.equal(photo, render)
    moved = [not torch.allclose(photo[i], normalize(faces[i])) for i in range(16)]
    assert sum(moved) >= 12  # geometry really happened (flip and/or affine on almost every sample)


def _marker_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different photo and render content, the same white 7x7 marker (the only pure white pixels)."""
    g = torch.Generator().manual_seed(seed)
    photo = torch.randint(0, 200, (n, 3, 112, 112), generator=g, dtype=torch.uint8)
    render = torch.zeros(n, 3, 112, 112, dtype=torch.uint8)
    render[:, :, 30:80, 35:75] = 120  # a grey "face" on black
    for i in range(n):
        y, x = 20 + 5 * (i % 12), 25 + 4 * (i % 14)
        photo[i, :, y: y + 7, x: x + 7] = 255
        render[i, :, y: y + 7, x: x + 7] = 255
    return photo, render


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["affectnet", "rafdb"])
def test_marker_moves_the_same_way_in_photo_and_render(backend, preset):
    torch.manual_seed(1)
    photo, render = _marker_batch(32, seed=2)
    aug = PairedAugment(preset=preset, backend=backend, interpolation="nearest", erase_p=0.0, geometric_p=1.0)
    p, r = aug(photo, render)
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    mp = (p > white.view(1, 3, 1, 1) - 1e-3).all(1)
    mr = (r > white.view(1, 3, 1, 1) - 1e-3).all(1)
    assert torch.equal(mp, mr)
    original = (photo == 255).all(1)
    changed = sum(not torch.equal(mp[i], original[i]) for i in range(32))
    assert changed >= 24
    assert int(mp.flatten(1).any(1).sum()) >= 24  # most markers stay in frame


def test_batched_warp_equals_torchvision_affine(faces):
    """The batched matrices reproduce TF.hflip -> TF.affine -> RandomCrop shift (zero fill)."""
    img = faces[:1].float()
    cases = [(False, 0, 0, 0, 1.0, 0, 0), (True, 0, 0, 0, 1.0, 0, 0), (False, 17, 3, -6, 0.85, 0, 0),
             (True, -12, 2, 5, 0.9, 3, -4), (True, 4, 0, 0, 1.0, -8, 8)]
    for flip, angle, tx, ty, scale, dx, dy in cases:
        params = {k: torch.tensor([float(v)], dtype=torch.float64)
                  for k, v in dict(angle=angle, tx=tx, ty=ty, scale=scale, dx=dx, dy=dy).items()}
        params["flip"] = torch.tensor([flip])
        theta = PairedAugment.geometry_matrices(params, 112).float()
        grid = torch.nn.functional.affine_grid(theta, [1, 3, 112, 112], align_corners=False)
        out = torch.nn.functional.grid_sample(img, grid, mode="bilinear", align_corners=False)
        out = out * PairedAugment.shift_valid_mask(params, 112).unsqueeze(1)
        ref = TF.hflip(img) if flip else img
        ref = TF.affine(ref, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                        interpolation=TF.InterpolationMode.BILINEAR)
        ref = TF.crop(TF.pad(ref, [8]), 8 - dy, 8 - dx, 112, 112)
        assert (out - ref).abs().max() < 0.01, (flip, angle, tx, ty, scale, dx, dy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_erasing_touches_the_photo_only_unless_asked(faces, backend):
    torch.manual_seed(3)
    aug = PairedAugment(backend=backend, hflip=0.0, geometric_p=0.0, erase_p=1.0, erase_scale=(0.1, 0.2))
    p, r = aug(faces, faces.clone())
    assert torch.equal(r, normalize(faces))
    erased = (p == 0).all(1) & (normalize(faces) != 0).any(1)
    frac = erased.flatten(1).float().mean(1)
    assert bool(((frac > 0.05) & (frac < 0.25)).all()), frac
    aug_both = PairedAugment(backend=backend, hflip=0.0, geometric_p=0.0, erase_p=1.0, erase_render=True)
    p2, r2 = aug_both(faces, faces.clone())
    assert torch.equal(p2, r2)
    assert not torch.equal(p2, normalize(faces))


def test_colour_jitter_touches_the_photo_only_and_leaves_geometry_shared(faces):
    plain = PairedAugment(erase_p=0.0, generator=torch.Generator().manual_seed(5))
    jitter = PairedAugment(erase_p=0.0, color_jitter=(0.4, 0.4, 0.4, 0.05), generator=torch.Generator().manual_seed(5))
    p0, r0 = plain(faces, faces.clone())
    p1, r1 = jitter(faces, faces.clone())
    assert torch.equal(r0, r1)  # same geometric draws (generator), render untouched by the jitter
    assert torch.equal(p0, r0)
    assert not torch.equal(p1, r1)
    both = PairedAugment(erase_p=0.0, color_jitter=0.4, jitter_render=True, generator=torch.Generator().manual_seed(5))
    p2, r2 = both(faces, faces.clone())
    assert torch.equal(p2, r2)
    v2 = PairedAugment(erase_p=0.0, color_jitter=0.4, jitter_render=True, backend="v2")
    p3, r3 = v2(faces, faces.clone())
    assert torch.allclose(p3, r3, atol=1e-5)


def test_flip_probability_and_per_sample_draws():
    aug = PairedAugment(preset="none", hflip=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2000, 3, 8, 8, dtype=torch.uint8)
    x[:, :, :, 0] = 255  # a white left column
    p = aug(x)
    flipped = (p[:, 0, 0, -1] > 1).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_eval_mode_photo_only_and_shapes(faces):
    aug = PairedAugment()
    single = aug(faces[0])
    assert single.shape == (3, 112, 112)
    aug.eval()
    assert torch.equal(aug(faces), normalize(faces))
    p, r = aug(faces, faces)
    assert torch.equal(p, r)
    with pytest.raises(TypeError):
        aug(faces.float())
    with pytest.raises(ValueError):
        aug(faces, faces[:, :, :64, :64])
    with pytest.raises(ValueError, match="unknown preset"):
        PairedAugment(preset="imagenet")


def test_presets_are_the_original_recipes():
    a, r = PRESETS["affectnet"], PRESETS["rafdb"]
    assert (a.hflip, a.geometric_p, a.degrees, a.translate, a.scale) == (0.5, 0.7, 20.0, 0.2, (0.8, 1.0))
    assert (a.erase_p, a.erase_scale, a.erase_ratio) == (0.5, (0.02, 0.33), (0.3, 3.3))
    assert (r.geometric_p, r.degrees, r.crop_padding, r.erase_scale) == (0.2, 5.0, 8, (0.02, 0.25))


@pytest.mark.parametrize("backend", BACKENDS)
def test_light_preset_is_rafdb_without_erasing(faces, backend):
    light, rafdb = PRESETS["light"], PRESETS["rafdb"]
    assert (light.hflip, light.geometric_p, light.degrees, light.translate, light.scale, light.crop_padding) == \
        (rafdb.hflip, rafdb.geometric_p, rafdb.degrees, rafdb.translate, rafdb.scale, rafdb.crop_padding)
    # geometry off: rafdb still erases rectangles of some photos (to 0 after normalisation), light never does
    torch.manual_seed(0)
    x = faces.repeat(4, 1, 1, 1)
    kept = normalize(x)
    erased = PairedAugment(preset="rafdb", hflip=0.0, geometric_p=0.0, backend=backend)(x)
    changed = (erased != kept).flatten(1).any(1)
    assert 0 < int(changed.sum()) < len(x)
    assert torch.all(erased[changed] == 0, dim=1).flatten(1).any(1).all()
    assert torch.equal(PairedAugment(preset="light", hflip=0.0, geometric_p=0.0, backend=backend)(x), kept)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(faces):
    x = faces.cuda()
    p, r = PairedAugment(erase_p=0.0, color_jitter=0.3)(x, x.clone())
    assert p.device.type == "cuda"
    assert p.shape == (16, 3, 112, 112)
    q, s = PairedAugment(erase_p=0.0)(x, x.clone())
    assert torch.equal(q, s)
