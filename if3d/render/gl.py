"""Headless grey-shaded mesh renderer with SMIRK's lighting (moderngl over EGL).

What a "SMIRK render" looks like (SMIRK, Retsinas et al., CVPR 2024; ``src/renderer/renderer.py`` of
the official repository, whose shading follows DECA's ``add_directionlight``):

- grey albedo 180/255 on every vertex; black background; no anti-aliasing (one sample per pixel
  centre, as the PyTorch3D rasteriser SMIRK uses with ``blur_radius=0``); no back-face culling;
- per-vertex normals = normalised sum of the (area-weighted) normals of the incident triangles,
  interpolated barycentrically over each triangle *without* re-normalisation (as SMIRK does);
- five directional lights, directions (-1,1,1), (1,1,1), (-1,-1,1), (1,-1,1), (0,0,1) (normalised),
  intensity 1.7 each; ``shading = mean over lights of clamp(n . l, 0, 1) * 1.7``;
  ``pixel = clamp(albedo * shading, 0, 1)``.

Frames. Vertices are given in *output pixel coordinates*: x to the right, y down, the image spanning
[0, S] x [0, S] (pixel (i, j) covers [j, j+1) x [i, i+1) and is sampled at its centre), and z larger =
closer to the viewer, in any unit (orthographic projection; z only orders depth and enters normals).
Normals and lights live in the right-handed *view frame* X = x, Y = -y (up), Z = z (toward the
viewer). This is SMIRK's frame for lighting: SMIRK shades with normals of the posed FLAME vertices
*before* its orthographic camera negates y and z, i.e. in FLAME's camera frame (x right, y up, z toward
the camera); so the light (0, 0, 1) shines straight onto a frontal face, and (-1, 1, 1) comes from the
upper left of the image. Triangles must be wound counter-clockwise when seen from outside the surface
in the view frame (FLAME's own winding); in pixel coordinates (y down) a front-facing triangle
therefore appears clockwise on screen. ``two_sided=True`` flips the normal of back-facing fragments
instead (useful for meshes of unknown winding; SMIRK does not do this).

One OpenGL context per ``MeshRenderer`` (or one shared through ``ctx=``): GL objects are created once
and reused; the vertex buffer grows when needed; the index buffer is re-uploaded only when the
triangles change. Each draw makes the renderer's context current, so several renderers can live in
one process.
EGL picks a GPU when the driver offers one (NVIDIA EGL), otherwise Mesa's llvmpipe on the CPU.
"""

from __future__ import annotations

import numpy as np

SMIRK_ALBEDO = 180.0 / 255.0
"""Grey albedo of SMIRK's renderer (``colors = [180, 180, 180] / 255``)."""

SMIRK_LIGHT_DIRECTIONS = np.array(
    [[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1]], dtype=np.float32
)
"""SMIRK's five directional lights, view frame (x right, y up, z toward the viewer), not normalised."""

SMIRK_LIGHT_INTENSITY = 1.7
"""Intensity of each of SMIRK's lights."""

_MAX_LIGHTS = 8

_VERTEX_SHADER = """
#version 330
uniform float size;
uniform vec2 z_range;   // (min z, max z) of the current mesh
in vec3 in_pos;         // output pixels, x right, y down, z toward the viewer
in vec3 in_normal;      // view frame (x right, y up, z toward the viewer)
out vec3 v_normal;
void main() {
    float span = max(z_range.y - z_range.x, 1e-6);
    float depth = 0.98 - 1.96 * (in_pos.z - z_range.x) / span;   // larger z -> smaller depth (nearer)
    gl_Position = vec4(2.0 * in_pos.x / size - 1.0, 1.0 - 2.0 * in_pos.y / size, depth, 1.0);
    v_normal = in_normal;
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform vec3 light_dirs[MAX_LIGHTS];
uniform int n_lights;
uniform float intensity;
uniform float albedo;
uniform bool two_sided;
in vec3 v_normal;
out vec4 f_color;
void main() {
    vec3 n = (two_sided && !gl_FrontFacing) ? -v_normal : v_normal;
    float s = 0.0;
    for (int i = 0; i < n_lights; ++i) {
        s += clamp(dot(n, light_dirs[i]), 0.0, 1.0);
    }
    float shade = intensity * s / float(n_lights);
    f_color = vec4(vec3(clamp(albedo * shade, 0.0, 1.0)), 1.0);
}
""".replace("MAX_LIGHTS", str(_MAX_LIGHTS))


