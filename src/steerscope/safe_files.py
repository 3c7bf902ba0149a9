"""Reading the files a user hands in (configs, behaviour files, prompt files) without
tracebacks, hangs or unbounded memory: one place for every reader.

Each reader takes the file's path and ``what`` (e.g. ``"config file"``) and raises a one-line
:class:`~steerscope.errors.SteerscopeError` (or the given subclass) naming the file when:

- it is missing, a folder, or not a regular file (a FIFO would block the read forever,
  ``/dev/zero`` never ends): only regular files are opened;
- it is larger than its cap (:data:`MAX_CONFIG_BYTES` for YAML configs and behaviour files,
  :data:`MAX_DATA_BYTES` for prompt files);
- it is not UTF-8 text (latin-1, UTF-16, binary; a UTF-8 byte-order mark is tolerated);
- YAML: its aliases expand to more than :data:`MAX_YAML_NODES` nodes (an "alias bomb") or
  refer to themselves; YAML and JSON: it nests deeper than :data:`MAX_NESTING` levels, or
  holds an integer too long for Python to convert.

docs/pipeline.md (Input limits) lists the limits.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a YAML config or behaviour file
MAX_DATA_BYTES = 1 << 30  # 1 GiB: a prompt file (.txt, .json, .jsonl, .csv, .parquet)
MAX_NESTING = 64  # levels of lists / mappings in a YAML or JSON file
MAX_YAML_NODES = 100_000  # YAML nodes once every alias is expanded


def _fail(error: type[SteerscopeError], what: str, path: Path, problem: str, fix: str):
    raise error(f"{what} {path} {problem}", fix)


def _unreadable(error: type[SteerscopeError], what: str, path: Path, exc: OSError):
    _fail(error, what, path, f"cannot be read ({exc.strerror or exc})",
          "check the path and its permissions")


def check_regular_file(path: str | os.PathLike, what: str, *,
                       max_bytes: int = MAX_DATA_BYTES,
                       error: type[SteerscopeError] = SteerscopeError) -> Path:
    """``path`` (``~`` expanded) when it is an existing regular file of at most ``max_bytes``
    bytes (symbolic links followed); else a one-line ``error``."""
    path = Path(path).expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _fail(error, what, path, "does not exist", "check the path")
    except OSError as exc:
        _unreadable(error, what, path, exc)
    if stat.S_ISDIR(st.st_mode):
        _fail(error, what, path, "is a directory, not a file", "pass a file inside it")
    if not stat.S_ISREG(st.st_mode):
        _fail(error, what, path, "is not a regular file (a pipe, device or socket)",
              "save the content to a file and pass that")
    if st.st_size > max_bytes:
        _fail(error, what, path, f"is {st.st_size} bytes, more than the limit of {max_bytes}",
              "pass a smaller file")
    return path


def read_bytes_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_DATA_BYTES,
                    error: type[SteerscopeError] = SteerscopeError) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``; one-line errors)."""
    path = check_regular_file(path, what, max_bytes=max_bytes, error=error)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since stat is still capped
    except OSError as exc:
        _unreadable(error, what, path, exc)
    if len(data) > max_bytes:
        _fail(error, what, path, f"is more than the limit of {max_bytes} bytes",
              "pass a smaller file")
    return data


def read_text_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_DATA_BYTES,
                   error: type[SteerscopeError] = SteerscopeError) -> str:
    """The UTF-8 text (a byte-order mark dropped) of the regular file ``path``."""
    data = read_bytes_file(path, what, max_bytes=max_bytes, error=error)
    path = Path(path).expanduser()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _fail(error, what, path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
              "save it as UTF-8")
    if "\x00" in text:
        _fail(error, what, path, f"is not UTF-8 text (a NUL byte at character "
              f"{text.index(chr(0))}: a binary file?)", "save it as UTF-8 text")
    return text


