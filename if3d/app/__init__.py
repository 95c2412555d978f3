"""The analysis as a local web app: ``python -m if3d.app`` (``if3d-app``) serves a page with a Photo, a Video
and a Webcam tab on http://127.0.0.1:7860, for people who never open a terminal.

The page runs the command line's :class:`if3d.analyze.Analyzer` and writers (no second pipeline):
:mod:`.handlers` (what an upload or a camera frame becomes, no web code), :mod:`.ui` (the Gradio page),
:mod:`.cli` (options, limits, the server). Guide: ``docs/APP.md``.
"""
