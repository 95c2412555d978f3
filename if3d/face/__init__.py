"""Face geometry shared by every part of the toolkit: the floor under ``if3d.data`` and ``if3d.render``.

* :mod:`if3d.face.landmarks` — MediaPipe FaceMesh's 478 landmarks of a photo
  (:class:`~if3d.face.landmarks.FaceLandmarker`), SMIRK's crop from them, and the quieting of MediaPipe's
  native log lines.
* :mod:`if3d.face.topology` — MediaPipe's canonical face-mesh triangles (468 vertices, 852 triangles).
* :mod:`if3d.face.pose` — the head pose (rotation, Euler angles, position, size) from the landmarks.

The render backends (:mod:`if3d.render`) draw these meshes; the converters align faces with the landmarks
and the 3D representations (:mod:`if3d.data.face3d`) normalise them by the head pose. Nothing here imports
``if3d.data`` or ``if3d.render``; MediaPipe is imported when a landmarker or the topology is first used.
"""
