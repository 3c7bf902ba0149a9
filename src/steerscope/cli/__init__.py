"""The ``steerscope`` command line.

    steerscope demo [--behaviour NAME|FILE] the whole study on the demo refusal model
                                          (or a behaviour on the default model)
    steerscope model prepare-demo         build and cache the demo refusal model
    steerscope archs                      supported architectures
    steerscope behaviours [NAME|FILE]     built-in behaviours, or one definition
    steerscope info MODEL                 load and validate a model, print its shape
    steerscope prompts SOURCE             read a prompt file or named dataset
    steerscope generate MODEL ...         (steered) greedy completions
    steerscope score MODEL ...            refusal scores and substring refusal rate
    steerscope vectors dim|extract|train|info|export-gguf|import-gguf ...
    steerscope evaluate MODEL --vector NAME=FILE ...   steered evaluation (Table 2)

MODEL is ``default`` (the embedded SmolLM2-135M-Instruct), a local folder, a ``.gguf`` file
or a Hugging Face Hub id. User errors print one line (``error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from steerscope.errors import SteerscopeError, write_error


def _add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", help="'default', a local folder, a .gguf file or a Hub id")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    if positional:
        from steerscope.cli.vectors import add_chat_template_arg

        add_chat_template_arg(p)


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", help="steering vector file (.safetensors)")
    p.add_argument("--layer", type=int, help="block whose input the vector is added to")
    p.add_argument("--alpha", type=float, default=1.0, help="steering coefficient (default 1)")
    p.add_argument("--scope", default="all", choices=["all", "prompt", "generated"],
                   help="token positions to steer (default: all)")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", default=[], help="an instruction (repeatable)")
    p.add_argument("--prompts", help="prompt file or named dataset")
    p.add_argument("--n", type=int, help="use a seeded sample of N prompts")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--system", help="system prompt (prepended to the user turn if the "
                                    "template has no system role)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerscope", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole study on the demo refusal model (built and "
                                    "cached on first use): vectors, steering, patching, "
                                    "circuits, freezing, svv, sparsity, report")
    _add_model_args(p, positional=False)
    p.add_argument("--model", help="default: the demo refusal model (refusal), else "
                                    "'default' (SmolLM2-135M-Instruct as shipped)")
    p.add_argument("--behaviour", default="refusal",
                   help="a built-in behaviour (steerscope behaviours) or a behaviour YAML "
                        "file (default: refusal); not refusal: its own prompts, 30/8/10 "
                        "per side unless --n-* are given")
    p.add_argument("--methods", default="dim,ntp,po", help="comma-separated: dim[,ntp][,po]")
    p.add_argument("--data-dir", help="standard splits folder (default: $STEERSCOPE_DATA_DIR, "
                                      "else the built-in demo prompts)")
    p.add_argument("--n-train", type=int, help="train prompts per class (default 64)")
    p.add_argument("--n-val", type=int, help="validation prompts per class (default 16)")
    p.add_argument("--n-test", type=int, help="test prompts per class (default 24)")
    p.add_argument("--max-new-tokens", type=int, help="every generation (default 48)")
    p.add_argument("--until", help="stop after this stage (e.g. evaluation: steering only)")
    p.add_argument("--strict-kl", action="store_true",
                   help="fail if no DIM candidate passes KL < 0.1 (default: double the "
                        "threshold until one does, and say so)")
    p.add_argument("--out", default="runs", help="runs folder (default runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument("--json", action="store_true", help="print results.json")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("archs", help="list the supported architectures").set_defaults(func=cmd_archs)

    p = sub.add_parser("model", help="model preparation: prepare-demo")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("prepare-demo", help="build (once) and cache the demo refusal model, "
                                             "print its folder and build record")
    q.add_argument("--cache-dir", help="cache root (default $STEERSCOPE_CACHE or "
                                       "~/.cache/steerscope)")
    q.add_argument("--json", action="store_true", help="print the build manifest as JSON")
    q.set_defaults(func=cmd_prepare_demo)

    p = sub.add_parser("info", help="load and validate a model; print its architecture")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prompts", help="read a prompt file or named dataset and show a sample")
    p.add_argument("source", help="file path or dataset name (see --list)")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("generate", help="greedy (steered) completions")
    _add_model_args(p)
    _add_prompt_args(p)
    _add_steer_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="refusal scores (no generation) and, with --generate, "
                                     "refusal rate by substring")
    _add_model_args(p)
    _add_prompt_args(p)
    _add_steer_args(p)
    p.add_argument("--generate", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_score)

    from steerscope.cli import vectors

    vectors.register(sub)
    from steerscope.cli import patching

    patching.register(sub)
    from steerscope.cli import sparsify

    sparsify.register(sub)
    from steerscope.cli import mechanisms

    mechanisms.register(sub)
    from steerscope.cli import pipeline

    pipeline.register(sub)
    from steerscope.cli import explore

    explore.register(sub)
    from steerscope.cli import behaviours

    behaviours.register(sub)
    return parser


# --- helpers ---------------------------------------------------------------------------
def _load(args):
    from steerscope.cli.vectors import _load as load_with_template

    return load_with_template(args)


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


def _formatted(loaded, instructions, system=None) -> list[str]:
    from steerscope.models.chat import format_prompt

    return [format_prompt(loaded.tokenizer, p, system=system) for p in instructions]


# --- commands --------------------------------------------------------------------------
def cmd_archs(args) -> None:
    from steerscope.models.archs import ARCHITECTURES

    for a in ARCHITECTURES:
        post = "post-norms" if a.attn_post_norm else "pre-norm only"
        norm = "(1+γ) norms" if a.norm_offset else "γ norms"
        print(f"{a.name:8s} model_type={','.join(a.model_types):12s} {post}, {norm}"
              + (", q/k norms" if a.q_norm else ""))


def cmd_prepare_demo(args) -> None:
    from steerscope.demo.model import demo_manifest, demo_model_dir

    folder = demo_model_dir(args.cache_dir)
    manifest = demo_manifest(folder)
    if args.json:
        print(json.dumps({"path": str(folder), **manifest}, indent=2))
        return
    dur = manifest.get("duration_s", {})
    print(f"demo refusal model: {folder}")
    print(f"  recipe {manifest['recipe_hash']} on {manifest['base_model']}; examples "
          f"{manifest['examples']}; built in {dur.get('total', 0):.0f} s "
          f"({manifest.get('created', '-')})")
    print("  load it with steerscope.models.load_model('demo') or any command's MODEL = demo")


def cmd_info(args) -> None:
    loaded = _load(args)
    a = loaded.arch
    print(f"model         {loaded.model_id} (revision {loaded.revision or '-'})")
    print(f"path          {loaded.path or '-'}")
    print(f"architecture  {a.name}: {a.n_layers} layers, d_model {a.d_model}, "
          f"{a.n_heads} query heads / {a.n_kv_heads} KV heads of {a.d_head}, vocab {a.vocab_size}")
    print(f"dtype/device  {loaded.dtype} / {loaded.device}")


def cmd_prompts(args) -> None:
    from steerscope.data import load_prompts

    ps = load_prompts(args.source)
    print(f"{ps.name}: {len(ps)} prompts")
    for p in ps.sample(min(args.n, len(ps)), seed=args.seed):
        print(f"- [{p.category or '-'}] {p.instruction}")


def cmd_generate(args) -> None:
    from steerscope.generation import generate

    instructions = _prompts(args)
    sv = _read_vector(args)
    loaded = _load(args)
    ops = _interventions(sv, args, loaded)
    texts = _formatted(loaded, instructions, args.system)
    outs = generate(loaded.model, loaded.tokenizer, texts, interventions=ops,
                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{"prompt": p, "response": r} for p, r in zip(instructions, outs)],
                         indent=2))
        return
    for p, r in zip(instructions, outs):
        print(f"> {p}\n{textwrap.indent(r.strip(), '  ')}\n")


def cmd_score(args) -> None:
    from steerscope.evaluate.matchers import is_refusal_substring
    from steerscope.evaluate.refusal import refusal_scores
    from steerscope.generation import generate
    from steerscope.runtime import Runtime

    instructions = _prompts(args)
    sv = _read_vector(args)
    loaded = _load(args)
    ops = _interventions(sv, args, loaded)
    texts = _formatted(loaded, instructions, args.system)
    with Runtime(loaded.model, ops, arch=loaded.arch):
        scores = refusal_scores(loaded.model, loaded.tokenizer, texts, batch_size=args.batch_size)
    print(f"mean refusal score {float(scores.mean()):+.3f} over {len(texts)} prompts "
          f"({int((scores > 0).sum())} with score > 0)")
    if args.generate:
        outs = generate(loaded.model, loaded.tokenizer, texts, interventions=ops,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        refused = [is_refusal_substring(o) for o in outs]
        print(f"refusal rate (substring) {sum(refused) / len(refused):.3f}; "
              f"attack success rate {1 - sum(refused) / len(refused):.3f}")


def cmd_demo(args) -> None:
    from steerscope.cli.pipeline import print_run
    from steerscope.demo.config import run_demo

    res = run_demo(args.out, until=args.until, progress=not args.quiet, model=args.model,
                   behaviour=args.behaviour, dtype=args.dtype, device=args.device, methods=args.methods.split(","),
                   data_dir=args.data_dir, n_train=args.n_train, n_val=args.n_val,
                   n_test=args.n_test, max_new_tokens=args.max_new_tokens,
                   relax_kl=not args.strict_kl)
    if args.json:
        print(res.results_path.read_text(encoding="utf-8"))
        return
    if not print_run(res):
        return
    results = json.loads(res.results_path.read_text(encoding="utf-8"))
    evaluation = res.outputs.get("evaluation")
    _print_demo_summary(results, res.run_dir,
                        evaluation.path(evaluation.outputs["file"]) if evaluation else None)


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
        print(f"\n{'vector':8s} {'harmful ASR (-s)':>17s} {'harmless ASR (+s)':>18s} "
              f"{'refusal score harmful/harmless':>31s}")
        for m, cells in steering.items():
            h, b = cells["harmful"], cells["harmless"]
            print(f"{m:8s} {h['asr']:17.3f} {b['asr']:18.3f} "
                  f"{h['mean_refusal_score']:+15.2f} / {b['mean_refusal_score']:+.2f}")
        print("(ASR = fraction of completions that do not refuse, by substring; harmful "
              "prompts are steered with -s to bypass refusal, harmless ones with +s to "
              "induce it)")
    if evaluation_file is not None:
        _print_examples(evaluation_file)
    print(f"\nall numbers: {run_dir}/results.json (docs/results.md)")


def _print_examples(evaluation_file, n: int = 2) -> None:
    ev = json.loads(evaluation_file.read_text(encoding="utf-8"))
    comp, prompts = ev.get("completions", {}), ev.get("prompts", {})
    for set_name, sign in (("harmful", "-"), ("harmless", "+")):
        for i in range(min(n, len(prompts.get(set_name, [])))):
            print(f"\n[{set_name}] {prompts[set_name][i]}")
            for m, by_set in comp.items():
                label = "unsteered" if m == "none" else f"{m} {sign}s"
                print(f"  {label}: {_short(by_set[set_name][i])}")


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # steerscope shows its own progress bars
    try:
        from steerscope.validation import check_cli_args

        check_cli_args(args)
        args.func(args)
    except SteerscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the OS refused a file operation no check could foresee
        print(f"error: {write_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if "No space left on device" not in str(exc):  # e.g. a library's wrapped ENOSPC
            raise
        print(f"error: {write_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
