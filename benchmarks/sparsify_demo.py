"""Sparsity study (paper section 7) on the demo refusal model, small enough for a CPU.

    OMP_NUM_THREADS=1 python benchmarks/sparsify_demo.py --out runs/sparsify-demo

1. vectors at one layer from harmful_train vs harmless_train (last prompt token): DIM and, as
   a second method for the agreement study, PCA (NTP/PO training is too slow for this
   CPU budget; save their vectors as OUT/ntp.safetensors, OUT/po.safetensors and pass
   --methods dim,ntp,po: existing vector files are used as they are);
2. IE = s ⊙ IG gradient on harmful_val / harmless_val rollouts (prompts whose outcome flips);
   agreement (IoU, hypergeometric p) between all methods at every level (no generation);
3. the sweep (``--sweep-methods``, default DIM only to fit a CPU budget): every rule at
   each τ's sparsity and at extra sparsities, steered generation on JailbreakBench (bypass, α = −1) and Alpaca test (induce, α = +1), optionally StrongREJECT
   (unseen);
4. prints the highest sparsity keeping ≥ 90% of the dense bypass and induce effect per
   method and rule, and the agreement table; artifacts (JSON, figures, IE files) in --out.
Steps whose artifact exists are skipped (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from steerscope.artifacts import atomic_write_json
from steerscope.data import load_prompts
from steerscope.models import load_model
from steerscope.models.chat import format_prompt
from steerscope.sparsify import (
    agreement_table,
    dimension_scores,
    equal_sparsity_family,
    load_ie,
    sparse_agreement,
    sparsity_sweep,
)
from steerscope.vectors import SteeringVector
from steerscope.vectors.methods import extract_vector

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/refusal"


def _sample(path: Path, n: int, seed: int) -> list[str]:
    return load_prompts(path).sample(n, seed=seed, allow_fewer=True).instructions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--out", type=Path, default=Path("runs/sparsify-demo"))
    ap.add_argument("--layer", type=int, default=16)
    ap.add_argument("--methods", default="dim,pca")
    ap.add_argument("--sweep-methods", default="dim",
                    help="methods evaluated by generation (the agreement uses all)")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-score", type=int, default=8)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--n-unseen", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--fractions", default="0.9,0.95,0.98")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not (args.data_dir / "splits/harmful_train.json").is_file():
        print(f"SKIP: shared refusal data not found at {args.data_dir}")
        return 0
    t0 = time.time()
    out = args.out
    lm = load_model(args.model)
    tok = lm.tokenizer
    sp = args.data_dir / "splits"
    harmful_train = _sample(sp / "harmful_train.json", args.n_train, args.seed)
    harmless_train = _sample(sp / "harmless_train.json", args.n_train, args.seed)
    vectors = {}
    for m in args.methods.split(","):
        path = out / f"{m}.safetensors"
        if path.is_file():
            vectors[m] = SteeringVector.load(path)
            continue
        sv = extract_vector(lm.model, tok, [format_prompt(tok, p) for p in harmful_train],
                            [format_prompt(tok, p) for p in harmless_train], method=m,
                            layer=args.layer, model_id=lm.model_id, arch=lm.arch)
        if "dim" in vectors and m != "dim":
            sv = sv.scaled_to(vectors["dim"].norm)  # like NTP/PO: the DIM norm
        vectors[m] = sv
        sv.save(path)
        print(f"[{time.time() - t0:6.0f}s] {m}: layer {sv.layer}, norm {sv.norm:.2f}", flush=True)
    if len(vectors) > 1:
        names = list(vectors)
        print("cosine:", {f"{a}/{b}": round(vectors[a].cosine(vectors[b]), 3)
                          for i, a in enumerate(names) for b in names[i + 1:]})
    score_harmful = _sample(sp / "harmful_val.json", args.n_score, args.seed)
    score_harmless = _sample(sp / "harmless_val.json", args.n_score, args.seed)
    ies = {}
    for m, sv in vectors.items():
        path = out / f"ie_{m}.safetensors"
        if not path.is_file():
            res = dimension_scores(lm.model, tok, sv, score_harmful, score_harmless,
                                   steps=args.steps, max_new_tokens=args.max_new_tokens,
                                   batch_size=8, arch=lm.arch)
            res.save(path)
            print(f"[{time.time() - t0:6.0f}s] IE {m}: positions {res.n_positions}, prompts "
                  f"kept {res.metadata['prompts_kept']}, metric {res.metric}", flush=True)
        ies[m] = load_ie(path)
    test = args.data_dir / "raw"
    harmful = load_prompts(test / "jailbreakbench.csv").sample(
        args.n_test, seed=args.seed).instructions
    harmless = _sample(sp / "harmless_test.json", args.n_test, args.seed)
    unseen = (load_prompts(test / "strongreject.csv").sample(args.n_unseen, seed=args.seed)
              .instructions if args.n_unseen else None)
    fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    fams = {m: equal_sparsity_family(sv, ies[m], fractions=fractions, rules=("gradient", "ie"))
            for m, sv in vectors.items()}
    rows = sparse_agreement(fams)
    atomic_write_json(out / "agreement_all.json", rows)
    print(agreement_table(rows), flush=True)
    sweep_vectors = {m: vectors[m] for m in args.sweep_methods.split(",")}
    res = sparsity_sweep(lm.model, tok, sweep_vectors, ies, harmful, harmless, unseen,
                         fractions=fractions, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, arch=lm.arch)
    res.config.update(model=lm.model_id, layer=args.layer, n_score=args.n_score,
                      wall_s=time.time() - t0)
    res.save(out)
    print(f"[{time.time() - t0:6.0f}s] unsteered ASR {res.unsteered}; dense {res.dense}")
    print(res.table(0.9))
    print(json.dumps({"generations": res.config["generations"],
                      "wall_s": round(time.time() - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
