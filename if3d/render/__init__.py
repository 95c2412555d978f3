"""3D face representations of photos: landmarks, render backends (MediaPipe, SMIRK), shared renderer, batch driver.

Submodules are imported lazily by their users so that ``import if3d.render`` stays cheap:
``landmarks`` (MediaPipe FaceMesh), ``gl`` (moderngl/EGL mesh renderer), ``backends``
(``RenderBackend`` protocol, ``get_backend``), ``mediapipe_backend``, ``smirk_backend``, ``batch``
(``render_tree``) and ``cli`` (``Smirk_batch_Render.py``).
"""
