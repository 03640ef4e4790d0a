"""The two gates: every file cnncli reads passes `check_input`, every file it writes passes `check_output` (when
the command starts) and `atomic_write` (when it commits). Standard library only (and cnncli.errors).

Reading: a regular file (or a folder where one is due), never a FIFO, a device or a socket (they block or never
end); a size sanity limit per kind of file; symlink loops and over-long paths named. Every path read is recorded,
and no write may replace one of them.

Writing: a temp file in the same folder (its name fits NAME_MAX), fsync, then rename; the target is absent or a
regular file (with --force), never a device, a FIFO, a folder or an input of the same command. A crash or a SIGKILL
never leaves a half-written output under its real name; at worst a hidden `.NAME.*.tmp` stays behind, which
`remove_stale_temp_files` cleans (the trainer does on resume). OS errors are mapped to one message once
(`os_error`): a place that cannot be used is exit 2, a full disk or quota exit 1, the previous file intact.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from cnncli.errors import CnnError, UsageError, WorkFailed, raise_if_interrupted, shown

NAME_MAX, PATH_MAX = 255, 4096
GiB = 1 << 30
# the largest file of each kind cnn reads: a sanity limit, so that a wrong path fails with a reason, not an OOM
LIMITS = {"model": 256 * GiB, "image": 2 * GiB, "text": 64 << 20, "data": 256 * GiB, "file": 256 * GiB}
_inputs: set[str] = set()  # realpaths of every file read through check_input in this process: never written


def begin_command() -> None:
    """A new command in this process: the files read by an earlier one are not this one's inputs."""
    _inputs.clear()


def note_inputs(paths: Iterable[str]) -> None:
    """Files a command reads without opening them one by one yet (a folder's images): never written either."""
    _inputs.update(os.path.realpath(p) for p in paths)


def _kind_of_mode(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file or a folder)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) else "not a regular file"


def _size(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def check_input(
    path: str, what: str = "file", *, kind: str = "file", folder: bool = False, replaceable: bool = False
) -> str:
    """The one gate for every file cnn reads: it exists, is a regular file (or a folder when `folder`), can be
    opened, and is not absurdly large for its kind. Returns the path; UsageError (exit 2) otherwise.
    `replaceable`: a file the command updates in place (a run's last.pt when resuming) and may write again."""
    st = _stat(path, what)
    if stat.S_ISDIR(st.st_mode):
        if not folder:
            raise UsageError(f"{shown(path)} is a folder, not a {what}", f"give the {what} itself")
    elif (odd := _kind_of_mode(st.st_mode)) is not None:
        raise UsageError(f"{shown(path)} is {odd}, not a {what}", "cnn reads regular files only")
    elif st.st_size > _limit(kind):
        raise UsageError(
            f"{shown(path)} is {_size(st.st_size)}: too large for a {what}",
            f"cnn reads {what}s up to {_size(_limit(kind))}" + (" (this machine's memory)" if kind == "model" else ""),
        )
    else:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise os_error(e, path, reading=True) from None
    if not replaceable and not stat.S_ISDIR(st.st_mode):
        _inputs.add(os.path.realpath(path))
    return path


def _limit(kind: str) -> int:
    """A kind's size limit; a model file is loaded whole, so it is also at most this machine's memory."""
    limit = LIMITS.get(kind, LIMITS["file"])
    if kind == "model":
        try:
            limit = min(limit, max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), GiB))
        except (ValueError, OSError, AttributeError):
            pass
    return limit


def _stat(path: str, what: str) -> os.stat_result:
    if not path:
        raise UsageError(f"no {what} given")
    if "\0" in path:
        raise UsageError(f"{what} path {shown(path)!r} holds a NUL character")
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {shown(path)}", "check the path") from None
    except OSError as e:
        raise os_error(e, path, reading=True) from None
    except ValueError as e:  # embedded NUL and the like
        raise UsageError(f"cannot use {what} path {shown(path)!r}: {e}") from None


