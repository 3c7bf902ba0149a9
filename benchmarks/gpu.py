"""One-GPU benchmark at paper scale, with random weights in the exact shapes of the paper's models.

    python benchmarks/gpu.py [--out gpu_benchmark.json] [--models gemma-2-2b,llama-3.2-3b]
    python benchmarks/gpu.py --small            # CPU, tiny configs of the same families, seconds

For each config in ``benchmarks/gpu_configs/`` (the models' own ``config.json`` values, copied
into the repository; nothing is downloaded) the model is built with ``from_config`` directly
on the device (bf16 on a GPU) and measured:

Generation and freezing times are the fastest of ``repeats`` (2) runs; every run's time is in
the JSON (the first run at a new shape also pays the allocator's growth).

1. ``generation``: steered greedy generation (``steerscope.generation.generate_ids`` with the
   steering vector at every position) vs HF ``model.generate`` (greedy, plain), batch 32,
   256 new tokens each. Both produce exactly ``new_tokens`` tokens per row (no EOS stop:
   ``stop_at_eos=False`` / ``min_new_tokens``), so they do equal work.
2. ``freeze``: lockstep frozen generation (``frozen_generate_ids``, modes qk/ov/svv/mlp) vs
   plain steered generation, same batch and length.
3. ``eap_ig``: seconds for one example (``steerscope.patching.eap_ig``, T = 10) of a 512-token
   response after a 64-token prompt, and the peak GPU memory above the loaded model.
4. ``exact``: exact patching (``steerscope.patching.exact_patching``) of a random sample of
   edges of the same example and EAP-IG again, both in float32 (the model is converted; in
   bf16 single-edge effects drown in rounding): seconds per edge, Spearman(EAP-IG, exact) on
   the sample, the extrapolated speed-up of EAP-IG over exact patching of every edge.
5. ``paper_estimate``: the whole paper study's GPU time from those figures (formula in the
   JSON and in benchmarks/README.md).
6. the new paths (``benchmarks/gpu_paths.py``, each beside its eager baseline): ``packed_sweep``
   (per-row vectors packed at the batch that fits vs one setting at a time at batch 32),
   ``refill`` (finished rows leave the batch vs fixed batches), ``compiled`` (static cache +
   CUDA graph vs eager), ``bandwidth`` (bytes read per step / step time / copy bandwidth),
   ``eap_ig_batch`` (EAP-IG at 512 tokens at the batch that fits), and
   ``paper_estimate_new_paths`` (the study from those).

A batch that runs out of GPU memory is retried at half the size (recorded as ``batch``).
Results are written after every section (a lease that ends early keeps what was measured);
``--budget-s`` (default 450 s) skips what would start after the budget. Random weights give
random tokens: only times, memory and the EAP-IG/exact agreement are meaningful.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

from steerscope.artifacts import atomic_write_json
from steerscope.generation import generate_ids
from steerscope.mechanisms import frozen_generate_ids
from steerscope.models.archs import validate_model
from steerscope.patching import GraphModel, PatchingExample, eap_ig, exact_patching, spearman
from steerscope.runtime import steer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_paths  # noqa: E402  (the new decoding paths' sections, benchmarks/gpu_paths.py)

CONFIG_DIR = Path(__file__).resolve().parent / "gpu_configs"
MODELS = ("gemma-2-2b", "llama-3.2-3b")
FULL = dict(batch=32, prompt_tokens=64, new_tokens=256, eap_tokens=512, ig_steps=10,
            exact_edges=48, modes=("qk", "ov", "svv", "mlp"), repeats=2, sweep_settings=4,
            sweep_prompts=32, sweep_tokens=128, refill_prompts=64, short_tokens=32,
            copy_bytes=1 << 30, eap_examples=8, eap_batch=8, compile=True)
SMALL = dict(batch=2, prompt_tokens=8, new_tokens=6, eap_tokens=12, ig_steps=2,
             exact_edges=6, modes=("qk", "ov", "svv", "mlp"), repeats=2, sweep_settings=3,
             sweep_prompts=3, sweep_tokens=6, refill_prompts=5, short_tokens=2,
             copy_bytes=1 << 24, eap_examples=2, eap_batch=2, compile=False)
SECTIONS = ("generation", "freeze", "packed_sweep", "refill", "compiled", "bandwidth",
            "eap_ig", "eap_ig_batch", "exact")
# the paper's study per model (design/paper.md sections 1, 4, 5, 7)
PAPER = dict(vectors=3, patching_examples=400, response_tokens=512, eval_prompts=800,
             freeze_modes=4, freeze_prompts=200, sparsity_settings=32, sparsity_prompts=513)
ESTIMATE_FORMULA = (
    "per model: patching = vectors(3) x examples(100 flipped prompts x 4 datasets = 400) x "
    "eap_ig_s(512 tokens); t512(x) = 512 / new_tokens x the measured batch time of x "
    "(linear in the length: 2x the 256-token time); evaluation = ceil(800 / batch) x t512(steered) (base + 3 vectors x 200 test "
    "prompts, also the patching rollouts); freezing = sum over qk/ov/svv/mlp of "
    "ceil(200 / batch) x t512(mode) (DIM vector); sparsity = vectors(3) x settings(4 rules x "
    "8 levels = 32) x ceil(513 / batch) x t512(steered) (200 test + 313 StrongREJECT "
    "prompts); total = sum over both models")


def load_spec(name: str, *, small: bool) -> dict:
    """The JSON spec ``gpu_configs/<name>.json``; ``small``: shrunk to a tiny model of the same
    family (same architecture keys, tiny widths)."""
    spec = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    if small:
        hf = dict(spec["hf_config"])
        hf.update(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
        if "query_pre_attn_scalar" in hf:
            hf["query_pre_attn_scalar"] = 16
        if "sliding_window" in hf:
            hf["sliding_window"] = 8
        spec = dict(spec, hf_config=hf, steer_layer=1, name=spec["name"] + ", tiny")
    return spec


def build_model(spec: dict, device: torch.device, dtype: torch.dtype):
    """Random-weight causal LM from the spec's config, constructed on ``device`` in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = dict(spec["hf_config"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class Clock:
    """Wall-clock timing that waits for the device (``torch.cuda.synchronize``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn):
        """``(seconds, fn())``."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def best(self, fn, repeats: int):
        """``(fastest seconds, every run's seconds)`` of ``repeats`` calls of ``fn``: the
        first call at a new shape also pays the allocator's growth and kernel selection."""
        runs = [self.time(fn)[0] for _ in range(max(1, repeats))]
        return min(runs), runs


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def with_backoff(fn, batch: int, device: torch.device):
    """``fn(batch)``, halving ``batch`` after an out-of-memory error; ``(batch, result)``."""
    while True:
        try:
            return batch, fn(batch)
        except torch.OutOfMemoryError:
            free_memory(device)
            if batch == 1:
                raise
            batch //= 2


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset (CUDA) or peak process RSS (CPU), GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def random_ids(n_rows: int, n_tokens: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n_rows, n_tokens), generator=g)


