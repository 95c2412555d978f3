"""``python -m if3d.train --model NAME ...``: the training command line (default model: ddamfn)."""

from if3d.train.cli import main

main(default_model="ddamfn")
