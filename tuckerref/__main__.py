"""``python -m tuckerref ...``: the same as the ``tuckerref`` command (:func:`tuckerref.cli.main`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
