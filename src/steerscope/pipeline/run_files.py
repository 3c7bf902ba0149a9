"""The run folder's top-level files and their record in ``run.json``.

``config.yaml``, ``results.json``, ``report.html`` and ``figures/*.png`` are written by the
run itself, not by a stage, so no ``stage.json`` covers them. ``run.json`` (written last by
every run) records the size and sha256 of each under ``files`` and is sealed
(:func:`steerscope.artifacts.seal`: a digest of itself), so an edit of any of them, or of
``run.json``, is found by :func:`check_run_files` (``steerscope run --verify``; a rerun says
so and rewrites them). Other top-level files (notes a person keeps there) are not the run's
and are not checked; under ``figures/`` every file must be one the run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerscope.artifacts import atomic_write_json, file_sha256, read_sealed_json, seal

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
FIGURES = "figures"
FILES_KEY = "files"


def written_files(run_dir: Path) -> list[str]:
    """The run-written top-level files present in ``run_dir`` (relative paths, sorted)."""
    names = [n for n in (CONFIG_FILE, RESULTS_FILE, REPORT_FILE) if (run_dir / n).is_file()]
    figures = run_dir / FIGURES
    if figures.is_dir():
        names += [f"{FIGURES}/{p.name}" for p in sorted(figures.iterdir()) if p.is_file()]
    return sorted(names)


def file_records(run_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Relative path -> ``{"size", "sha256"}`` of each of ``names`` under ``run_dir``."""
    return {n: {"size": (run_dir / n).stat().st_size, "sha256": file_sha256(run_dir / n)}
            for n in sorted(names)}


def read_run_json(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``run.json`` of ``run_dir`` and None, or ``({}, problem)`` when it is missing,
    unreadable, not a JSON object, or edited since the run wrote it."""
    return read_sealed_json(run_dir / RUN_FILE)


def file_problem(run_dir: Path, rel: str, expected: Any) -> str | None:
    """How the top-level file ``rel`` differs from its record ``expected``, or None."""
    path = run_dir / rel
    if not path.is_file():
        return f"{rel} is missing"
    if not isinstance(expected, dict):
        return f"{RUN_FILE} has no usable record of {rel}"
    size = path.stat().st_size
    if size != expected.get("size"):
        return f"{rel} has {size} bytes, {expected.get('size')} were written"
    if file_sha256(path) != expected.get("sha256"):
        return f"{rel}'s content changed since the run wrote it"
    return None


def check_run_files(run_dir: Path) -> dict[str, str | None]:
    """Each top-level file the run wrote (and ``run.json``) -> None when it matches the record
    in ``run.json``, else what is wrong. Files under ``figures/`` that ``run.json`` does not
    list count as damage; when ``run.json`` itself is damaged, only it is reported."""
    record, problem = read_run_json(run_dir)
    if problem is not None:
        return {RUN_FILE: problem}
    files = record.get(FILES_KEY)
    if not isinstance(files, dict):
        return {RUN_FILE: f"{RUN_FILE} records no digests of the top-level files"}
    report: dict[str, str | None] = {RUN_FILE: None}
    for rel, expected in sorted(files.items()):
        if not is_run_file(rel):  # never read (or later rewrite) a path run.json made up
            report[RUN_FILE] = f"{RUN_FILE} records {rel!r}, which is no file of the run"
            continue
        report[rel] = file_problem(run_dir, rel, expected)
    for rel in written_files(run_dir):
        if rel not in files and rel.startswith(f"{FIGURES}/"):
            report[rel] = f"{rel} was not written by the run"
    return report


def write_run_json(run_dir: Path, record: dict[str, Any],
                   files: dict[str, dict[str, Any]] | None = None) -> None:
    """Write ``run.json``: ``record`` plus ``files`` (default: the records of the top-level
    files now present), sealed."""
    if files is None:
        files = file_records(run_dir, written_files(run_dir))
    atomic_write_json(run_dir / RUN_FILE, seal({**record, FILES_KEY: files}))


def is_report_file(rel: str) -> bool:
    """Whether ``rel`` is one of the report's top-level files (``report.html``, or a plain
    name under ``figures/``: no deeper folder, no ``..``)."""
    name = rel[len(FIGURES) + 1:] if rel.startswith(f"{FIGURES}/") else None
    return rel == REPORT_FILE or (bool(name) and "/" not in name and "\\" not in name
                                  and name not in (".", ".."))


def is_run_file(rel: str) -> bool:
    """Whether ``rel`` names a file the run writes at the top of its folder."""
    return rel in (CONFIG_FILE, RESULTS_FILE) or is_report_file(rel)


def rerecord_report_files(run_dir: Path) -> bool:
    """After ``steerscope report`` rewrote ``report.html`` and ``figures/`` in a run folder:
    record those files in its ``run.json`` (the other records kept as they are). False, with
    nothing written, when ``run.json`` is missing or damaged (``--verify`` then says so, and a
    rerun rewrites it)."""
    record, problem = read_run_json(run_dir)
    if problem is not None or not isinstance(record.get(FILES_KEY), dict):
        return False
    files = {k: v for k, v in record[FILES_KEY].items() if not is_report_file(k)}
    files.update(file_records(run_dir, [n for n in written_files(run_dir) if is_report_file(n)]))
    write_run_json(run_dir, record, files)
    return True


def record_rebuilt_report(report: Path, run_dir: Path) -> bool:
    """:func:`rerecord_report_files` when ``report`` (a rebuilt report.html) lies in the run
    folder ``run_dir`` itself (``steerscope report``/``explore`` without ``--out``)."""
    if Path(report).parent.resolve() != Path(run_dir).resolve():
        return False
    return rerecord_report_files(Path(run_dir))
