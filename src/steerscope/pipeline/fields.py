"""Each config option's documentation, read from where it is declared.

A config section's fields (and the library dataclasses the CLI exposes, such as
:class:`~steerscope.vectors.train_config.TrainConfig`) are documented by *attribute
docstrings*: the string literal on the line after the field, as EleutherAI sparsify's
configs (simple_parsing) do::

    kl_threshold: float = _dim("kl_threshold")
    \"\"\"Discard candidates whose ablation moves the next-token distribution by KL >= this.\"\"\"

:func:`field_help` reads them (from the class source, along its bases), so the CLI's
``--help`` (:mod:`steerscope.cli.options`), ``docs/pipeline.md`` and the test that every
field is documented all use the one text. :func:`resolve_field` finds the dataclass field of
a dotted key (``vectors.dim.kl_threshold``) and :func:`field_default` its default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Union

__all__ = ["field_default", "field_help", "resolve_field", "section_type"]


@functools.cache
def _own_docstrings(cls: type) -> dict[str, str]:
    """The attribute docstrings written in ``cls``'s own class body (none when its source
    cannot be read, e.g. a class made by ``make_dataclass``)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    if not isinstance(body, ast.ClassDef):  # pragma: no cover - getsource gives the class
        return docs
    for node, after in zip(body.body, body.body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_help(cls: type) -> dict[str, str]:
    """``{field name: its help}`` for the dataclass ``cls``: each field's attribute docstring
    (looked up along the bases); a field without one whose type is itself a documented
    dataclass (a subsection) gets the first paragraph of that class's docstring. A field with
    neither is left out (tests/unit/pipeline/test_options.py requires one for every field)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        docs.update(_own_docstrings(base))
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in docs:
            out[f.name] = docs[f.name]
            continue
        sub = section_type(hints.get(f.name))
        if sub is not None and sub.__doc__:
            out[f.name] = " ".join(sub.__doc__.split("\n\n")[0].split())
    return out


def section_type(tp) -> type | None:
    """The dataclass of annotation ``tp`` (``X`` or ``X | None``), else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def resolve_field(root: type, key: str) -> tuple[type, dataclasses.Field, Any] | None:
    """``(owner dataclass, field, annotation)`` of the dotted ``key`` below the dataclass
    ``root`` (``vectors.dim.kl_threshold``: :class:`DimSection`'s ``kl_threshold``); None
    when some part names no field."""
    cls, parts = root, key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            return cls, fields[part], tp
        cls = section_type(tp)
        if cls is None:
            return None
    return None  # pragma: no cover - an empty key


def field_default(f: dataclasses.Field) -> Any:
    """The default value of the dataclass field ``f`` (its factory called)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")  # pragma: no cover