def is_onnx_file(path: str) -> bool:
    """The one test of a model file's kind that cnn makes before opening it: an ONNX file (protobuf, starting with
    its ir_version field) rather than a PyTorch one (a zip archive or a pickle). The suffix decides only for a
    file that cannot be read (the reading gate then names the problem)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never opened: a FIFO would block, a device never end
            return path.lower().endswith(".onnx")
        with open(path, "rb") as f:
            head = f.read(4)
    except (OSError, ValueError):
        return path.lower().endswith(".onnx")
    return len(head) >= 2 and head[0] == 0x08 and head[1] < 0x80 and not head.startswith(b"PK")


def os_error(e: OSError, path: str | None = None, *, reading: bool = False) -> CnnError:
    """The one mapping from an OS error on a path to what the user should do: exit 2 for a place that cannot be
    used, exit 1 for a disk that filled up while the work ran (the previous file, if any, is intact)."""
    where = shown(path or e.filename or "", 300)
    why = e.strerror or str(e)
    no = e.errno
    if no in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WorkFailed(
            f"cannot write {where}: {why}",
            "free some space (or raise the quota), or write elsewhere; no earlier file was replaced",
        )
    if no == errno.ENAMETOOLONG:
        return UsageError(
            f"cannot use {where}: the name or path is too long",
            f"file names are at most {NAME_MAX} bytes and paths {PATH_MAX}",
        )
    if no == errno.ELOOP:
        return UsageError(f"cannot use {where}: a symbolic link loop", "check the links on the path")
    if no == errno.EROFS:
        return UsageError(f"cannot write {where}: the file system is read-only", "write elsewhere")
    if no in (errno.EACCES, errno.EPERM):
        return UsageError(f"cannot {'read' if reading else 'write'} {where}: {why}", "check its permissions")
    if no in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EXDEV, errno.EBUSY, errno.ETXTBSY):
        return UsageError(f"cannot use {where}: {why}", "check the path")
    if no == errno.EIO:
        return WorkFailed(f"input/output error on {where}", "the disk or the device may be failing")
    return UsageError(f"cannot use {where}: {why}", "check the path and its permissions")


def check_writable_place(path: str) -> None:
    """The folder a new file or folder would go in exists (or can be made) and is writable."""
    full = os.path.abspath(path)
    if len(os.fsencode(full)) >= PATH_MAX:
        raise UsageError(
            f"cannot use {shown(path)}: the path is too long ({len(os.fsencode(full))} bytes)",
            f"paths are at most {PATH_MAX} bytes",
        )
    for part in full.split(os.sep):
        if len(os.fsencode(part)) > NAME_MAX:
            raise UsageError(
                f"cannot use {shown(path)}: the name {shown(part, 60)} is too long ({len(os.fsencode(part))} bytes)",
                f"file names are at most {NAME_MAX} bytes",
            )
    parent = os.path.dirname(full)
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UsageError(f"cannot use {shown(path)}: {shown(parent)} is not a folder", "check the path")
    if parent and not os.access(parent, os.W_OK):
        raise _not_writable(parent)


def _not_writable(folder: str) -> CnnError:
    """A folder cnn may not write in: read-only file system or permission, in os_error's words."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    no, why = (errno.EROFS, "read-only file system") if read_only else (errno.EACCES, "permission denied")
    return os_error(OSError(no, why), folder)


def _refuse_target(path: str) -> None:
    """What no write may replace, --force or not: a device, FIFO or socket (for every program on the machine),
    a folder, or a file this command read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the output {shown(path)} is a folder", "give a file name with -o")
    if (odd := _kind_of_mode(st.st_mode)) is not None:
        raise UsageError(f"the output {shown(path)} is {odd}", "cnn writes regular files only; give a file name")
    if os.path.realpath(path) in _inputs:
        raise UsageError(
            f"the output {shown(path)} is an input of this command",
            "give another output name; an input is never replaced",
        )


def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`; on any failure nothing is left behind.

    The temp file is hidden (`.NAME.XXXX` + `suffix`) in the same folder, so the rename is atomic; writers that
    insist on an extension get it through `suffix` (".tmp.pt2")."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    check_writable_place(path)
    _refuse_target(path)
    try:
        os.makedirs(folder, exist_ok=True)
        # the temp name fits NAME_MAX whatever the target's name: its prefix is cut (mkstemp adds 8 characters)
        stem = os.fsencode(os.path.basename(path))[: NAME_MAX - 16 - len(os.fsencode(suffix))]
        prefix = "." + stem.decode("utf-8", "ignore") + "."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
    except OSError as e:
        raise os_error(e, path) from None
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any other file
        raise_if_interrupted()  # a signal arrived while writing: nothing is committed
        _refuse_target(path)  # what appeared at the path meanwhile is not replaced either
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        err = write_error(e)
        if err is not None:
            raise os_error(err, path) from None
        raise


def write_error(e: BaseException) -> OSError | None:
    """The OS error a writer's exception stands for: an OSError itself, or torch's C++ writers' words for a full
    disk (they raise RuntimeError); None for anything else."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, RuntimeError) and _disk_full_text(str(e)):
        return OSError(errno.ENOSPC, "No space left on device")
    return None


