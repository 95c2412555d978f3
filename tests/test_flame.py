"""FLAME layer: chumpy-free loading of a synthetic FLAME 2020 pickle, skinning, eyelids, landmarks, masks."""

from __future__ import annotations

import pickle
import pickletools
import sys

import numpy as np
import pytest
import torch
from synthetic_smirk import cached_synthetic_flame, dump_py2, fake_chumpy, read_obj

from networks.smirk.flame import (
    FLAME,
    ChumpyStandIn,
    FlameModelError,
    chumpy_to_numpy,
    load_flame_assets,
    load_flame_model,
    read_flame_pickle,
    restricted_pickle_load,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, smirk_assets_dir):
    return cached_synthetic_flame(tmp_path_factory, smirk_assets_dir)


@pytest.fixture(scope="module")
def flame(synthetic, smirk_assets_dir):
    return FLAME(synthetic[0], smirk_assets_dir).eval()


def _zeros(b: int = 1) -> dict[str, torch.Tensor]:
    return {
        "shape_params": torch.zeros(b, 300),
        "expression_params": torch.zeros(b, 50),
        "pose_params": torch.zeros(b, 3),
        "jaw_params": torch.zeros(b, 3),
        "eyelid_params": torch.zeros(b, 2),
    }


def test_synthetic_pickle_has_the_real_structure(synthetic):
    """The fixture is what the loader must face: Python 2 protocol 2, chumpy classes, sparse regressor."""
    data = synthetic[0].read_bytes()
    assert data[:2] == b"\x80\x02"
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert {"chumpy.ch Ch", "scipy.sparse.csc csc_matrix", "numpy.core.multiarray _reconstruct"} <= globals_
    assert not any(g.startswith("builtins") for g in globals_)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "BINSTRING" in ops
    assert "BINUNICODE" not in ops


def test_loads_without_chumpy(synthetic):
    path, arrays = synthetic
    assert "chumpy" not in sys.modules
    raw = read_flame_pickle(path)
    assert isinstance(raw["v_template"], ChumpyStandIn)
    assert raw["v_template"].chumpy_name == "chumpy.ch.Ch"
    model = load_flame_model(path)
    assert "chumpy" not in sys.modules
    np.testing.assert_allclose(model.v_template, arrays["v_template"], atol=1e-6)
    np.testing.assert_allclose(model.shapedirs, arrays["shapedirs"], atol=1e-9)
    np.testing.assert_allclose(model.posedirs, arrays["posedirs"], atol=1e-9)
    np.testing.assert_allclose(model.J_regressor, arrays["J_regressor"], atol=1e-6)
    np.testing.assert_allclose(model.weights, arrays["weights"], atol=1e-6)
    np.testing.assert_array_equal(model.faces, arrays["f"].astype(np.int64))
    np.testing.assert_array_equal(model.parents, [-1, 0, 1, 1, 1])
    assert model.faces.dtype == np.int64
    assert model.v_template.dtype == np.float32


def test_refuses_unlisted_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": Exploit()}, protocol=2))
    with pytest.raises(FlameModelError, match=r"generic_model.pkl.*refused pickled global (posix|os|nt)\.system"):
        load_flame_model(path)
    assert not marker.exists()


def _tiny_flame(**override):
    """Small dict standing in for a FLAME pickle (enough for the checks that fail before any compute)."""
    model = {
        "v_template": np.zeros((5023, 3)),
        "f": np.zeros((9976, 3), dtype=np.uint32),
        "shapedirs": np.zeros((5023, 3, 400)),
        "posedirs": np.zeros((5023, 3, 36)),
        "J_regressor": np.zeros((5, 5023)),
        "weights": np.zeros((5023, 5)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
    }
    model.update(override)
    return {k: v for k, v in model.items() if v is not None}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"posedirs": None}, r"missing FLAME keys \['posedirs'\]"),
        ({"v_template": np.zeros((5023, 2))}, r"v_template has shape \[5023, 2\], expected \[5023, 3\]"),
        ({"shapedirs": np.zeros((5023, 3, 300))}, r"shapedirs has shape \[5023, 3, 300\]"),
        ({"weights": np.full((5023, 5), np.nan)}, r"weights contains non-finite"),
        ({"kintree_table": np.array([[4294967295, 2, 1, 1, 1], [0, 1, 2, 3, 4]])}, r"invalid parents"),
    ],
)
def test_malformed_model_errors_name_file_and_key(tmp_path, override, message):
    path = tmp_path / "bad_model.pkl"
    with fake_chumpy() as (Ch, _add):
        dump_py2({k: Ch(v) if k != "f" else v for k, v in _tiny_flame(**override).items()}, path)
    with pytest.raises(FlameModelError, match=message) as info:
        load_flame_model(path)
    assert "bad_model.pkl" in str(info.value)


