"""What every command shares: terminal detection, one table renderer, JSON output, options used by several commands.

Nothing heavy is imported here: `cnn --help` and `cnn shape` must start without torch (and without rich when
the output is not a terminal).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import click
import typer

from cnncli.errors import UsageError, shown, shown_lines


def is_terminal(stream=None) -> bool:
    """Rich output (tables, colours, live bars) only on a TTY, and never with CI or NO_COLOR set."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("CI") or os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_consoles: dict[str, Any] = {}


def console(stderr: bool = False):
    """A rich Console for stdout (results) or stderr (logs, progress); used only where `is_terminal`."""
    key = "err" if stderr else "out"
    if key not in _consoles:
        from rich.console import Console

        _consoles[key] = Console(stderr=stderr)
    return _consoles[key]


def log(message: str) -> None:
    """A log line on stderr (never on stdout, which may carry the --json result). Everything cnn prints passes
    `shown_lines`: text a file decided (class names, metadata) cannot drive the terminal, nor flood it."""
    print(shown_lines(str(message)), file=sys.stderr, flush=True)


def say(text: str) -> None:
    """Plain text on stdout."""
    sys.stdout.write(shown_lines(text) + "\n")


_result: list = []  # the real stdout while a --json command runs (anything else printed goes to stderr)


@contextmanager
def result_stream(json_only: bool):
    """With --json, stdout carries the one result object only: whatever else prints while the command runs (a user
    model's print(), a library's chatter) goes to stderr."""
    if not json_only:
        yield
        return
    real = sys.stdout
    _result.append(real)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        _result.pop()


def emit_json(obj: Any) -> None:
    """The one JSON object a --json command writes to stdout."""
    from cnncli.fileio import json_text

    out = _result[-1] if _result else sys.stdout
    out.write(json_text(obj, default=_json_default) + "\n")  # strict JSON: NaN and infinities are null
    out.flush()


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# --------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    name: str
    right: bool = False  # numbers are right-aligned
    footer: str = ""  # a total under the column (the footer row is shown when any column has one)


def render_table(
    columns: list[Column], rows: Iterable[list[str]], *, title: str = "", notes: Iterable[str] = ()
) -> None:
    """A table on stdout: rich on a terminal, aligned plain text otherwise; `notes` are lines printed after it."""
    rows = [[shown(c) for c in r] for r in rows]
    notes = [shown_lines(n) for n in notes]
    title = shown(title, 300)
    if is_terminal(sys.stdout):
        from rich.table import Table
        from rich.text import Text

        t = Table(title=title or None, show_footer=any(c.footer for c in columns))
        for c in columns:
            t.add_column(c.name, justify="right" if c.right else "left", footer=c.footer)
        for r in rows:
            t.add_row(*(Text(c) for c in r))  # cells are text, never rich markup ("[red]" in a class name)
        out = console()
        out.print(t)
        for line in notes:
            out.print(line, markup=False, highlight=False)
        return
    body = [[c.name for c in columns], *rows]
    if any(c.footer for c in columns):
        body.append([c.footer for c in columns])
    widths = [max(len(r[i]) for r in body) for i in range(len(columns))]

    def line(cells):
        return "  ".join(v.rjust(w) if c.right else v.ljust(w) for c, v, w in zip(columns, cells, widths)).rstrip()

    lines = ([title] if title else []) + [line(r) for r in body] + notes
    say("\n".join(lines))


# ------------------------------------------------------------------------------------------- values and files


