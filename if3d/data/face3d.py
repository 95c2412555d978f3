"""3D face representations computed from what the render step saves: no second detection pass.

The render step (``Smirk_batch_Render.py``) writes ``<stem>.npz`` beside every render: MediaPipe
FaceMesh's 478 landmarks in photo pixels (both backends) and, with the SMIRK backend, FLAME's
parameters. This module turns them into the inputs of the 3D-only expression models, after the 3DFER
project (landmark extraction, landmark voxelisation, mesh-connectivity distances for a CNN), whose
reported finding on FER2013 is that 2D models pass 67 % accuracy while 3D data alone stays below 57 %.

Representations (each a pure function; :mod:`if3d.data.face3d_streams` makes them dataset streams):

==========================  ====================  ==========================================================
function                    shape per face        meaning
==========================  ====================  ==========================================================
:func:`normalise_landmarks` float32 [478, 3]      pose-normalised landmark cloud (see below), unit RMS radius
:func:`voxel_occupancy`     float32 [1, R, R, R]  1 where a landmark falls in the voxel, else 0
:func:`distance_map`        float32 [1, K, K]     Euclidean distances between the K region landmarks
                                                  (:data:`DISTANCE_REGIONS`), in units of the RMS radius
:func:`flame_expression`    float32 [53]          FLAME expression (50) + jaw rotation (3, axis-angle, rad)
==========================  ====================  ==========================================================

**Pose normalisation** removes head pose (rotation), scale and translation, and keeps the shape (the
expression, and the identity's proportions). The landmarks are first put in a right-handed frame (x to
the image's right, y up, z toward the camera: MediaPipe's (x, -y, -z)). Then:

- with MediaPipe's canonical face model (:func:`canonical_face`; the ``canonical_face_model.obj`` or the
  ``geometry_pipeline_metadata*.pbtxt``/``.binarypb`` of MediaPipe's face geometry module, or a
  ``face_landmarker.task`` bundle), the 468 mesh points are aligned to it by the least-squares similarity
  transform (Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
  TPAMI 1991): rotation, isotropic scale and translation; the canonical face is centred and scaled to unit
  RMS radius first, so the aligned cloud is in its frame and units;
- without it (the ``mediapipe`` wheels 0.10.x do not ship the model files, only their protobuf classes),
  the face's own anatomical frame is used: the head-pose frame the MediaPipe backend saves
  (:func:`if3d.face.pose.head_pose`: x from the right to the left eye, up from the lips to
  the eyes), origin at the centroid of the 468 mesh points, scale their RMS distance to it. This removes the
  same three things, but the frame rests on the eyes and lips only, so a strongly opened mouth tilts it by
  a few degrees where the canonical alignment, spread over all 468 points, barely moves.

Deliberate deviations from 3DFER: its landmark arrays are MediaPipe's raw normalised image coordinates
(pose, scale and position left in); here they are pose-normalised, so the models learn expression rather
than head pose. Its distance features follow the mesh connections; here the distance map holds every pair of
the :data:`DISTANCE_REGIONS` landmarks (a symmetric K × K image with one block per facial region, which a
2D CNN can read; the 1322 mesh edge lengths, :func:`edge_lengths`, have no image layout).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from if3d.face.pose import head_pose
from if3d.face.topology import face_mesh_triangles

__all__ = [
    "CANONICAL_FACE_ENV",
    "DISTANCE_REGIONS",
    "FLAME_EXPRESSION_WIDTH",
    "NUM_LANDMARKS",
    "NUM_MESH_VERTICES",
    "VOXEL_EXTENT",
    "CanonicalFace",
    "canonical_face",
    "distance_map",
    "distance_map_indices",
    "edge_lengths",
    "flame_expression",
    "mesh_edges",
    "normalise_landmarks",
    "read_canonical_face",
    "similarity_transform",
    "voxel_indices",
    "voxel_occupancy",
]

#: Landmarks per face: 468 FaceMesh points + 10 iris points (468-477).
NUM_LANDMARKS = 478
#: The FaceMesh points that form the mesh (the iris points are not part of it).
NUM_MESH_VERTICES = 468
#: Environment variable naming a canonical face file (OBJ, pbtxt, binarypb or a .task bundle).
CANONICAL_FACE_ENV = "IF3D_CANONICAL_FACE"
#: Half side of the voxel cube, in units of the RMS radius of the normalised face: the grid spans
#: [-VOXEL_EXTENT, VOXEL_EXTENT]^3. Measured on 6,526 FER2013 faces (head-pose frame): the largest
#: |coordinate| of a face is 1.57 in the median, 1.81 at the 99.9th percentile and 1.88 at most; points
#: beyond the cube would be put in its border voxels.
VOXEL_EXTENT = 2.0
#: FLAME expression coefficients (50, SMIRK's) + jaw rotation (3, axis-angle in radians).
FLAME_EXPRESSION_WIDTH = 53
#: Facial regions of the distance map, in map order (MediaPipe's ``face_mesh_connections`` names).
DISTANCE_REGIONS = ("FACEMESH_LIPS", "FACEMESH_LEFT_EYE", "FACEMESH_RIGHT_EYE", "FACEMESH_LEFT_EYEBROW",
                    "FACEMESH_RIGHT_EYEBROW", "FACEMESH_NOSE", "FACEMESH_FACE_OVAL", "FACEMESH_IRISES")

_MEDIAPIPE_CANONICAL_FILES = (
    "modules/face_geometry/data/canonical_face_model.obj",
    "modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt",
    "modules/face_geometry/data/geometry_pipeline_metadata_landmarks.binarypb",
    "modules/face_geometry/data/geometry_pipeline_metadata.pbtxt",
    "modules/face_geometry/data/geometry_pipeline_metadata_detection.pbtxt",
)


# ============================================================================ canonical face


@dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face: the alignment target of the pose normalisation.

    Attributes:
        vertices: float64 [468, 3], centred on their centroid and scaled to unit RMS radius; right-handed,
            x to the face's left (the viewer's right), y up, z out of the face (MediaPipe's metric frame).
        source: the file it was read from.
        sha1: SHA-1 of the 468 × 3 float32 vertices (identifies the template in cache headers).
    """

    vertices: np.ndarray
    source: str
    sha1: str

    @property
    def tag(self) -> str:
        """``mediapipe-canonical:<sha1 prefix>``: what a cache records as its alignment target."""
        return f"mediapipe-canonical:{self.sha1[:12]}"


