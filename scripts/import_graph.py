"""The import graph of the steerscope package, its layer table, and the checks on both.

Run ``python scripts/import_graph.py`` to print the package dependency graph (mermaid) and
the layer table as they appear in docs/architecture.md; ``--check`` exits non-zero when a
module imports a higher layer, a module cycle exists, or a module imports another module's
private name. tests/integration/test_architecture.py runs the same checks.

Every ``import`` statement counts, including the ones inside functions (a lazy import is
still a dependency), and so do imports under ``if TYPE_CHECKING:`` (a type is a dependency too).
So do string imports: the literal argument of an ``import_module(...)`` call, every
``"steerscope.x.y:name"`` literal (a ``"module:function"`` reference resolved on use), and, in
a module that calls ``import_module``, every literal that names a steerscope module (e.g. a
table of lazily imported names).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "steerscope"
SRC = ROOT / "src" / PACKAGE

# The layers, bottom first. A module may import its own unit, units of lower layers and, without
# a cycle, units of its own layer; never a higher layer. A unit is a top-level module or
# subpackage of steerscope ("models" covers steerscope.models and everything under it).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("errors",)),
    ("foundations", ("artifacts", "validation", "patching_conventions", "results_schema",
                     "safe_files", "providers")),
    ("models, data, runtime", ("models", "data", "runtime", "environment", "testing")),
    ("generation and scores", ("generation", "generation_sizes", "generation_refill", "generation_slots",
                                "generation_compiled", "evaluate",
                                "behaviours")),
    ("demo models", ("demo",)),  # named model sources and prompt sets built by steerscope
    ("vectors", ("vectors",)),
    ("mechanisms", ("patching", "mechanisms", "sparsify")),
    ("pipeline and report", ("pipeline", "report")),
    ("cli", ("cli",)),
    ("public face", ("",)),  # steerscope/__init__.py: lazy names only (PEP 562)
)


def layer_of(unit: str) -> int:
    """The index in :data:`LAYERS` of ``unit`` (KeyError for a unit the table does not list)."""
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise KeyError(unit)


@dataclass
class Module:
    name: str  # dotted, e.g. steerscope.models.loading
    path: Path
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # imported module -> first line
    private: list[tuple[int, str]] = field(default_factory=list)  # (line, "module._name")

    @property
    def unit(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def scan(src: Path = SRC) -> dict[str, Module]:
    """Every module under ``src`` with the steerscope modules it imports and the private names
    of other modules it uses (``from m import _x``, ``m._x`` on an imported module ``m``)."""
    files = sorted(src.rglob("*.py"))
    mods = {}
    for path in files:
        name, is_pkg = _module_name(path, src)
        mods[name] = Module(name, path, is_pkg)
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        bound: dict[str, str] = {}  # local name -> steerscope module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != PACKAGE:
                        continue
                    target = _existing(alias.name, mods)
                    mod.imports.setdefault(target, node.lineno)
                    if alias.asname:
                        bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, mod)
                if base is None or base.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in mods:  # a submodule
                        mod.imports.setdefault(full, node.lineno)
                        bound[alias.asname or alias.name] = full
                        continue
                    target = _existing(base, mods)
                    mod.imports.setdefault(target, node.lineno)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        mod.private.append((node.lineno, f"{target}.{alias.name}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                target = bound[node.value.id]
                if f"{target}.{node.attr}" not in mods:
                    mod.private.append((node.lineno, f"{target}.{node.attr}"))
        for line, target in string_imports(tree, mods):
            mod.imports.setdefault(target, line)
        mod.imports.pop(mod.name, None)
    return mods


def _calls_import_module(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    fn = node.func
    return (isinstance(fn, ast.Name) and fn.id == "import_module") or \
        (isinstance(fn, ast.Attribute) and fn.attr == "import_module")


def string_imports(tree: ast.AST, mods: dict[str, Module]) -> list[tuple[int, str]]:
    """``(line, module)`` for every string import in ``tree`` (see the module docstring)."""
    out = []
    dynamic = any(_calls_import_module(n) for n in ast.walk(tree))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value.strip()
        if not text.startswith(PACKAGE + "."):
            continue
        name, colon, attr = text.partition(":")
        if colon and attr.isidentifier() and name in mods:
            out.append((node.lineno, name))
        elif not colon and dynamic and text in mods:
            out.append((node.lineno, text))
    return out


def _absolute(node: ast.ImportFrom, mod: Module) -> str | None:
    if not node.level:
        return node.module
    parts = mod.name.split(".")
    base = parts if mod.is_package else parts[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _existing(name: str, mods: dict[str, Module]) -> str:
    """The longest prefix of dotted ``name`` that is a module we know."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return name