def human(n: float | int | None, unit: str = "") -> str:
    """11689512 -> '11.69 M'."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip() if isinstance(n, float) else f"{n} {unit}".strip()


def dims(shape) -> str:
    """[3, 32, 32] -> '3x32x32' (unknown dimensions as '?')."""
    return "x".join("?" if v is None else str(v) for v in shape) if shape else "-"


def parse_input_size(text: str | None, default_channels: int | None = None):
    """--in as (C, H, W)."""
    from cnncli.analysis.arith import parse_size

    if text is None:
        return None
    return parse_size(text, default_channels=default_channels)


def check_file(path: str, what: str = "file", kind: str = "file") -> str:
    """The reading gate (fileio.check_input) for a path given on the command line."""
    from cnncli.fileio import check_input

    return check_input(path, what, kind=kind)


def pick_device(name: str):
    """The library's device choice (a bad --device fails at once). Commands pick it early and call `log_device`
    once the input is known good, so a failing command prints its error line alone."""
    from cnncli.engine.device import pick_device as pick

    return pick(name)


def log_device(name: str, dev) -> None:
    """Say what `--device auto` chose (on stderr)."""
    if (name or "auto").lower() == "auto":
        log(f"device: {dev} (auto)")


# ----------------------------------------------------------------------------------------------------- options


class _Choice(click.Choice):
    """A fixed set of values, shown as [a|b|c] in --help; anything else is `unknown WHAT 'x' (use a, b, c)`."""

    def __init__(self, what: str, choices: Iterable[str], aliases: dict[str, str] | None = None):
        super().__init__(list(choices))
        self.what, self.aliases = what, dict(aliases or {})

    def convert(self, value, param, ctx):
        value = self.aliases.get(str(value).lower(), value)
        if value in self.choices:
            return value
        self.fail(f"unknown {self.what} {value!r} (use {', '.join(self.choices)})", param, ctx)


def choice(what: str, choices: Iterable[str], aliases: dict[str, str] | None = None) -> click.ParamType:
    """A fixed-choice option type (`aliases` are accepted too and mapped onto a choice, e.g. fp32 -> 32)."""
    return _Choice(what, choices, aliases)


DEVICES_HELP = "auto|cpu|cuda|cuda:N|mps. auto picks CUDA, then MPS, then CPU."
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (logs go to stderr; on an error, nothing).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICES_HELP)]
DEFAULT_DEVICE = "auto"
ModelFileOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        help="The architecture of a state dict (a registry name or file.py:Class; default: detected from its "
        "tensors), or the file.py:Class a checkpoint was trained from. cnn imports a .py file only when "
        "you name it.",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        "--trust-pickle",
        help="Run code a model file carries: a TorchScript archive, a torch.export program (.pt2) or a whole pickled "
        "model (torch.save(model)). Only for files you trust (docs/security.md); --trust-pickle is the old name.",
    ),
]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--weights", help="Weights for a registry name, from any model file (state dict, checkpoint, TorchScript...)."
    ),
]
InOpt = Annotated[Optional[str], typer.Option("--in", help="Input CxHxW, for a file that does not record it.")]
MeanOpt = Annotated[
    Optional[str],
    typer.Option(
        "--mean", help="Per-channel mean of pixels in 0..1 (0.485,0.456,0.406), for a file that does not record it."
    ),
]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std (0.229,0.224,0.225), likewise.")]
ClassesOpt = Annotated[
    Optional[str], typer.Option("--classes", help="Class names: a file with one per line, or a comma list (cat,dog).")
]


def parse_floats(text: str | None, flag: str, positive: bool = False) -> tuple[float, ...] | None:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5)."""
    import math

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise UsageError(
            f"{flag} takes numbers separated by commas, got {text!r}", f"e.g. {flag} 0.5,0.5,0.5"
        ) from None
    if not all(math.isfinite(v) for v in values) or (positive and not all(v > 0 for v in values)):
        raise UsageError(f"{flag} values must be finite{' and > 0' if positive else ''}, got {text!r}")
    return values


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """--classes: a file with one name per line (blank lines ignored), or a comma list."""
    if text is None:
        return None
    if os.path.lexists(text):
        from cnncli.fileio import check_input

        check_input(text, "--classes file", kind="text")  # a FIFO, a device, a folder or a loop: named
        try:
            with open(text, encoding="utf-8") as f:
                names = tuple(line.strip() for line in f if line.strip())
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --classes file {text}: {e}") from None
    elif "," not in text and text.lower().endswith((".txt", ".csv", ".names", ".lst")):
        raise UsageError(f"--classes file not found: {text}", "give a file with one name per line, or a comma list")
    else:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError(f"--classes gives no class names: {text!r}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"--classes names {dup!r} twice")
    return names


def model_request(
    *,
    model=None,
    weights=None,
    trust_pickle=False,
    input_size=None,
    num_classes=None,
    mean=None,
    std=None,
    classes=None,
):
    """The ModelRequest (cnncli.models.open) for a command's model options, with the values parsed."""
    from cnncli.models.open import ModelRequest

    return ModelRequest(
        model=model,
        weights=weights,
        input_size=parse_input_size(input_size) if isinstance(input_size, str) else input_size,
        num_classes=num_classes,
        mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std", positive=True),
        classes=parse_classes(classes),
        trust_pickle=trust_pickle,
    )


def log_notes(opened) -> None:
    """What opening the model detected or assumed, on stderr."""
    for note in opened.notes:
        log(note)


def epilog(text: str) -> str:
    """Help epilog text for click: runs of indented paragraphs (example commands, lists) are kept as typed, one
    per line, instead of being re-wrapped into one paragraph; other paragraphs wrap as usual."""
    out: list[str] = []
    for para in text.split("\n\n"):
        if para.startswith("  ") and out and out[-1].startswith("\b\n"):
            out[-1] += "\n" + para
        elif para.startswith("  "):
            out.append("\b\n" + para)
        else:
            out.append(para)
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------ the model options

# The options every command that opens a model takes, declared once: name -> (typer annotation, default).
MODEL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model_file": (ModelFileOpt, None),
    "trust_pickle": (TrustPickleOpt, False),
    "weights": (WeightsOpt, None),
    "input_size": (InOpt, None),
    "mean": (MeanOpt, None),
    "std": (StdOpt, None),
    "classes": (ClassesOpt, None),
}


