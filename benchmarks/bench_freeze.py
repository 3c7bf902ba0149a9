"""Frozen (ablated) steered generation: lockstep KV-cached vs the paper's full re-computation,
and vs plain steered generation, measured side by side in one run.

    python benchmarks/bench_freeze.py [--model demo] [--prompts 8] [--new-tokens 256]
                                      [--modes qk,ov,svv,mlp] [--rounds R] [--no-reference]
                                      [--ref-mode qk] [--ref-new-tokens N]

On the same model, prompts and DIM vector (from the built-in demo prompts, at ``--layer``,
default 40% of the depth), after a short warm-up, every run producing exactly the requested
number of tokens per row (no EOS stop); P and L are repeated ``--rounds`` times in
interleaved order (P, L_qk, L_ov, ..., P, L_qk, ...) and compared by their summed times, so
a shared machine's load hits every side alike; their process CPU time is reported too (with
one thread, the ratio least disturbed by other processes):
  P. plain steered generation (``generate_ids`` with the steering vector, KV cache)
  L. lockstep frozen generation (``frozen_generate_ids``) for each of ``--modes``
  R. the paper's computation for ``--ref-mode`` (``frozen_generate_reference``: two full
     forward passes over the whole sequence per step, no cache) at ``--ref-new-tokens``
     (default: ``--new-tokens``); when that differs, L is also timed at that length so the
     speed-up is a measured same-length ratio.
  S. with ``--ref-sample-steps K``: single reference steps timed at K evenly spaced
     positions t of the ``--new-tokens`` response (the same two full passes over the prompt
     plus the first t tokens of L's output); the reference time at ``--new-tokens`` is then
     estimated as the trapezoid sum over t = 0..N-1 of these step times, wall and process
     CPU (labelled "estimated"; also with ``--no-reference``): the reference at 256 tokens
     takes hours on a busy 2-core CPU.
Prints seconds, tokens/s and the ratios (targets, issue 17): R/L time >= 20x at 256 tokens
on >= 4 prompts; P/L time (= L throughput relative to plain) >= 0.55x for every mode at
8 prompts x 256 tokens. ``--no-reference`` skips R (and S).
Also prints how many generated tokens of L and R agree (exactness on a real model).
"""

from __future__ import annotations

import argparse
import time

import torch

