"""Errors raised for bad user input: one line that names the problem and the fix."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class SteerscopeError(ValueError):
    """A user-facing error. Its message is one line: what is wrong, then how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        msg = problem.rstrip(".")
        if fix:
            msg = f"{msg}: {fix.rstrip('.')}."
        else:
            msg += "."
        super().__init__(" ".join(msg.split()))


class UnsupportedArchitectureError(SteerscopeError):
    """The model's architecture has no row in the architecture table."""


class ModelNotFoundError(SteerscopeError):
    """A model path or id that cannot be resolved."""


class DataError(SteerscopeError):
    """An empty, missing or malformed prompt/data file."""


class ShapeError(SteerscopeError):
    """A tensor (vector, replacement value) whose shape does not fit the model."""


class WriteError(SteerscopeError):
    """The operating system refused to write a file or folder (read-only file system, no
    permission, disk full, a file where a folder should be)."""


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) that is not a folder
    (None too when the file system cannot tell, e.g. for a name that is too long)."""
    try:
        for p in (path, *path.parents):
            if p.exists() or p.is_symlink():
                return None if p.is_dir() else p
    except OSError:
        return None
    return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


# an OS error that a library (e.g. safetensors) reports as text: "(os error 27)" / "code: 27"
_OS_ERROR_TEXT = re.compile(r"os error (\d+)|\bOs \{ code: (\d+)")


def os_error_code(exc: BaseException) -> int | None:
    """The ``errno`` of ``exc``: its own, or the one a library wrapped into its message
    (safetensors' ``SafetensorError`` does); None when it is not an OS error."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    if "No space left on device" in text:
        return errno.ENOSPC
    found = _OS_ERROR_TEXT.search(text)
    return int(found.group(1) or found.group(2)) if found else None


def write_error(exc: BaseException, path: str | os.PathLike | None = None) -> WriteError:
    """A one-line :class:`WriteError` for an operating-system error raised while writing
    ``path`` (``exc.filename`` when not given): what failed and how to fix it."""
    where = Path(path if path is not None else getattr(exc, "filename", None) or "?")
    code = os_error_code(exc)
    blocker = _file_in_the_way(where)
    if code == errno.ENOSPC:
        return WriteError(f"no space left on the device to write {where}",
                          "free some disk space (or write to another disk), then rerun: "
                          "finished files are kept")
    if code == errno.EFBIG:
        return WriteError(f"cannot write {where}: the file is larger than the file-size limit "
                          "(errno EFBIG, e.g. 'ulimit -f')",
                          "raise the limit (ulimit -f unlimited) or write to another file "
                          "system, then rerun")
    if code == errno.ENAMETOOLONG:
        shown = str(where) if len(str(where)) <= 120 else str(where)[:117] + "..."
        return WriteError(f"a file or folder name in {shown} is too long for the file system "
                          "(read or written)", "use shorter names (at most 255 bytes each)")
    if code == errno.EROFS:
        return WriteError(f"cannot write {where}: the file system is read-only",
                          "write to a folder on a writable disk (e.g. pass another --out)")
    if code in (errno.EACCES, errno.EPERM):
        return WriteError(f"no permission to write {where}",
                          "write to a folder you own (e.g. pass another --out)")
    if blocker is not None and blocker != where:
        return WriteError(f"cannot write {where}: {blocker} is a file, not a folder",
                          "pass a path inside a folder")
    if blocker == where and code in (errno.EEXIST, errno.ENOTDIR):
        return WriteError(f"{where} is a file, not a folder", "pass a folder path")
    if _is_dir(where) or code == errno.EISDIR:
        return WriteError(f"{where} is an existing folder, not a file",
                          "pass a file path (e.g. a name inside that folder)")
    if code == errno.ENOENT:
        return WriteError(f"{where} does not exist", "check the path")
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or ["?"])[0]
    return WriteError(f"cannot write {where} ({reason})", "check the path and the disk")