@dataclass(frozen=True)
class ModelOptions:
    """What the model options said, for one command (every field None/False when not given)."""

    model_file: Optional[str] = None
    trust_pickle: bool = False
    weights: Optional[str] = None
    input_size: Optional[str] = None
    mean: Optional[str] = None
    std: Optional[str] = None
    classes: Optional[str] = None

    def request(self, **extra):
        """The parsed ModelRequest (cnncli.models.open) for these options; `extra` adds fields (num_classes...)."""
        return model_request(
            model=self.model_file,
            weights=self.weights,
            trust_pickle=self.trust_pickle,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            classes=self.classes,
            **extra,
        )

    def check(self, model: str, **extra):
        """Before any work: the options parsed into a ModelRequest, and MODEL through the reading gate when it
        names a file (a FIFO, a device, a missing file fail here)."""
        from cnncli.models.open import is_checkpoint_path

        req = self.request(**extra)
        if is_checkpoint_path(model):
            check_file(model, "model", kind="model")
        return req

    def open(self, model: str, **extra):
        """The one opening sequence: `check`, then open_model with these options."""
        from cnncli.models.open import open_model

        return open_model(model, self.check(model, **extra))


def model_options(*, skip: Iterable[str] = ()):
    """Give a command the model options (MODEL_OPTIONS, less `skip`) as one `opts: ModelOptions` argument: the
    options are declared once, here, and typer sees them as ordinary keyword options after the command's own."""
    import functools
    import inspect

    names = [n for n in MODEL_OPTIONS if n not in set(skip)]

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)  # typer reads the Option() inside each annotation
        own = [p for p in sig.parameters.values() if p.name != "opts"]
        added = [
            inspect.Parameter(
                n, inspect.Parameter.KEYWORD_ONLY, default=MODEL_OPTIONS[n][1], annotation=MODEL_OPTIONS[n][0]
            )
            for n in names
        ]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            opts = ModelOptions(**{n: kwargs.pop(n) for n in names})
            return fn(*args, opts=opts, **kwargs)

        command.__signature__ = sig.replace(parameters=own + added)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return decorate
