"""The face-mesh topology's former place, for older imports: this name is :mod:`if3d.face.topology` itself.

It moved to the floor under both ``if3d.data`` and ``if3d.render``;
new code imports :mod:`if3d.face.topology`.
"""

import sys

from if3d.face import topology as _moved

sys.modules[__name__] = _moved
