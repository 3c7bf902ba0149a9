"""``steerscope sparsify ...``: dimension scores, sparse vectors, the sparsity sweep and method
agreement (paper section 7).

    steerscope sparsify scores MODEL --vector V --out ie.safetensors
    steerscope sparsify apply V --ie ie.safetensors --rule ie --fraction 0.9 --out sparse.safetensors
    steerscope sparsify sweep MODEL --vector dim=V --ie dim=IE ... --out DIR
    steerscope sparsify agree --vector dim=V --ie dim=IE --vector ntp=V2 --ie ntp=IE2
"""

from __future__ import annotations

from pathlib import Path

from steerscope.cli import common
from steerscope.errors import SteerscopeError


def _vectors(args) -> tuple[dict, dict]:
    """The --vector and --ie files (read before any model loads)."""
    from steerscope.sparsify import load_ie
    from steerscope.vectors.vector_set import is_multi_layer

    vectors = common.load_vectors(args.vector)
    multi = [n for n, v in vectors.items() if is_multi_layer(v)]
    if multi:
        raise SteerscopeError(f"--vector {multi[0]} is a multi-layer vector; sparsification "
                              "needs a single-layer vector", "pass a one-layer vector file")
    ie_paths = common.named_files(args.ie, "IE")
    unknown = [n for n in ie_paths if n not in vectors]
    if unknown:
        raise SteerscopeError(f"--ie {unknown[0]}=... names no --vector",
                              "use the same NAME for a vector and its IE")
    return vectors, {n: load_ie(p) for n, p in ie_paths.items()}


# --- commands ----------------------------------------------------------------------------
def cmd_apply(args) -> dict:
    from steerscope.sparsify import load_ie, sparsify
    from steerscope.vectors import SteeringVector, export_control_vector

    sv = SteeringVector.load(args.vector)
    ie = load_ie(args.ie) if args.ie else None
    out = sparsify(sv, args.rule, ie=ie, tau=args.tau, k=args.k, fraction=args.fraction,
                   seed=args.seed)
    out.save(args.out)
    info = out.metadata["sparsify"]
    print(f"{args.rule} rule: kept {info['k']} of {info['d']} dimensions (sparsity "
          f"{info['sparsity']:.4f}), norm {out.norm:.4f} (original {sv.norm:.4f}); "
          f"wrote {args.out}")
    res = {"path": str(args.out), "rule": args.rule, **info, "norm": out.norm,
           "original_norm": sv.norm}
    if args.gguf:
        res["gguf"] = str(export_control_vector(out, args.gguf))
        print(f"wrote llama.cpp control vector {res['gguf']}")
    return res


def cmd_scores(args) -> dict:
    from steerscope.sparsify import dimension_scores
    from steerscope.vectors import SteeringVector

    sv = SteeringVector.load(args.vector)
    harmful = common.read_prompts(args.present, args.n, args.seed)
    harmless = common.read_prompts(args.absent, args.n, args.seed)
    lm = common.load(args)
    res = dimension_scores(lm.model, lm.tokenizer, sv, harmful, harmless, steps=args.steps,
                           max_new_tokens=args.max_new_tokens,
                           only_flipped=not args.all_prompts, batch_size=args.batch_size,
                           arch=lm.arch)
    res.save(args.out)
    print(f"IE at layer {sv.layer} from {sum(res.n_positions.values())} patched positions "
          f"({', '.join(f'{k}: {v}' for k, v in res.n_positions.items())}); "
          f"sum(IE) {float(res.ie.sum()):+.4f}; wrote {args.out}")
    return {"path": str(args.out), "layer": sv.layer, "n_positions": res.n_positions,
            "metric": res.metric, "ie_sum": float(res.ie.sum())}


def cmd_sweep(args) -> dict:
    from steerscope.artifacts import child_path
    from steerscope.evaluate.judges import get_judge
    from steerscope.sparsify import dimension_scores, sparsity_sweep

    vectors, ies = _vectors(args)
    taus = args.taus
    fractions = common.float_list(args.fractions, "--fractions")
    rules = args.rules
    harmful = common.read_prompts(args.present, args.n, args.seed)
    harmless = common.read_prompts(args.absent, args.n, args.seed)
    unseen = common.read_prompts(args.unseen, args.n, args.seed) if args.unseen else None
    judge = get_judge(args.judge) if args.judge else None
    out = Path(args.out)
    ie_paths = {m: child_path(out, f"ie_{m}.safetensors", what="vector name")
                for m in vectors}  # checked before the model loads
    lm = common.load(args)
    missing = [m for m in vectors if m not in ies]
    if missing:
        score_harmful = common.read_prompts(args.score_present, args.n_score, args.seed)
        score_harmless = common.read_prompts(args.score_absent, args.n_score, args.seed)
        for m in missing:
            res = dimension_scores(lm.model, lm.tokenizer, vectors[m], score_harmful,
                                   score_harmless, steps=args.steps,
                                   max_new_tokens=args.max_new_tokens,
                                   only_flipped=not args.all_prompts,
                                   batch_size=args.batch_size, arch=lm.arch)
            print(f"computed IE for {m}: wrote {res.save(ie_paths[m])}")
            ies[m] = res.ie
    res = sparsity_sweep(lm.model, lm.tokenizer, vectors, ies, harmful, harmless, unseen,
                         taus=taus, fractions=fractions, rules=rules, seed=args.seed,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         judge=judge, arch=lm.arch)
    res.save(out, save_vectors=args.save_vectors)
    print(res.table(args.threshold))
    print(f"\nwrote {out / 'sweep.json'}, {out / 'agreement.json'} and figures")
    return {**res.to_json(), "highest_retained": res.highest_retained(args.threshold)}


