"""Entry point of the bundled app: ``focalchat`` with no arguments opens the GUI; with arguments it is the
full ``focalchat`` command line (``focalchat call ...``, ``focalchat demo``...)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gui"]))
