"""The `cnn` command: a Typer app, one module per command, errors mapped to exit codes in one place.

Every module in this folder whose name does not start with `_` is a command of the same name and registers it
with `@app.command(NAME)`; `main` finds them by listing the folder (a test checks each one registers itself). A
trailing underscore keeps a module from shadowing the standard library's (`inspect_.py` is `cnn inspect`).
"""

from __future__ import annotations

import os
import pkgutil
import signal
import sys

import typer
import typer.core

from cnncli import __version__
from cnncli.cli._common import result_stream
from cnncli.errors import CnnError, mark_interrupted, shown, was_interrupted

# Help text is plain click formatting (rich_markup_mode=None); typer < 0.20 would still escape "[default: ...]"
# for rich as "\\[default: ...]" whenever rich is installed. typer >= 0.20 costs ~75 ms on every start (pydantic).
typer.core.HAS_RICH = False

app = typer.Typer(
    name="cnn",
    help="Calculate, inspect, train, evaluate, convert and export convolutional neural networks.\n\n"
    "Start with `cnn shape --in 3x32x32 --k 5 --p 2 --out-channels 10`, `cnn models` or "
    "`cnn train lenet --data digits`. Every command has --help.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (Typer's); a TAB imports no torch
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Calculate, inspect, train, evaluate, convert and export CNNs."""


# the order `cnn --help` lists commands in (a workflow); commands not named here follow, alphabetically
HELP_ORDER = (
    "shape",
    "models",
    "summary",
    "train",
    "eval",
    "predict",
    "inspect",
    "fcn",
    "scoremap",
    "export",
    "benchmark",
)


def commands() -> list[str]:
    """The commands (one module each in this folder), in help order."""
    found = sorted(
        command_module(m.name, back=True) for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    )
    return sorted(found, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER))


def command_module(name: str, back: bool = False) -> str:
    """A command's module name (`inspect` -> `inspect_`, kept off the standard library's names), or back."""
    if back:
        return name[:-1] if name.endswith("_") else name
    return name + "_" if name in sys.stdlib_module_names else name


def _register(argv: list[str]) -> None:
    """Import the command modules (each registers its command). Only the one being run when it is named: building
    every command's parser costs start-up time that `cnn shape` should not pay; `--help` and the rest get all."""
    import importlib

    names = commands()
    first = next((a for a in argv if not a.startswith("-")), None)
    for name in [first] if first in names else names:
        importlib.import_module(f"cnncli.cli.{command_module(name)}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn errors into `error: ...` lines and exit codes."""
    args = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is None:  # `cnn ... >&-`: the work still runs, its printed result goes nowhere
        sys.stdout = open(os.devnull, "w")
    if os.environ.get("CNN_DEBUG", "") in ("", "0"):  # torch's advice to developers is noise at a terminal
        import warnings

        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(torch|torchvision|onnx\w*)(\.|$)")
    from cnncli import errors, fileio
    from cnncli.engine.threads import prepare_environment

    if not {"-h", "--help"} & set(args):  # before any command imports torch; help text needs no sample
        prepare_environment(next((a for a in args if not a.startswith("-")), None))
    errors.begin_command()
    fileio.begin_command()
    previous = _exit_on_interrupt()
    try:
        _register(args)
        with result_stream(json_only="--json" in args):
            _run(argv)
        _flush_stdout()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if was_interrupted():  # a signal that a library turned into something else (an ImportError, a fallback)
        _fail("interrupted", 130)
    sys.exit(0)


def _fail(message: str, code: int) -> None:
    """The one error line: text from files inside it is escaped and capped (cnncli.errors.shown)."""
    if not (code == 130 and not mark_interrupted()):  # the signal handler said it already
        try:
            print(f"error: {shown(message, 1000)}", file=sys.stderr, flush=True)
        except OSError:
            pass
    sys.exit(code)


def _flush_stdout() -> None:
    """The result reached stdout, or the command says it did not (stdout on a full disk, /dev/full, a closed pipe)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
    except OSError as e:
        sys.stdout = open(os.devnull, "w")
        _fail(f"cannot write the result to standard output: {e.strerror or e}", 1)


def on_signal(signum, frame):
    """Ctrl-C / SIGTERM: recorded (cnncli.errors), said once, and the command unwinds with exit 130. Raised inside a
    C extension (onnxruntime's import, an exporter), the SystemExit may come back as another exception: the record
    makes it an interrupt all the same, and no file is committed after it (fileio.atomic_write)."""
    if mark_interrupted():
        sys.stderr.write("error: interrupted\n")
    raise SystemExit(130)


def _exit_on_interrupt() -> dict:
    """Ctrl-C and SIGTERM end the command at once with `error: interrupted` and exit 130, also while torch is being
    imported and also when the shell started cnn with SIGINT ignored (a background job): a signal is never lost.
    Writes are atomic, so nothing is left half-written; the trainer replaces these handlers with its own while it
    trains (finish the step, write last.pt)."""

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread (an embedding application): leave its signals alone
            pass
    return previous


def _run(argv: list[str] | None) -> None:
    try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    debug = os.environ.get("CNN_DEBUG", "") not in ("", "0")
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="cnn")
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CnnError as e:
        if debug and not was_interrupted():
            raise
        _fail(str(e), 130 if was_interrupted() else e.exit_code)
    except cx.NoArgsIsHelpError as e:  # `cnn` alone: show help, exit 0 like --help would
        print(e.ctx.get_help())
        sys.exit(0)
    except cx.UsageError as e:
        if debug:
            raise
        cmd = e.ctx.command_path if e.ctx else "cnn"
        _fail(f"{e.format_message()} (see '{cmd} --help')", 2)
    except (typer.Exit, getattr(cx, "Exit", typer.Exit)) as e:
        sys.exit(e.exit_code)
    except (typer.Abort, getattr(cx, "Abort", typer.Abort), KeyboardInterrupt):
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
        sys.exit(0)
    except Exception as e:  # an unexpected failure still gets one line; CNN_DEBUG=1 shows the traceback
        if was_interrupted():  # a signal surfacing as a library's exception is a signal, not a failure
            _fail("interrupted", 130)
        if debug:
            raise
        _unexpected(e)


def _unexpected(e: Exception) -> None:
    """The one line for an exception no layer turned into a CnnError."""
    if type(e).__name__ == "ShellDetectionFailure":  # shellingham, for Typer's --show/--install-completion
        _fail(
            "cannot tell which shell cnn runs in, for --show-completion/--install-completion "
            "(run it from bash, zsh, fish or PowerShell)",
            2,
        )
    if isinstance(e, OSError) and not e.filename:  # writing the result: stdout on a full disk, /dev/full
        _fail(f"cannot write the result: {e.strerror or e}", 1)
    if isinstance(e, OSError):
        from cnncli.fileio import os_error

        err = os_error(e)
        _fail(str(err), err.exit_code)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    _fail(f"{type(e).__name__}: {msg} (run with CNN_DEBUG=1 for the traceback)", 1)
