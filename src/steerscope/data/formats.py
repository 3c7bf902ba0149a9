"""Reading one prompt file in a published format into a :class:`PromptSet`.

Formats (``format=``; auto-detected from the file extension and, for CSV, the header):

* ``json``: a JSON list of strings or of objects with a prompt key (the refusal-direction
  split files are lists of ``{"instruction": str, "category": str | null}``);
* ``jsonl``: one string or object per line; ``text``: one prompt per non-empty line;
* ``advbench`` (``goal,target``), ``harmbench`` (``Behavior,FunctionalCategory,
  SemanticCategory,...``), ``jailbreakbench`` (``,Goal,Target,Behavior,Category,Source``),
  ``strongreject`` (``category,source,forbidden_prompt``) and generic ``csv``;
* ``parquet`` (needs the optional ``pyarrow``), read like a list of JSON objects.

Object/CSV prompt keys are matched case-insensitively in the order of ``INSTRUCTION_KEYS``.
Every prompt's ``source`` is the dataset label: the dataset name, the benchmark format name,
or the file stem. Nothing is deduplicated; file order is kept; whitespace is stripped.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.data.prompts import Prompt, PromptSet
from steerscope.errors import DataError, SteerscopeError
from steerscope.safe_files import check_regular_file, parse_json, read_text_file

INSTRUCTION_KEYS = (
    "instruction",
    "prompt",
    "goal",
    "forbidden_prompt",
    "behavior",
    "text",
    "query",
)
CATEGORY_KEYS = ("category", "semanticcategory")
ALPACA_INPUT = ("drop", "join", "ignore")
# characters in one prompt: ~25k tokens, beyond the context of the models steerscope runs
MAX_PROMPT_CHARS = 100_000


@dataclass(frozen=True)
class _CsvFormat:
    instruction: str
    category: str | None


CSV_FORMATS = {
    "advbench": _CsvFormat("goal", None),
    "harmbench": _CsvFormat("Behavior", "SemanticCategory"),
    "jailbreakbench": _CsvFormat("Goal", "Category"),
    "strongreject": _CsvFormat("forbidden_prompt", "category"),
}
FORMATS = ("json", "jsonl", "text", "csv", "parquet", *CSV_FORMATS)
_ALIASES = {"txt": "text", "ndjson": "jsonl", "split": "json"}
_EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".parquet": "parquet",
}


def read_prompt_file(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    name: str | None = None,
    label: str | None = None,
    harmbench_functional: str | None = "standard",
    alpaca_input: str = "drop",
) -> PromptSet:
    """Read one prompt file into a PromptSet, in file order.

    ``format`` is one of ``FORMATS`` (default: from the extension, and for CSV the header).
    HarmBench rows are kept only when ``FunctionalCategory == harmbench_functional`` (None
    keeps all). JSON objects with a non-empty ``input`` field (Alpaca) are dropped
    (``alpaca_input="drop"``, as in Arditi et al. 2024), joined to the instruction with a blank
    line (``"join"``) or ignored (``"ignore"``). ``label`` sets every prompt's ``source``.
    """
    path = Path(path).expanduser()
    fmt = _resolve_format(path, format)
    if alpaca_input not in ALPACA_INPUT:
        raise SteerscopeError(f"alpaca_input must be one of {ALPACA_INPUT}, got {alpaca_input!r}")
    if fmt == "parquet":
        items: list[Any] = _read_parquet(path)
    else:
        text = _read_text(path)
        if fmt in ("csv", *CSV_FORMATS):
            return _read_csv(path, text, fmt, name, label, harmbench_functional)
        if fmt == "text":
            lines = [ln.strip() for ln in text.splitlines()]
            return _finish(path, [Prompt(s, None, label or path.stem) for s in lines if s], name)
        items = _parse_json(path, text) if fmt == "json" else _parse_jsonl(path, text)
    where = "line" if fmt == "jsonl" else "item"
    return _finish(path, _from_records(path, items, label or path.stem, where, alpaca_input), name)


def _resolve_format(path: Path, format: str | None) -> str:
    """The canonical format name: the given one (aliases resolved) or the extension's."""
    if format is not None:
        fmt = _ALIASES.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise SteerscopeError(
                f"unknown prompt format {format!r}", f"use one of {', '.join(FORMATS)}"
            )
        return fmt
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension {path.suffix or '(none)'!r}",
            f"rename it to .json/.jsonl/.csv/.txt/.parquet or pass format= (one of {', '.join(FORMATS)})",
        )
    return fmt


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, BOM tolerated); DataError if missing, not a regular file, over
    :data:`~steerscope.safe_files.MAX_DATA_BYTES`, not UTF-8 or blank."""
    if not path.exists():
        raise DataError(
            f"prompt file {path} does not exist", "check the path or the data directory"
        )
    text = read_text_file(path, "prompt file", error=DataError)
    if not text.strip():
        raise DataError(f"prompt file {path} is empty", "fill it or pass another file")
    return text


def _parse_json(path: Path, text: str) -> list[Any]:
    """The top-level JSON list of the file."""
    data = parse_json(text, "prompt file", path, error=DataError)
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, not a list of prompts",
            "make the top level a list of strings or of objects with an 'instruction' key",
        )
    return data


def _parse_jsonl(path: Path, text: str) -> list[Any]:
    """One JSON value per non-blank line."""
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(parse_json(line, "prompt file", path, error=DataError, line=n))
    return items


def _read_parquet(path: Path) -> list[dict]:
    """The parquet file's rows as dicts (needs pyarrow)."""
    if not path.exists():
        raise DataError(
            f"prompt file {path} does not exist", "check the path or the data directory"
        )
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(
            f"reading {path} needs pyarrow", "pip install pyarrow, or convert it to CSV/JSON"
        ) from e
    check_regular_file(path, "prompt file", error=DataError)
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for bad files
        raise DataError(
            f"{path} is not a readable parquet file ({type(e).__name__})", "check the file"
        ) from e


