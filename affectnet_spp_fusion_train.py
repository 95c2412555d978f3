"""Train the If3D spatial-pyramid-pooling (SPP) fusion model (``if3d_spp``) on photos + 3D renders.

All logic lives in :mod:`if3d.train`; run with ``--help`` for the options, e.g.
``python affectnet_spp_fusion_train.py --data Dataset/fer2013 --out runs/spp``.
"""

from if3d.train.cli import main

if __name__ == "__main__":
    main(default_model="if3d_spp")