def steering_vector(model, arch, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """A random direction [d] scaled to the mean residual norm entering block ``layer``."""
    with torch.no_grad():
        hidden = model(input_ids=ids[:2], output_hidden_states=True).hidden_states[layer]
    norm = hidden.float().norm(dim=-1).mean()
    g = torch.Generator().manual_seed(1)
    s = torch.randn(arch.d_model, generator=g)
    return (s / s.norm() * norm.cpu()).to(device=ids.device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------
def bench_generation(model, arch, layer, s, prompts, cfg, clock) -> dict:
    """Steered generate_ids vs HF generate, same batch, exactly ``new_tokens`` each."""
    n = cfg["new_tokens"]

    def hf(b, k=n):
        ids = prompts[:b]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=k, min_new_tokens=k, do_sample=False,
                             pad_token_id=0, disable_compile=True)
        assert out.shape[1] == ids.shape[1] + k, "HF generate stopped early"
        return out

    def ours(b, k=n):
        ids = prompts[:b]
        return generate_ids(model, ids, torch.ones_like(ids), max_new_tokens=k,
                            stop_at_eos=False, interventions=[steer(s, layer, 1.0)])

    batch, _ = with_backoff(lambda b: (hf(b, 2), ours(b, 2)), cfg["batch"], clock.device)
    r = cfg["repeats"]
    t_hf, hf_runs = clock.best(lambda: hf(batch), r)
    t_ours, ours_runs = clock.best(lambda: ours(batch), r)
    return dict(batch=batch, new_tokens=n, hf_generate_s=t_hf, steered_s=t_ours,
                hf_generate_runs_s=hf_runs, steered_runs_s=ours_runs,
                hf_tokens_per_s=batch * n / t_hf, steered_tokens_per_s=batch * n / t_ours,
                steered_vs_hf_throughput=t_hf / t_ours)


def bench_freeze(model, arch, layer, s, prompts, cfg, clock) -> dict:
    """Plain steered generation vs lockstep frozen generation of every mode."""
    n = cfg["new_tokens"]

    def plain(b, k=n):
        ids = prompts[:b]
        return generate_ids(model, ids, torch.ones_like(ids), max_new_tokens=k,
                            stop_at_eos=False, interventions=[steer(s, layer, 1.0)])

    def frozen(mode, b, k=n):
        ids = prompts[:b]
        return frozen_generate_ids(model, ids, torch.ones_like(ids), s, layer, 1.0, mode,
                                   max_new_tokens=k, stop_at_eos=False, arch=arch)

    # lockstep modes run 2 x batch rows: size the batch on the heaviest mode
    batch, _ = with_backoff(lambda b: [frozen(m, b, 2) for m in cfg["modes"]], cfg["batch"],
                            clock.device)
    r = cfg["repeats"]
    t_plain, plain_runs = clock.best(lambda: plain(batch), r)
    out = dict(batch=batch, new_tokens=n, plain_steered_s=t_plain, plain_runs_s=plain_runs)
    for mode in cfg["modes"]:
        t, runs = clock.best(lambda mode=mode: frozen(mode, batch), r)
        out[f"{mode}_s"], out[f"{mode}_runs_s"] = t, runs
        out[f"{mode}_vs_plain_throughput"] = t_plain / t
    return out


def patching_example(prompt_tokens: int, response_tokens: int, vocab: int) -> PatchingExample:
    ids = random_ids(1, prompt_tokens + response_tokens, vocab, seed=7)[0]
    return PatchingExample(ids, prompt_tokens, 1.0, "present/steered")


def bench_eap_ig(gm, s, example, cfg, clock, device) -> dict:
    """Seconds and peak memory of EAP-IG on one example (the model's dtype)."""
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 1e9
    else:
        before = peak_memory_gb(device)
    t, scores = clock.time(lambda: eap_ig(gm, [example], s, steps=cfg["ig_steps"]))
    peak = peak_memory_gb(device)
    return dict(sequence_tokens=int(example.input_ids.numel()),
                response_tokens=cfg["eap_tokens"], ig_steps=cfg["ig_steps"],
                seconds_per_example=t, peak_memory_gb=peak, memory_before_gb=before,
                extra_memory_gb=peak - before,
                memory_kind="torch.cuda.max_memory_allocated" if device.type == "cuda"
                else "process peak RSS", unmasked_positions=int(sum(scores.weights.values())),
                n_edges=gm.graph.n_edges, n_nodes=gm.graph.n_up)


def bench_exact(gm, s, example, cfg, clock) -> dict:
    """Exact patching of a random edge sample vs EAP-IG on the same edges, both in float32
    (the model is converted in place: in bf16 the single-edge effects drown in rounding)."""
    gm.model.float()
    g = gm.graph
    k = min(cfg["exact_edges"], g.n_edges)
    sample = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[:k].tolist()
    t_ig, ig = clock.time(lambda: eap_ig(gm, [example], s, steps=cfg["ig_steps"]))
    t, exact = clock.time(lambda: exact_patching(gm, [example], s, nodes=[], edges=sample))
    per_edge = t / k  # includes the example's two preparation passes, shared by every edge
    rho = spearman(ig.edges[sample].float(), exact.edges[sample].float())
    return dict(dtype="float32", sampled_edges=k, eap_ig_s=t_ig, exact_s=t,
                exact_s_per_edge=per_edge, exact_all_edges_s_extrapolated=per_edge * g.n_edges,
                eap_ig_speedup_vs_exact_edges=per_edge * g.n_edges / t_ig,
                spearman_sampled_edges=rho)


def paper_estimate(res: dict) -> dict:
    """The paper study's GPU hours for one model from its measured sections (see formula)."""
    gen, frz, ig = res.get("generation"), res.get("freeze"), res.get("eap_ig")
    if not (gen and frz and ig) or "error" in gen or "error" in frz or "error" in ig:
        return dict(skipped="needs the generation, freeze and eap_ig sections")
    p = PAPER
    to_512 = p["response_tokens"] / frz["new_tokens"]  # linear in the length
    steered_512 = to_512 * frz["plain_steered_s"]
    batches = lambda n, b: math.ceil(n / b)  # noqa: E731
    patching = p["vectors"] * p["patching_examples"] * ig["seconds_per_example"]
    evaluation = batches(p["eval_prompts"], frz["batch"]) * steered_512
    freezing = sum(batches(p["freeze_prompts"], frz["batch"]) * to_512 * frz[f"{m}_s"]
                   for m in ("qk", "ov", "svv", "mlp") if f"{m}_s" in frz)
    sparsity = (p["vectors"] * p["sparsity_settings"]
                * batches(p["sparsity_prompts"], frz["batch"]) * steered_512)
    parts = dict(patching_s=patching, evaluation_s=evaluation, freezing_s=freezing,
                 sparsity_s=sparsity)
    return dict(parts, total_s=sum(parts.values()), total_h=sum(parts.values()) / 3600)


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------
def run_model(name: str, cfg: dict, args, device, dtype, deadline: float, save) -> dict:
    """Every section for one model config; ``save(res)`` after each section."""
    clock = Clock(device)
    spec = load_spec(name, small=args.small)
    t, model = clock.time(lambda: build_model(spec, device, dtype))
    arch = validate_model(model)
    layer = spec["steer_layer"]
    res = dict(name=spec["name"], steer_layer=layer, build_s=t, dtype=str(dtype),
               attn_implementation=model.config._attn_implementation,
               parameters=sum(p.numel() for p in model.parameters()),
               model_memory_gb=(torch.cuda.memory_allocated(device) / 1e9
                                if device.type == "cuda" else None))
    save(res)
    prompts = random_ids(cfg["batch"], cfg["prompt_tokens"], arch.vocab_size, 3).to(device)
    s = steering_vector(model, arch, layer, prompts)
    example = patching_example(cfg["prompt_tokens"], cfg["eap_tokens"], arch.vocab_size)
    gm = GraphModel(model, layer, arch=arch)
    examples = [patching_example(cfg["prompt_tokens"], cfg["eap_tokens"], arch.vocab_size)
                for _ in range(cfg["eap_examples"])]
    vocab, gp = arch.vocab_size, gpu_paths
    sections = [  # "exact" converts the model to float32: it comes last
        ("generation", lambda: bench_generation(model, arch, layer, s, prompts, cfg, clock)),
        ("freeze", lambda: bench_freeze(model, arch, layer, s, prompts, cfg, clock)),
        ("packed_sweep", lambda: gp.bench_packed_sweep(model, arch, layer, s, vocab, cfg, clock,
                                                       random_ids)),
        ("refill", lambda: gp.bench_refill(model, arch, layer, s, vocab, cfg, clock,
                                           random_ids)),
        ("compiled", lambda: gp.bench_compiled(model, arch, layer, s, prompts, cfg, clock)),
        ("bandwidth", lambda: gp.bench_bandwidth(model, res["compiled"], cfg, clock, device,
                                                 res.get("packed_sweep"))),
        ("eap_ig", lambda: bench_eap_ig(gm, s, example, cfg, clock, device)),
        ("eap_ig_batch", lambda: gp.bench_eap_ig_batch(gm, s, examples, cfg, clock,
                                                       with_backoff, device)),
        ("exact", lambda: bench_exact(gm, s, example, cfg, clock)),
    ]
    for key, fn in sections:
        if key not in args.sections.split(","):
            continue
        if key == "bandwidth" and "error" in res.get("compiled", {"error": "not run"}):
            res[key] = dict(error="skipped: needs the compiled section")
        elif time.perf_counter() > deadline:
            res[key] = dict(error="skipped: time budget spent")
        else:
            try:
                with torch.inference_mode(key in ("generation", "freeze", "packed_sweep",
                                                  "refill")):
                    res[key] = fn()
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                res[key] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
            free_memory(device)
        print(f"[{name}] {key}: {json.dumps(res[key])}", flush=True)
        save(res)
    res["paper_estimate"] = paper_estimate(res)
    res["paper_estimate_new_paths"] = gpu_paths.paper_estimate_new(res, PAPER,
                                                                   res["paper_estimate"])
    save(res)
    return res  # the model is freed with this frame (main calls free_memory)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny configs on CPU (seconds)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", help="default: cuda if available (cpu with --small)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="default: bfloat16 on a GPU, float32 on CPU")
    ap.add_argument("--out", default="gpu_benchmark.json")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float,
                    help="no section starts after this many seconds (default 450; none with "
                         "--small)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.small
                                          else "cpu"))
    dtype = (getattr(torch, args.dtype) if args.dtype
             else torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = SMALL if args.small else FULL
    start = time.perf_counter()
    results = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), device=str(device),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                     else "cpu"), torch=torch.__version__, small=args.small,
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        paper=PAPER, estimate_formula=ESTIMATE_FORMULA,
        new_paths_estimate_formula=gpu_paths.NEW_ESTIMATE_FORMULA, models={})

    def save(res=None):
        results["elapsed_s"] = time.perf_counter() - start
        atomic_write_json(args.out, results)

    unknown = [k for k in args.sections.split(",") if k not in SECTIONS]
    if unknown:
        print(f"error: no section '{unknown[0]}': use {','.join(SECTIONS)}.", file=sys.stderr)
        raise SystemExit(2)
    for name in [m for m in args.models.split(",") if m]:
        if not (CONFIG_DIR / f"{name}.json").exists():
            print(f"error: no config '{name}': use one of {', '.join(MODELS)}.",
                  file=sys.stderr)
            raise SystemExit(2)
    for name in [m for m in args.models.split(",") if m]:
        results["models"][name] = {}
        budget = args.budget_s if args.budget_s is not None else (
            math.inf if args.small else 450.0)
        res = run_model(name, cfg, args, device, dtype, start + budget,
                        lambda r, name=name: (results["models"].__setitem__(name, r), save()))
        results["models"][name] = res
        free_memory(device)
    est = [r["paper_estimate"].get("total_h") for r in results["models"].values()]
    results["paper_estimate_total_h"] = (sum(est) if est and all(e is not None for e in est)
                                         else None)
    new = [r["paper_estimate_new_paths"].get("total_h") for r in results["models"].values()]
    results["paper_estimate_new_paths_total_h"] = (
        sum(new) if new and all(e is not None for e in new) else None)
    save()
    print(gpu_paths.table(results, FULL["modes"]))
    print(f"paper study estimate: {results['paper_estimate_total_h']} GPU hours "
          f"({ESTIMATE_FORMULA})")
    print(f"paper study estimate, new paths: {results['paper_estimate_new_paths_total_h']} "
          "GPU hours")
    print(f"wrote {args.out} ({results['elapsed_s']:.1f} s)")
    return results


if __name__ == "__main__":
    main()