def vertex_normals(vertices_view: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex unit normals (sum of incident triangles' cross products, normalised).

    Args:
        vertices_view: float [V, 3] in a right-handed frame.
        faces: int [F, 3] vertex indices, counter-clockwise seen from outside.

    Returns:
        float32 [V, 3]; zero for vertices used by no triangle (or only degenerate ones).
    """
    v = np.asarray(vertices_view, dtype=np.float32)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.reshape(-1)
    n = np.empty((v.shape[0], 3), dtype=np.float32)
    for c in range(3):
        n[:, c] = np.bincount(idx, weights=np.repeat(fn[:, c], 3), minlength=v.shape[0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    np.divide(n, length, out=n, where=length > 1e-12)
    n[length[:, 0] <= 1e-12] = 0.0
    return n


def _preload_triton() -> None:
    """Import triton (when installed) before Mesa loads its own LLVM.

    Mesa's llvmpipe driver (CPU EGL) and triton's ``libtriton.so`` both carry LLVM; importing triton
    *after* an llvmpipe context exists crashes the process (segmentation fault), and torchvision /
    torch._dynamo import triton lazily, e.g. when SMIRK's encoder is built in the same process. In
    the other order both work, so triton is imported first (about 0.5 s, once per process).
    """
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install only matters to whoever uses it
        pass


def create_context(backend: str = "egl", **kwargs):
    """A headless moderngl context (OpenGL >= 3.3).

    Raises:
        RuntimeError: when no headless context can be created (message says what to install).
    """
    import moderngl

    _preload_triton()
    try:
        return moderngl.create_standalone_context(backend=backend, **kwargs)
    except Exception as exc:  # moderngl raises plain Exception subclasses from the loader
        raise RuntimeError(
            f"could not create a headless OpenGL context (moderngl backend={backend!r}): {exc}. "
            "Install an EGL driver (Debian: libegl1 + libgl1-mesa-dri for CPU rendering, or the NVIDIA driver)."
        ) from exc


class MeshRenderer:
    """Renders triangle meshes grey-shaded on black, SMIRK style, into ``size`` x ``size`` images.

    Args:
        size: output side S in pixels.
        albedo: grey albedo in [0, 1] (SMIRK: 180/255).
        light_directions: float [L, 3] directions in the view frame (normalised here), L <= 8.
        light_intensity: intensity of each light.
        two_sided: flip normals of back-facing fragments (off by default, as in SMIRK).
        ctx: an existing moderngl context to draw with (default: a new EGL context).

    Raises:
        ValueError: on a bad size or light set. RuntimeError: when no OpenGL context is available.
    """

    def __init__(
        self,
        size: int,
        albedo: float = SMIRK_ALBEDO,
        light_directions: np.ndarray = SMIRK_LIGHT_DIRECTIONS,
        light_intensity: float = SMIRK_LIGHT_INTENSITY,
        two_sided: bool = False,
        ctx=None,
    ) -> None:
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        lights = np.asarray(light_directions, dtype=np.float32)
        if lights.ndim != 2 or lights.shape[1] != 3 or not 1 <= lights.shape[0] <= _MAX_LIGHTS:
            raise ValueError(f"light_directions must be [L,3] with 1 <= L <= {_MAX_LIGHTS}, got {lights.shape}")
        self.size = int(size)
        self.ctx = ctx if ctx is not None else create_context()
        self._own_ctx = ctx is None
        with self.ctx:
            self._create_objects(lights, albedo, light_intensity, two_sided)
        self._vbo = None
        self._ibo = None
        self._vao = None
        self._faces: np.ndarray | None = None
        self._interleaved = np.empty((0, 6), dtype=np.float32)

    def _create_objects(self, lights: np.ndarray, albedo: float, light_intensity: float, two_sided: bool) -> None:
        self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        unit = lights / np.linalg.norm(lights, axis=1, keepdims=True)
        padded = np.zeros((_MAX_LIGHTS, 3), dtype=np.float32)
        padded[: len(unit)] = unit
        self.program["light_dirs"].write(padded.tobytes())
        self.program["n_lights"].value = len(unit)
        self.program["intensity"].value = float(light_intensity)
        self.program["albedo"].value = float(albedo)
        self.program["two_sided"].value = bool(two_sided)
        self.program["size"].value = float(self.size)
        self.fbo = self.ctx.framebuffer(
            color_attachments=[self.ctx.renderbuffer((self.size, self.size), components=3)],
            depth_attachment=self.ctx.depth_renderbuffer((self.size, self.size)),
        )

    def _upload(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        nv = vertices.shape[0]
        if self._interleaved.shape[0] != nv:
            self._interleaved = np.empty((nv, 6), dtype=np.float32)
        data = self._interleaved
        data[:, :3] = vertices
        view = vertices.copy()
        view[:, 1] *= -1.0
        data[:, 3:] = vertex_normals(view, faces)
        rebuild = False
        if self._vbo is None or self._vbo.size < data.nbytes:
            if self._vbo is not None:
                self._vbo.release()
            self._vbo = self.ctx.buffer(reserve=max(data.nbytes, 1024), dynamic=True)
            rebuild = True
        self._vbo.write(data.tobytes())
        if self._faces is None or self._faces.shape != faces.shape or not np.array_equal(self._faces, faces):
            if self._ibo is not None:
                self._ibo.release()
            self._ibo = self.ctx.buffer(faces.astype(np.int32).tobytes())
            self._faces = faces.copy()
            rebuild = True
        if rebuild:
            if self._vao is not None:
                self._vao.release()
            self._vao = self.ctx.vertex_array(
                self.program, [(self._vbo, "3f 3f", "in_pos", "in_normal")], index_buffer=self._ibo, index_element_size=4
            )

    def render(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Draw one mesh.

        Args:
            vertices: float [V, 3], output pixel coordinates (x right, y down, image = [0,S]^2), z larger
                = closer to the viewer.
            faces: int [F, 3] indices into ``vertices``, wound counter-clockwise seen from outside in
                the view frame (x right, y up, z toward the viewer).

        Returns:
            uint8 [S, S, 3] RGB image (grey: the three channels are equal), black where no triangle is.

        Raises:
            ValueError: on wrong shapes, non-finite vertices or out-of-range face indices.
        """
        vertices = np.asarray(vertices, dtype=np.float32)
        faces = np.asarray(faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] == 0:
            raise ValueError(f"vertices must be [V,3] with V > 0, got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"faces must be an integer [F,3] array, got {faces.shape} {faces.dtype}")
        if not np.isfinite(vertices).all():
            raise ValueError("vertices contain NaN or infinite values")
        if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
            raise ValueError(f"face indices must lie in [0, {vertices.shape[0]}), got [{faces.min()}, {faces.max()}]")
        if faces.shape[0] == 0:
            return np.zeros((self.size, self.size, 3), dtype=np.uint8)
        import moderngl

        # Several renderers (contexts) may live in one process: make ours current for this draw.
        with self.ctx:
            self.fbo.use()
            self.fbo.clear(0.0, 0.0, 0.0, 1.0, depth=1.0)
            self._upload(vertices, faces)
            self.program["z_range"].value = (float(vertices[:, 2].min()), float(vertices[:, 2].max()))
            self.ctx.enable(moderngl.DEPTH_TEST)
            self.ctx.disable(moderngl.CULL_FACE)
            self._vao.render(moderngl.TRIANGLES, vertices=faces.shape[0] * 3)
            raw = self.fbo.read(components=3, alignment=1)
        # OpenGL rows run bottom-up; image rows run top-down.
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.size, self.size, 3)[::-1].copy()

    def release(self) -> None:
        """Free the GL objects (and the context when this renderer created it)."""
        with self.ctx:
            for obj in (self._vao, self._ibo, self._vbo, self.fbo, self.program):
                if obj is not None:
                    obj.release()
        self._vao = self._ibo = self._vbo = None
        if self._own_ctx:
            self.ctx.release()

    def __enter__(self) -> MeshRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
