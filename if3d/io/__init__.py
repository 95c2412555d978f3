"""File input and output shared by the toolkit: the floor under ``if3d.data`` and ``if3d.render``.

* :mod:`if3d.io.images` — the one image decoder (:func:`~if3d.io.images.decode_image`): dataset samples,
  render inputs, converter sources and the analysis of a user's photos read image files through it.
* :mod:`if3d.io.text` — UTF-8 text inputs (label files, annotation CSVs, render manifests):
  :func:`~if3d.io.text.open_text`, which names the file and line of a byte that is not UTF-8.
* :mod:`if3d.io.report` — bad input, counted and named: :class:`~if3d.io.report.DataReport` (what was
  skipped and why) and the errors for bad input (:class:`~if3d.io.report.DataError` and its kinds).

Atomic writes (text, JSON, bytes, ``torch.save``) are :mod:`if3d.atomic`. Nothing here imports
``if3d.data``, ``if3d.render`` or torch; the submodules are imported by their users.
"""