def test_unsupported_chumpy_node_in_a_required_key_is_an_error(tmp_path):
    path = tmp_path / "expr_model.pkl"
    with fake_chumpy() as (Ch, add):
        model = _tiny_flame()
        model["v_template"] = add(Ch(np.zeros((5023, 3))), Ch(np.zeros((5023, 3))))
        dump_py2(model, path)
    with pytest.raises(FlameModelError, match=r"expr_model.pkl.*v_template.*chumpy.ch_ops.add"):
        load_flame_model(path)


def test_python3_pickles_and_missing_files(tmp_path):
    path = tmp_path / "py3_model.pkl"
    with fake_chumpy() as (Ch, _add):
        with open(path, "wb") as f:
            pickle.dump({k: Ch(v) for k, v in _tiny_flame().items()}, f, protocol=pickle.HIGHEST_PROTOCOL)
    assert load_flame_model(path).parents.tolist() == [-1, 0, 1, 1, 1]
    with pytest.raises(FileNotFoundError, match="absent_model.pkl"):
        load_flame_model(tmp_path / "absent_model.pkl")
    (tmp_path / "text.pkl").write_text("hello")
    with pytest.raises(FlameModelError, match="text.pkl"):
        load_flame_model(tmp_path / "text.pkl")


def test_chumpy_reordering_nodes_evaluate_like_chumpy():
    def node(name, **state):
        cls = type(name.rsplit(".", 1)[1], (ChumpyStandIn,), {"chumpy_name": name})
        obj = cls()
        obj.__setstate__(state)
        return obj

    base = node("chumpy.ch.Ch", x=np.arange(24.0).reshape(2, 3, 4))
    sel = node("chumpy.reordering.Select", a=base, idxs=np.array([5, 1, 0, 7]), preferred_shape=(2, 2))
    np.testing.assert_array_equal(chumpy_to_numpy(sel), [[5.0, 1.0], [0.0, 7.0]])
    tr = node("chumpy.reordering.transpose", a=base, axes=(2, 0, 1))
    np.testing.assert_array_equal(chumpy_to_numpy(tr), np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1))
    rs = node("chumpy.reordering.Reshape", a=base, newshape=(4, 6))
    assert chumpy_to_numpy(rs).shape == (4, 6)


