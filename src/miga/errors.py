"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class MigaError(ValueError):
    """Bad input or configuration; the message names the problem and how to fix it."""
