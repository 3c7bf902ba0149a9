"""``steerscope patch`` and ``steerscope circuits``: multi-token activation patching of
steering vectors (EAP-IG, circuits, faithfulness) and a printout of the results.

    steerscope patch MODEL --vector DIM=dim.safetensors [--vector NTP=ntp.safetensors ...]
                     --present PROMPTS --absent PROMPTS --out runs/patch
    steerscope circuits runs/patch/DIM
"""

from __future__ import annotations

import json
from pathlib import Path

from steerscope.cli import common
from steerscope.data.readers import SPLIT_SETS
from steerscope.errors import SteerscopeError
from steerscope.patching_conventions import FAITHFULNESS_METRICS, GRAD_AT, LOGITS_AT, POOLING


def result_json(res, top: int = 20) -> dict:
    """A patching result's summary, faithfulness curves and ``top`` EAP-IG edges as JSON."""
    return {"summary": res.tables.get("summary"),
            "curves": {k: c.to_json() for k, c in res.curves.items()},
            "top_edges": res.top_edges("eap_ig", top)}


def cmd_patch(args) -> dict:
    from steerscope.artifacts import atomic_write_json, child_path
    from steerscope.patching import (
        build_patching_datasets,
        circuit_summary,
        compare_vectors,
        patch_vector,
    )

    vectors = common.load_vectors(args.vector)
    for name in vectors:  # each vector's folder stays inside --out (no link leading out)
        child_path(args.out, name, what="vector name")
    if args.grid_step is not None and args.sizes:
        raise SteerscopeError("--grid-step and --sizes are both given", "pass one of them")
    if args.grid_step is not None and not 0 < args.grid_step <= 1:
        raise SteerscopeError(f"--grid-step must be a fraction in (0, 1], got {args.grid_step}",
                              "pass e.g. --grid-step 0.0341")
    if not 0 < args.grid_max <= 1:
        raise SteerscopeError(f"--grid-max must be a fraction in (0, 1], got {args.grid_max}",
                              "pass e.g. --grid-max 0.5")
    if args.metric == "logit_diff" and args.kl_threshold:
        raise SteerscopeError("--kl-threshold applies to --metric kl only",
                              "drop it or pass --metric kl")
    if args.ig_batch_size < 1:
        raise SteerscopeError(f"--ig-batch-size must be >= 1, got {args.ig_batch_size}",
                              "pass e.g. --ig-batch-size 4")
    present = common.read_prompts(args.present, args.n, args.seed)
    absent = common.read_prompts(args.absent, args.n, args.seed)
    lm = common.load(args)
    for v in vectors.values():
        v.check_fits(lm.arch)
    judge = None
    if args.judge is not None:
        from steerscope.evaluate import get_judge

        judge = get_judge(args.judge)
    out = Path(args.out)
    results, data, report = {}, {}, {"vectors": {}}
    for name, v in vectors.items():
        print(f"[{name}] rollouts on {len(present)} present and {len(absent)} absent prompts")
        ds = build_patching_datasets(lm.model, lm.tokenizer, v, present, absent,
                                     bypass_alpha=args.bypass_alpha,
                                     induce_alpha=args.induce_alpha,
                                     max_per_dataset=args.max_per_dataset,
                                     max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, judge=judge)
        counts = {k: len(x) for k, x in ds.items()}
        print(f"[{name}] patching examples: {counts}")
        atomic_write_json(out / name / "examples.json",
                          {k: [e.to_json() for e in x] for k, x in ds.items()})
        res = patch_vector(lm.model, v, ds, arch=lm.arch, steps=args.steps, metric=args.metric,
                           tau=args.kl_threshold, reverse=args.reverse,
                           coarse=args.graph == "coarse", sizes=common.int_list(args.sizes),
                           threshold=args.threshold, exact_nodes=args.exact_nodes,
                           top_k=args.top_k, grid_step=args.grid_step,
                           grid_max=args.grid_max, random_kind=args.random,
                           position_metrics=args.position_metrics,
                           faithfulness_metric=args.faithfulness_metric, grad_at=args.grad_at,
                           logits_at=args.logits_at, pooling=args.pooling,
                           batch_size=args.ig_batch_size, progress=True)
        res.meta["model"] = lm.model_id
        res.save(out / name)
        print(circuit_summary(res))
        print(f"[{name}] wrote {out / name}/")
        results[name], data[name] = res, (ds, v)
        report["vectors"][name] = {"folder": str(out / name), "examples": counts,
                                   **result_json(res, args.top_k)}
    if len(results) > 1:
        cmp = compare_vectors(lm.model, results, data, sizes=common.int_list(args.sizes),
                              faithfulness_metric=args.faithfulness_metric, progress=True)
        atomic_write_json(out / "comparison.json", cmp)
        _print_comparison(cmp)
        print(f"wrote {out / 'comparison.json'}")
        report["comparison"] = cmp
    return report