def cycles(edges: dict[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def module_edges(mods: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the steerscope modules it imports."""
    return {m.name: {t for t in m.imports if t in mods} for m in mods.values()}


def unit_edges(mods: dict[str, Module]) -> dict[str, set[str]]:
    """Unit -> the other units its modules import."""
    out: dict[str, set[str]] = {}
    for m in mods.values():
        deps = out.setdefault(m.unit, set())
        for t in m.imports:
            if t in mods and mods[t].unit != m.unit:
                deps.add(mods[t].unit)
    return out


def upward_imports(mods: dict[str, Module]) -> list[str]:
    """``"a.b:LINE -> c.d"`` for every import of a higher layer's module."""
    out = []
    for m in mods.values():
        for t, line in sorted(m.imports.items()):
            if t in mods and layer_of(mods[t].unit) > layer_of(m.unit):
                out.append(f"{m.name}:{line} -> {t}")
    return out


def private_imports(mods: dict[str, Module]) -> list[str]:
    """``"a.b:LINE uses c.d._x"`` for every use of another module's private name."""
    return [f"{m.name}:{line} uses {what}" for m in mods.values() for line, what in m.private]


def _reachable(edges: dict[str, set[str]], start: str, avoid: str) -> set[str]:
    """The nodes reachable from ``start`` on paths that do not pass through ``avoid``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in edges.get(todo.pop(), ()):
            if w not in seen and w != avoid:
                seen.add(w)
                todo.append(w)
    return seen


def reduced(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """``edges`` without the edges a longer path already implies (u -> v is dropped when v is
    reachable from another successor of u without passing through u)."""
    out = {}
    for u, vs in edges.items():
        reach = {w: _reachable(edges, w, u) for w in vs}
        out[u] = {v for v in vs if not any(v in reach[w] for w in vs if w != v)}
    return out


def mermaid(mods: dict[str, Module]) -> str:
    """The unit dependency graph as a mermaid flowchart (one subgraph per layer, top first),
    without the edges that longer paths imply."""
    edges = reduced(unit_edges(mods))
    units = {m.unit for m in mods.values()}
    label = {u: (u or PACKAGE) for u in units}
    lines = ["```mermaid", "flowchart TD"]
    for i, (title, members) in reversed(list(enumerate(LAYERS))):
        present = [u for u in members if u in units]
        if not present:
            continue
        lines.append(f'  subgraph L{i}["{i}: {title}"]')
        lines.extend(f"    {label[u] or 'root'}" for u in present)
        lines.append("  end")
    for u in sorted(edges, key=lambda x: (-layer_of(x), x)):
        for t in sorted(edges[u], key=lambda x: (-layer_of(x), x)):
            lines.append(f"  {label[u]} --> {label[t]}")
    lines.append("```")
    return "\n".join(lines)


def layer_table() -> str:
    """The layer table as markdown (top layer first)."""
    rows = ["| layer | units (top-level modules / packages of steerscope) |", "|---|---|"]
    for i, (title, units) in reversed(list(enumerate(LAYERS))):
        names = ", ".join(f"`{u}`" if u else "`steerscope` (`__init__.py`)" for u in units)
        rows.append(f"| {i}: {title} | {names} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report violations; exit 1 if any")
    ap.add_argument("--src", type=Path, default=SRC, help="the steerscope package folder")
    args = ap.parse_args(argv)
    mods = scan(args.src)
    if args.check:
        problems = [f"upward import: {x}" for x in upward_imports(mods)]
        problems += [f"module cycle: {' <-> '.join(c)}" for c in cycles(module_edges(mods))]
        problems += [f"private import: {x}" for x in private_imports(mods)]
        print("\n".join(problems) or "no upward import, no module cycle, no private import")
        return 1 if problems else 0
    print(layer_table())
    print()
    print(mermaid(mods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
