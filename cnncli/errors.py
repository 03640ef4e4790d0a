"""The library's typed errors; the CLI maps them to one-line messages and exit codes in one place."""


class CnnError(Exception):
    """Base class. `exit_code` is what the CLI exits with; `hint` goes in parentheses after the message."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(CnnError):
    """Bad usage or bad input: unknown model, malformed size, missing file, unreadable checkpoint (exit 2)."""

    exit_code = 2


class ArithError(UsageError):
    """An impossible layer configuration (output < 1, groups not dividing channels, ...)."""


class WorkFailed(CnnError):
    """The work ran and failed: accuracy under a threshold, parity check failed, training diverged (exit 1)."""

    exit_code = 1
