"""``steerscope behaviours``: the built-in behaviours, or one behaviour's definition."""

from __future__ import annotations

import argparse
import json

from steerscope.cli import common


def register(sub) -> None:
    p = sub.add_parser("behaviours", help="list the built-in behaviours (name, description, "
                       "judge kind, sides), or show one definition",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Without NAME: one line per built-in behaviour. With NAME "
                       "(a built-in name or a behaviour YAML file): its checked definition "
                       "as JSON. The YAML format is in docs/behaviours.md.")
    p.add_argument("name", nargs="?", help="a built-in behaviour or a YAML file to show")
    common.add_json_arg(p, "the behaviours' definitions (a list, or one definition with NAME)")
    p.set_defaults(func=cmd_behaviours)


def cmd_behaviours(args) -> dict | list[dict]:
    from steerscope.behaviours import list_behaviours, load_behaviour

    if args.name:
        definition = load_behaviour(args.name).to_dict()
        if not args.json:
            print(json.dumps(definition, indent=1, ensure_ascii=False))
        return definition
    rows = []
    for b in list_behaviours():
        sides = f"present: {b.label('present')} / absent: {b.label('absent')}"
        print(f"{b.name:10s} judge={b.judge['kind']:10s} {sides}")
        print(f"{'':10s} {b.description}")
        rows.append(b.to_dict())
    return rows
