"""The run folder: one sub-folder per finished stage, each written atomically.

Layout of ``<out>/<name>-<run hash>/``::

    config.yaml              the normalised config (every key)
    run.json                 the stage plan: status, folder and digest of each stage
    results.json             the results summary (docs/results.md)
    report.html, figures/    the report (copied from the report stage's folder)
    <stage>-<key>/           a finished stage: its files and stage.json
    .<stage>-<key>.tmp-*     a stage being computed (removed when a run starts)

A stage's ``key`` is the hash of its name, version, config section and the digests of its
upstream stages (and, for ``model``/``data``, of the input files). Its ``digest`` is the hash
of the files it wrote, and ``files`` their sizes. A finished stage is reused only after its
files are checked against both (:meth:`RunStore.check`): a truncated, deleted, added or
edited file makes the stage count as unfinished, so the run recomputes it (and, through the
digests in their keys, whatever depends on it if its files come out different). A stage writes into a temporary sibling folder; ``stage.json`` (status
``done``, key, digest, timings) is written last and the folder is renamed into place with one
``os.replace``: a folder ``<stage>-<key>`` with a ``stage.json`` is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steerscope.artifacts import (
    atomic_write_json,
    child_path,
    file_sha256,
    make_temp_folder,
    read_sealed_json,
    seal,
)
from steerscope.errors import SteerscopeError, write_error
from steerscope.pipeline.registry import StageOutput

STAGE_FILE = "stage.json"
KEY_CHARS = 16


def hash_json(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_files(folder: Path, *, exclude: tuple[str, ...] = (STAGE_FILE,)) -> dict[str, int]:
    """Relative path -> size in bytes of every file below ``folder``, in sorted order."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in exclude:
            files[rel] = path.stat().st_size
    return files


def folder_digest(folder: Path, *, exclude: tuple[str, ...] = (STAGE_FILE,)) -> str:
    """sha256 over every file below ``folder`` (relative path and content), in sorted order."""
    h = hashlib.sha256()
    for rel in stage_files(folder, exclude=exclude):
        h.update(f"{rel}\0{file_sha256(folder / rel)}\n".encode())
    return h.hexdigest()


def read_stage_record(folder: Path) -> tuple[dict[str, Any], str | None]:
    """The ``stage.json`` of a stage folder, or ``({}, problem)`` when it is missing, not a
    JSON object with a digest (an interrupted copy, a truncated file), or edited since it was
    written (its seal, :func:`steerscope.artifacts.seal`, no longer matches: e.g. a digit of
    ``outputs`` changed)."""
    record, problem = read_sealed_json(folder / STAGE_FILE)
    if problem is not None:
        return {}, problem
    if not isinstance(record.get("digest"), str):
        return {}, f"{STAGE_FILE} records no digest"
    return record, None


def damage(folder: Path, record: dict[str, Any]) -> str | None:
    """How the files of a finished stage folder differ from what its ``stage.json`` recorded
    (missing, extra, resized or edited files), or None when they match. Sizes are compared
    first (cheap); then the content hash."""
    files = stage_files(folder)
    expected = record.get("files")
    if isinstance(expected, dict):
        missing = sorted(set(expected) - set(files))
        if missing:
            return f"{missing[0]} is missing"
        extra = sorted(set(files) - set(expected))
        if extra:
            return f"{extra[0]} was not written by the stage"
        for rel, size in expected.items():
            if files[rel] != size:
                return f"{rel} has {files[rel]} bytes, {size} were written"
    if folder_digest(folder) != record["digest"]:
        return "a file's content changed since the stage finished"
    return None


def verify_folder(run_dir: Path) -> dict[str, str | None]:
    """Every stage folder of a run folder -> None when its files match its ``stage.json``,
    else what is wrong with it (for ``steerscope run --verify``)."""
    report: dict[str, str | None] = {}
    for entry in sorted(run_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name == "figures":
            continue
        record, problem = read_stage_record(entry)
        report[entry.name] = problem if problem is not None else damage(entry, record)
    return report


class RunStore:
    """Reads and writes the stage folders of one run folder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir).absolute()

    def stage_dir(self, name: str, key: str) -> Path:
        return self.run_dir / f"{name}-{key[:KEY_CHARS]}"

    def load(self, name: str, key: str) -> StageOutput | None:
        """The finished, undamaged stage ``name`` with ``key``, or None."""
        return self.check(name, key)[0]

    def check(self, name: str, key: str) -> tuple[StageOutput | None, str | None]:
        """``(output, None)`` for a finished stage whose files match its ``stage.json``;
        ``(None, None)`` when the stage has not finished; ``(None, problem)`` when its folder
        is damaged (``problem`` says how, in a few words)."""
        folder = self.stage_dir(name, key)
        if not folder.is_dir():
            return None, None
        record, problem = read_stage_record(folder)
        if problem is not None:
            return None, problem
        if record.get("status") != "done" or record.get("key") != key:
            return None, None
        problem = damage(folder, record)
        if problem is not None:
            return None, problem
        return StageOutput(name, key, folder, record.get("outputs") or {}, record["digest"]), None

    def begin(self, name: str, key: str) -> Path:
        """A fresh temporary folder for computing stage ``name``."""
        return make_temp_folder(self.run_dir, f".{name}-{key[:KEY_CHARS]}.tmp-")

    def commit(self, tmp: Path, name: str, key: str, record: dict[str, Any]) -> StageOutput:
        """Finish a stage: hash ``tmp``'s files, write ``stage.json`` and rename ``tmp`` onto
        the stage folder (replacing an older one, e.g. under ``--force``)."""
        digest = folder_digest(tmp)
        record = seal({**record, "stage": name, "key": key, "status": "done", "digest": digest,
                       "files": stage_files(tmp)})
        atomic_write_json(tmp / STAGE_FILE, record)
        final = self.stage_dir(name, key)
        try:
            if final.exists():
                old = self.run_dir / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as exc:
            raise write_error(exc, final) from None
        return StageOutput(name, key, final, record.get("outputs") or {}, digest)

    @staticmethod
    def abort(tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Remove temporary folders left by interrupted stages; returns their names."""
        gone = []
        if self.run_dir.is_dir():
            for entry in self.run_dir.iterdir():
                if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                    shutil.rmtree(entry, ignore_errors=True)
                    gone.append(entry.name)
        return sorted(gone)

    def prune(self, current: dict[str, Path]) -> list[str]:
        """Remove the folders of older keys of the stages in ``current`` (stage name -> its
        current folder), e.g. left behind when a forced stage changed its outputs."""
        gone = []
        keep = {p.name for p in current.values()}
        for entry in self.run_dir.iterdir():
            name = entry.name.rsplit("-", 1)[0]
            if entry.is_dir() and name in current and entry.name not in keep \
                    and (entry / STAGE_FILE).is_file():
                shutil.rmtree(entry, ignore_errors=True)
                gone.append(entry.name)
        return sorted(gone)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder's lock: a second process running the same config fails fast."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock_path = child_path(self.run_dir, ".lock")  # not a link leading out
            lock_file = open(lock_path, "a+b")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise write_error(exc, self.run_dir) from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            lock_file.close()
            yield
            return
        with lock_file as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SteerscopeError(f"another steerscope run is using {self.run_dir}",
                                      "wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