# --- YAML ------------------------------------------------------------------------------------
def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _check_yaml_graph(root, what: str, path: Path, error) -> None:
    """The composed YAML node graph (aliases are shared nodes) expands to at most
    :data:`MAX_YAML_NODES` nodes, nests at most :data:`MAX_NESTING` levels and has no cycle;
    iterative, each node visited once (sizes and depths memoised)."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            level = 0 if isinstance(node, yaml.ScalarNode) else 1  # levels of collections
            depth[key] = level + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_NODES:
                _fail(error, what, path, f"expands to more than {MAX_YAML_NODES} values "
                      "through its aliases (*name)", "write the values out or use fewer aliases")
            if depth[key] > MAX_NESTING:
                _fail(error, what, path, f"nests more than {MAX_NESTING} levels deep",
                      "flatten it")
            continue
        if key in size:
            continue
        if key in on_path:
            _fail(error, what, path, "has an alias inside its own anchor (a recursive value)",
                  "remove the recursive alias")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _bracket_depth(text: str) -> int:
    """The deepest run of unclosed ``[`` / ``{`` in ``text`` (quotes not parsed: an upper
    bound of the flow nesting; balanced brackets inside strings, e.g. Jinja's, stay low)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def parse_yaml(text: str, what: str, path: str | os.PathLike, *,
               error: type[SteerscopeError] = SteerscopeError) -> Any:
    """The YAML document ``text`` (of file ``path``) as Python data, safe tags only, after
    :func:`_check_yaml_graph`; one-line errors for bad syntax, bombs, deep nesting."""
    import yaml

    path = Path(path)
    if _bracket_depth(text) > 4 * MAX_NESTING:  # PyYAML's scanner is slow on such text
        _fail(error, what, path, f"nests more than {MAX_NESTING} levels deep", "flatten it")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node, what, path, error)
        return loader.construct_document(node)
    except SteerscopeError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        _fail(error, what, path, f"is not valid YAML{where}", "fix the syntax")
    except RecursionError:
        _fail(error, what, path, f"nests more than {MAX_NESTING} levels deep", "flatten it")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        _fail(error, what, path, f"holds a value Python cannot read ({str(exc)[:80]})",
              "fix the value")
    finally:
        loader.dispose()


def read_yaml_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_CONFIG_BYTES,
                   error: type[SteerscopeError] = SteerscopeError) -> Any:
    """The YAML file ``path`` as Python data: :func:`read_text_file` then
    :func:`parse_yaml`."""
    return parse_yaml(read_text_file(path, what, max_bytes=max_bytes, error=error), what,
                      Path(path).expanduser(), error=error)


# --- JSON ------------------------------------------------------------------------------------
def nesting_depth(data: Any) -> int:
    """Levels of lists / dicts in ``data`` (a scalar: 0), computed without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((x, level + 1) for x in item if isinstance(x, (list, dict)))
    return deepest


def parse_json(text: str, what: str, path: str | os.PathLike, *,
               error: type[SteerscopeError] = SteerscopeError, line: int | None = None) -> Any:
    """The JSON value ``text`` (of file ``path``, its line ``line`` for JSON Lines) nesting at
    most :data:`MAX_NESTING` levels; one-line errors otherwise."""
    path = Path(path)
    at = f" line {line}" if line is not None else ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}: " if line is None else ""
        _fail(error, what, path, f"is not valid JSON{at} ({where}{exc.msg})",
              "fix the JSON syntax")
    except RecursionError:
        _fail(error, what, path, f"nests more than {MAX_NESTING} levels deep{at}", "flatten it")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        _fail(error, what, path, f"holds a value Python cannot read{at} ({str(exc)[:80]})",
              "fix the value")
    if nesting_depth(data) > MAX_NESTING:
        _fail(error, what, path, f"nests more than {MAX_NESTING} levels deep{at}", "flatten it")
    return data


def read_json_file(path: str | os.PathLike, what: str, *, max_bytes: int = MAX_DATA_BYTES,
                   error: type[SteerscopeError] = SteerscopeError) -> Any:
    """The JSON file ``path`` as Python data: :func:`read_text_file` then
    :func:`parse_json`."""
    return parse_json(read_text_file(path, what, max_bytes=max_bytes, error=error), what,
                      Path(path).expanduser(), error=error)
