"""The import layers of docs/architecture.md hold: no module imports a higher layer, no two
modules import each other (directly or around a loop), no module uses another module's
private name; and the graph in docs/architecture.md is the one the code has.

The layer table and the scanner live in scripts/import_graph.py (one place; the docs show its
output)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO


def _load_import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts/import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ig = _load_import_graph()
MODULES = ig.scan()



def test_the_layer_table_lists_every_unit():
    units = {m.unit for m in MODULES.values()}
    listed = {u for _, us in ig.LAYERS for u in us}
    assert units <= listed, f"add {sorted(units - listed)} to LAYERS in scripts/import_graph.py"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert ig.upward_imports(MODULES) == []


def _fake_package(tmp_path, a_src: str, b_src: str, extra: dict[str, str] | None = None):
    """``ig.scan`` of a package ``steerscope`` with modules ``models.a``, ``models.b`` (and
    ``extra``: {relative path: source})."""
    pkg = tmp_path / "steerscope"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text(a_src)
    (pkg / "models" / "b.py").write_text(b_src)
    for rel, src in (extra or {}).items():
        (pkg / rel).write_text(src)
    return ig.scan(pkg)


def test_the_checks_catch_what_they_look_for(tmp_path):
    mods = _fake_package(
        tmp_path, "from steerscope.models.b import _x\n",
        "import steerscope.models.a as a\n_x = 1\n\ndef f():\n    from steerscope.cli import y\n"
        "    return a._hidden\n", extra={"cli.py": "y = 1\n"})
    assert ig.cycles(ig.module_edges(mods)) == [["steerscope.models.a", "steerscope.models.b"]]
    assert ig.upward_imports(mods) == ["steerscope.models.b:5 -> steerscope.cli"]
    assert sorted(ig.private_imports(mods)) == [
        "steerscope.models.a:1 uses steerscope.models.b._x",
        "steerscope.models.b:6 uses steerscope.models.a._hidden"]


def test_no_import_cycle_between_modules():
    assert ig.cycles(ig.module_edges(MODULES)) == []


def test_no_module_uses_another_modules_private_name():
    assert ig.private_imports(MODULES) == []


def test_docs_show_the_current_layers_and_graph():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert ig.layer_table() in text, "run: python scripts/import_graph.py (paste into the docs)"
    assert ig.mermaid(MODULES) in text, "run: python scripts/import_graph.py (paste into the docs)"


def test_type_checking_imports_count_as_dependencies(tmp_path):
    mods = _fake_package(
        tmp_path, "import steerscope.models.b\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from steerscope.models.a import X\n")
    assert ig.cycles(ig.module_edges(mods)) == [["steerscope.models.a", "steerscope.models.b"]]


def test_string_imports_count_as_dependencies(tmp_path):
    """``import_module("steerscope.x")``, a ``"steerscope.x:f"`` reference and, in a module
    that calls import_module, a literal naming a module are imports (issue 24 item 8): the
    run-time loop models -> demo -> models that strings once hid is seen."""
    mods = _fake_package(
        tmp_path, "import importlib\n\ndef f():\n    return importlib.import_module('steerscope.cli')\n",
        "SOURCES = {'demo': 'steerscope.cli:build'}\n",
        extra={"cli.py": "import steerscope.models.a\n",
               "data.py": "from importlib import import_module\nTABLE = ['steerscope.cli']\n"
                          "NOT_A_MODULE = 'steerscope.layer_convention'\n\n"
                          "def g(name):\n    return import_module(name)\n"})
    assert sorted(ig.upward_imports(mods)) == ["steerscope.data:2 -> steerscope.cli",
                                               "steerscope.models.a:4 -> steerscope.cli",
                                               "steerscope.models.b:1 -> steerscope.cli"]
    assert ig.cycles(ig.module_edges(mods)) == [["steerscope.cli", "steerscope.models.a"]]
    assert set(mods["steerscope.data"].imports) == {"steerscope.cli"}
