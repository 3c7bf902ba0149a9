"""Steered batched generation throughput vs plain ``model.generate``, measured side by side.

    python benchmarks/bench_generation.py [--model default] [--batch 16] [--new-tokens 64]

Runs, on the same model, batch and prompts, interleaved over ``--repeats`` rounds:
  A. transformers ``model.generate`` (greedy, KV cache, no hooks)       -- the baseline
  B. steerscope ``generate_ids`` with a steering vector at every position
  C. steerscope ``generate_ids`` with no intervention
All three produce exactly ``--new-tokens`` tokens per row. Prints tokens/s and the ratios
B/A and C/A (median over rounds). Target (issue 2): B/A >= 0.95.

    python benchmarks/bench_generation.py --packed [--settings 4] [--batch 16] [--new-tokens 64]

Packed settings (issue 27): ``--settings`` steering settings (α ∈ {−1, 0, +1, +2, ...} times a
random vector of norm ``--norm``) × ``--batch`` prompts, real greedy generation to EOS
(``steerscope.generation.generate``, the path of the steering table and the sweep):
  S. separate: one ``generate`` call per setting, fixed length-sorted batches (before issue 27)
  P. packed: one ``generate`` call with per-row settings, finished rows leaving the batch and
     waiting rows joining (refill)
  F. packed, fixed batches (``refill=False``): packing alone
  C. with ``--slots``: packed in compiled slots (``generate(compiled=True)``, the CUDA path:
     preallocated KV cache, rows refilled in place, the decode step under ``torch.compile``);
     one warm-up call first (compilation, timed apart)
Completions are compared (they must be equal); prints wall and process-CPU seconds and the
throughput ratios P/S, F/S (and C/S) (generated tokens per second, median over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from steerscope.data.builtin import demo_prompts
from steerscope.generation import generate, generate_ids
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
    ap.add_argument("--packed", action="store_true", help="packed vs separate settings")
    ap.add_argument("--settings", type=int, default=4)
    ap.add_argument("--norm", type=float, default=8.0)
    ap.add_argument("--slots", action="store_true",
                    help="with --packed: also packed in compiled slots (compiles first)")
    args = ap.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.packed:
        bench_packed(loaded, args)
        return
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


def bench_packed(loaded, args) -> None:
    """Separate vs packed (refill / fixed batches) generation of settings × prompts."""
    model, tok, arch = loaded.model, loaded.tokenizer, loaded.arch
    pool = demo_prompts("harmful").instructions + demo_prompts("harmless").instructions
    texts = [format_prompt(tok, pool[i % len(pool)]) for i in range(args.batch)]
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(arch.d_model, generator=g)
    vec = vec / vec.norm() * args.norm  # [d]
    layer = arch.n_layers // 2
    alphas = [float(a) for a in ([-1, 0, 1, 2, -2, 3, -3, 4] * 8)[: args.settings]]
    n, bs = args.new_tokens, args.batch
    rows = [k for k in range(len(alphas)) for _ in texts]
    packed_op = [steer(vec.repeat(len(alphas), 1), layer, alphas)]

    def separate():
        return [t for a in alphas for t in generate(
            model, tok, texts, interventions=[steer(vec, layer, a)], max_new_tokens=n,
            batch_size=bs, refill=False, progress=False)]

    def packed(refill=True, compiled=False):
        return generate(model, tok, texts * len(alphas), interventions=packed_op,
                        row_settings=rows, max_new_tokens=n, batch_size=bs, refill=refill,
                        progress=False, compiled=compiled)

    runs = {"separate": separate, "packed_refill": packed,
            "packed_fixed": lambda: packed(refill=False)}
    if args.slots:
        runs["packed_slots"] = lambda: packed(compiled=True)
        with torch.inference_mode():
            w0 = time.perf_counter()
            packed(compiled=True)
            print(f"packed_slots warm-up call (compiling the decode step): "
                  f"{time.perf_counter() - w0:.1f} s wall", flush=True)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    outs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in runs.items():
                w0, c0 = time.perf_counter(), time.process_time()
                outs[name] = fn()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    same = all(o == outs["separate"] for o in outs.values())
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1
                   for t in outs["separate"])  # + EOS (approximate for rows that hit the cap)
    med = SimpleNamespace(**{k: statistics.median(v) for k, v in wall.items()})
    cmed = SimpleNamespace(**{k: statistics.median(v) for k, v in cpu.items()})
    print(f"model {loaded.model_id} on {model.device} ({args.dtype}): {len(alphas)} settings "
          f"(alpha {alphas}) x {len(texts)} prompts, batch {bs}, up to {n} new tokens, "
          f"{args.repeats} rounds (median); ~{n_tokens} generated tokens per run; "
          f"completions equal: {same}")
    for k in runs:
        print(f"  {k:14s} wall {getattr(med, k):8.2f} s  cpu {getattr(cmed, k):8.2f} s  "
              f"{n_tokens / getattr(cmed, k):7.1f} tokens/cpu-s")
    print(f"ratio packed_refill / separate (throughput, CPU time) = "
          f"{cmed.separate / cmed.packed_refill:.3f}  (wall {med.separate / med.packed_refill:.3f})")
    print(f"ratio packed_fixed  / separate (throughput, CPU time) = "
          f"{cmed.separate / cmed.packed_fixed:.3f}  (wall {med.separate / med.packed_fixed:.3f})")
    if args.slots:
        print(f"ratio packed_slots  / separate (throughput, CPU time) = "
              f"{cmed.separate / cmed.packed_slots:.3f}  (wall {med.separate / med.packed_slots:.3f})")


if __name__ == "__main__":
    main()