def _disk_full_text(text: str) -> bool:
    # torch.save's zip writer reports a short write as "unexpected pos N vs M" or "failed writing file"
    return any(
        s in text
        for s in (
            "No space left",
            "ENOSPC",
            "file write failed",
            "Disk quota",
            "unexpected pos",
            "failed writing file",
            "File too large",
        )
    )


def ensure_free_space(path: str, needed: int) -> None:
    """Refuse before writing when the disk has clearly not room for `needed` bytes (some writers, torch.export's,
    abort the interpreter on a full disk instead of raising)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    try:  # a file-size limit (ulimit -f) ends such a write the same way
        import resource

        cap = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if cap != resource.RLIM_INFINITY and cap < needed:
            raise os_error(
                OSError(
                    errno.EFBIG, f"File too large (the file-size limit is {_size(cap)}, about {_size(needed)} needed)"
                ),
                path,
            )
    except (ImportError, ValueError):
        pass
    if free < needed:
        raise os_error(
            OSError(errno.ENOSPC, f"No space left on device ({_size(free)} free, about {_size(needed)} needed)"), path
        )


def check_output(path: str, inputs: Iterable[str] = (), force: bool = False, flag: str = "-o") -> str:
    """The output gate, at the start of a command: a path that may be written: not one of the inputs, not a folder,
    a device, a FIFO or a socket, in a place that can be written, existing only with `force`."""
    for src in inputs:
        if src and os.path.exists(src) and os.path.realpath(src) == os.path.realpath(path):
            raise UsageError(
                f"the output {shown(path)} is the input file", f"give another {flag}; an input is never replaced"
            )
    check_writable_place(path)
    _refuse_target(path)
    if os.path.lexists(path) and not force:
        raise UsageError(f"{shown(path)} exists", f"give another {flag} or --force to overwrite")
    return path


def check_output_folder(path: str, what: str = "output folder") -> str:
    """A folder outputs go into: absent (made later) or a folder, in a place that can be written."""
    check_writable_place(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"cannot use {shown(path)}: it is a file, not a folder", f"give a folder as the {what}")
    if os.path.isdir(path) and not os.access(path, os.W_OK):
        raise _not_writable(path)
    return path


def json_safe(obj: Any) -> Any:
    """NaN and infinities as null (JSON has no such numbers); containers walked, other values as they are."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any, default: Callable | None = None) -> str:
    """Strict JSON (never NaN or Infinity)."""
    if default is not None:
        obj = json.loads(json.dumps(obj, default=default, allow_nan=True))
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


class FolderLock:
    """An exclusive lock on a folder (a run): a second writer is refused, not interleaved. Released at exit."""

    def __init__(self, folder: str, what: str = "run folder"):
        self.folder, self.what = folder, what
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        path = os.path.join(self.folder, ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.fd = fd
        except OSError:
            os.close(fd)
            raise UsageError(
                f"the {self.what} {shown(self.folder)} is in use by another cnn process",
                "wait for it to finish, or give another --name",
            ) from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
    write_text(path, json_text(obj) + "\n")


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
    removed: list[str] = []
    if not os.path.isdir(folder):
        return removed
    prefix = "." + os.path.basename(output) + "." if output else "."
    for name in os.listdir(folder):
        if name.startswith(prefix) and (name.endswith(".tmp") or ".tmp." in name):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed
