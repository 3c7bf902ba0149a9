"""``steerscope vectors ...`` and ``steerscope evaluate``: extract, train, inspect, convert
and evaluate steering vectors."""

from __future__ import annotations

from pathlib import Path

from steerscope.cli import common


# --- commands ----------------------------------------------------------------------------
def describe(sv, path=None) -> dict:
    """A steering vector's identity as JSON: method, layer (and ``layers`` for a multi-layer
    vector), position, width, norm, model, sha256 (and its file)."""
    layers = {"layers": list(sv.layers)} if hasattr(sv, "layers") else {}
    return {**({"path": str(path)} if path is not None else {}), "method": sv.method,
            "layer": sv.layer, **layers, "position": sv.position, "d_model": sv.d_model,
            "norm": sv.norm, "model_id": sv.model_id, "sha256": sv.sha256}


def cmd_dim(args) -> dict:
    from steerscope.vectors import select_dim

    sets = {name: common.read_prompts(getattr(args, name.replace("-", "_")), n, args.seed)
            for name, n in (("present-train", args.n_train), ("absent-train", args.n_train),
                            ("present-val", args.n_val), ("absent-val", args.n_val))}
    lm = common.load(args)
    tok = lm.tokenizer
    res = select_dim(lm.model, tok, *(common.formatted(tok, v) for v in sets.values()),
                     model_id=lm.model_id, revision=lm.revision, filter=args.filter,
                     layers=args.layers, kl_threshold=args.kl_threshold,
                     induce_threshold=args.induce_threshold,
                     max_layer_fraction=args.max_layer_fraction,
                     layer_cutoff=args.layer_cutoff, at_threshold=args.at_threshold,
                     batch_size=args.batch_size, arch=lm.arch,
                     progress=True, relax_kl=args.relax_kl, score_all=args.score_all)
    out = Path(args.out)
    res.vector.save(out / "dim.safetensors")
    res.save_candidates(out / "dim_candidates.json")
    c = res.chosen
    print(f"DIM: layer {c['layer']}, position {c['position']}, norm {c['norm']:.3f}; "
          f"bypass {c['bypass']:+.3f}, induce {c['induce']:+.3f}, KL {c['kl']:.4f} "
          f"({sum(r['discarded'] is None for r in res.candidates)} of {len(res.candidates)} "
          f"candidates survive the filters)")
    print(f"wrote {out / 'dim.safetensors'} and {out / 'dim_candidates.json'}")
    return {"chosen": c, "n_candidates": len(res.candidates),
            "n_surviving": sum(r["discarded"] is None for r in res.candidates),
            "vector": describe(res.vector, out / "dim.safetensors"),
            "candidates": str(out / "dim_candidates.json")}


def cmd_extract(args) -> dict:
    from steerscope.validation import check_output_file
    from steerscope.vectors import extract_vector

    check_output_file(args.out)
    pos = common.read_prompts(args.positive, args.n, args.seed)
    neg = common.read_prompts(args.negative, args.n, args.seed)
    lm = common.load(args)
    layer = args.layer[0] if len(args.layer) == 1 else list(args.layer)  # several: a vector set
    if isinstance(layer, int):
        lm.arch.check_layer(layer)
    sv = extract_vector(lm.model, lm.tokenizer, common.formatted(lm.tokenizer, pos),
                        common.formatted(lm.tokenizer, neg), method=args.method, layer=layer,
                        position=args.position, batch_size=args.batch_size,
                        model_id=lm.model_id, revision=lm.revision, arch=lm.arch, progress=True)
    sv.save(args.out)
    print(f"{args.method} vector at layer {layer}, position {args.position}: norm "
          f"{sv.norm:.3f}; wrote {args.out}")
    return describe(sv, args.out)


def cmd_train(args) -> dict:
    from steerscope.vectors import SteeringVector
    from steerscope.vectors.train_config import (
        PAPER_CONVENTIONS,
        STEERSCOPE_CONVENTIONS,
        TrainConfig,
        paper_grid,
        quick_grid,
    )
    from steerscope.vectors.trained import train_grid
    from steerscope.vectors.training_data import build_preference_data

    dim = SteeringVector.load(args.dim)
    present = common.read_prompts(args.present, args.n, args.seed)
    absent = common.read_prompts(args.absent, args.n, args.seed)
    if args.val_prompts == "dim_val":
        present_val = common.read_prompts(args.present_val, args.n_val, args.seed)
        absent_val = common.read_prompts(args.absent_val, args.n_val, args.seed)
    lm = common.load(args)
    dim.check_fits(lm.arch)
    layer = args.layer if args.layer is not None else dim.layer
    lm.arch.check_layer(layer)
    opts = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                absent_shown=args.absent_shown, end_of_turn=args.end_of_turn)
    data = build_preference_data(lm.model, lm.tokenizer, present, absent, dim, **opts)
    if args.val_prompts == "dim_val":
        train = data
        val = build_preference_data(lm.model, lm.tokenizer, present_val, absent_val, dim,
                                    **opts)
    else:
        train, val = data.split(args.val_fraction, seed=args.seed)
    conventions = PAPER_CONVENTIONS if args.conventions == "paper" else STEERSCOPE_CONVENTIONS
    conventions = {**conventions, "match_scope": args.match_scope}
    if args.grid == "paper":
        configs = paper_grid(args.objective, **conventions)
    elif args.grid == "quick":
        configs = quick_grid(args.objective, **conventions)
    else:
        configs = [TrainConfig(objective=args.objective, epochs=args.epochs, lr=args.lr,
                               batch_size=args.train_batch_size, seed=args.seed,
                               **conventions)]
    res = train_grid(lm.model, lm.tokenizer, train, layer=layer, configs=configs, val_data=val,
                     rescale_to=dim.norm, model_id=lm.model_id)
    res.vector.save(args.out)
    print(f"{args.objective} vector at layer {layer}, rescaled to the DIM norm {dim.norm:.3f}; "
          f"epoch {res.best_epoch} kept (val loss {res.val_loss:.4f}, token match "
          f"{res.val_match_mean:.3f}); cosine with DIM {res.vector.cosine(dim):+.3f}; "
          f"wrote {args.out}")
    return {"vector": describe(res.vector, args.out), "objective": args.objective,
            "best_epoch": res.best_epoch, "val_loss": res.val_loss,
            "val_match_mean": res.val_match_mean, "dim_norm": dim.norm,
            "cosine_with_dim": res.vector.cosine(dim)}


def cmd_info(args) -> dict:
    from steerscope.vectors import load_vector_file

    vecs = [load_vector_file(p) for p in args.files]
    for p, sv in zip(args.files, vecs):
        print(f"{p}: method {sv.method}, layer {getattr(sv, 'layers', sv.layer)}, "
              f"position {sv.position}, "
              f"d_model {sv.d_model}, norm {sv.norm:.4f}, model {sv.model_id or '-'}, "
              f"sha256 {sv.sha256[:12]}")
    if len(vecs) > 1:
        print("cosine similarity:")
        for p, a in zip(args.files, vecs):
            print(f"  {Path(p).name:24s} " + " ".join(f"{a.cosine(b):+.3f}" for b in vecs))
    return {"vectors": [describe(sv, p) for p, sv in zip(args.files, vecs)],
            "cosine": [[a.cosine(b) for b in vecs] for a in vecs]}


def cmd_export_gguf(args) -> dict:
    from steerscope.vectors import SteeringVectorSet, export_control_vector, load_vector_file

    vecs = []
    for p in args.files:  # a multi-layer vector file gives one direction per layer
        sv = load_vector_file(p)
        vecs += list(sv) if isinstance(sv, SteeringVectorSet) else [sv]
    path = export_control_vector(vecs, args.out, model_hint=args.model_hint, alpha=args.alpha)
    print(f"wrote llama.cpp control vector {path} ({len(vecs)} layer(s); use with "
          f"llama.cpp --control-vector {path.name})")
    return {"path": str(path), "layers": [sv.layer for sv in vecs]}


def cmd_import_gguf(args) -> list[dict]:
    from steerscope.artifacts import child_path
    from steerscope.vectors import import_control_vector

    out, rows = Path(args.out_dir), []
    for sv in import_control_vector(args.file):
        path = sv.save(child_path(out, f"{Path(args.file).stem}_layer{sv.layer}.safetensors"))
        print(f"layer {sv.layer}: norm {sv.norm:.4f} -> {path}")
        rows.append(describe(sv, path))
    return rows


def cmd_evaluate(args) -> dict:
    from steerscope.evaluate.judges import get_judge
    from steerscope.evaluate.steering import evaluate_steering

    vectors = common.load_vectors(args.vector, required=False)
    present = common.read_prompts(args.present, args.n, args.seed)
    absent = common.read_prompts(args.absent, args.n, args.seed)
    judge = get_judge(args.judge) if args.judge else None
    lm = common.load(args)
    res = evaluate_steering(lm.model, lm.tokenizer, vectors, present, absent, arch=lm.arch,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            judge=judge)
    print(res.table())
    from steerscope.evaluate.coherence_rows import coherence_table, steering_coherence

    coherence = steering_coherence(lm.model, lm.tokenizer, res, vectors,
                                   fluency_threshold=args.fluency_threshold, arch=lm.arch,
                                   batch_size=args.batch_size)
    print("\n" + coherence_table(coherence))
    if len(vectors) > 1:
        names = list(vectors)
        print("\ncosine " + " ".join(f"{n:>8s}" for n in names))
        for a in names:
            print(f"{a:6s} " + " ".join(f"{res.cosine[a][b]:+8.3f}" for b in names))
    out = {**res.to_json(), "coherence": coherence}
    if args.out:
        from steerscope.artifacts import atomic_write_json

        print(f"\nwrote {atomic_write_json(args.out, out)}")
    return out


