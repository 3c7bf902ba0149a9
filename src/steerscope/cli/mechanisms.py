"""``steerscope freeze`` (freezing-ablation table) and ``steerscope svv`` (steering value
vectors through the logit lens)."""

from __future__ import annotations

import argparse
from pathlib import Path

from steerscope.cli import common
from steerscope.errors import SteerscopeError


def _model_args(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    p.add_argument("--vector", required=True, help="steering vector file (.safetensors)")
    p.add_argument("--layer", type=int, help="override the vector's layer")
    p.add_argument("--name", help="vector name in tables (default: its method)")


def _modes(modes: list[str]) -> list[str]:
    from steerscope.mechanisms.freeze import check_mode

    if not modes:
        raise SteerscopeError("no freezing modes given", "pass e.g. --modes qk,ov,svv,mlp")
    return [check_mode(m) for m in modes]


def read_head_scores(path: str | Path) -> dict[str, float]:
    """Head node scores from a JSON file: a mapping ``{"a12.h3": score, ...}``, an object
    holding one under ``head_node_scores``, ``node_scores`` or ``nodes``, or the output of
    ``steerscope patch`` (its ``result.json`` or the vector's folder: ``tables.head_scores``)."""
    path = Path(path)
    if path.is_dir():  # a patch output folder: its result.json
        path = path / "result.json"
    from steerscope.safe_files import read_json_file

    data = read_json_file(path, "scores file")  # a regular UTF-8 file, size and depth capped
    if isinstance(data, dict) and isinstance(data.get("tables"), dict) and isinstance(
            data["tables"].get("head_scores"), dict):
        data = data["tables"]["head_scores"]
    if isinstance(data, dict):
        for key in ("head_node_scores", "node_scores", "nodes"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise SteerscopeError(f"scores file {path} holds no mapping of node names to scores",
                              'write {"a12.h3": 0.5, ...}')
    out = {}
    for k, v in data.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    if not out:
        raise SteerscopeError(f"scores file {path} has no numeric node scores",
                              'write {"a12.h3": 0.5, ...}')
    return out


def cmd_freeze(args) -> dict:
    from steerscope.mechanisms.evaluate import freeze_evaluation
    from steerscope.vectors import SteeringVector

    modes = _modes(args.modes)
    sv = SteeringVector.load(args.vector, layer=args.layer)
    harmful = common.read_prompts(args.present, args.n, args.seed)
    harmless = common.read_prompts(args.absent, args.n, args.seed)
    lm = common.load(args)
    res = freeze_evaluation(lm.model, lm.tokenizer, sv, harmful, harmless, modes=modes,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            include_unsteered=args.unsteered, arch=lm.arch,
                            vector_name=args.name or sv.method)
    print(res.table())
    if args.out:
        for p in res.save(args.out, figure=not args.no_figure):
            print(f"wrote {p}")
    return res.to_json()


def cmd_svv(args) -> dict:
    from steerscope.mechanisms.svv import svv_report
    from steerscope.vectors import SteeringVector

    sv = SteeringVector.load(args.vector, layer=args.layer)
    scores = read_head_scores(args.scores) if args.scores else None
    name = args.name or sv.method
    paths = svv_paths(args.out, name, from_flag=bool(args.name))  # checked before the model
    lm = common.load(args)
    sv.check_fits(lm.arch)
    rep = svv_report(lm.model, lm.tokenizer, sv.vector, sv.layer, head_scores=scores,
                     top_k=args.top_k, alpha_sign=-1 if args.negative else 1, arch=lm.arch,
                     vector_name=name + (" (-s)" if args.negative else ""))
    print(rep.table(n_heads=args.heads, n_tokens=args.show_tokens))
    if paths is not None:
        print(f"wrote {rep.save(paths[0])}")
        if not args.no_figure:
            print(f"wrote {rep.figure(paths[1], n_heads=args.heads)}")
    return rep.to_json()


def svv_paths(out: str | None, name: str, *, from_flag: bool) -> tuple[Path, Path] | None:
    """``out/svv_NAME.json`` and ``.png`` (None without ``--out``); a one-line error when
    ``name`` (``--name``, else the vector file's ``method`` metadata) would write outside
    ``out``."""
    if not out:
        return None
    from steerscope.artifacts import check_child_name, child_path

    what = "--name" if from_flag else "the vector file's method (its metadata; pass --name)"
    check_child_name(name, what)
    return (child_path(out, f"svv_{name}.json", what=what),
            child_path(out, f"svv_{name}.png", what=what))


def register(sub) -> None:
    """Add ``freeze`` and ``svv`` to the top-level subparsers."""
    from steerscope.cli.options import add_config_option

    p = sub.add_parser("freeze", help="freezing ablations during steered generation "
                                      "(QK/OV freeze, SVV/MLP removal; the paper's Table 1)")
    _model_args(p)
    add_config_option(p, "freeze.modes")
    common.add_prompt_pair(p, "jailbreakbench", "harmless_test", note=common.STEERED_NOTE)
    common.add_sample_args(p, 100)
    add_config_option(p, "freeze.max_new_tokens")
    common.add_batch_size_arg(p, 16)
    p.add_argument("--unsteered", action="store_true", help="add the unsteered model as a row")
    p.add_argument("--out", help="folder for freeze.json (+ freeze.png)")
    p.add_argument("--no-figure", action="store_true", help="skip freeze.png")
    common.add_json_arg(p, "the ablation table and completions")
    p.set_defaults(func=cmd_freeze)

    p = sub.add_parser("svv", help="steering value vectors per head through the logit lens")
    _model_args(p)
    p.add_argument("--scores", help="head node scores to rank by: a 'steerscope patch' vector "
                                    "folder, its result.json, or JSON {'a{L}.h{H}': score}")
    add_config_option(p, "svv.top_tokens", "--top-k")
    add_config_option(p, "svv.n_heads", "--heads", note=" Also the heads of the figure.")
    p.add_argument("--show-tokens", type=int, default=10,
                   help="tokens shown per line (default: %(default)s)")
    p.add_argument("--negative", action="store_true", help="read -s (the bypass direction)")
    p.add_argument("--out", help="folder for svv_NAME.json (+ svv_NAME.png)")
    p.add_argument("--no-figure", action="store_true", help="skip svv_NAME.png")
    common.add_json_arg(p, "the per-head report")
    p.set_defaults(func=cmd_svv)
