"""Atomic artifact writing: a file (or a cached folder) appears complete at its final path
or not at all; the cache root and its build lock."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError, os_error_code, write_error

# The build record written into every cached model folder (embedded copy, demo models).
MANIFEST_NAME = "steerscope.json"


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
        if os_error_code(exc) is not None:  # safetensors reports the OS error as text
            raise write_error(exc, path) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_child_name(name: Any, what: str = "name") -> str:
    """``name`` when it can name one file or folder inside another: a non-empty string that
    is not ``.`` or ``..`` and holds no path separator (``/``, ``\\``) or NUL (so it cannot
    be an absolute path or climb out); else a one-line error naming ``what``."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(
            c in name for c in ("/", "\\", "\0")):
        raise SteerscopeError(f"{what} {name!r} cannot name a file: it is empty, '.' or '..', "
                              "or holds a path separator",
                              "use a plain name (letters, digits, '_', '-' and '.')")
    return name


def child_path(root: str | os.PathLike, *names: str, what: str = "name") -> Path:
    """``root/names[0]/names[1]/...`` for writing, checked to stay inside ``root``: every name
    passes :func:`check_child_name`, and no existing part of the path below ``root`` is a
    symbolic link that leads outside ``root`` (the path with links resolved is still under
    ``root`` resolved). The one helper every writer uses for a path built from a name it did
    not choose itself (a CLI name, vector metadata, a run folder, a figure)."""
    root = Path(root).expanduser()
    path = root
    for name in names:
        path = path / check_child_name(name, what)
    base = root.resolve()
    probe = root
    for name in names:
        probe = probe / name
        if probe.is_symlink() and not probe.resolve().is_relative_to(base):
            raise SteerscopeError(f"{probe} is a symbolic link to {probe.resolve()}, outside "
                                  f"{root}; steerscope writes only inside its output folder",
                                  "remove the link, or pass another output folder")
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


# --- digests ---------------------------------------------------------------------------------

# The key of a record's digest of itself (stage.json, run.json, a model folder's digest file).
SEAL_KEY = "record_digest"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=False).encode()).hexdigest()


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as it reads back from strict JSON (NaN -> null, tuples -> lists), with
    :data:`SEAL_KEY` set to the sha256 of its canonical JSON (sorted keys, the seal left
    out): any later edit of the written record is found by :func:`seal_problem`."""
    plain = json.loads(json.dumps(_jsonable({k: v for k, v in record.items() if k != SEAL_KEY}),
                                  allow_nan=False))
    return {**plain, SEAL_KEY: _canonical_digest(plain)}


def seal_problem(record: Any, name: str) -> str | None:
    """None when ``record`` (a parsed JSON record called ``name``) carries a seal that matches
    its content (:func:`seal`), else what is wrong, in a few words."""
    if not isinstance(record, dict) or not isinstance(record.get(SEAL_KEY), str):
        return f"{name} records no digest of itself (written by an older steerscope?)"
    body = {k: v for k, v in record.items() if k != SEAL_KEY}
    try:
        digest = _canonical_digest(body)
    except ValueError:
        return f"{name} holds values strict JSON cannot (NaN, infinity)"
    if digest != record[SEAL_KEY]:
        return f"{name} was edited after it was written"
    return None


def read_sealed_json(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """``(record, None)`` for a sealed JSON record file (:func:`seal`) that is unedited, else
    ``({}, problem)``: missing, unreadable, not sealed, or edited since it was written."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} is unreadable ({type(exc).__name__})"
    problem = seal_problem(record, path.name)
    return (record, None) if problem is None else ({}, problem)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN → null) atomically."""
    text = json.dumps(_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    return atomic_write(path, write)


# --- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The root folder of steerscope's cache: ``$STEERSCOPE_CACHE`` if set, else
    ``~/.cache/steerscope`` (not created here)."""
    env = os.environ.get("STEERSCOPE_CACHE", "").strip()
    return Path(env or "~/.cache/steerscope").expanduser().absolute()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``lock_path`` (blocking); yields whether a real lock
    is held (False where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_STALE_AGE_S = 6 * 3600  # without a lock, only temp folders this old count as abandoned


def _remove_stale(parent: Path, name: str, *, locked: bool) -> None:
    """Delete leftover temp/old folders of earlier builds of ``parent/name``.

    Under the build lock every leftover is from a dead build; without a lock only old ones are.
    """
    now = time.time()
    for entry in parent.glob(f".{name}.*-*"):
        if not entry.name.startswith((f".{name}.tmp-", f".{name}.old-")) or not entry.is_dir():
            continue
        try:
            if locked or now - entry.stat().st_mtime > _STALE_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def atomic_build_dir(
    final: str | os.PathLike,
    build_fn: Callable[[Path], None],
    *,
    valid: Callable[[Path], bool] | None = None,
) -> Path:
    """Return the folder ``final``, building it with ``build_fn`` first if it is missing.

    ``build_fn(tmp)`` fills a fresh temporary sibling folder, which is then renamed onto
    ``final`` with one atomic ``os.replace``: a folder at ``final`` is always complete. A failed
    or interrupted build leaves nothing at ``final`` (its temp folder is removed, or swept by the
    next build). Builds of the same ``final`` are serialised by a lock file next to it, so
    concurrent callers build once and the others reuse the result. A folder already at
    ``final`` for which ``valid(final)`` is false is replaced by a fresh build.
    """
    final = Path(final).expanduser().absolute()
    parent = final.parent

    def ready() -> bool:
        return final.is_dir() and (valid is None or valid(final))

    if ready():
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteerscopeError(f"cannot create the cache folder {parent} ({exc.strerror or exc})",
                              "set STEERSCOPE_CACHE to a writable folder") from exc
    with exclusive_lock(parent / f".{final.name}.lock") as locked:
        if ready():  # built by a concurrent caller while we waited for the lock
            return final
        _remove_stale(parent, final.name, locked=locked)
        if final.exists():  # present but invalid: move it aside atomically, then delete it
            old = parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, new_file_mode(folder=True))  # mkdtemp makes 0700: use the umask's
            build_fn(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def package_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist`` (for build records), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
