"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class MigaError(ValueError):
    """Bad input or configuration; the message names the problem and how to fix it."""


class PartialFileMismatch(MigaError):
    """A file a checkpoint resumes into (a run's ``OUT.partial`` or latent file) is missing or shorter than the
    checkpoint says; the run that owns it adds how to start over."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    errors that wrap a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
