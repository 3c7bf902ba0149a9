"""Digests of the model folders steerscope builds into its cache (the float32 copies of the
embedded SmolLM2 and of Gemma-3-270M, the demo refusal models), checked on every load.

A builder records the sha256 of every file it wrote in the folder's manifest
(``steerscope.json``, key ``sha256``; :func:`record_digests`). Loading checks them
(:func:`cached_folder_problem`): hashing the ~540 MB of SmolLM2 takes a second or two, so the
result is remembered in a sidecar, ``steerscope-verified.json``, per file as
``(size, mtime_ns, inode, ctime_ns)``; a later load whose files have the same four values
skips the hash. Any write to a file changes its ``ctime_ns``, which no tool can set back, so a
same-size corruption with a restored ``mtime`` is still hashed at the next load; only a
change below the file system (a bad disk sector) keeps all four, and that is what the
explicit check is for: ``steerscope model verify`` hashes every file of every cached model
regardless of the sidecar (:func:`verify_cache`).

A manifest written before digests were recorded has no ``sha256``: its digests are computed
once, at the first load, and kept in the sidecar as the reference from then on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steerscope.artifacts import MANIFEST_NAME, atomic_write_json, file_sha256
from steerscope.errors import SteerscopeError

VERIFIED_NAME = "steerscope-verified.json"
DIGESTS_KEY = "sha256"
_WARNED: set[tuple[str, str]] = set()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _read_sidecar(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / VERIFIED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(folder: Path, data: dict[str, Any]) -> None:
    """Best effort: a read-only cache only loses the fast path."""
    try:
        atomic_write_json(folder / VERIFIED_NAME, data)
    except SteerscopeError:
        pass


def record_digests(folder: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """sha256 of each of ``names`` in ``folder`` (for the builder's manifest), remembered as
    checked in the sidecar so the first load does not hash them again."""
    folder = Path(folder)
    digests = {n: file_sha256(folder / n) for n in sorted(names)}
    _write_sidecar(folder, {"checked": {n: _stat_key(folder / n) for n in digests}})
    return digests


def cached_folder_problem(folder: str | os.PathLike, manifest: dict[str, Any], *,
                          full: bool = False) -> str | None:
    """None when every file the manifest lists has its recorded sha256 (the sidecar lets a
    file whose size, mtime, inode and ctime are unchanged skip the hash, unless ``full``);
    else which file differs, in a few words."""
    folder = Path(folder)
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"{MANIFEST_NAME} lists no files"
    sidecar = _read_sidecar(folder)
    reference = manifest.get(DIGESTS_KEY)
    adopted = not isinstance(reference, dict)
    if adopted:  # built before digests were recorded: the first check's digests
        reference = sidecar.get("adopted") if isinstance(sidecar.get("adopted"), dict) else {}
    checked = sidecar.get("checked") if isinstance(sidecar.get("checked"), dict) else {}
    now_checked, changed = {}, False
    for name in sorted(files):
        path = folder / name
        try:
            key = _stat_key(path)
        except OSError:
            return f"{name} is missing"
        if not full and checked.get(name) == key and name in reference:
            now_checked[name] = key
            continue
        digest = file_sha256(path)
        if name not in reference and adopted:
            reference[name] = digest
        elif digest != reference.get(name):
            if name in checked:  # the next load hashes it again (and rebuilds the folder)
                _write_sidecar(folder, {**sidecar, "checked": {k: v for k, v in checked.items()
                                                                if k != name}})
            return f"{name} differs from the sha256 recorded when the folder was built"
        now_checked[name] = key
        changed = True
    if changed:
        _write_sidecar(folder, {"checked": now_checked,
                                **({"adopted": reference} if adopted else {})})
    return None


def cached_folder_ok(folder: Path, manifest: dict[str, Any]) -> bool:
    """:func:`cached_folder_problem` as a bool; a damaged folder is said in one warning line
    (it is then rebuilt by the caller)."""
    problem = cached_folder_problem(folder, manifest)
    if problem is None:
        return True
    if (str(folder), problem) not in _WARNED:  # once: the build lock checks again
        _WARNED.add((str(folder), problem))
        import sys

        print(f"warning: the cached model folder {folder} is damaged ({problem}); "
              "rebuilding it", file=sys.stderr, flush=True)
    return False


def verify_cache(cache_root: Path) -> dict[str, str | None]:
    """Every cached model folder under ``<cache_root>/models`` -> None when every file has
    its recorded sha256 (each hashed now, the sidecar ignored), else what is wrong."""
    report: dict[str, str | None] = {}
    models = cache_root / "models"
    for folder in sorted(models.iterdir()) if models.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report[folder.name] = f"{MANIFEST_NAME} is missing or unreadable"
            continue
        if not isinstance(manifest, dict):
            report[folder.name] = f"{MANIFEST_NAME} is not a JSON object"
            continue
        report[folder.name] = cached_folder_problem(folder, manifest, full=True)
    return report
