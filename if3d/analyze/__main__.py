"""``python -m if3d.analyze``: see :mod:`if3d.analyze.cli`."""

from if3d.analyze.cli import main

if __name__ == "__main__":
    main()
