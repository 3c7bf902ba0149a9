"""Atomic artifact writing: a file appears complete at its final path or not at all."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerscope.errors import write_error


def new_file_mode(*, folder: bool = False) -> int:
    """The permission bits the user's umask gives a new file (``0o666 & ~umask``) or folder
    (``0o777 & ~umask``). Temporary files (mkstemp/mkdtemp) are created 0600/0700; artifacts
    are switched to this mode so that a shared run folder reads like any other file."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def make_temp_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new temporary folder in ``parent`` (created if needed) with the umask's folder
    permissions; a one-line :class:`WriteError` when the OS refuses."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(tmp, new_file_mode(folder=True))
    except OSError as exc:
        raise write_error(exc, parent) from None
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place
    (with the permissions the umask gives a new file). When the OS refuses (read-only file
    system, no permission, disk full, a file where a folder should be, ``path`` an existing
    folder) nothing is left behind and a one-line :class:`WriteError` is raised."""
    path = Path(path)
    if path.is_dir():
        raise write_error(IsADirectoryError(errno.EISDIR, "Is a directory", str(path)), path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    except Exception as exc:
        if "No space left on device" in str(exc):  # safetensors reports the OS error as text
            raise write_error(exc, path) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _jsonable(obj: Any) -> Any:
    """NaN/inf floats become None (strict JSON); tuples become lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN → null) atomically."""
    text = json.dumps(_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    return atomic_write(path, write)
