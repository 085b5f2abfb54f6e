"""Errors a user can act on. Imports nothing.

Every class carries the exit code the CLI uses for it (documented in the README):
2 a bad recipe or input, 3 a failed gate, 1 anything else. Exceptions that are not
`NfcompileError` are bugs and keep their traceback.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with control characters escaped (a line break inside a file name shows as \\n)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class NfcompileError(Exception):
    """Base for every error the CLI prints on one line without a traceback."""

    exit_code = 1
    multiline = False  # only a gate's table of failed checks spans lines

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.message} (hint: {self.hint})" if self.hint else self.message
        return text if self.multiline else one_line(text)


class RecipeError(NfcompileError):
    """The recipe (or a --set override) is malformed; names the file and field."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 hint: str | None = None):
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.problem = message
        self.source = source
        self.field = field

    def in_file(self, source: str) -> "RecipeError":
        """The same error, naming the recipe file (for errors raised where the file is unknown)."""
        if self.source is not None:
            return self
        return RecipeError(self.problem, source=source, field=self.field, hint=self.hint)


class InputError(NfcompileError):
    """A file or dataset the user pointed at is missing, unreadable or malformed."""

    exit_code = 2


class RunBusy(InputError):
    """Another nfcompile process holds the run folder's lock; the folder is left alone."""


class BudgetError(NfcompileError):
    """The memory budget is too small to train at all (states the minimum it needs)."""

    exit_code = 2


class GateFailed(NfcompileError):
    """A measured number failed the recipe's limit (validation, accuracy, latency, constraints).
    ``result`` carries what was measured, for callers of the Python API."""

    exit_code = 3
    multiline = True

    def __init__(self, message: str, *, hint: str | None = None, result: object = None):
        super().__init__(message, hint=hint)
        self.result = result


class BudgetExceeded(GateFailed):
    """A block's measured peak went over the budget: the plan did not hold."""


class StageSkipped(NfcompileError):
    """A stage could not run here (missing backend); carries the reason, never a fake result."""

    exit_code = 0

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
