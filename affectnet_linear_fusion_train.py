"""Train the If3D linear fusion (concatenated feature maps) model (``if3d_linear``) on photos + 3D renders.

All logic lives in :mod:`if3d.train`; run with ``--help`` for the options, e.g.
``python affectnet_linear_fusion_train.py --data Dataset/fer2013 --out runs/linear``.
"""

from if3d.train.cli import main

if __name__ == "__main__":
    main(default_model="if3d_linear")