def register(sub) -> None:
    """Add the vector and evaluation commands to the top-level subparsers."""
    from steerscope.cli.options import add_config_option
    from steerscope.pipeline.stages.vectors import VAL_PROMPTS
    from steerscope.vectors import METHODS
    from steerscope.vectors.dim_selection import AT_THRESHOLD, LAYER_CUTOFFS
    from steerscope.vectors.train_config import MATCH_SCOPES, PRESETS, TrainConfig
    from steerscope.vectors.training_data import ABSENT_SHOWN_SOURCES

    vec = sub.add_parser("vectors", help="extract, train, inspect and convert steering vectors")
    vsub = vec.add_subparsers(dest="vectors_command", required=True, metavar="ACTION",
                              help="dim | extract | train | info | export-gguf | import-gguf | "
                                   "push | pull")

    p = vsub.add_parser("dim", help="DIM refusal direction with the paper's selection rule")
    common.add_model_args(p)
    add_config_option(p, "vectors.batch_size")
    common.add_prompt_pair(p, "train", flag="{}-train",
                           note=" for the difference of means")
    common.add_prompt_pair(p, "val", flag="{}-val",
                           note=" for the candidate selection")
    add_config_option(p, "data.n_train")
    add_config_option(p, "data.n_val")
    p.add_argument("--seed", type=int, default=42, help=common.SEED_HELP)
    add_config_option(p, "vectors.dim.layers")
    add_config_option(p, "vectors.dim.filter")  # --no-filter
    add_config_option(p, "vectors.dim.kl_threshold")
    add_config_option(p, "vectors.dim.relax_kl")
    add_config_option(p, "vectors.dim.score_all")
    add_config_option(p, "vectors.dim.induce_threshold")
    add_config_option(p, "vectors.dim.max_layer_fraction")
    add_config_option(p, "vectors.dim.layer_cutoff", choices=LAYER_CUTOFFS)
    add_config_option(p, "vectors.dim.at_threshold", choices=AT_THRESHOLD)
    p.add_argument("--out", required=True,
                   help="output folder (dim.safetensors, dim_candidates.json)")
    common.add_json_arg(p, "the chosen candidate and the files")
    p.set_defaults(func=cmd_dim)

    p = vsub.add_parser("extract", help="one vector by dim | caa | pca | probe at a given layer")
    common.add_model_args(p, batch_size=16)
    p.add_argument("--method", default="dim",
                   help=f"extraction method: {' | '.join(sorted(METHODS))} (default: "
                        "%(default)s)")
    p.add_argument("--positive", required=True,
                   help="prompts on which the model shows the behaviour: a file or dataset name")
    p.add_argument("--negative", required=True,
                   help="contrast prompts, without the behaviour: a file or dataset name")
    p.add_argument("--layer", type=int, required=True, nargs="+",
                   help="block whose input activations are read; several: one multi-layer "
                        "vector (one direction per layer, steered with one alpha)")
    p.add_argument("--position", type=int, default=-1,
                   help="token position read; negative: from the prompt end "
                        "(default: %(default)s)")
    common.add_sample_args(p, None)
    p.add_argument("--out", required=True, help="output .safetensors file")
    common.add_json_arg(p, "the vector's description")
    p.set_defaults(func=cmd_extract)

    p = vsub.add_parser("train", help="NTP or PO (one-directional RePS) vector")
    common.add_model_args(p, batch_size=16)
    p.add_argument("--objective", choices=["ntp", "po"], required=True,
                   help="ntp: next-token prediction on refusals; po: preference optimisation")
    p.add_argument("--dim", required=True, help="the DIM vector file (data and norm)")
    common.add_prompt_pair(p, "train", note=" to train on")
    add_config_option(p, "vectors.preference.n_prompts", "--n")
    p.add_argument("--layer", type=int, help="steered layer (default: the DIM vector's layer)")
    p.add_argument("--grid", choices=["single", *PRESETS], default="single",
                   help="single: one run with --epochs/--lr/--train-batch-size; quick or "
                        "paper: the trainer's preset grid (its own epochs, learning rates and "
                        "batch sizes), best by validation (default: %(default)s)")
    single = " with --grid single"
    add_config_option(p, "epochs", owner=TrainConfig, note=single)
    add_config_option(p, "lr", owner=TrainConfig, note=single)
    add_config_option(p, "batch_size", "--train-batch-size", owner=TrainConfig, note=single)
    add_config_option(p, "vectors.preference.val_prompts", choices=VAL_PROMPTS)
    common.add_prompt_pair(p, "val", flag="{}-val",
                           note=" for validation with --val-prompts dim_val")
    add_config_option(p, "data.n_val")
    add_config_option(p, "vectors.preference.val_fraction")
    p.add_argument("--conventions", choices=["paper", "steerscope"], default="paper",
                   help="model selection: paper = validate at the DIM norm after every epoch, "
                        "keep the best, LR stepped per epoch; steerscope = the last epoch, "
                        "validated at the mean factor, LR stepped per step")
    add_config_option(p, "vectors.preference.max_new_tokens")
    add_config_option(p, "vectors.preference.absent_shown", choices=ABSENT_SHOWN_SOURCES)
    common.add_old_spellings(p, "absent_shown")  # the flag of earlier versions, hidden
    add_config_option(p, "vectors.preference.end_of_turn")
    add_config_option(p, "match_scope", owner=TrainConfig, choices=MATCH_SCOPES)
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the prompt sample, split and training (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    common.add_json_arg(p, "the vector and its validation")
    p.set_defaults(func=cmd_train)

    p = vsub.add_parser("info", help="describe vector files and their cosine similarities")
    p.add_argument("files", nargs="+", help="steering vector files (.safetensors)")
    common.add_json_arg(p, "each vector's description and the cosine matrix")
    p.set_defaults(func=cmd_info)

    p = vsub.add_parser("export-gguf", help="write a llama.cpp control vector (.gguf)")
    p.add_argument("files", nargs="+", help="steering vector files, one per layer")
    p.add_argument("--out", required=True, help="output .gguf file")
    p.add_argument("--model-hint", help="model name stored in the file (default: the vectors' "
                                        "model id)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="scale written into the file: each direction is alpha * vector "
                        "(default: %(default)s)")
    common.add_json_arg(p, "the written file")
    p.set_defaults(func=cmd_export_gguf)

    p = vsub.add_parser("import-gguf", help="read a llama.cpp control vector into vector files")
    p.add_argument("file", help="a llama.cpp control vector (.gguf)")
    p.add_argument("--out-dir", required=True,
                   help="folder for one <file>_layer<L>.safetensors per layer")
    common.add_json_arg(p, "the written vectors")
    p.set_defaults(func=cmd_import_gguf)

    from steerscope.cli import vectors_hub

    vectors_hub.register(vsub)  # push | pull (the Hugging Face Hub)

    p = sub.add_parser("evaluate", help="steered evaluation: remove on present, induce on "
                                        "absent prompts (the paper's Table 2)")
    common.add_model_args(p)
    add_config_option(p, "evaluation.batch_size")
    common.add_vector_specs(p)
    common.add_prompt_pair(p, "test", note=common.STEERED_NOTE)
    common.add_sample_args(p, 100)
    add_config_option(p, "evaluation.max_new_tokens")
    add_config_option(p, "evaluation.judge")
    add_config_option(p, "evaluation.fluency_threshold")
    p.add_argument("--out", help="write the table and completions as JSON")
    common.add_json_arg(p, "the table, cosine matrix and completions")
    p.set_defaults(func=cmd_evaluate)
