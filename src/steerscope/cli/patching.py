"""``steerscope patch`` and ``steerscope circuits``: multi-token activation patching of
steering vectors (EAP-IG, circuits, faithfulness) and a printout of the results.

    steerscope patch MODEL --vector DIM=dim.safetensors [--vector NTP=ntp.safetensors ...]
                     --harmful harmful_test --harmless harmless_test --out runs/patch
    steerscope circuits runs/patch/DIM
"""

from __future__ import annotations

import json
from pathlib import Path

from steerscope.cli import common
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
    harmful = common.read_prompts(args.present, args.n, args.seed)
    harmless = common.read_prompts(args.absent, args.n, args.seed)
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
        print(f"[{name}] rollouts on {len(harmful)} harmful and {len(harmless)} harmless prompts")
        ds = build_patching_datasets(lm.model, lm.tokenizer, v, harmful, harmless,
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
                           coarse=args.graph == "coarse", sizes=args.sizes,
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
        cmp = compare_vectors(lm.model, results, data, sizes=args.sizes,
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
    from steerscope.cli.options import add_config_option
    from steerscope.patching.circuits import RANDOM_KINDS
    from steerscope.pipeline.stages.patching import PATCHING_GRAPHS, PATCHING_METRICS

    p = sub.add_parser("patch", help="multi-token activation patching (EAP-IG), circuits and "
                                     "faithfulness for steering vectors")
    common.add_model_args(p, batch_size=8)
    common.add_vector_specs(p)
    common.add_prompt_pair(p, "harmful_test", "harmless_test", note=" for the rollouts")
    common.add_sample_args(p, 100)
    add_config_option(p, "patching.n_prompts", "--max-per-dataset")
    add_config_option(p, "patching.judge")
    add_config_option(p, "patching.max_new_tokens")
    add_config_option(p, "evaluation.bypass_alpha")
    add_config_option(p, "evaluation.induce_alpha")
    add_config_option(p, "patching.ig_steps", "--steps")
    add_config_option(p, "patching.metric", choices=PATCHING_METRICS)
    add_config_option(p, "patching.tau", "--kl-threshold")
    add_config_option(p, "patching.reverse")
    add_config_option(p, "patching.graph", choices=PATCHING_GRAPHS)
    add_config_option(p, "patching.grad_at", choices=GRAD_AT)
    add_config_option(p, "patching.logits_at", choices=LOGITS_AT)
    add_config_option(p, "patching.pooling", choices=POOLING)
    p.add_argument("--ig-batch-size", type=int, default=1,
                   help="examples of similar length per batched EAP-IG backward pass (same "
                        "scores; more memory; default 1)")
    add_config_option(p, "circuits.sizes")
    add_config_option(p, "circuits.grid_step")
    add_config_option(p, "circuits.grid_max")
    add_config_option(p, "circuits.random", choices=RANDOM_KINDS)
    add_config_option(p, "circuits.position_metrics")
    add_config_option(p, "circuits.metric", "--faithfulness-metric",
                      choices=FAITHFULNESS_METRICS)
    add_config_option(p, "circuits.threshold")
    p.add_argument("--exact-nodes", action="store_true",
                   help="also score every node by exact patching (one run per node)")
    add_config_option(p, "patching.top_n", "--top-k",
                      note=" Also the edges listed by --json.")
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
