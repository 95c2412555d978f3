"""MediaPipe's canonical face-mesh triangles, recovered from the ``mediapipe`` wheel at run time.

The wheel does not ship the canonical face model (OBJ / geometry metadata), but it ships
``mediapipe.solutions.face_mesh_connections.FACEMESH_TESSELATION``: the edges of the 468-vertex
canonical mesh, written triangle by triangle as directed edges (a,b), (b,c), (c,a) and stored as a set.
Because the canonical mesh is consistently wound, every directed edge belongs to exactly one triangle
(an interior edge appears once in each direction, a boundary edge once). So the triangles are the
exact cover of the directed edges by directed 3-cycles; ambiguous 3-cycles (a triangle's reverse,
or a 3-cycle around a region that is not a face) are resolved by constraint propagation: an edge with
a single remaining candidate fixes that triangle, which rules out every other candidate sharing one of
its edges or its vertex set.

Result (mediapipe 0.10.x): 468 vertices, 2556 directed / 1322 undirected edges, 852 triangles, Euler
characteristic -2 = a sphere with four boundary loops: the face oval (36 edges), the inner lips
(20) and the two eye openings (16 each), the same openings as FLAME's ``face`` region that SMIRK
renders (its eyeballs are not drawn). The iris points 468-477 are not part of the mesh.

Winding: the tessellation's triangles are counter-clockwise seen from outside in the right-handed
view frame (x right, y up, z toward the viewer; landmarks (x, y, z) map to (x, -y, -z)) that
``MeshRenderer`` expects, i.e. clockwise on screen in image coordinates (y down). Checked on real
faces in ``tests/test_render_mediapipe.py``: about 98 % of the triangles of a frontal face face the
viewer (the rest are the steep sides of the nose and the face oval).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

import numpy as np

NUM_MESH_VERTICES = 468


def _tessellation_edges() -> set[tuple[int, int]]:
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    return {(int(a), int(b)) for a, b in FACEMESH_TESSELATION}


def triangles_from_directed_edges(edges: set[tuple[int, int]]) -> np.ndarray:
    """Triangles whose directed edges cover ``edges`` exactly once.

    Args:
        edges: directed edges (a, b) of a consistently wound triangle mesh.

    Returns:
        int32 [F, 3], each row (a, b, c) with (a,b), (b,c), (c,a) in ``edges``; rows sorted.

    Raises:
        RuntimeError: when the edges are not the directed edges of a consistently wound mesh, or the
            cover is not determined by propagation.
    """
    out = defaultdict(set)
    for a, b in edges:
        out[a].add(b)
    candidates: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int, int]] = set()
    for a, b in edges:
        for c in out[b]:
            if a in out[c] and len({a, b, c}) == 3:
                tri = (a, b, c)
                k = tri.index(min(tri))
                tri = tri[k:] + tri[:k]
                if tri not in seen:
                    seen.add(tri)
                    candidates.append(tri)

    def tri_edges(t):
        return ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))

    by_edge: dict[tuple[int, int], set[int]] = defaultdict(set)
    by_vertices: dict[frozenset, set[int]] = defaultdict(set)
    for i, t in enumerate(candidates):
        for e in tri_edges(t):
            by_edge[e].add(i)
        by_vertices[frozenset(t)].add(i)
    alive = set(range(len(candidates)))
    chosen: set[int] = set()
    queue = list(edges)
    while queue:
        e = queue.pop()
        options = by_edge[e] & alive
        if not options:
            raise RuntimeError(f"face tessellation: edge {e} is in no remaining triangle")
        if len(options) != 1:
            continue
        (i,) = options
        if i in chosen:
            continue
        chosen.add(i)
        t = candidates[i]
        rivals = (set().union(*(by_edge[x] for x in tri_edges(t))) | by_vertices[frozenset(t)]) & alive
        rivals.discard(i)
        alive -= rivals
        for j in rivals:  # edges that lost a candidate may now have a single one
            queue.extend(tri_edges(candidates[j]))
    if alive != chosen:
        raise RuntimeError(
            f"face tessellation: {len(alive - chosen)} triangles left undetermined by propagation"
        )
    faces = np.array(sorted(candidates[i] for i in chosen), dtype=np.int32)
    if 3 * len(faces) != len(edges):
        raise RuntimeError(f"face tessellation: {len(faces)} triangles do not cover {len(edges)} directed edges")
    return faces


@lru_cache(maxsize=1)
def face_mesh_triangles() -> np.ndarray:
    """MediaPipe's canonical face-mesh triangles for ``MeshRenderer``.

    Returns:
        int32 [852, 3] indices into the 468 mesh landmarks, counter-clockwise seen from outside in the
        view frame (x right, y up, z toward the viewer). Read-only array.
    """
    faces = triangles_from_directed_edges(_tessellation_edges())
    if faces.max() >= NUM_MESH_VERTICES:
        raise RuntimeError(f"face tessellation refers to vertex {faces.max()} >= {NUM_MESH_VERTICES}")
    faces.setflags(write=False)
    return faces


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Boundary loops of a consistently wound triangle mesh (edges used by one triangle only).

    Args:
        faces: int [F, 3].

    Returns:
        list of vertex-index loops, longest first.
    """
    directed = {(int(a), int(b)) for t in faces for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    nxt = {a: b for a, b in directed if (b, a) not in directed}
    loops: list[list[int]] = []
    done: set[int] = set()
    for start in nxt:
        if start in done:
            continue
        loop, v = [], start
        while v not in done:
            done.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(loop)
    return sorted(loops, key=len, reverse=True)
