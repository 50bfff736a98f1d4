"""One module per ``miga`` command (``add_arguments`` and ``run``); they import the runner, the public API
and :mod:`miga.common`, never ``miga.cli`` nor each other."""
