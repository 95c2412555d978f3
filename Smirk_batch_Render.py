"""Batch 3D render of a photo tree (MediaPipe or SMIRK backend); see ``if3d.render.cli``."""

import sys

from if3d.render.cli import main

if __name__ == "__main__":
    sys.exit(main())
