"""MeshRenderer: SMIRK shading values, pixel/view frame conventions, depth, winding, errors (synthetic meshes)."""

from __future__ import annotations

import numpy as np
import pytest

from if3d.render.gl import SMIRK_ALBEDO, SMIRK_LIGHT_INTENSITY, MeshRenderer, vertex_normals

S = 64


@pytest.fixture(scope="module")
def renderer():
    r = MeshRenderer(S)
    yield r
    r.release()


def uv_sphere(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere in the view frame (y up), triangles counter-clockwise seen from outside."""
    theta = np.linspace(0.0, np.pi, n)
    phi = np.linspace(0.0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    v = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    m = 2 * n
    faces = []
    for i in range(n - 1):
        for j in range(m):
            a, b, c, d = i * m + j, i * m + (j + 1) % m, (i + 1) * m + j, (i + 1) * m + (j + 1) % m
            faces += [(a, b, c), (b, d, c)]
    return v.astype(np.float32), np.array(faces, dtype=np.int32)


def to_pixels(view: np.ndarray, radius_px: float, centre=(S / 2, S / 2)) -> np.ndarray:
    """View frame (y up, z toward viewer) -> renderer input (pixels, y down, z toward viewer)."""
    return np.stack([centre[0] + view[:, 0] * radius_px, centre[1] - view[:, 1] * radius_px, view[:, 2] * radius_px],
                    -1).astype(np.float32)


def test_sphere_is_outward_wound():
    v, f = uv_sphere()
    n = vertex_normals(v, f)
    # outward normals of a unit sphere equal the positions (poles aside)
    mid = np.abs(v[:, 1]) < 0.9
    assert np.allclose(n[mid], v[mid], atol=0.05)


def test_frontal_pixel_matches_smirk_formula(renderer):
    v, f = uv_sphere()
    img = renderer.render(to_pixels(v, 26), f)
    assert img.shape == (S, S, 3)
    assert img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all()
    assert (img[..., 1] == img[..., 2]).all()
    # normal (0,0,1): four lights at n.l = 1/sqrt(3), one at 1; mean x 1.7; x albedo 180/255
    expected = 255 * SMIRK_ALBEDO * SMIRK_LIGHT_INTENSITY * (4 / np.sqrt(3) + 1) / 5
    centre = img[S // 2 - 1 : S // 2 + 1, S // 2 - 1 : S // 2 + 1, 0].astype(float)
    assert np.abs(centre - expected).max() <= 2.0
    # black background outside the disc, grey inside
    yy, xx = np.mgrid[:S, :S] + 0.5
    r = np.hypot(xx - S / 2, yy - S / 2)
    assert (img[r > 27.5] == 0).all()
    assert (img[r < 24][..., 0] > 0).all()


def test_lights_are_in_the_view_frame_y_up(renderer):
    """A single light (-1, 1, 1) lights the upper-left of the image (view frame: y up)."""
    v, f = uv_sphere()
    r1 = MeshRenderer(S, light_directions=np.array([[-1.0, 1.0, 1.0]]), ctx=renderer.ctx)
    img = r1.render(to_pixels(v, 26), f)[..., 0].astype(int)
    c = S // 2
    upper_left, lower_right = img[c - 12, c - 12], img[c + 12, c + 12]
    assert upper_left > 150
    assert lower_right == 0
    assert img[c - 12, c + 12] == img[c + 12, c - 12]  # symmetric about the light's diagonal


def test_pixel_coordinate_convention(renderer):
    """A square [10,20) x [30,40) in pixel coordinates fills exactly columns 10..19 and rows 30..39."""
    quad = np.array([[10, 30, 0], [20, 30, 0], [20, 40, 0], [10, 40, 0]], dtype=np.float32)
    # counter-clockwise in the view frame (y up) = clockwise on screen (y down)
    faces = np.array([[0, 3, 2], [0, 2, 1]], dtype=np.int32)
    img = renderer.render(quad, faces)[..., 0]
    mask = img > 0
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 39, 10, 19)
    assert mask.sum() == 100


def test_depth_test_keeps_the_nearer_surface(renderer):
    """Larger z is nearer: the nearer, frontal quad hides a tilted one drawn after it."""
    near = np.array([[8, 8, 10], [56, 8, 10], [56, 56, 10], [8, 56, 10]], dtype=np.float32)
    # the far quad is tilted about the vertical axis, so its shade differs from the frontal one's
    far = np.array([[0, 0, -20], [64, 0, 5], [64, 64, 5], [0, 64, -20]], dtype=np.float32)
    v = np.concatenate([near, far])
    faces = np.array([[0, 3, 2], [0, 2, 1], [4, 7, 6], [4, 6, 5]], dtype=np.int32)
    img = renderer.render(v, faces)[..., 0]
    frontal = img[32, 32]
    tilted = img[2, 32]
    assert frontal != tilted
    assert tilted > 0
    expected = 255 * SMIRK_ALBEDO * SMIRK_LIGHT_INTENSITY * (4 / np.sqrt(3) + 1) / 5
    assert abs(int(frontal) - expected) <= 2
    # same mesh with the far quad moved in front: the tilted shade now covers the centre
    v2 = v.copy()
    v2[4:, 2] += 100
    assert renderer.render(v2, faces)[32, 32, 0] == tilted


def test_inverted_winding_is_dark_unless_two_sided(renderer):
    v, f = uv_sphere()
    inverted = f[:, ::-1].copy()
    assert renderer.render(to_pixels(v, 26), inverted)[S // 2, S // 2, 0] == 0
    two = MeshRenderer(S, two_sided=True, ctx=renderer.ctx)
    assert two.render(to_pixels(v, 26), inverted)[S // 2, S // 2, 0] == renderer.render(to_pixels(v, 26), f)[
        S // 2, S // 2, 0
    ]


def test_reuse_with_changing_meshes(renderer):
    v, f = uv_sphere(24)
    a = renderer.render(to_pixels(v, 20), f)
    big_v, big_f = uv_sphere(64)
    renderer.render(to_pixels(big_v, 30), big_f)
    assert np.array_equal(renderer.render(to_pixels(v, 20), f), a)
    assert renderer.render(to_pixels(v, 20), f[:0]).max() == 0  # no triangles: black


@pytest.mark.parametrize(
    ("vertices", "faces"),
    [
        (np.zeros((3, 2), np.float32), np.array([[0, 1, 2]])),
        (np.zeros((3, 3), np.float32), np.array([[0, 1, 3]])),
        (np.full((3, 3), np.nan, np.float32), np.array([[0, 1, 2]])),
        (np.zeros((3, 3), np.float32), np.array([[0.0, 1.0, 2.0]])),
    ],
)
def test_bad_input_raises(renderer, vertices, faces):
    with pytest.raises(ValueError):
        renderer.render(vertices, faces)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="size"):
        MeshRenderer(0)
    with pytest.raises(ValueError, match="light_directions"):
        MeshRenderer(8, light_directions=np.zeros((9, 3)))


def test_several_renderers_in_one_process(renderer):
    """Each draw makes its own context current: creating or using another renderer in between does
    not change what the first one draws."""
    v, f = uv_sphere(24)
    before = renderer.render(to_pixels(v, 20), f)
    other = MeshRenderer(32)
    try:
        small = other.render(to_pixels(v, 10, centre=(16, 16)), f)
        assert np.array_equal(renderer.render(to_pixels(v, 20), f), before)
        assert np.array_equal(other.render(to_pixels(v, 10, centre=(16, 16)), f), small)
    finally:
        other.release()
    assert np.array_equal(renderer.render(to_pixels(v, 20), f), before)
