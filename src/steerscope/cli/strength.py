"""``steerscope sweep-alpha``: the steering-strength sweep of vectors on val prompts
(:mod:`steerscope.evaluate.alpha_sweep`): per vector and use, behaviour rate, coherent
success, loops, fluency and ce_reference against α, and the α ``auto`` picks."""

from __future__ import annotations

from steerscope.cli import common


def cmd_sweep_alpha(args) -> dict:
    from steerscope.evaluate.alpha_sweep import (
        alpha_curve,
        check_alpha_grid,
        check_auto_share,
        choose_alphas,
        curve_table,
        reference_completions,
    )
    from steerscope.evaluate.coherence import ReferenceCE, check_fluency_threshold

    grid = check_alpha_grid(args.grid, "--grid")  # every check before the model loads
    share = check_auto_share(args.share, "--share")
    threshold = check_fluency_threshold(args.fluency_threshold, "--fluency-threshold")
    vectors = common.load_vectors(args.vector)
    present = common.read_prompts(args.present_val, args.n, args.seed)
    absent = common.read_prompts(args.absent_val, args.n, args.seed)
    lm = common.load(args)
    formatted, outs = reference_completions(lm.model, lm.tokenizer, absent[:args.n_reference],
                                            max_new_tokens=args.max_new_tokens,
                                            batch_size=args.batch_size)
    reference = ReferenceCE(lm.model, lm.tokenizer, formatted, outs, arch=lm.arch,
                            batch_size=args.batch_size)
    entries, completions = alpha_curve(
        lm.model, lm.tokenizer, vectors, present, absent, grid=grid, reference=reference,
        fluency_threshold=threshold, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, arch=lm.arch)
    chosen = choose_alphas(entries, share=share)
    print(curve_table(entries, chosen))
    for m, uses in chosen.items():
        print(f"{m}: " + ", ".join(f"{u} α = {c['alpha']:+g} ({c['rule']})"
                                   for u, c in uses.items()))
    out = {"grid": grid, "share": share, "fluency_threshold": threshold,
           "alpha_curve": entries, "alpha_chosen": chosen,
           "completions": [{"method": m, "use": u, "alpha": a, "completions": c}
                           for (m, u, a), c in completions.items()]}
    if args.out:
        from steerscope.artifacts import atomic_write_json

        print(f"\nwrote {atomic_write_json(args.out, out)}")
    return out


def register(sub) -> None:
    """Add ``sweep-alpha`` to the top-level subparsers."""
    from steerscope.cli.options import add_config_option
    from steerscope.evaluate.alpha_sweep import DEFAULT_ALPHA_GRID, DEFAULT_AUTO_SHARE

    p = sub.add_parser("sweep-alpha", help="sweep the steering strength α on val prompts: "
                                           "behaviour, coherence and loops per α, and the "
                                           "α that auto picks")
    common.add_model_args(p, batch_size=16)
    common.add_vector_specs(p)
    common.add_prompt_pair(p, "val", flag="{}-val",
                           note=" (val prompts: remove on the first, induce on the second)")
    common.add_sample_args(p, 32)
    common.add_max_new_tokens_arg(p)
    p.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_ALPHA_GRID),
                   help="|α| magnitudes to try, strictly increasing (remove steers with −|α|, "
                        "induce with +|α|; default: %(default)s)")
    p.add_argument("--share", type=float, default=DEFAULT_AUTO_SHARE,
                   help="auto picks the smallest |α| whose coherent success reaches this share "
                        "of the curve's best (default: %(default)s)")
    add_config_option(p, "evaluation.fluency_threshold")
    add_config_option(p, "evaluation.n_reference")
    p.add_argument("--out", help="write the curve, the choice and every completion as JSON")
    common.add_json_arg(p, "the curve and the chosen α")
    p.set_defaults(func=cmd_sweep_alpha)