def _print_matrix(title: str, m: dict) -> None:
    names = list(m)
    print(f"\n{title}\n{'':10s}" + " ".join(f"{n:>9s}" for n in names))
    for a in names:
        print(f"{a:10s}" + " ".join(f"{m[a][b]:9.3f}" for b in names))


def _print_comparison(cmp: dict) -> None:
    print("\nminimum faithful circuit sizes: " +
          ", ".join(f"{k}={v}" for k, v in cmp["sizes"].items()))
    _print_matrix("overlap |C1∩C2|/min(|C1|,|C2|)", cmp["overlap"])
    _print_matrix("Jaccard", cmp["jaccard"])
    _print_matrix("interchange (row: circuit of A, column: steering with B on B's data)",
                  cmp["interchange"])


def cmd_circuits(args) -> dict:
    from steerscope.patching import PatchingResult, circuit_summary

    folder = Path(args.folder)
    comparison = folder / "comparison.json"
    if (folder / "result.json").is_file():
        folders = [folder]
    else:
        folders = sorted(p.parent for p in folder.glob("*/result.json"))
    if not folders:
        raise SteerscopeError(f"no patching results under {folder}",
                              "pass the --out folder of 'steerscope patch'")
    report: dict = {"vectors": {}}
    for f in folders:
        res = PatchingResult.load(f)
        report["vectors"][f.name] = result_json(res, args.top)
        if not args.json:
            print(f"== {f.name} ==")
            print(circuit_summary(res))
    if comparison.is_file():
        report["comparison"] = json.loads(comparison.read_text(encoding="utf-8"))
        if not args.json:
            _print_comparison(report["comparison"])
    return report