from steerscope.data.builtin import demo_prompts
from steerscope.generation import generate_ids
from steerscope.mechanisms import frozen_generate_ids, frozen_generate_reference
from steerscope.models.chat import encode_prompts, format_prompt
from steerscope.models.loading import load_model
from steerscope.runtime import steer
from steerscope.vectors import extract_vector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--modes", default="qk,ov,svv,mlp")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of P and L")
    ap.add_argument("--no-reference", action="store_true", help="skip the re-computation")
    ap.add_argument("--ref-mode", default="qk")
    ap.add_argument("--ref-new-tokens", type=int)
    ap.add_argument("--ref-sample-steps", type=int, default=0)
    ap.add_argument("--layer", type=int)
    ap.add_argument("--alpha", type=float, default=-1.0, help="default -1 on harmful prompts")
    ap.add_argument("--out", help="write the measurements as JSON")
    args = ap.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tok, arch = loaded.model, loaded.tokenizer, loaded.arch
    layer = args.layer if args.layer is not None else int(0.4 * arch.n_layers)
    harmful = demo_prompts("harmful").instructions
    harmless = demo_prompts("harmless").instructions
    sv = extract_vector(model, tok, [format_prompt(tok, p) for p in harmful[:16]],
                        [format_prompt(tok, p) for p in harmless[:16]], method="dim",
                        layer=layer, arch=arch)
    s = sv.vector.to(model.device)
    texts = [format_prompt(tok, harmful[i % len(harmful)]) for i in range(args.prompts)]
    enc = encode_prompts(tok, texts, device=model.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n, n_ref = args.new_tokens, args.ref_new_tokens or args.new_tokens
    modes = [m for m in args.modes.split(",") if m]
    kw = dict(stop_at_eos=False, arch=arch)

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    def plain(k):
        return generate_ids(model, ids, mask, max_new_tokens=k, stop_at_eos=False,
                            interventions=[steer(s, layer, args.alpha)])

    def lockstep(mode, k):
        return frozen_generate_ids(model, ids, mask, s, layer, args.alpha, mode,
                                   max_new_tokens=k, **kw)

    def reference(k):
        return frozen_generate_reference(model, ids, mask, s, layer, args.alpha, args.ref_mode,
                                         max_new_tokens=k, **kw)

    results: dict[str, dict] = {}
    with torch.inference_mode():
        plain(2)  # warm-up
        for m in modes:
            lockstep(m, 2)
        if not args.no_reference:
            reference(2)
        full: dict[str, torch.Tensor] = {}
        def timed_round(key, fn):  # wall and process CPU time (robust to a shared machine)
            c0 = time.process_time()
            t, out = timed(fn)
            r = results.setdefault(key, dict(seconds=0.0, rounds=[], cpu_seconds=0.0,
                                             cpu_rounds=[], new_tokens=n))
            r["seconds"] += t
            r["rounds"].append(t)
            r["cpu_seconds"] += time.process_time() - c0
            r["cpu_rounds"].append(time.process_time() - c0)
            return out

        for _ in range(args.rounds):
            timed_round("plain", lambda: plain(n))
            for m in modes:
                full[m] = timed_round(f"lockstep_{m}", lambda m=m: lockstep(m, n)).sequences
        if not args.no_reference:
            if n_ref != n or args.ref_mode not in modes:
                t, lock_ref = timed(lambda: lockstep(args.ref_mode, n_ref))
                results[f"lockstep_{args.ref_mode}@{n_ref}"] = dict(seconds=t, new_tokens=n_ref)
            else:
                lock_ref = lockstep(args.ref_mode, n_ref)  # tokens only (not timed again)
            t, ref = timed(lambda: reference(n_ref))
            results[f"reference_{args.ref_mode}@{n_ref}"] = dict(seconds=t, new_tokens=n_ref)
        sampled = []
        if args.ref_sample_steps and args.ref_mode in full:
            seqs, p_len = full[args.ref_mode], ids.shape[1]
            k = args.ref_sample_steps
            for step in sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}):
                x = seqs[:, : p_len + step]
                xm = torch.cat([mask, torch.ones_like(x[:, p_len:])], dim=1)
                c0 = time.process_time()
                dt, _ = timed(lambda x=x, xm=xm: frozen_generate_reference(
                    model, x, xm, s, layer, args.alpha, args.ref_mode, max_new_tokens=1, **kw))
                sampled.append((step, dt, time.process_time() - c0))

            def trapezoid(j):  # the sum over t = 0..N-1 of the step times in column j
                est = sum((b[0] - a[0]) * (a[j] + b[j]) / 2 for a, b in zip(sampled, sampled[1:]))
                return est + (sampled[0][j] + sampled[-1][j]) / 2  # the two endpoints

            results[f"reference_{args.ref_mode}@{n} (estimated)"] = dict(
                seconds=trapezoid(1), cpu_seconds=trapezoid(2), new_tokens=n,
                sampled_steps=sampled)

    rows = args.prompts
    print(f"model {loaded.model_id} on {model.device} ({args.dtype}, {torch.get_num_threads()} "
          f"threads), {rows} prompts (prompt length {ids.shape[1]}), DIM vector at layer {layer}, "
          f"alpha {args.alpha:+g}")
    for name, r in results.items():
        runs = len(r.get("rounds", [0]))
        print(f"  {name:24s} {r['seconds'] / runs:9.2f} s  "
              f"{rows * r['new_tokens'] * runs / r['seconds']:8.2f} tokens/s  "
              f"({r['new_tokens']} new tokens, mean of {runs} run(s))")
    ratios = {}
    for m in modes:
        ratios[f"lockstep_{m}_vs_plain_throughput"] = (results["plain"]["seconds"]
                                                       / results[f"lockstep_{m}"]["seconds"])
        ratios[f"lockstep_{m}_vs_plain_throughput (CPU time)"] = (
            results["plain"]["cpu_seconds"] / results[f"lockstep_{m}"]["cpu_seconds"])
    def one_run(key):  # seconds of one run (P / L entries sum --rounds runs)
        return results[key]["seconds"] / len(results[key].get("rounds", [0]))

    same, prefix = None, None
    est_key = f"reference_{args.ref_mode}@{n} (estimated)"
    if est_key in results:  # also with --no-reference
        lock = results[f"lockstep_{args.ref_mode}"]
        runs = len(lock["rounds"])
        ratios[f"reference_vs_lockstep_{args.ref_mode}_speedup@{n} (estimated)"] = (
            results[est_key]["seconds"] / one_run(f"lockstep_{args.ref_mode}"))
        ratios[f"reference_vs_lockstep_{args.ref_mode}_speedup@{n} (estimated, CPU time)"] = (
            results[est_key]["cpu_seconds"] / (lock["cpu_seconds"] / runs))
        print("  reference step times (t, wall s, CPU s): " + ", ".join(
            f"({a}, {b:.2f}, {c:.2f})" for a, b, c in results[est_key]["sampled_steps"]))
    if not args.no_reference:
        lock_key = (f"lockstep_{args.ref_mode}@{n_ref}"
                    if f"lockstep_{args.ref_mode}@{n_ref}" in results
                    else f"lockstep_{args.ref_mode}")
        ratios[f"reference_vs_lockstep_{args.ref_mode}_speedup@{n_ref}"] = (
            one_run(f"reference_{args.ref_mode}@{n_ref}") / one_run(lock_key))
        same = (lock_ref.new_tokens == ref.new_tokens)
        prefix = int(same.long().cumprod(-1).sum(-1).min())
    for k, v in ratios.items():
        print(f"ratio {k} = {v:.3f}")
    if same is not None:
        print(f"lockstep vs reference tokens: {int(same.sum())}/{same.numel()} equal; all rows "
              f"agree on the first {prefix} tokens")
    if args.out:
        from steerscope.artifacts import atomic_write_json

        atomic_write_json(args.out, dict(model=loaded.model_id, layer=layer, prompts=rows,
                                         threads=torch.get_num_threads(), results=results,
                                         ratios=ratios, rounds=args.rounds,
                                         tokens_equal=None if same is None else int(same.sum()),
                                         tokens_total=None if same is None else same.numel(),
                                         common_prefix=prefix))


if __name__ == "__main__":
    main()