def require_text(value: Any, where: str) -> str:
    """``value`` itself when it is a string; a one-line error naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise DataError(
            f"{where} has a non-string instruction ({type(value).__name__}: {str(value)[:40]!r})",
            "make every instruction a string",
        )
    return value


def _make(path: Path, where: str, value: Any, category: Any, label: str) -> Prompt:
    """A validated, whitespace-stripped Prompt for one row/item of ``path``."""
    s = require_text(value, f"{path}: {where}").strip()
    if not s:
        raise DataError(f"{path}: {where} has an empty instruction", "fill it in or remove the row")
    if category is not None and not isinstance(category, str):
        raise DataError(
            f"{path}: {where} has a non-string category ({type(category).__name__})",
            "make categories strings or null",
        )
    return Prompt(s, (category or "").strip() or None, label)


def _finish(path: Path, prompts: list[Prompt], name: str | None) -> PromptSet:
    if not prompts:
        raise DataError(f"{path} contains no prompts", "check that it is the right file and format")
    for n, p in enumerate(prompts, start=1):
        if len(p.instruction) > MAX_PROMPT_CHARS:
            raise DataError(f"{path}: prompt {n} is {len(p.instruction)} characters long, more "
                            f"than the limit of {MAX_PROMPT_CHARS}",
                            "shorten it: a prompt must fit the model's context")
    return PromptSet(prompts, name=name or path.stem)


def _from_records(
    path: Path, items: list[Any], label: str, where: str, alpaca_input: str
) -> list[Prompt]:
    """Prompts from JSON-like items: strings, or objects with one of ``INSTRUCTION_KEYS``."""
    out = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            out.append(_make(path, f"{where} {n}", item, None, label))
            continue
        lower = {str(k).lower(): k for k in item}
        key = next((lower[k] for k in INSTRUCTION_KEYS if k in lower), None)
        if key is None:
            raise DataError(
                f"{path}: {where} {n} has none of the keys {', '.join(INSTRUCTION_KEYS)} "
                f"(it has {', '.join(map(str, item)) or 'no keys'})",
                "name the prompt field 'instruction'",
            )
        instruction, extra = item[key], item.get(lower.get("input", ""), "")
        if isinstance(extra, str) and extra.strip() and alpaca_input != "ignore":
            if alpaca_input == "drop":
                continue
            instruction = (
                f"{require_text(instruction, f'{path}: {where} {n}').strip()}\n\n{extra.strip()}"
            )
        cat_key = next((lower[k] for k in CATEGORY_KEYS if k in lower), None)
        out.append(_make(path, f"{where} {n}", instruction, item.get(cat_key), label))
    return out


def _detect_csv(columns: list[str]) -> str | None:
    """The benchmark whose header this is, or None for a generic CSV."""
    cols = set(columns)
    if {"Behavior", "FunctionalCategory"} <= cols:
        return "harmbench"
    if "forbidden_prompt" in cols:
        return "strongreject"
    if "Goal" in cols:
        return "jailbreakbench"
    if "goal" in cols:
        return "advbench"
    return None


def _read_csv(
    path: Path, text: str, fmt: str, name: str | None, label: str | None, functional: str | None
) -> PromptSet:
    """Prompts from a benchmark or generic CSV (header row required)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as e:
        raise DataError(
            f"{path} is not valid CSV (line {reader.line_num}: {e})", "fix the quoting"
        ) from e
    if fmt == "csv":
        fmt = _detect_csv(header) or "csv"
    if fmt == "csv":
        lower = {h.lower(): i for i, h in reversed(list(enumerate(header)))}
        col = next((lower[k] for k in INSTRUCTION_KEYS if k in lower), None)
        cat = next((lower[k] for k in CATEGORY_KEYS if k in lower), None)
        missing = ", ".join(INSTRUCTION_KEYS)
    else:
        spec = CSV_FORMATS[fmt]
        col = header.index(spec.instruction) if spec.instruction in header else None
        cat = header.index(spec.category) if spec.category in header else None
        missing = spec.instruction
    if col is None:
        raise DataError(
            f"{path} has no prompt column (looked for {missing}; found {', '.join(header) or 'none'})",
            "name the prompt column 'instruction' or pass the right format=",
        )
    keep = None
    if fmt == "harmbench" and functional is not None and "FunctionalCategory" in header:
        keep = header.index("FunctionalCategory")
    label = label or (path.stem if fmt == "csv" else fmt)
    prompts, seen = [], set()
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path} line {line} has {len(row)} fields but the header has {len(header)}",
                "fix the row's commas or quoting",
            )
        if keep is not None:
            seen.add(row[keep].strip())
            if row[keep].strip() != functional:
                continue
        category = None if cat is None else row[cat]
        prompts.append(_make(path, f"line {line}", row[col], category, label))
    if keep is not None and not prompts and rows:
        raise DataError(
            f"{path} has no rows with FunctionalCategory '{functional}' (it has {', '.join(sorted(seen))})",
            "pass harmbench_functional= one of those, or None to keep all",
        )
    return _finish(path, prompts, name)
