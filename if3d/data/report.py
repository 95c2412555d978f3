"""Bad-input accounting's former place, for older imports: this name is :mod:`if3d.io.report` itself.

It moved to the floor under both ``if3d.data`` and ``if3d.render``; new code imports :mod:`if3d.io.report`.
"""

import sys

from if3d.io import report as _moved

sys.modules[__name__] = _moved
