"""``steerscope sparsify ...``: dimension scores, sparse vectors, the sparsity sweep and method
agreement (paper section 7).

    steerscope sparsify scores MODEL --vector V --out ie.safetensors
    steerscope sparsify apply V --ie ie.safetensors --rule ie --fraction 0.9 --out sparse.safetensors
    steerscope sparsify sweep MODEL --vector dim=V --ie dim=IE ... --out DIR
    steerscope sparsify agree --vector dim=V --ie dim=IE --vector ntp=V2 --ie ntp=IE2
"""

from __future__ import annotations

from pathlib import Path

from steerscope.cli.vectors import _load, _model_args, _read
from steerscope.errors import SteerscopeError


def _floats(text: str | None, what: str) -> list[float]:
    if text is None or not text.strip():
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SteerscopeError(f"{what} '{text}' is not a comma-separated list of numbers",
                              "write e.g. 0,0.5,1") from exc


def _named(specs: list[str], what: str) -> dict[str, str]:
    """NAME=FILE pairs (a bare FILE is named by its stem; names plain, as they name files)."""
    from steerscope.validation import parse_named_files

    return parse_named_files(specs, what)


def _vectors(args) -> tuple[dict, dict]:
    """The --vector and --ie files (read before any model loads)."""
    from steerscope.sparsify import load_ie
    from steerscope.vectors import SteeringVector

    paths = _named(args.vector, "vector")
    if not paths:
        raise SteerscopeError("no vectors given", "pass --vector NAME=FILE")
    vectors = {n: SteeringVector.load(p) for n, p in paths.items()}
    ie_paths = _named(args.ie, "IE")
    unknown = [n for n in ie_paths if n not in vectors]
    if unknown:
        raise SteerscopeError(f"--ie {unknown[0]}=... names no --vector",
                              "use the same NAME for a vector and its IE")
    return vectors, {n: load_ie(p) for n, p in ie_paths.items()}


# --- commands ----------------------------------------------------------------------------
def cmd_apply(args) -> None:
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
    if args.gguf:
        print(f"wrote llama.cpp control vector {export_control_vector(out, args.gguf)}")


def cmd_scores(args) -> None:
    from steerscope.sparsify import dimension_scores
    from steerscope.vectors import SteeringVector

    sv = SteeringVector.load(args.vector)
    harmful = _read(args.harmful, args.n, args.seed)
    harmless = _read(args.harmless, args.n, args.seed)
    lm = _load(args)
    res = dimension_scores(lm.model, lm.tokenizer, sv, harmful, harmless, steps=args.steps,
                           max_new_tokens=args.max_new_tokens,
                           only_flipped=not args.all_prompts, batch_size=args.batch_size,
                           arch=lm.arch)
    res.save(args.out)
    print(f"IE at layer {sv.layer} from {sum(res.n_positions.values())} patched positions "
          f"({', '.join(f'{k}: {v}' for k, v in res.n_positions.items())}); "
          f"sum(IE) {float(res.ie.sum()):+.4f}; wrote {args.out}")


def cmd_sweep(args) -> None:
    from steerscope.evaluate.judges import get_judge
    from steerscope.sparsify import RULES, dimension_scores, sparsity_sweep

    vectors, ies = _vectors(args)
    taus = _floats(args.taus, "--taus")
    fractions = _floats(args.fractions, "--fractions")
    rules = [r.strip() for r in args.rules.split(",")] if args.rules else list(RULES)
    harmful = _read(args.harmful, args.n, args.seed)
    harmless = _read(args.harmless, args.n, args.seed)
    unseen = _read(args.unseen, args.n, args.seed) if args.unseen else None
    judge = get_judge(args.judge) if args.judge else None
    lm = _load(args)
    out = Path(args.out)
    missing = [m for m in vectors if m not in ies]
    if missing:
        score_harmful = _read(args.score_harmful, args.n_score, args.seed)
        score_harmless = _read(args.score_harmless, args.n_score, args.seed)
        for m in missing:
            res = dimension_scores(lm.model, lm.tokenizer, vectors[m], score_harmful,
                                   score_harmless, steps=args.steps,
                                   max_new_tokens=args.max_new_tokens,
                                   only_flipped=not args.all_prompts,
                                   batch_size=args.batch_size, arch=lm.arch)
            print(f"computed IE for {m}: wrote {res.save(out / f'ie_{m}.safetensors')}")
            ies[m] = res.ie
    res = sparsity_sweep(lm.model, lm.tokenizer, vectors, ies, harmful, harmless, unseen,
                         taus=taus, fractions=fractions, rules=rules, seed=args.seed,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         judge=judge, arch=lm.arch)
    res.save(out, save_vectors=args.save_vectors)
    print(res.table(args.threshold))
    print(f"\nwrote {out / 'sweep.json'}, {out / 'agreement.json'} and figures")


