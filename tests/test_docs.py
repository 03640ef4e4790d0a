"""#28: every command line the README, docs/ and the `--help` examples show is one the tool takes.

Each line is parsed by the real command-line parser (click, under typer) down to its subcommand: an option that
does not exist, a value outside its choices or a missing argument fails here, without running anything. Synopsis
lines (`[--opt X]`, `a|b`, `...`) are grammar, not commands, and are left out.
"""

import glob
import os
import re
import shlex

import click
import pytest
from conftest import ROOT


def _doc_lines() -> list[tuple[str, str]]:
    found = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        text = open(path, encoding="utf-8").read().replace("\\\n", " ")  # shell continuations
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                found.append((os.path.relpath(path, ROOT), line))
    return found


def _help_lines() -> list[tuple[str, str]]:
    from typer.main import get_command

    from cnncli.cli import _register, app

    _register([])  # every command module (each registers its command)
    found = []

    def walk(cmd, name):
        for line in (cmd.epilog or "").splitlines():
            found.append((f"cnn {name} --help", line))
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{name} {sub_name}".strip())

    walk(get_command(app), "")
    return found


def _commands(lines):
    out = []
    for where, line in lines:
        line = line.strip().removeprefix("$ ")
        if not line.startswith("cnn ") or re.search(r"\[|\||\.\.\.|<", line.split("  #")[0]):
            continue
        out.append((where, shlex.split(line, comments=True)[1:]))
    return out


COMMANDS = _commands(_doc_lines())


def test_the_pages_show_commands():
    assert len(COMMANDS) > 40 and len(_commands(_help_lines())) > 30  # the collection itself works


@pytest.mark.parametrize("where,argv", COMMANDS + _commands(_help_lines()), ids=lambda v: " ".join(v)[:60])
def test_a_shown_command_line_is_one_the_tool_takes(where, argv):
    from typer.main import get_command

    from cnncli.cli import _register, app

    _register([])
    cmd, name, args, parent = get_command(app), "cnn", list(argv), None
    try:
        while True:
            ctx = cmd.make_context(name, args, parent=parent, resilient_parsing=False)
            if not isinstance(cmd, click.Group):
                break
            rest = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # (click 8.2 renamed protected_args)
            if not rest:
                break
            name, cmd, args = cmd.resolve_command(ctx, rest)
            parent = ctx
    except click.exceptions.Exit:  # --help and the like
        pass
    except click.UsageError as e:
        pytest.fail(f"{where}: `cnn {' '.join(argv)}`: {e.format_message()}")
    else:  # the walk reached the command itself (a group is only a command line with --help)
        assert not isinstance(cmd, click.Group) or {"-h", "--help", "--version", "-V"} & set(argv), argv
