"""``steerscope patch`` and ``steerscope circuits``: multi-token activation patching of
steering vectors (EAP-IG, circuits, faithfulness) and a printout of the results.

    steerscope patch MODEL --vector DIM=dim.safetensors [--vector NTP=ntp.safetensors ...]
                     --harmful harmful_test --harmless harmless_test --out runs/patch
    steerscope circuits runs/patch/DIM
"""

from __future__ import annotations

import json
from pathlib import Path

from steerscope.cli.vectors import _int_list, add_chat_template_arg
from steerscope.errors import SteerscopeError
from steerscope.patching_conventions import GRAD_AT, LOGITS_AT, POOLING


def _vectors(specs: list[str]) -> dict:
    from steerscope.vectors import SteeringVector

    if not specs:
        raise SteerscopeError("no steering vector given", "pass --vector NAME=FILE")
    from steerscope.validation import parse_named_files

    return {name: SteeringVector.load(path)
            for name, path in parse_named_files(specs, "vector").items()}


def cmd_patch(args) -> None:
    from steerscope.artifacts import atomic_write_json
    from steerscope.cli.vectors import _read
    from steerscope.models.chat import set_chat_template
    from steerscope.models.loading import load_model
    from steerscope.patching import (
        build_patching_datasets,
        circuit_summary,
        compare_vectors,
        patch_vector,
    )

    vectors = _vectors(args.vector)
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
    harmful = _read(args.harmful, args.n, args.seed)
    harmless = _read(args.harmless, args.n, args.seed)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    set_chat_template(lm.tokenizer, args.chat_template)
    for v in vectors.values():
        v.check_fits(lm.arch)
    judge = None
    if args.judge is not None:
        from steerscope.evaluate import get_judge

        judge = get_judge(args.judge)
    out = Path(args.out)
    results, data = {}, {}
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
                           coarse=args.graph == "coarse", sizes=_int_list(args.sizes),
                           threshold=args.threshold, exact_nodes=args.exact_nodes,
                           top_k=args.top_k, grid_step=args.grid_step,
                           grid_max=args.grid_max, random_kind=args.random,
                           position_metrics=args.position_metrics, grad_at=args.grad_at,
                           logits_at=args.logits_at, pooling=args.pooling,
                           batch_size=args.ig_batch_size, progress=True)
        res.meta["model"] = lm.model_id
        res.save(out / name)
        print(circuit_summary(res))
        print(f"[{name}] wrote {out / name}/")
        results[name], data[name] = res, (ds, v)
    if len(results) > 1:
        cmp = compare_vectors(lm.model, results, data, sizes=_int_list(args.sizes),
                              progress=True)
        atomic_write_json(out / "comparison.json", cmp)
        _print_comparison(cmp)
        print(f"wrote {out / 'comparison.json'}")


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


def cmd_circuits(args) -> None:
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
    for f in folders:
        res = PatchingResult.load(f)
        print(f"== {f.name} ==")
        if args.json:
            print(json.dumps({"summary": res.tables.get("summary"),
                              "curves": {k: c.to_json() for k, c in res.curves.items()},
                              "top_edges": res.top_edges("eap_ig", args.top)}, indent=2))
        else:
            print(circuit_summary(res))
    if comparison.is_file() and not args.json:
        _print_comparison(json.loads(comparison.read_text(encoding="utf-8")))


def register(sub) -> None:
    """Add ``patch`` and ``circuits`` to the top-level subparsers."""
    p = sub.add_parser("patch", help="multi-token activation patching (EAP-IG), circuits and "
                                     "faithfulness for steering vectors")
    p.add_argument("model", help="'default', 'demo', a local folder, a .gguf file or a Hub id")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    add_chat_template_arg(p)
    p.add_argument("--vector", action="append", default=[], help="NAME=FILE (repeatable)")
    p.add_argument("--harmful", default="harmful_test", help="prompt file or dataset name")
    p.add_argument("--harmless", default="harmless_test", help="prompt file or dataset name")
    p.add_argument("--n", type=int, default=100, help="prompts per set (seeded sample)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-per-dataset", type=int, default=100)
    p.add_argument("--judge", default=None,
                   help="jailbreak judge for the harmful flips, e.g. llamaguard (the paper: "
                        "steered unsafe and base safe); default: the refusal substrings")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bypass-alpha", type=float, default=-1.0)
    p.add_argument("--induce-alpha", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10, help="EAP-IG steps T (default 10)")
    p.add_argument("--metric", choices=["logit_diff", "kl"], default="logit_diff")
    p.add_argument("--kl-threshold", type=float, default=0.0, help="τ for --metric kl")
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
    p.add_argument("--sizes", help="circuit sizes for the faithfulness curve, e.g. 50,100,500")
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
    p.add_argument("--threshold", type=float, default=0.85, help="faithfulness threshold")
    p.add_argument("--exact-nodes", action="store_true",
                   help="also score every node by exact patching (one run per node)")
    p.add_argument("--top-k", type=int, default=100, help="top edges for edge-type shares")
    p.add_argument("--out", required=True, help="output folder (one subfolder per vector)")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("circuits", help="print faithfulness curves, circuits and top edges of "
                                        "a 'steerscope patch' output folder")
    p.add_argument("folder")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_circuits)
