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


class Diverged(Exception):
    """A non-finite loss: the cell stops instead of training (or timing) on NaNs.

    Not a user error: a cell's status, ``diverged``, with the step and the value.
    ``step`` counts outer steps from 1 (``phase`` says which phase counted them).
    """

    def __init__(self, phase: str, step: int | str, value: float):
        self.phase = phase
        self.step = step
        self.value = float(value)
        super().__init__(f"non-finite loss {self.value} at step {step}")

    def record(self) -> dict:
        """What the cell's ``<phase>.diverged.json`` holds."""
        return {"phase": self.phase, "step": self.step, "value": repr(self.value), "detail": str(self)}
