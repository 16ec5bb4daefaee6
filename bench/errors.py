"""Errors a user can cause. Each carries one line that names the field (or file) and the fix.

The CLI prints ``str(error)`` on stderr and exits with code 2, without a traceback.
"""


class MetabenchError(Exception):
    """Base of every user-facing error: the message is one line, complete on its own."""

    exit_code = 2


class SpecError(MetabenchError):
    """An invalid episode spec. ``field`` is the dotted TOML path, e.g. ``episode.n_way``."""

    def __init__(self, source: str, field: str, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: {field}: {problem}")


class DataError(MetabenchError):
    """Data that is missing, damaged, or cannot be fetched."""


class AdapterError(MetabenchError):
    """An adapter name that is unknown, or an adapter that cannot serve a cell."""
