"""``steerscope vectors ...`` and ``steerscope evaluate``: extract, train, inspect, convert
and evaluate steering vectors."""

from __future__ import annotations

import argparse
from pathlib import Path

from steerscope.errors import SteerscopeError


def _load(args):
    from steerscope.models.chat import set_chat_template
    from steerscope.models.loading import load_model

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    set_chat_template(lm.tokenizer, getattr(args, "chat_template", None))
    return lm


def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    """``--chat-template``: replace the tokenizer's chat template (a name or Jinja text)."""
    p.add_argument("--chat-template", default=None,
                   help="prompt format: 'llama3-no-system-header' (the authors' released Llama-3 "
                        "format) or Jinja text (default: the tokenizer's own template)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="'default', 'demo', a local folder, a .gguf file or a Hub id")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    add_chat_template_arg(p)
    p.add_argument("--batch-size", type=int, default=16)


def _read(source: str, n: int | None, seed: int) -> list[str]:
    """Instructions from a prompt file or named dataset, optionally a seeded sample of n."""
    from steerscope.data import load_prompts

    ps = load_prompts(source)
    if n is not None:
        ps = ps.sample(n, seed=seed, allow_fewer=True)
    return ps.instructions


def _formatted(tok, instructions: list[str]) -> list[str]:
    from steerscope.models.chat import format_prompt

    return [format_prompt(tok, p) for p in instructions]


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SteerscopeError(f"'{text}' is not a comma-separated list of integers",
                              "write e.g. 8,10,12") from exc


# --- commands ----------------------------------------------------------------------------
def cmd_dim(args) -> None:
    from steerscope.vectors import select_dim

    sets = {name: _read(getattr(args, name.replace("-", "_")), n, args.seed)
            for name, n in (("harmful-train", args.n_train), ("harmless-train", args.n_train),
                            ("harmful-val", args.n_val), ("harmless-val", args.n_val))}
    lm = _load(args)
    tok = lm.tokenizer
    res = select_dim(lm.model, tok, *(_formatted(tok, v) for v in sets.values()),
                     model_id=lm.model_id, revision=lm.revision, filter=not args.no_filter,
                     layers=_int_list(args.layers), kl_threshold=args.kl_threshold,
                     induce_threshold=args.induce_threshold,
                     max_layer_fraction=args.max_layer_fraction,
                     layer_cutoff=args.layer_cutoff,
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


def cmd_extract(args) -> None:
    from steerscope.validation import check_output_file
    from steerscope.vectors import extract_vector

    check_output_file(args.out)
    pos = _read(args.positive, args.n, args.seed)
    neg = _read(args.negative, args.n, args.seed)
    lm = _load(args)
    lm.arch.check_layer(args.layer)
    sv = extract_vector(lm.model, lm.tokenizer, _formatted(lm.tokenizer, pos),
                        _formatted(lm.tokenizer, neg), method=args.method, layer=args.layer,
                        position=args.position, batch_size=args.batch_size,
                        model_id=lm.model_id, revision=lm.revision, arch=lm.arch, progress=True)
    sv.save(args.out)
    print(f"{args.method} vector at layer {args.layer}, position {args.position}: norm "
          f"{sv.norm:.3f}; wrote {args.out}")


def cmd_train(args) -> None:
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
    harmful = _read(args.harmful, args.n, args.seed)
    harmless = _read(args.harmless, args.n, args.seed)
    if args.val_prompts == "dim_val":
        harmful_val = _read(args.harmful_val, args.n_val, args.seed)
        harmless_val = _read(args.harmless_val, args.n_val, args.seed)
    lm = _load(args)
    dim.check_fits(lm.arch)
    layer = args.layer if args.layer is not None else dim.layer
    lm.arch.check_layer(layer)
    opts = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                harmless_refuse=args.harmless_refuse)
    data = build_preference_data(lm.model, lm.tokenizer, harmful, harmless, dim, **opts)
    if args.val_prompts == "dim_val":
        train = data
        val = build_preference_data(lm.model, lm.tokenizer, harmful_val, harmless_val, dim,
                                    **opts)
    else:
        train, val = data.split(args.val_fraction, seed=args.seed)
    conventions = PAPER_CONVENTIONS if args.conventions == "paper" else STEERSCOPE_CONVENTIONS
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


def cmd_info(args) -> None:
    from steerscope.vectors import SteeringVector

    vecs = [SteeringVector.load(p) for p in args.files]
    for p, sv in zip(args.files, vecs):
        print(f"{p}: method {sv.method}, layer {sv.layer}, position {sv.position}, "
              f"d_model {sv.d_model}, norm {sv.norm:.4f}, model {sv.model_id or '-'}, "
              f"sha256 {sv.sha256[:12]}")
    if len(vecs) > 1:
        print("cosine similarity:")
        for p, a in zip(args.files, vecs):
            print(f"  {Path(p).name:24s} " + " ".join(f"{a.cosine(b):+.3f}" for b in vecs))


def cmd_export_gguf(args) -> None:
    from steerscope.vectors import SteeringVector, export_control_vector

    vecs = [SteeringVector.load(p) for p in args.files]
    path = export_control_vector(vecs, args.out, model_hint=args.model_hint, alpha=args.alpha)
    print(f"wrote llama.cpp control vector {path} ({len(vecs)} layer(s); use with "
          f"llama.cpp --control-vector {path.name})")


def cmd_import_gguf(args) -> None:
    from steerscope.vectors import import_control_vector

    out = Path(args.out_dir)
    for sv in import_control_vector(args.file):
        path = sv.save(out / f"{Path(args.file).stem}_layer{sv.layer}.safetensors")
        print(f"layer {sv.layer}: norm {sv.norm:.4f} -> {path}")


def cmd_evaluate(args) -> None:
    from steerscope.evaluate.judges import get_judge
    from steerscope.evaluate.steering import evaluate_steering
    from steerscope.validation import parse_named_files
    from steerscope.vectors import SteeringVector

    vectors = {name: SteeringVector.load(path)
               for name, path in parse_named_files(args.vector, "vector").items()}
    harmful = _read(args.harmful, args.n, args.seed)
    harmless = _read(args.harmless, args.n, args.seed)
    judge = get_judge(args.judge) if args.judge else None
    lm = _load(args)
    res = evaluate_steering(lm.model, lm.tokenizer, vectors, harmful, harmless, arch=lm.arch,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            judge=judge)
    print(res.table())
    if len(vectors) > 1:
        names = list(vectors)
        print("\ncosine " + " ".join(f"{n:>8s}" for n in names))
        for a in names:
            print(f"{a:6s} " + " ".join(f"{res.cosine[a][b]:+8.3f}" for b in names))
    if args.out:
        print(f"\nwrote {res.save(args.out)}")


def register(sub) -> None:
    """Add the vector and evaluation commands to the top-level subparsers."""
    vec = sub.add_parser("vectors", help="extract, train, inspect and convert steering vectors")
    vsub = vec.add_subparsers(dest="vectors_command", required=True)

    p = vsub.add_parser("dim", help="DIM refusal direction with the paper's selection rule")
    _model_args(p)
    p.add_argument("--harmful-train", default="harmful_train")
    p.add_argument("--harmless-train", default="harmless_train")
    p.add_argument("--harmful-val", default="harmful_val")
    p.add_argument("--harmless-val", default="harmless_val")
    p.add_argument("--n-train", type=int, default=128)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--layers", help="comma-separated layers to consider (default: all)")
    p.add_argument("--no-filter", action="store_true",
                   help="keep prompts whatever their unsteered refusal score")
    p.add_argument("--kl-threshold", type=float, default=0.1)
    p.add_argument("--relax-kl", action="store_true",
                   help="if no candidate passes the KL filter, double its threshold until one "
                        "does (recorded in the vector)")
    p.add_argument("--score-all", action="store_true",
                   help="score every filter of every candidate (the full candidate table; "
                        "the same choice; default: stop at a candidate's first failed filter)")
    p.add_argument("--induce-threshold", type=float, default=0.0)
    p.add_argument("--max-layer-fraction", type=float, default=0.8)
    p.add_argument("--layer-cutoff", choices=["int", "real"], default="int",
                   help="discard layers >= int(f*L) (int, the released code; default) or "
                        ">= f*L (real)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_dim)

    p = vsub.add_parser("extract", help="one vector by dim | caa | pca | probe at a given layer")
    _model_args(p)
    p.add_argument("--method", default="dim")
    p.add_argument("--positive", required=True, help="prompts of the behaviour (e.g. harmful)")
    p.add_argument("--negative", required=True, help="contrast prompts (e.g. harmless)")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--position", type=int, default=-1, help="negative: from the prompt end")
    p.add_argument("--n", type=int)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = vsub.add_parser("train", help="NTP or PO (one-directional RePS) vector")
    _model_args(p)
    p.add_argument("--objective", choices=["ntp", "po"], required=True)
    p.add_argument("--dim", required=True, help="the DIM vector file (data and norm)")
    p.add_argument("--harmful", default="harmful_train")
    p.add_argument("--harmless", default="harmless_train")
    p.add_argument("--n", type=int, default=64, help="prompts per class (paper: 256)")
    p.add_argument("--layer", type=int, help="default: the DIM vector's layer")
    p.add_argument("--grid", choices=["single", "quick", "paper"], default="single")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--train-batch-size", type=int, default=6)
    p.add_argument("--val-prompts", choices=["dim_val", "split"], default="dim_val",
                   help="dim_val: validation pairs from DIM's validation prompts (released "
                        "code); split: hold out --val-fraction of the training pairs")
    p.add_argument("--harmful-val", default="harmful_val")
    p.add_argument("--harmless-val", default="harmless_val")
    p.add_argument("--n-val", type=int, default=32, help="validation prompts per class "
                   "(the same seeded sample as 'vectors dim')")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="--val-prompts split: share of the training pairs held out")
    p.add_argument("--conventions", choices=["paper", "steerscope"], default="paper",
                   help="model selection: paper = validate at the DIM norm after every epoch, "
                        "keep the best, LR stepped per epoch; steerscope = the last epoch, "
                        "validated at the mean factor, LR stepped per step")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--harmless-refuse", choices=["instruction", "dim"], default="instruction",
                   help="harmless refusals: told to refuse (paper) or DIM-steered (+1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train)

    p = vsub.add_parser("info", help="describe vector files and their cosine similarities")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_info)

    p = vsub.add_parser("export-gguf", help="write a llama.cpp control vector (.gguf)")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--model-hint")
    p.add_argument("--alpha", type=float, default=1.0)
    p.set_defaults(func=cmd_export_gguf)

    p = vsub.add_parser("import-gguf", help="read a llama.cpp control vector into vector files")
    p.add_argument("file")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_import_gguf)

    p = sub.add_parser("evaluate", help="steered evaluation: bypass on harmful, induce on "
                                        "harmless prompts (the paper's Table 2)")
    _model_args(p)
    p.add_argument("--vector", action="append", default=[], help="NAME=FILE (repeatable)")
    p.add_argument("--harmful", default="jailbreakbench")
    p.add_argument("--harmless", default="harmless_test")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--judge", help="'substring', 'llamaguard', 'classifier:ID' or 'chat:ID'")
    p.add_argument("--out", help="write the table and completions as JSON")
    p.set_defaults(func=cmd_evaluate)
