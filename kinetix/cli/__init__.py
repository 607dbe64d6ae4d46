"""The ``kinetix`` command-line tool (see :mod:`kinetix.cli.main`)."""
