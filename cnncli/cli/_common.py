"""What every command shares: consoles, plain/TTY mode, JSON output, size and device options.

Nothing heavy is imported here: `cnn --help` and `cnn shape` must start without torch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from cnncli.errors import UsageError


def plain_mode() -> bool:
    """Plain log lines instead of rich tables and bars: not a TTY, or CI / NO_COLOR set."""
    return bool(os.environ.get("CI") or os.environ.get("NO_COLOR")) or not sys.stderr.isatty()


_consoles: dict[str, Any] = {}


def console(stderr: bool = False):
    """A rich Console for stdout (results) or stderr (logs, progress)."""
    key = "err" if stderr else "out"
    if key not in _consoles:
        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        plain = bool(os.environ.get("CI") or os.environ.get("NO_COLOR")) or not stream.isatty()
        _consoles[key] = Console(
            stderr=stderr,
            no_color=plain,
            highlight=not plain,
            force_terminal=False if plain else None,
            width=None if not plain else 120,
            soft_wrap=plain,
        )
    return _consoles[key]


def log(message: str) -> None:
    """A log line on stderr (never on stdout, which may carry the --json result)."""
    print(message, file=sys.stderr, flush=True)


def say(text: str) -> None:
    """Plain text on stdout; rich is not imported for it (start-up time matters for `cnn shape`)."""
    sys.stdout.write(text + "\n")


def emit_json(obj: Any) -> None:
    """The one JSON object a --json command writes to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def human(n: float | int | None, unit: str = "") -> str:
    """11689512 -> '11.69 M'."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip() if isinstance(n, float) else f"{n} {unit}".strip()


def parse_input_size(text: str | None, default_channels: int | None = None):
    """--in as (C, H, W)."""
    from cnncli.arith import parse_size

    if text is None:
        return None
    return parse_size(text, default_channels=default_channels)


def check_file(path: str, what: str = "file") -> str:
    if not os.path.exists(path):
        raise UsageError(f"{what} not found: {path}", "check the path")
    return path


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON result object on stdout (logs go to stderr).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N|mps. auto picks CUDA, then MPS, then CPU.")]
