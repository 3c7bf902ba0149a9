"""``steerscope vectors push`` and ``steerscope vectors pull``: share steering vectors on the
Hugging Face Hub (docs/vectors.md, "Sharing vectors on the Hub")."""

from __future__ import annotations

from pathlib import Path

from steerscope.cli import common
from steerscope.errors import SteerscopeError
from steerscope.safe_files import read_json_file


def run_entries(run_dir: Path, methods: list[str] | None, base_model: str | None) -> list:
    """(subfolder, payload, card info) for each vector of a run folder, its card quoting the
    run's headline figures from results.json."""
    from steerscope.results_schema import check_results, resolve_path, upgrade_results
    from steerscope.vectors import load_vector_file
    from steerscope.vectors.hub import card_info
    from steerscope.vectors.hub_card import alpha_of, model_name, run_figures

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise SteerscopeError(f"run folder {run_dir} has no results.json",
                              "pass a run folder written by steerscope run, or vector files")
    results = upgrade_results(read_json_file(results_file, "results file"))  # older runs too
    check_results(results)
    vectors = results.get("vectors") or {}
    if not vectors:
        raise SteerscopeError(f"run {run_dir} has no vectors (its vectors stage did not finish)",
                              "finish the run first (steerscope run CONFIG)")
    unknown = sorted(set(methods or []) - set(vectors))
    if unknown:
        raise SteerscopeError(f"run {run_dir} has no {', '.join(unknown)} vector",
                              f"use --methods with some of: {', '.join(vectors)}")
    model = base_model or model_name((results.get("model") or {}).get("id"))
    entries = []
    for method in methods or list(vectors):
        sv = load_vector_file(resolve_path(results_file, vectors[method]["path"]))  # or a set
        figures = run_figures(results, method)
        payload = sv.hub_payload()
        entries.append((method, payload, card_info(payload, base_model=model, figures=figures,
                                                   alpha=alpha_of(figures, method))))
    return entries


def file_entries(files: list[str], args) -> list:
    """(subfolder = file stem, payload, card info) for each vector (or vector set) file."""
    from steerscope.vectors import load_vector_file
    from steerscope.vectors.hub import card_info

    entries = []
    for f in files:
        if Path(f).is_dir():
            raise SteerscopeError(f"{f} is a folder among vector files",
                                  "pass one run folder, or .safetensors vector files")
        payload = load_vector_file(f).hub_payload()
        entries.append((Path(f).stem, payload,
                        card_info(payload, base_model=args.base_model, behaviour=args.behaviour,
                                  alpha=args.alpha)))
    return entries


def push_hub_folder(folder: Path, methods, args) -> dict:
    """Push a folder save_pretrained (or push --out) wrote, as it is."""
    from steerscope.vectors.hub import push_folder, read_payload, vector_folders

    if methods or args.out:
        raise SteerscopeError(f"{folder} is a Hub folder already: --methods and --out do not "
                              "apply", "leave them out to push it as it is")
    url = push_folder(folder, args.repo, private=args.private,
                      commit_message=args.commit_message)
    print(f"pushed {folder} to {args.repo}: {url}")
    return {"repo": args.repo, "url": url, "out": None,
            "vectors": [{"subfolder": "" if f == folder else f.name, **read_payload(f).summary()}
                        for f in vector_folders(folder)]}


def cmd_push(args) -> dict:
    from steerscope.vectors.hub import check_repo_id, push_payloads, save_many, vector_folders

    if not args.repo and not args.out:
        raise SteerscopeError("nowhere to put the vectors",
                              "pass --repo OWNER/NAME (push) and/or --out DIR (write only)")
    if args.repo:
        check_repo_id(args.repo)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    sources = [Path(s) for s in args.sources]
    if len(sources) == 1 and vector_folders(sources[0]) \
            and not (sources[0] / "results.json").is_file():
        return push_hub_folder(sources[0], methods, args)
    if len(sources) == 1 and sources[0].is_dir():
        entries = run_entries(sources[0], methods, args.base_model)
    elif methods:
        raise SteerscopeError("--methods picks vectors of a run folder",
                              "pass a run folder, or leave --methods out for vector files")
    else:
        entries = file_entries(args.sources, args)
    if args.out:
        folder = save_many(entries, args.out, repo_hint=args.repo)
        print(f"wrote {len(entries)} vector(s) with model cards to {folder}")
    url = push_payloads(entries, args.repo, private=args.private,
                        commit_message=args.commit_message) if args.repo else None
    if url:
        print(f"pushed {len(entries)} vector(s) to {args.repo}: {url}")
    return {"repo": args.repo, "url": url, "out": args.out,
            "vectors": [{"subfolder": sub, **p.summary(), "base_model": i.base_model}
                        for sub, p, i in entries]}


def cmd_pull(args) -> dict:
    from steerscope.vectors import SteeringVector, SteeringVectorSet
    from steerscope.vectors.hub import pull, read_payload

    readers = {cls.hub_kind: cls for cls in (SteeringVector, SteeringVectorSet)}
    rows = []
    for folder in pull(args.repo, args.out, revision=args.revision):
        payload = read_payload(folder)
        if payload.kind in readers:
            readers[payload.kind].from_hub_payload(payload)  # every check of its file
        print(f"{folder}: {payload.kind.replace('_', ' ')}, method {payload.method}, layers "
              f"{', '.join(map(str, payload.layers))}, model {payload.model_id or '-'}")
        rows.append({"path": str(folder), **payload.summary(),
                     "sha256": payload.metadata.get("sha256")})
    return {"repo": args.repo, "out": args.out, "vectors": rows}


def register(vsub) -> None:
    """Add ``push`` and ``pull`` to the ``steerscope vectors`` subparsers."""
    p = vsub.add_parser("push", help="share vectors on the Hugging Face Hub with model cards")
    p.add_argument("sources", nargs="+",
                   help="a run folder (each vector, its card quoting the run's results.json), "
                        "vector or vector set files (.safetensors), or a folder save_pretrained or push "
                        "--out wrote (pushed as it is)")
    p.add_argument("--repo", help="Hub repo id OWNER/NAME (created if missing; log in first "
                                  "with hf auth login or set HF_TOKEN)")
    p.add_argument("--out", help="also write the Hub folder here (without --repo: only write "
                                 "it, to read the cards first)")
    p.add_argument("--methods", help="comma-separated vectors of the run (default: all)")
    p.add_argument("--base-model", help="the model's Hub id for the cards (default: the "
                                        "run's or vector's model)")
    p.add_argument("--behaviour", help="the behaviour, for vector files (a run records its own)")
    p.add_argument("--alpha", type=float, help="the α the vector files are used with (a run "
                                               "records its own)")
    p.add_argument("--private", action="store_true", default=None,
                   help="create the repo private")
    p.add_argument("--commit-message", help="the Hub commit message")
    common.add_json_arg(p, "the pushed vectors and the commit URL")
    p.set_defaults(func=cmd_push)

    p = vsub.add_parser("pull", help="copy vectors from the Hugging Face Hub into a folder")
    p.add_argument("repo", help="Hub repo id OWNER/NAME (offline: read from the HF cache)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    common.add_json_arg(p, "the pulled vectors")
    p.set_defaults(func=cmd_pull)