def _obj_vertices(text: str) -> np.ndarray:
    rows = [line.split()[1:4] for line in text.splitlines() if line.startswith("v ")]
    return np.asarray(rows, dtype=np.float64)


def _pbtxt_vertices(text: str) -> np.ndarray:
    values = [float(line.split(":", 1)[1]) for line in text.splitlines()
              if line.strip().startswith("vertex_buffer:")]
    return _vertex_buffer(np.asarray(values, dtype=np.float64))


def _vertex_buffer(values: np.ndarray) -> np.ndarray:
    # VERTEX_PT: x, y, z, u, v per vertex (MediaPipe's Mesh3d)
    if values.size % 5:
        raise ValueError(f"a VERTEX_PT buffer has 5 numbers per vertex, got {values.size} numbers")
    return values.reshape(-1, 5)[:, :3]


def _binarypb_vertices(data: bytes) -> np.ndarray:
    from mediapipe.modules.face_geometry.protos import geometry_pipeline_metadata_pb2 as pb

    meta = pb.GeometryPipelineMetadata()
    meta.ParseFromString(data)
    return _vertex_buffer(np.asarray(meta.canonical_mesh.vertex_buffer, dtype=np.float64))


def read_canonical_face(path: str | os.PathLike) -> CanonicalFace:
    """Read MediaPipe's canonical face from ``path``.

    Accepted: ``canonical_face_model.obj`` (its ``v`` lines), ``geometry_pipeline_metadata*.pbtxt``
    (``canonical_mesh.vertex_buffer``, 5 numbers per vertex), the same as ``.binarypb`` (parsed with the
    protobuf class the ``mediapipe`` wheel ships), or a ``face_landmarker.task`` bundle (a zip holding
    ``geometry_pipeline_metadata_landmarks.binarypb``).

    Returns:
        :class:`CanonicalFace` (the first 468 vertices, centred, unit RMS radius).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds fewer than 468 vertices or cannot be parsed (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: canonical face file not found")
    try:
        suffix = path.suffix.lower()
        if suffix == ".obj":
            vertices = _obj_vertices(path.read_text(encoding="utf-8", errors="replace"))
        elif suffix == ".pbtxt":
            vertices = _pbtxt_vertices(path.read_text(encoding="utf-8", errors="replace"))
        elif suffix == ".binarypb":
            vertices = _binarypb_vertices(path.read_bytes())
        elif suffix == ".task" or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as bundle:
                names = [n for n in bundle.namelist() if n.endswith(".binarypb") and "geometry_pipeline" in n]
                if not names:
                    raise ValueError("the bundle holds no geometry_pipeline_metadata*.binarypb")
                vertices = _binarypb_vertices(bundle.read(sorted(names)[0]))
        else:
            raise ValueError("expected .obj, .pbtxt, .binarypb or a .task bundle")
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a canonical face model ({e})") from e
    except Exception as e:  # protobuf's DecodeError is not a ValueError
        raise ValueError(f"{path}: not a canonical face model ({type(e).__name__}: {e})") from e
    if vertices.ndim != 2 or vertices.shape[0] < NUM_MESH_VERTICES or not np.isfinite(vertices).all():
        raise ValueError(f"{path}: a canonical face needs {NUM_MESH_VERTICES} finite vertices, got "
                         f"{vertices.shape[0] if vertices.ndim == 2 else 0}")
    v = vertices[:NUM_MESH_VERTICES]
    v = v - v.mean(0)
    v = v / np.sqrt((v**2).sum(1).mean())
    sha1 = hashlib.sha1(v.astype(np.float32).tobytes()).hexdigest()
    return CanonicalFace(vertices=v, source=str(path), sha1=sha1)


def _installed_canonical_file() -> Path | None:
    try:
        import mediapipe
    except ImportError:
        return None
    root = Path(mediapipe.__file__).parent
    for rel in _MEDIAPIPE_CANONICAL_FILES:
        if (root / rel).is_file():
            return root / rel
    return None


@lru_cache(maxsize=8)
def _cached_canonical(path: str) -> CanonicalFace:
    return read_canonical_face(path)


def canonical_face(path: str | os.PathLike | None = None) -> CanonicalFace | None:
    """MediaPipe's canonical face, from the first place that has it, else None.

    Looked up in this order: ``path``; the file named by ``$IF3D_CANONICAL_FACE``; the installed
    ``mediapipe`` package (``mediapipe/modules/face_geometry/data/canonical_face_model.obj`` or
    ``geometry_pipeline_metadata*.pbtxt|.binarypb``). Nothing is downloaded. None means the pose
    normalisation uses the face's head-pose frame (module docstring).

    Raises:
        FileNotFoundError, ValueError: ``path`` or ``$IF3D_CANONICAL_FACE`` names a missing or unreadable file.
    """
    explicit = path if path is not None else os.environ.get(CANONICAL_FACE_ENV) or None
    if explicit is not None:
        if not Path(explicit).is_file():
            where = "" if path is not None else f" (${CANONICAL_FACE_ENV})"
            raise FileNotFoundError(f"{explicit}{where}: canonical face file not found")
        return _cached_canonical(str(Path(explicit).resolve()))
    found = _installed_canonical_file()
    return _cached_canonical(str(found)) if found is not None else None


# ============================================================================ alignment


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares similarity transform mapping ``source`` onto ``target`` (Umeyama 1991).

    Args:
        source, target: float [N, 3] corresponding points (N >= 3, not all on a line).

    Returns:
        ``(rotation [3, 3], scale, translation [3])`` with ``target ≈ scale * source @ rotation.T + translation``;
        ``rotation`` is proper (det +1, no reflection).

    Raises:
        ValueError: shapes differ or are not [N, 3]; ``source`` has no spread.
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"similarity_transform: need two [N, 3] arrays of one shape, got {x.shape} and {y.shape}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    var_x = (xc**2).sum(1).mean()
    if not var_x > 0:
        raise ValueError("similarity_transform: the source points coincide")
    u, s, vt = np.linalg.svd(yc.T @ xc / len(x))
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_x)
    return rotation, scale, my - scale * rotation @ mx


def _view_frame(landmarks: np.ndarray) -> np.ndarray:
    """MediaPipe landmarks (x right, y down, z away from the camera) → right-handed x right, y up, z toward it."""
    return np.asarray(landmarks, dtype=np.float64) * np.array([1.0, -1.0, -1.0])


def normalise_landmarks(landmarks: np.ndarray, template: CanonicalFace | None = None) -> np.ndarray:
    """The pose-normalised landmark cloud of one face (see the module docstring).

    Args:
        landmarks: float [478, 3] as saved by the render step (x, y in photo pixels, z in the same scale,
            MediaPipe's sign: smaller = closer), or [468, 3] without the iris points.
        template: MediaPipe's canonical face (:func:`canonical_face`); None uses the face's head-pose frame.

    Returns:
        float32 [478, 3] (or [468, 3]): x toward the face's left (the viewer's right), y up, z out of the face;
        the 468 mesh points are centred and have an RMS radius of 1 (head-pose frame) or are fitted to the
        unit-radius canonical face (template); the iris points follow the same transform.

    Raises:
        ValueError: not [478, 3] / [468, 3], non-finite values, or a degenerate face (all points together).
    """
    pts = np.asarray(landmarks)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] not in (NUM_MESH_VERTICES, NUM_LANDMARKS):
        raise ValueError(f"landmarks must be [478, 3] or [468, 3], got {tuple(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ValueError("landmarks hold NaN or infinite values")
    view = _view_frame(pts)
    mesh = view[:NUM_MESH_VERTICES]
    if template is not None:
        rotation, scale, translation = similarity_transform(mesh, template.vertices)
        return (scale * view @ rotation.T + translation).astype(np.float32)
    centroid = mesh.mean(0)
    radius = np.sqrt(((mesh - centroid) ** 2).sum(1).mean())
    if not radius > 0:
        raise ValueError("landmarks: every point is at the same place")
    rotation = head_pose(pts)["rotation"].astype(np.float64)  # columns: the face's x, y, z in the view frame
    return ((view - centroid) @ rotation / radius).astype(np.float32)


# ============================================================================ voxels


def voxel_indices(clouds: torch.Tensor, resolution: int, extent: float = VOXEL_EXTENT) -> torch.Tensor:
    """Flat voxel index of every landmark: the grid cell ``(d, h, w)`` as ``(d * R + h) * R + w``.

    Axes of the grid ``[R, R, R]`` = (depth, height, width): depth from z (index 0 = farthest from the
    viewer), height from y (index 0 = top of the face), width from x (index 0 = the viewer's left). The cube
    spans ``[-extent, extent]`` on each axis in cloud units; points outside go to the border voxel.

    Args:
        clouds: float [B, P, 3] normalised clouds (:func:`normalise_landmarks`).
        resolution: R voxels per side (>= 2).
        extent: half side of the cube.

    Returns:
        int64 [B, P] in ``[0, R³)``.

    Raises:
        ValueError: ``resolution`` < 2, ``extent`` <= 0, or clouds not [B, P, 3].
    """
    if resolution < 2 or not extent > 0:
        raise ValueError(f"voxel grid: need resolution >= 2 and extent > 0, got {resolution} and {extent}")
    if clouds.dim() != 3 or clouds.shape[-1] != 3:
        raise ValueError(f"voxel grid: clouds must be [B, P, 3], got {tuple(clouds.shape)}")
    cell = ((clouds.float() + extent) * (resolution / (2.0 * extent))).floor().long().clamp_(0, resolution - 1)
    w, h, d = cell[..., 0], resolution - 1 - cell[..., 1], cell[..., 2]
    return (d * resolution + h) * resolution + w


def voxel_occupancy(clouds: torch.Tensor, resolution: int = 32, extent: float = VOXEL_EXTENT) -> torch.Tensor:
    """Binary occupancy grid of the landmarks (3DFER's landmark voxelisation).

    Args:
        clouds: float [B, P, 3] normalised clouds.
        resolution: R voxels per side.
        extent: half side of the cube (:func:`voxel_indices`).

    Returns:
        float32 [B, 1, R, R, R]: 1 in every voxel holding at least one landmark, else 0 (so at most P ones).
    """
    b = clouds.shape[0]
    flat = voxel_indices(clouds, resolution, extent)
    grid = torch.zeros(b, resolution**3, dtype=torch.float32, device=clouds.device)
    grid.scatter_(1, flat, 1.0)
    return grid.view(b, 1, resolution, resolution, resolution)


# ============================================================================ distances


@lru_cache(maxsize=1)
def distance_map_indices() -> np.ndarray:
    """The landmarks of the distance map, region by region (:data:`DISTANCE_REGIONS`), each region's in
    ascending index order, every landmark once (at its first region).

    Returns:
        int64 [K] (K = 162 with mediapipe 0.10: lips 40, eyes 2 × 16, eyebrows 2 × 10, nose 24 minus those
        already listed, face oval 36, irises 10). Read-only.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc

    seen: list[int] = []
    for name in DISTANCE_REGIONS:
        region = sorted({int(i) for edge in getattr(fmc, name) for i in edge})
        if name == "FACEMESH_IRISES":  # the connections leave out the two iris centres
            region = list(range(NUM_MESH_VERTICES, NUM_LANDMARKS))
        seen += [i for i in region if i not in seen]
    out = np.asarray(seen, dtype=np.int64)
    out.setflags(write=False)
    return out


def distance_map(clouds: torch.Tensor, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
    """Pairwise Euclidean distances between chosen landmarks, as a one-channel image.

    Args:
        clouds: float [B, 478, 3] normalised clouds.
        indices: the K landmarks (default :func:`distance_map_indices`).

    Returns:
        float32 [B, 1, K, K], symmetric with a zero diagonal, in units of the face's RMS radius.
    """
    idx = torch.as_tensor(np.array(distance_map_indices() if indices is None else indices), dtype=torch.long,
                          device=clouds.device)
    pts = clouds.float()[:, idx]
    diff = pts[:, :, None, :] - pts[:, None, :, :]
    return diff.pow(2).sum(-1).sqrt().unsqueeze(1)  # exact zeros on the diagonal (cdist's may not be)


@lru_cache(maxsize=1)
def mesh_edges() -> np.ndarray:
    """The 1322 undirected edges of MediaPipe's canonical face triangles (:mod:`if3d.face.topology`).

    Returns:
        int64 [E, 2] with ``a < b``, sorted. Read-only.
    """
    tri = face_mesh_triangles()
    pairs = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    out = np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int64)
    out.setflags(write=False)
    return out


def edge_lengths(clouds: torch.Tensor) -> torch.Tensor:
    """Lengths of the canonical mesh edges (:func:`mesh_edges`): float32 [B, E] from clouds [B, 478|468, 3]."""
    e = torch.as_tensor(np.array(mesh_edges()), device=clouds.device)
    pts = clouds.float()
    return (pts[:, e[:, 0]] - pts[:, e[:, 1]]).norm(dim=-1)


# ============================================================================ FLAME


def flame_expression(params: dict[str, np.ndarray]) -> np.ndarray | None:
    """FLAME expression + jaw parameters of one face from a SMIRK render's ``<stem>.npz``.

    Args:
        params: the npz's arrays (``expression_params`` [50], ``jaw_params`` [3]).

    Returns:
        float32 [53] (expression coefficients, then the jaw's axis-angle rotation in radians), or None when
        the file has no FLAME parameters (a MediaPipe-backend render).

    Raises:
        ValueError: the arrays have other sizes or hold non-finite values.
    """
    if "expression_params" not in params or "jaw_params" not in params:
        return None
    expression = np.asarray(params["expression_params"], dtype=np.float32).reshape(-1)
    jaw = np.asarray(params["jaw_params"], dtype=np.float32).reshape(-1)
    if expression.size != 50 or jaw.size != 3:
        raise ValueError(f"FLAME parameters: expected expression [50] and jaw [3], got {expression.size} and "
                         f"{jaw.size}")
    out = np.concatenate([expression, jaw])
    if not np.isfinite(out).all():
        raise ValueError("FLAME parameters hold NaN or infinite values")
    return out