def register(sub) -> None:
    """Add ``patch`` and ``circuits`` to the top-level subparsers."""
    p = sub.add_parser("patch", help="multi-token activation patching (EAP-IG), circuits and "
                                     "faithfulness for steering vectors")
    common.add_model_args(p, batch_size=8)
    common.add_vector_specs(p)
    common.add_prompt_pair(p, "test", note=" for the rollouts", sets=SPLIT_SETS)
    common.add_sample_args(p, 100)
    p.add_argument("--max-per-dataset", type=int, default=100,
                   help="most patching examples kept per dataset (present/absent x "
                        "steered/base; default: %(default)s)")
    p.add_argument("--judge", default=None,
                   help="jailbreak judge for the present-side flips, e.g. llamaguard (the paper: "
                        "steered unsafe and base safe); default: the refusal substrings")
    common.add_max_new_tokens_arg(p)
    p.add_argument("--bypass-alpha", type=float, default=-1.0,
                   help="steering coefficient on present prompts (default: %(default)s)")
    p.add_argument("--induce-alpha", type=float, default=1.0,
                   help="steering coefficient on absent prompts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10,
                   help="EAP-IG integration steps T (default: %(default)s)")
    p.add_argument("--metric", choices=["logit_diff", "kl"], default="logit_diff",
                   help="patching metric: logit_diff = logit difference of the steered vs "
                        "unsteered greedy tokens where they differ; kl = KL of steered to "
                        "unsteered next-token distributions (default: %(default)s)")
    p.add_argument("--kl-threshold", type=float, default=0.0,
                   help="τ for --metric kl: only positions whose steered-vs-unsteered KL is at "
                        "least τ count (0: every position with KL > 0; default: %(default)s)")
    p.add_argument("--reverse", action="store_true",
                   help="reverse roles: clean = unsteered, corrupt = steered (patched runs are "
                        "the unsteered model with some edges carrying their steered value)")
    p.add_argument("--graph", choices=["fine", "coarse"], default="fine",
                   help="fine: per-head q/k/v inputs (default); coarse: q/k/v grouped per layer")
    p.add_argument("--grad-at", choices=list(GRAD_AT), default=GRAD_AT[0],
                   help="EAP-IG gradient at each downstream node's pre-norm residual (default) "
                        "or its post-norm input, norm Jacobian ignored (the paper)")
    p.add_argument("--logits-at", choices=list(LOGITS_AT), default=LOGITS_AT[0],
                   help="models with a final-logit soft-cap (Gemma-2): the metric reads the "
                        "logits after the cap (default) or before it (the released code)")
    p.add_argument("--pooling", choices=list(POOLING), default=POOLING[0],
                   help="combine examples by the mean over datasets (default) or pooled by "
                        "unmasked positions (the released code)")
    p.add_argument("--ig-batch-size", type=int, default=1,
                   help="examples of similar length per batched EAP-IG backward pass (same "
                        "scores; more memory; default 1)")
    p.add_argument("--sizes", help="circuit sizes in edges for the faithfulness curve, e.g. "
                                   "50,100,500 (default: 0.5%% to 100%% of the edges in 11 steps)")
    p.add_argument("--grid-step", type=float,
                   help="instead of --sizes: every GRID_STEP fraction of the edges (the paper's "
                        "figure: 0.0341, i.e. 300 of Gemma's 8,790 edges)")
    p.add_argument("--grid-max", type=float, default=1.0,
                   help="largest fraction of the edges on the --grid-step grid (default 1)")
    p.add_argument("--random", choices=["pruned", "unpruned"], default="pruned",
                   help="random-circuit control: pruned to steer->logits paths and refilled "
                        "to size like a real circuit (default, the paper's), or unpruned")
    p.add_argument("--position-metrics", action="store_true",
                   help="also the released code's per-position faithfulness (KL ratio, "
                        "directional KL, token match, log-prob) on the steered responses")
    p.add_argument("--faithfulness-metric", choices=list(FAITHFULNESS_METRICS),
                   default=FAITHFULNESS_METRICS[0],
                   help="what the minimum circuit, complement, random control and interchange "
                        "are measured with: the logit-difference ratio (default) or a released "
                        "position metric (the paper's curves: logprob)")
    p.add_argument("--threshold", type=float, default=0.85,
                   help="faithfulness a circuit must reach to be 'minimum faithful' "
                        "(default: %(default)s)")
    p.add_argument("--exact-nodes", action="store_true",
                   help="also score every node by exact patching (one run per node)")
    p.add_argument("--top-k", type=int, default=100,
                   help="top edges counted in the edge-type shares and listed by --json "
                        "(default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per vector)")
    common.add_json_arg(p, "each vector's summary, curves and top edges (and the comparison)")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("circuits", help="print faithfulness curves, circuits and top edges of "
                                        "a 'steerscope patch' output folder")
    p.add_argument("folder", help="a 'steerscope patch' --out folder or one vector's "
                                   "subfolder")
    p.add_argument("--top", type=int, default=20,
                   help="top EAP-IG edges listed by --json (default: %(default)s)")
    common.add_json_arg(p, "{vectors: {NAME: {summary, curves, top_edges}}, comparison}")
    p.set_defaults(func=cmd_circuits)
