"""The command line: argument parsing only. Nothing in hwnas imports this package (tested).

* :mod:`~hwnas.cli.app`: the ``hwnas`` command (``main``), one function per subcommand.
* :mod:`~hwnas.cli.quickstart`: ``hwnas quickstart``, the whole pipeline as command-line steps.

Progress and console helpers are :mod:`hwnas.console` (the data commands use them too).
"""