def cmd_agree(args) -> None:
    from steerscope.artifacts import atomic_write_json
    from steerscope.sparsify import agreement_table, equal_sparsity_family, sparse_agreement

    vectors, ies = _vectors(args)
    missing = [m for m in vectors if m not in ies]
    if missing:
        raise SteerscopeError(f"no --ie for vector '{missing[0]}'", "pass --ie NAME=FILE")
    if len(vectors) < 2:
        raise SteerscopeError("agreement needs at least two methods", "pass two --vector")
    taus = _floats(args.taus, "--taus")
    fractions = _floats(args.fractions, "--fractions")
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


def register(sub) -> None:
    """Add the ``sparsify`` command group to the top-level subparsers."""
    from steerscope.sparsify import DEFAULT_TAUS, RULES

    default_taus = ",".join(f"{t:g}" for t in DEFAULT_TAUS)
    grp = sub.add_parser("sparsify", help="sparsify steering vectors; retention sweep and "
                                          "method agreement (paper section 7)")
    gsub = grp.add_subparsers(dest="sparsify_command", required=True)

    p = gsub.add_parser("apply", help="one sparse vector by a rule at tau, k or a sparsity")
    p.add_argument("vector", help="dense vector file (.safetensors)")
    p.add_argument("--ie", help="IE file (needed by the gradient and ie rules)")
    p.add_argument("--rule", choices=RULES, required=True)
    p.add_argument("--tau", type=float, help="gradient rule threshold")
    p.add_argument("--k", type=int, help="dimensions to keep")
    p.add_argument("--fraction", type=float, help="sparsity: fraction of dimensions zeroed")
    p.add_argument("--seed", type=int, default=42, help="random rule seed")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--gguf", help="also write a llama.cpp control vector here")
    p.set_defaults(func=cmd_apply)

    def score_args(p):
        p.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--all-prompts", action="store_true",
                       help="score every prompt, not only those whose outcome flips")
        p.add_argument("--seed", type=int, default=42)

    p = gsub.add_parser("scores", help="dimension-level IE = s * IG gradient at the steering "
                                       "node")
    _model_args(p)
    p.add_argument("--vector", required=True)
    p.add_argument("--harmful", default="harmful_val")
    p.add_argument("--harmless", default="harmless_val")
    p.add_argument("--n", type=int, default=32, help="prompts per class")
    score_args(p)
    p.add_argument("--out", required=True, help="output .safetensors (tensors ie, grad)")
    p.set_defaults(func=cmd_scores)

    p = gsub.add_parser("sweep", help="steered ASR of every rule's sparse vectors at equal "
                                      "sparsity; retention curves and agreement")
    _model_args(p)
    p.add_argument("--vector", action="append", default=[], help="NAME=FILE (repeatable)")
    p.add_argument("--ie", action="append", default=[],
                   help="NAME=FILE (repeatable); computed when missing")
    p.add_argument("--harmful", default="jailbreakbench")
    p.add_argument("--harmless", default="harmless_test")
    p.add_argument("--unseen", help="unseen harmful set (e.g. strongreject)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--score-harmful", default="harmful_val")
    p.add_argument("--score-harmless", default="harmless_val")
    p.add_argument("--n-score", type=int, default=32)
    p.add_argument("--taus", default=default_taus)
    p.add_argument("--fractions", default="", help="extra sparsities, e.g. 0.9,0.95,0.99")
    p.add_argument("--rules", help=f"comma-separated subset of {','.join(RULES)}")
    p.add_argument("--judge", help="'substring', 'llamaguard', 'classifier:ID' or 'chat:ID'")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--save-vectors", action="store_true")
    score_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_sweep)

    p = gsub.add_parser("agree", help="IoU + hypergeometric p-value of kept dimensions "
                                      "between methods (no model needed)")
    p.add_argument("--vector", action="append", default=[], help="NAME=FILE (repeatable)")
    p.add_argument("--ie", action="append", default=[], help="NAME=FILE (repeatable)")
    p.add_argument("--taus", default=default_taus)
    p.add_argument("--fractions", default="0.5,0.9,0.95")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="write the rows as JSON")
    p.add_argument("--figure", help="write the IoU figure (PNG)")
    p.set_defaults(func=cmd_agree)
