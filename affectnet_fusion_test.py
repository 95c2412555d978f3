"""Test a checkpoint (ours, If3D's FinalCheckPoints or DDAMFN's) on a dataset split: metrics.json,
predictions.csv and confusion matrices. All logic lives in :mod:`if3d.evaluate`; run with ``--help``.
"""

from if3d.evaluate import main

if __name__ == "__main__":
    main()
