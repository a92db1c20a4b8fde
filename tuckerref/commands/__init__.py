"""Sub-commands of the ``tuckerref`` CLI, one module each (see :mod:`tuckerref.cli`)."""