def cmd_agree(args) -> list[dict]:
    from steerscope.artifacts import atomic_write_json
    from steerscope.sparsify import agreement_table, equal_sparsity_family, sparse_agreement

    vectors, ies = _vectors(args)
    missing = [m for m in vectors if m not in ies]
    if missing:
        raise SteerscopeError(f"no --ie for vector '{missing[0]}'", "pass --ie NAME=FILE")
    if len(vectors) < 2:
        raise SteerscopeError("agreement needs at least two methods", "pass two --vector")
    taus = common.float_list(args.taus, "--taus")
    fractions = common.float_list(args.fractions, "--fractions")
    fams = {m: equal_sparsity_family(sv, ies[m], taus=taus, fractions=fractions,
                                     rules=("gradient", "ie"), seed=args.seed)
            for m, sv in vectors.items()}
    rows = sparse_agreement(fams)
    print(agreement_table(rows))
    if args.out:
        print(f"\nwrote {atomic_write_json(args.out, rows)}")
    if args.figure:
        from steerscope.sparsify.figures import plot_agreement

        print(f"wrote {plot_agreement(rows, args.figure)}")
    return rows


def register(sub) -> None:
    """Add the ``sparsify`` command group to the top-level subparsers."""
    from steerscope.cli.options import add_config_option
    from steerscope.sparsify import DEFAULT_TAUS, RULES

    default_taus = ",".join(f"{t:g}" for t in DEFAULT_TAUS)
    taus_help = ("comma-separated gradient-rule thresholds τ; every rule is compared at the "
                 "number of dimensions each τ keeps (default: %(default)s)")
    grp = sub.add_parser("sparsify", help="sparsify steering vectors; retention sweep and "
                                          "method agreement (paper section 7)")
    gsub = grp.add_subparsers(dest="sparsify_command", required=True, metavar="ACTION",
                              help="apply | scores | sweep | agree")

    p = gsub.add_parser("apply", help="one sparse vector by a rule at tau, k or a sparsity")
    p.add_argument("vector", help="dense vector file (.safetensors)")
    p.add_argument("--ie", help="IE file (needed by the gradient and ie rules)")
    p.add_argument("--rule", choices=RULES, required=True,
                   help="which dimensions to keep: " + ", ".join(RULES))
    p.add_argument("--tau", type=float, help="gradient rule threshold")
    p.add_argument("--k", type=int, help="dimensions to keep")
    p.add_argument("--fraction", type=float, help="sparsity: fraction of dimensions zeroed")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the random rule (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--gguf", help="also write a llama.cpp control vector here")
    common.add_json_arg(p, "the kept dimensions and norms")
    p.set_defaults(func=cmd_apply)

    def score_args(p):
        p.add_argument("--steps", type=int, default=10,
                       help="integrated-gradient steps (default: %(default)s)")
        common.add_max_new_tokens_arg(p)
        p.add_argument("--all-prompts", action="store_true",
                       help="score every prompt, not only those whose outcome flips")
        p.add_argument("--seed", type=int, default=42, help=common.SEED_HELP)

    p = gsub.add_parser("scores", help="dimension-level IE = s * IG gradient at the steering "
                                       "node")
    common.add_model_args(p, batch_size=16)
    p.add_argument("--vector", required=True, help="steering vector file (.safetensors)")
    common.add_prompt_pair(p, "harmful_val", "harmless_val", note=" for the IE")
    common.add_sample_args(p, 32, seed=False)
    score_args(p)
    p.add_argument("--out", required=True, help="output .safetensors (tensors ie, grad)")
    common.add_json_arg(p, "where the IE went and how many positions it sums")
    p.set_defaults(func=cmd_scores)

    p = gsub.add_parser("sweep", help="steered ASR of every rule's sparse vectors at equal "
                                      "sparsity; retention curves and agreement")
    common.add_model_args(p, batch_size=16)
    common.add_vector_specs(p, ie_note="; computed when missing")
    common.add_prompt_pair(p, "jailbreakbench", "harmless_test", note=common.STEERED_NOTE)
    p.add_argument("--unseen", help="unseen harmful set (e.g. strongreject)")
    common.add_sample_args(p, 100, seed=False)
    common.add_prompt_pair(p, "harmful_val", "harmless_val", flag="score-{}",
                           note=" for a missing IE")
    p.add_argument("--n-score", type=int, default=32,
                   help="prompts per class for a missing IE (default: %(default)s)")
    add_config_option(p, "sparsify.taus")
    p.add_argument("--fractions", default="", help="extra sparsities, e.g. 0.9,0.95,0.99")
    add_config_option(p, "sparsify.rules")
    p.add_argument("--judge", help=common.JUDGE_HELP)
    p.add_argument("--threshold", type=float, default=0.9,
                   help="retention the table's highest sparsity must keep, as a fraction of "
                        "the dense vector's ASR (default: %(default)s)")
    p.add_argument("--save-vectors", action="store_true",
                   help="also write every sparse vector (.safetensors)")
    score_args(p)
    p.add_argument("--out", required=True, help="output folder")
    common.add_json_arg(p, "sweep.json's content and the highest retained sparsities")
    p.set_defaults(func=cmd_sweep)

    p = gsub.add_parser("agree", help="IoU + hypergeometric p-value of kept dimensions "
                                      "between methods (no model needed)")
    common.add_vector_specs(p, ie_note="; one per --vector")
    p.add_argument("--taus", default=default_taus, help=taus_help)
    p.add_argument("--fractions", default="0.5,0.9,0.95",
                   help="extra sparsities compared (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the sparsify rules (default: %(default)s)")
    p.add_argument("--out", help="write the rows as JSON")
    p.add_argument("--figure", help="write the IoU figure (PNG)")
    common.add_json_arg(p, "the agreement rows")
    p.set_defaults(func=cmd_agree)
