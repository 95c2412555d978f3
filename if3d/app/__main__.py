"""``python -m if3d.app``: the web app (:mod:`if3d.app.cli`)."""

from if3d.app.cli import main

if __name__ == "__main__":
    main()
