"""Command-line options generated from the config dataclasses: each option is declared once.

A command that runs a stage's computation (``vectors dim``, ``vectors train``, ``evaluate``,
``patch``, ``freeze``, ``svv``, ``sparsify sweep``) adds each of its options that is a config
field with :func:`add_config_option`: the flag's type, default, choices and help all come
from the field (the config section in :mod:`steerscope.pipeline.stages`, whose defaults are
read from the library function it configures; or a library dataclass such as
:class:`~steerscope.vectors.train_config.TrainConfig`), its help from the field's attribute
docstring (:func:`steerscope.pipeline.fields.field_help`). Each generated option carries its
``config_key``, so tests/unit/package/test_defaults.py walks every one of them.

A CLI default that deliberately differs from the library's is listed once, with its reason,
in :data:`CLI_DEFAULTS` (docs/cli.md shows the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.pipeline.fields import field_default, field_help, resolve_field

# (command, flag) -> (default, why): the only CLI defaults that are not the library's
CLI_DEFAULTS: dict[tuple[str, str], tuple[Any, str]] = {
    ("vectors train", "--n"): (64, "a CPU-sized seeded sample of each prompt file; the "
                                   "pipeline trains on all of DIM's train prompts"),
}


def _plain(tp) -> tuple[Any, bool]:
    """``(annotation without None, whether None is allowed)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(tp))
    return tp, False


def int_or_word(text: str) -> int | str:
    """An ``int | str`` option's value: the integer when the text is one (``8``), else the
    word (``auto``), checked by the option's consumer."""
    try:
        return int(text)
    except ValueError:
        return text


LISTS = "_config_lists"  # args attribute: {dest: (item type, flag)} of the list options


def parse_list(text: str, item: type, flag: str) -> list:
    """A comma-separated list of ``item`` (numbers range-checked as ``flag``'s); a one-line
    error otherwise."""
    from steerscope.validation import parse_number_list

    if item is str:
        return [x.strip() for x in text.split(",") if x.strip()]
    if item is int:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise SteerscopeError(f"{flag} '{text}' is not a comma-separated list of integers",
                                  "write e.g. 8,10,12") from None
    return parse_number_list(text, flag)


def parse_list_options(args) -> None:
    """Turn the text of each list option given on the command line into its list (run by
    :func:`steerscope.cli.common.run_command` before the shared checks, so a bad item is one
    ``error:`` line and exit code 2, as every user error)."""
    for dest, (item, flag) in vars(args).pop(LISTS, {}).items():
        value = getattr(args, dest, None)
        if isinstance(value, str):
            setattr(args, dest, parse_list(value, item, flag))


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def add_config_option(p: argparse.ArgumentParser, key: str, flag: str | None = None, *,
                      owner: type | None = None, choices=None,
                      note: str = "") -> argparse.Action:
    """Add the option of config field ``key`` to ``p``: ``key`` is a dotted path in the
    pipeline config (``vectors.dim.kl_threshold``), or a field name of the dataclass
    ``owner`` (e.g. ``TrainConfig``). ``flag`` (default ``--<last part>``) keeps an existing
    spelling; the destination is the flag's name. A bool field is a switch stored under the
    field's name (``--x`` when it defaults to False; ``--no-x``, storing False, when it
    defaults to True); a list field takes comma-separated values. ``note`` is added to the field's help (e.g. when the option
    applies)."""
    if owner is None:
        from steerscope.pipeline.config import PipelineConfig

        found = resolve_field(PipelineConfig, key)
        if found is None:  # pragma: no cover - a programming error
            raise KeyError(f"no config field {key}")
        owner, fld, tp = found
    else:
        fld = {f.name: f for f in dataclasses.fields(owner)}[key]
        tp = typing.get_type_hints(owner)[key]
        key = f"{owner.__name__}.{key}"
    name = fld.name
    default = field_default(fld)
    plain, _ = _plain(tp)
    switch_off = plain is bool and default  # a switch that turns a default-on field off
    flag = flag or ("--no-" if switch_off else "--") + name.replace("_", "-")
    command = p.prog.removeprefix("steerscope ").strip()
    override = CLI_DEFAULTS.get((command, flag))
    if override is not None:
        default = override[0]
    text = field_help(owner).get(name, "").rstrip(".")
    if default is None:  # what None means is what leaving the flag out means
        text = text.replace("(None: ", "(default: ")
    else:
        text = re.sub(r" \(None: [^)]*\)", "", text)
    text += note
    kwargs: dict[str, Any] = {}
    if plain is bool:
        if switch_off:
            text = f"turn off: {text[:1].lower()}{text[1:]}"
        kwargs["action"] = "store_false" if switch_off else "store_true"
        kwargs["dest"] = name
    else:
        if typing.get_origin(plain) in (list, tuple):  # text, parsed by parse_list_options
            dest = flag.removeprefix("--").replace("-", "_")
            p.set_defaults(**{LISTS: {**(p.get_default(LISTS) or {}),
                                      dest: (typing.get_args(plain)[0], flag)}})
            kwargs["metavar"] = name.upper().rstrip("S") + ",..."
        else:
            words = set(typing.get_args(tp)) - {type(None)}
            kwargs["type"] = (plain if plain in (int, float) else
                              int_or_word if words == {int, str} else str)
        if choices is not None:
            kwargs["choices"] = list(choices)
        if override is not None:
            text += f" (default: {_shown(default)}, {override[1]})"
        elif default is not None:
            text += f" (default: {_shown(default)})"
        kwargs["default"] = default
    action = p.add_argument(flag, help=text.replace("%", "%%"), **kwargs)
    action.config_key = key  # what tests/unit/package/test_defaults.py walks
    action.library_default = field_default(fld)
    action.cli_default = override
    return action