def test_zero_parameters_give_the_template(flame, synthetic):
    with torch.no_grad():
        out = flame(**_zeros(2))
    assert out.vertices.shape == (2, 5023, 3)
    expected = torch.as_tensor(synthetic[1]["v_template"], dtype=torch.float32)
    torch.testing.assert_close(out.vertices[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.vertices[1], expected, atol=1e-6, rtol=0)


def test_jaw_rotation_moves_only_jaw_weighted_vertices(flame):
    params = _zeros()
    params["jaw_params"] = torch.tensor([[0.3, 0.0, 0.0]])  # open the mouth
    with torch.no_grad():
        moved = flame(**params).vertices[0] - flame.v_template
    distance = moved.norm(dim=1)
    jaw = flame.lbs_weights[:, 2] > 0
    assert distance[~jaw].max() < 1e-6
    assert distance[jaw].min() > 1e-3
    assert moved[jaw, 1].mean() < -0.01  # the chin goes down


def test_global_pose_rotates_the_whole_head(flame):
    params = _zeros()
    params["pose_params"] = torch.tensor([[0.0, 0.5, 0.0]])
    with torch.no_grad():
        out = flame(**params)
    assert (out.vertices[0] - flame.v_template).norm(dim=1).min() > 0  # every vertex moves
    root = flame.J_regressor[0] @ flame.v_template
    torch.testing.assert_close(  # a rigid rotation about the root joint keeps distances to it
        (out.vertices[0] - root).norm(dim=1), (flame.v_template - root).norm(dim=1), atol=1e-5, rtol=0
    )


def test_expression_and_shape_components_use_the_right_columns(flame, synthetic):
    shapedirs = torch.as_tensor(synthetic[1]["shapedirs"], dtype=torch.float32)
    params = _zeros()
    params["shape_params"][0, 7] = 2.0
    params["expression_params"][0, 3] = -1.5
    with torch.no_grad():
        out = flame(**params)
    expected = flame.v_template + 2.0 * shapedirs[:, :, 7] - 1.5 * shapedirs[:, :, 303]
    torch.testing.assert_close(out.vertices[0], expected, atol=1e-6, rtol=0)


def test_eyelid_offsets_apply_after_skinning(flame, smirk_assets_dir):
    left = torch.as_tensor(np.load(smirk_assets_dir / "l_eyelid.npy"), dtype=torch.float32)
    right = torch.as_tensor(np.load(smirk_assets_dir / "r_eyelid.npy"), dtype=torch.float32)
    params = _zeros(2)
    params["eyelid_params"] = torch.tensor([[1.0, 0.0], [0.25, 0.5]])
    with torch.no_grad():
        out = flame(**params)
    torch.testing.assert_close(out.vertices[0], flame.v_template + left, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.vertices[1], flame.v_template + 0.25 * left + 0.5 * right, atol=1e-6, rtol=0)


def test_mediapipe_landmarks_lie_on_the_mesh(flame):
    params = _zeros()
    params["pose_params"] = torch.tensor([[0.1, -0.3, 0.05]])
    params["jaw_params"] = torch.tensor([[0.2, 0.0, 0.0]])
    with torch.no_grad():
        out = flame(**params)
    v = out.vertices[0].numpy()
    tri = v[flame.faces[flame.mp_lmk_faces_idx].numpy()]  # [105, 3 corners, 3]
    bary = flame.mp_lmk_bary_coords.numpy()
    assert (bary >= -1e-6).all()
    assert np.allclose(bary.sum(1), 1.0, atol=1e-5)
    expected = np.einsum("lc,lcd->ld", bary, tri)
    np.testing.assert_allclose(out.landmarks_mp[0].numpy(), expected, atol=1e-6)
    # semantics on the real embedding and template (FLAME x = subject's left, y up, z forward)
    with torch.no_grad():
        lmk = flame(**_zeros()).landmarks_mp[0].numpy()
    ids = flame.mp_landmark_indices.tolist()
    at = {i: lmk[ids.index(i)] for i in (4, 33, 263, 0, 17)}
    assert at[263][0] > 0.02 > -0.02 > at[33][0]  # left / right outer eye corners
    assert at[0][1] > at[17][1]  # upper lip above lower lip
    assert at[4][2] == pytest.approx(lmk[:, 2].max(), abs=0.005)  # nose tip in front


def test_fan_landmarks(flame):
    with torch.no_grad():
        out = flame(**_zeros())
    assert out.landmarks_fan.shape == (1, 68, 3)
    assert out.landmarks_fan_3d.shape == (1, 68, 3)
    # frontal head: contour row 0 of the dynamic table, then the 51 static points
    v = out.vertices[0].numpy()
    faces = flame.faces.numpy()

    def interp(idx, bary):
        return np.einsum("lc,lcd->ld", bary.numpy(), v[faces[idx.numpy()]])

    expected = np.concatenate(
        [
            interp(flame.dynamic_lmk_faces_idx[0], flame.dynamic_lmk_bary_coords[0]),
            interp(flame.static_lmk_faces_idx, flame.static_lmk_bary_coords),
        ]
    )
    np.testing.assert_allclose(out.landmarks_fan[0].numpy(), expected, atol=1e-6)
    # a turned head picks another contour row
    params = _zeros()
    params["pose_params"] = torch.tensor([[0.0, 0.5, 0.0]])
    with torch.no_grad():
        turned = flame(**params)
    posed_v = turned.vertices[0].numpy()
    same_row = np.einsum(
        "lc,lcd->ld", flame.dynamic_lmk_bary_coords[0].numpy(), posed_v[faces[flame.dynamic_lmk_faces_idx[0].numpy()]]
    )
    assert not np.allclose(turned.landmarks_fan[0, :17].numpy(), same_row, atol=1e-4)


def test_face_mask_and_region_triangles(flame, smirk_assets_dir):
    assets = load_flame_assets(smirk_assets_dir)
    assert assets.face_vertices.shape == (1787,)
    assert {"face", "lips", "nose", "left_eyeball", "neck"} <= set(assets.masks)
    _, faces = read_obj(smirk_assets_dir / "head_template.obj")
    inside = np.isin(faces, assets.face_vertices).all(axis=1)
    region = flame.face_faces.numpy()
    assert region.shape == (int(inside.sum()), 3)
    assert region.shape[0] > 3000
    np.testing.assert_array_equal(region, faces[inside])
    assert np.isin(region, assets.face_vertices).all()


def test_missing_or_malformed_assets_name_the_file(tmp_path, smirk_assets_dir):
    import shutil

    for name in ("FLAME_masks.pkl", "landmark_embedding.npy", "l_eyelid.npy", "r_eyelid.npy"):
        shutil.copy(smirk_assets_dir / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="mediapipe_landmark_embedding.npz"):
        load_flame_assets(tmp_path)
    np.savez(tmp_path / "mediapipe_landmark_embedding.npz", lmk_face_idx=np.zeros(105, np.int64))
    with pytest.raises(FlameModelError, match=r"mediapipe_landmark_embedding.npz: missing key 'lmk_b_coords'"):
        load_flame_assets(tmp_path)
    np.save(tmp_path / "l_eyelid.npy", np.zeros((5023, 2)))
    with pytest.raises(FlameModelError, match=r"l_eyelid.npy: l_eyelid has shape \[5023, 2\]"):
        load_flame_assets(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_flame_assets(tmp_path / "no_such_dir")


def test_real_asset_pickles_load_through_the_allow_list(smirk_assets_dir):
    masks = restricted_pickle_load(smirk_assets_dir / "FLAME_masks.pkl")
    assert masks["face"].shape == (1787,)
