"""The face landmarker's former place, for older imports: this name is :mod:`if3d.face.landmarks` itself.

It moved to the floor under both ``if3d.data`` and ``if3d.render``;
new code imports :mod:`if3d.face.landmarks`.
"""

import sys

from if3d.face import landmarks as _moved

sys.modules[__name__] = _moved
