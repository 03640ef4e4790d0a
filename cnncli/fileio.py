"""Every file cnncli writes goes through here: a temp file in the same folder, fsync, then rename.

A crash or a SIGKILL never leaves a half-written output under its real name; at worst a hidden
`.NAME.*.tmp` stays behind, which `remove_stale_temp_files` cleans (the trainer does on resume).
Standard library only (and cnncli.errors).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable

from cnncli.errors import UsageError


def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`; on any failure nothing is left behind.

    The temp file is hidden (`.NAME.XXXX` + `suffix`) in the same folder, so the rename is atomic; writers that
    insist on an extension get it through `suffix` (".tmp.pt2")."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_output(path: str, inputs: Iterable[str] = (), force: bool = False) -> str:
    """An output path that may be written: not one of the inputs, not a folder, existing only with `force`."""
    for src in inputs:
        if os.path.exists(src) and os.path.realpath(src) == os.path.realpath(path):
            raise UsageError(f"the output {path} is the input file", "give another -o; an input is never replaced")
    if os.path.isdir(path):
        raise UsageError(f"the output {path} is a folder", "give a file name with -o")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists", "give another -o or --force to overwrite")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    """Atomically write a text file."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path: str, obj: Any) -> None:
    """Atomically write an indented JSON file."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str, header: list[str], rows: Iterable[list]) -> None:
    """Atomically write a CSV file with a header row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def remove_stale_temp_files(folder: str, output: str | None = None) -> list[str]:
    """Remove the hidden temp files of writes that a SIGKILL interrupted (all in `folder`, or those of one output
    file's name); returns their names. Two processes writing the same output at once are not supported."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    prefix = "." + os.path.basename(output) + "." if output else "."
    for name in os.listdir(folder):
        if name.startswith(prefix) and (name.endswith(".tmp") or ".tmp." in name):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed
