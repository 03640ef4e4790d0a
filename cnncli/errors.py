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


class Interrupted(CnnError):
    """Ctrl-C or SIGTERM: never an error to recover from; the CLI exits 130 (nothing is committed after it)."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")


# Set by the CLI's signal handler. Library code that catches broad exceptions (a fallback exporter, a retry) and
# every commit of an output file (fileio.atomic_write) call `raise_if_interrupted()`: a signal that arrived while a
# C extension ran (and came back as an ImportError or RuntimeError) is still a signal.
_interrupt: dict[str, int] = {"set": 0, "command": 0}  # set: 0 or 1


def begin_command() -> None:
    """A new command in this process (an embedding application, the test suite): no signal seen yet."""
    _interrupt["set"] = 0
    _interrupt["command"] = _interrupt.get("command", 0) + 1


def command_id() -> int:
    """Which command of this process is running (per-command caches key on it: a user's .py is imported once
    per command)."""
    return _interrupt.get("command", 0)


def mark_interrupted() -> bool:
    """Record a signal; True if it is the first one."""
    first = not _interrupt["set"]
    _interrupt["set"] = 1
    return first


def was_interrupted() -> bool:
    return bool(_interrupt["set"])


def raise_if_interrupted() -> None:
    if _interrupt["set"]:
        raise Interrupted()


def shown(value: object, limit: int = 200) -> str:
    """Text a file decided (class names, model names, metadata, paths inside messages), as it may reach a terminal
    or a log: control characters escaped (no title changes, no cleared screens), at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) > limit:
        text = text[: max(limit - 20, 1)] + f"...[{len(text)} chars]"
    return text


def shown_lines(text: str, limit: int = 2000) -> str:
    """Several lines (a table, a log message): each line through `shown`, the line breaks kept."""
    if text.isprintable() and len(text) <= limit:
        return text
    return "\n".join(shown(line, limit) for line in text.split("\n"))


class InputError(UsageError):
    """Raised by `reading(...)`: what the user gave could not be read or checked."""


class reading:
    """`with reading("checkpoint field 'model'", path):` — the boundary where user input is read. Any exception
    raised inside (a wrong type, a malformed value, a library's refusal) becomes exit 2 naming what was being read
    and why, by construction; CnnErrors pass through as they are, signals and MemoryError are not input errors."""

    def __init__(self, what: str, hint: str | None = None):
        self.what, self.hint = what, hint

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, (CnnError, MemoryError)) or not isinstance(exc, Exception):
            return False
        raise_if_interrupted()
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__
        raise InputError(f"{self.what}: {shown(cause, 300)}", self.hint) from exc
