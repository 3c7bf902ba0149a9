"""Steered batched generation throughput vs plain ``model.generate``, measured side by side.

    python benchmarks/bench_generation.py [--model default] [--batch 16] [--new-tokens 64]

Runs, on the same model, batch and prompts, interleaved over ``--repeats`` rounds:
  A. transformers ``model.generate`` (greedy, KV cache, no hooks)       -- the baseline
  B. steerscope ``generate_ids`` with a steering vector at every position
  C. steerscope ``generate_ids`` with no intervention
All three produce exactly ``--new-tokens`` tokens per row. Prints tokens/s and the ratios
B/A and C/A (median over rounds). Target (issue 2): B/A >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from steerscope.data.builtin import demo_prompts
from steerscope.generation import generate_ids
from steerscope.models.chat import encode_prompts, format_prompt
from steerscope.models.loading import load_model
from steerscope.runtime import steer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tok, arch = loaded.model, loaded.tokenizer, loaded.arch
    pool = demo_prompts("harmful").instructions + demo_prompts("harmless").instructions
    texts = [format_prompt(tok, pool[i % len(pool)]) for i in range(args.batch)]
    enc = encode_prompts(tok, texts, device=model.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = args.new_tokens
    vec = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(0)).to(model.device)
    ops = [steer(vec, arch.n_layers // 2, 1.0)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def run_hf():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=pad)
        assert out.shape[1] == ids.shape[1] + n

    def run_steered():
        g = generate_ids(model, ids, mask, max_new_tokens=n, interventions=ops,
                         stop_at_eos=False, pad_token_id=pad)
        assert g.new_tokens.shape[1] == n

    def run_plain():
        g = generate_ids(model, ids, mask, max_new_tokens=n, stop_at_eos=False, pad_token_id=pad)
        assert g.new_tokens.shape[1] == n

    runs = {"hf_generate": run_hf, "steerscope_steered": run_steered,
            "steerscope_plain": run_plain}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = args.batch * n
    print(f"model {loaded.model_id} on {model.device} ({args.dtype}), batch {args.batch}, "
          f"{n} new tokens, prompt length {ids.shape[1]}, {args.repeats} rounds (median)")
    for k, t in med.items():
        print(f"  {k:20s} {t:7.3f} s  {total / t:8.1f} tokens/s")
    print(f"ratio steered / hf_generate (throughput) = {med['hf_generate'] / med['steerscope_steered']:.3f}")
    print(f"ratio plain   / hf_generate (throughput) = {med['hf_generate'] / med['steerscope_plain']:.3f}")


if __name__ == "__main__":
    main()
