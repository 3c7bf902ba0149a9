"""The new decoding paths of benchmarks/gpu.py, each beside its eager baseline in the same run,
and the printed table of every section.

Imported by gpu.py (not a script of its own). Sections (``cfg`` = gpu.py's FULL or SMALL):

- ``packed_sweep``: a sparsity-sweep-like job, ``sweep_settings`` vectors × ``sweep_prompts``
  prompts × ``sweep_tokens`` tokens. Separate (today): each setting's prompts in batches of
  ``batch``, one :func:`generate_ids` per batch. Packed: every (setting, prompt) row in one
  :func:`generate_refill` call with per-row vectors, at the batch size that fits the free
  memory (:func:`batch_size_from_memory`, ``cfg["batch"]`` off CUDA). Same tokens per row.
  Packed in slots: the same rows through :func:`generate_slots` as ``generate`` runs it on
  CUDA (a fresh decoder per call, freed with its recorded graphs at the end; the compiled
  step is kept), its first call (compilation) timed apart, tokens compared with packed.
- ``refill``: ``refill_prompts`` prompts whose completions end at different steps (half after
  ``short_tokens`` like refusals, the rest spread up to ``new_tokens``; random weights never
  emit EOS, so the ends are per-row limits): fixed batches that decode until their longest
  row ends (today) vs rows that leave the batch with waiting prompts joining.
- ``compiled``: eager :func:`generate_ids` vs :func:`generate_compiled` (static cache, the
  decode step compiled; a CUDA graph on CUDA), batch ``batch``, ``new_tokens`` each; the
  tokens are compared; the first compiled call (compilation) is timed apart. ``--small``
  runs the static-cache loop without ``torch.compile`` (compiling on CPU takes minutes).
- ``bandwidth``: measured device copy bandwidth (read + written bytes / s of a large copy) and
  for eager and compiled decoding the ratio (bytes of weights + mean KV cache read per step) /
  step time / copy bandwidth.
- ``eap_ig_batch``: EAP-IG at the paper's size (``eap_tokens`` response) on ``eap_examples``
  examples at batch 1 and at the largest batch that fits (halved on OOM): s / example.
"""

from __future__ import annotations

import torch

from steerscope.generation import generate_ids
from steerscope.generation_compiled import generate_compiled
from steerscope.generation_refill import generate_refill
from steerscope.generation_sizes import batch_size_from_memory, kv_bytes_per_token
from steerscope.generation_slots import (
    cache_length,
    current_slot_decoder,
    generate_slots,
    release_slots,
)
from steerscope.patching import eap_ig
from steerscope.runtime import Runtime, steer

EOS_NONE = torch.tensor([], dtype=torch.long)


def sweep_vectors(s: torch.Tensor, n: int) -> torch.Tensor:
    """[n, d]: ``s`` with a growing fraction of its smallest dimensions zeroed (like the
    sweep's sparse vectors)."""
    order = s.abs().argsort()
    out = s.repeat(n, 1)
    for i in range(n):
        out[i, order[: int(len(s) * i / max(n, 1))]] = 0
    return out


def bench_packed_sweep(model, arch, layer, s, vocab, cfg, clock, random_ids) -> dict:
    n_set, n_prompt, n_new = cfg["sweep_settings"], cfg["sweep_prompts"], cfg["sweep_tokens"]
    device = s.device
    lengths = torch.randint(cfg["prompt_tokens"] // 2, cfg["prompt_tokens"] + 1, (n_prompt,),
                            generator=torch.Generator().manual_seed(5))
    ids = random_ids(n_prompt, cfg["prompt_tokens"], vocab, 11)
    prompts = [ids[i, : int(lengths[i])] for i in range(n_prompt)]
    vecs = sweep_vectors(s, n_set)  # [S, d]
    order = sorted(range(n_prompt), key=lambda i: -len(prompts[i]))

    def separate():
        for k in range(n_set):
            op = steer(vecs[k], layer, -1.0)
            for b in range(0, n_prompt, cfg["batch"]):
                idx = order[b: b + cfg["batch"]]
                width = max(len(prompts[i]) for i in idx)
                x = torch.zeros(len(idx), width, dtype=torch.long)
                m = torch.zeros_like(x)
                for r, i in enumerate(idx):
                    x[r, width - len(prompts[i]):] = prompts[i]
                    m[r, width - len(prompts[i]):] = 1
                generate_ids(model, x.to(device), m.to(device), max_new_tokens=n_new,
                             stop_at_eos=False, interventions=[op], eos_token_id=[])

    rows = [(k, i) for k in range(n_set) for i in range(n_prompt)]
    rows.sort(key=lambda r: -len(prompts[r[1]]))
    packed_batch = batch_size_from_memory(model, cfg["prompt_tokens"] + n_new)
    packed_batch = packed_batch if device.type == "cuda" else cfg["batch"]

    ops = [steer(vecs, layer, [-1.0] * n_set)]
    row_prompts, row_ids = [prompts[i] for _, i in rows], [k for k, _ in rows]

    packed_out = []  # the last packed call's tokens, compared with the slots'

    def packed():
        with Runtime(model, ops):
            packed_out[:] = generate_refill(model, row_prompts, batch_size=packed_batch,
                                            max_new_tokens=n_new, eos=EOS_NONE.to(device),
                                            pad_token_id=0, row_ids=row_ids)

    slots_batch = (batch_size_from_memory(model, cache_length(cfg["prompt_tokens"], n_new))
                   if device.type == "cuda" else cfg["batch"])
    seen = {}  # what the last call's decoder did

    def slotted():  # as generate() runs it: a fresh decoder, freed (graphs too) at the end
        try:
            return generate_slots(model, row_prompts, batch_size=slots_batch,
                                  max_new_tokens=n_new, eos=EOS_NONE.to(device), pad_token_id=0,
                                  interventions=ops, row_ids=row_ids, compile=cfg["compile"])
        finally:
            dec = current_slot_decoder(model)
            seen.update(steps=dec.steps, slots=dec.batch, columns=dec.total,
                        compiled=dec.compiled_step is not None,
                        cudagraph_skips=dec.cudagraph_skips)
            release_slots(model)

    tokens = n_set * n_prompt * n_new
    t_sep, sep_runs = clock.best(separate, cfg["repeats"])
    t_pack, pack_runs = clock.best(packed, cfg["repeats"])
    out = dict(settings=n_set, prompts=n_prompt, new_tokens=n_new, separate_batch=cfg["batch"],
               packed_batch=packed_batch, separate_s=t_sep, packed_s=t_pack,
               separate_runs_s=sep_runs, packed_runs_s=pack_runs,
               separate_tokens_per_s=tokens / t_sep, packed_tokens_per_s=tokens / t_pack,
               packed_vs_separate_throughput=t_sep / t_pack)
    t_first, first = clock.time(slotted)  # compiles (on CUDA: captures the graph)
    t_slot, slot_runs = clock.best(slotted, cfg["repeats"])  # compiled step reused
    same = sum(a.tolist() == b.tolist() for a, b in zip(first, packed_out)) / len(packed_out)
    out.update(packed_slots_s=t_slot, packed_slots_runs_s=slot_runs,
               packed_slots_first_call_s=t_first, torch_compile=cfg["compile"],
               packed_slots_compiled=seen["compiled"],
               packed_slots_cudagraph_skips=seen["cudagraph_skips"],
               packed_slots_tokens_per_s=tokens / t_slot,
               packed_slots_vs_separate_throughput=t_sep / t_slot,
               packed_slots_rows_equal_share=same, slots=seen["slots"],
               slots_steps=seen["steps"], slots_step_ms=1000 * t_slot / seen["steps"],
               slots_cache_columns=seen["columns"],
               slots_bytes_per_step=slot_bytes_per_step(model, seen["slots"], seen["columns"]))
    return out


def row_limits(n: int, short: int, longest: int) -> list[int]:
    """Completion lengths: every other row ends after ``short`` tokens (refusals), the
    others spread evenly up to ``longest``."""
    g = torch.Generator().manual_seed(2)
    spread = torch.randint(short, longest + 1, (n,), generator=g).tolist()
    return [short if i % 2 == 0 else spread[i] for i in range(n)]


def bench_refill(model, arch, layer, s, vocab, cfg, clock, random_ids) -> dict:
    n, n_new, batch = cfg["refill_prompts"], cfg["new_tokens"], cfg["batch"]
    device = s.device
    ids = random_ids(n, cfg["prompt_tokens"], vocab, 13).to(device)
    limits = row_limits(n, cfg["short_tokens"], n_new)
    op = [steer(s, layer, 1.0)]

    def fixed():  # today: a batch decodes until its longest row ends
        for b in range(0, n, batch):
            x = ids[b: b + batch]
            generate_ids(model, x, torch.ones_like(x), max_new_tokens=max(limits[b: b + batch]),
                         stop_at_eos=False, interventions=op, eos_token_id=[])

    def refilled():
        with Runtime(model, op):
            generate_refill(model, list(ids.cpu()), batch_size=batch, max_new_tokens=n_new,
                            eos=EOS_NONE.to(device), pad_token_id=0, row_limits=limits)

    useful = sum(limits)
    t_fixed, fixed_runs = clock.best(fixed, cfg["repeats"])
    t_refill, refill_runs = clock.best(refilled, cfg["repeats"])
    return dict(prompts=n, batch=batch, useful_tokens=useful, fixed_s=t_fixed,
                refill_s=t_refill, fixed_runs_s=fixed_runs, refill_runs_s=refill_runs,
                fixed_tokens_per_s=useful / t_fixed, refill_tokens_per_s=useful / t_refill,
                refill_vs_fixed_throughput=t_fixed / t_refill)


def copy_bandwidth(device: torch.device, clock, n_bytes: int) -> float:
    """Bytes read + written per second by a device-to-device copy of ``n_bytes`` (best of 5)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t, _ = clock.best(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / t


def bytes_per_step(model, batch: int, prompt: int, new: int) -> float:
    """Bytes one decode step reads: every weight once, plus the mean KV cache of the batch."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + kv_bytes_per_token(model) * batch * (prompt + new / 2)


def slot_bytes_per_step(model, batch: int, columns: int) -> float:
    """Bytes one slot decode step reads: every weight once, plus every slot's whole KV cache
    (``columns`` columns: the masked attention reads them all)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + kv_bytes_per_token(model) * batch * columns


def bench_compiled(model, arch, layer, s, prompts, cfg, clock) -> dict:
    n, batch = cfg["new_tokens"], prompts.shape[0]
    ops = [steer(s, layer, 1.0)]
    mask = torch.ones_like(prompts)

    def eager():
        return generate_ids(model, prompts, mask, max_new_tokens=n, stop_at_eos=False,
                            interventions=ops, eos_token_id=[])

    def compiled():
        return generate_compiled(model, prompts, mask, max_new_tokens=n, stop_at_eos=False,
                                 interventions=ops, eos_token_id=[], compile=cfg["compile"])

    t_first, first = clock.time(compiled)  # compiles (and on CUDA captures the graph)
    t_eager, eager_runs = clock.best(eager, cfg["repeats"])
    t_comp, comp_runs = clock.best(compiled, cfg["repeats"])
    same = bool((eager().new_tokens == first.new_tokens).all())
    return dict(batch=batch, new_tokens=n, torch_compile=cfg["compile"], eager_s=t_eager,
                compiled_s=t_comp,
                compiled_first_call_s=t_first, eager_runs_s=eager_runs,
                compiled_runs_s=comp_runs, eager_tokens_per_s=batch * n / t_eager,
                compiled_tokens_per_s=batch * n / t_comp,
                compiled_vs_eager_throughput=t_eager / t_comp, tokens_equal=same,
                eager_step_ms=1000 * t_eager / n, compiled_step_ms=1000 * t_comp / n)


def bench_bandwidth(model, compiled: dict, cfg, clock, device, packed: dict | None = None
                    ) -> dict:
    """Copy bandwidth, and each decoding path's (bytes read per step / step time / copy
    bandwidth): eager and compiled at batch ``cfg["batch"]`` (compiled section), and the
    packed sweep's slots at the batch that fits (packed_sweep section, when it ran)."""
    bw = copy_bandwidth(device, clock, cfg["copy_bytes"])
    per_step = bytes_per_step(model, compiled["batch"], cfg["prompt_tokens"], cfg["new_tokens"])
    out = dict(copy_bandwidth_gb_s=bw / 1e9, bytes_per_step_gb=per_step / 1e9)
    for path in ("eager", "compiled"):
        step_s = compiled[f"{path}_step_ms"] / 1000
        out[f"{path}_bandwidth_ratio"] = per_step / step_s / bw
    if packed and "slots_step_ms" in packed:
        out["slots_batch"] = packed["slots"]
        out["slots_bytes_per_step_gb"] = packed["slots_bytes_per_step"] / 1e9
        out["slots_bandwidth_ratio"] = (packed["slots_bytes_per_step"]
                                        / (packed["slots_step_ms"] / 1000) / bw)
    return out


def bench_eap_ig_batch(gm, s, examples, cfg, clock, with_backoff, device) -> dict:
    def run(b):
        return clock.time(lambda: eap_ig(gm, examples, s, steps=cfg["ig_steps"], batch_size=b))

    t1, _ = run(1)
    batch, (tb, _) = with_backoff(run, min(cfg["eap_batch"], len(examples)), device)
    n = len(examples)
    return dict(examples=n, response_tokens=cfg["eap_tokens"], ig_steps=cfg["ig_steps"],
                batch_1_s_per_example=t1 / n, batch=batch, batch_s_per_example=tb / n,
                batch_vs_1_throughput=t1 / tb)


NEW_ESTIMATE_FORMULA = (
    "per model, new paths: patching = vectors(3) x examples(400) x EAP-IG s/example at the "
    "batch that fits (eap_ig_batch); evaluation = 800 prompts x 512 tokens / packed tokens/s; "
    "sparsity = vectors(3) x settings(32) x 513 prompts x 512 tokens / packed tokens/s "
    "(packed_sweep: per-row vectors at the batch that fits, the faster of packed refill and "
    "packed slots, i.e. generate's CUDA path; per-token time taken as constant "
    "in the length, as the old formula's linear scaling does; every row runs to 512 tokens, so "
    "the refill gain on real EOS lengths comes on top); freezing = the old formula (freeze "
    "section); total = sum over both models")


def paper_estimate_new(res: dict, paper: dict, old: dict) -> dict:
    """The paper study's GPU hours for one model from the packed / batched sections."""
    pack, ig = res.get("packed_sweep"), res.get("eap_ig_batch")
    if not (pack and ig) or "error" in pack or "error" in ig or "freezing_s" not in old:
        return dict(skipped="needs the packed_sweep, eap_ig_batch and freeze sections")
    rate = max(pack["packed_tokens_per_s"], pack.get("packed_slots_tokens_per_s", 0.0))
    path = "packed_slots" if rate != pack["packed_tokens_per_s"] else "packed"
    parts = dict(
        patching_s=paper["vectors"] * paper["patching_examples"] * ig["batch_s_per_example"],
        evaluation_s=paper["eval_prompts"] * paper["response_tokens"] / rate,
        freezing_s=old["freezing_s"],
        sparsity_s=(paper["vectors"] * paper["sparsity_settings"] * paper["sparsity_prompts"]
                    * paper["response_tokens"] / rate))
    return dict(parts, total_s=sum(parts.values()), total_h=sum(parts.values()) / 3600,
                generation_path=path, generation_tokens_per_s=rate)


def table(results: dict, modes) -> str:
    """The measurements as a plain-text table (one column per model)."""
    rows = [
        ("build (s)", "build_s", None),
        ("HF generate (tok/s)", "generation", "hf_tokens_per_s"),
        ("steered generate (tok/s)", "generation", "steered_tokens_per_s"),
        ("steered / HF throughput", "generation", "steered_vs_hf_throughput"),
        ("generation batch", "generation", "batch"),
        *[(f"{m} freeze / plain steered", "freeze", f"{m}_vs_plain_throughput")
          for m in modes],
        ("EAP-IG s / example", "eap_ig", "seconds_per_example"),
        ("EAP-IG peak memory (GB)", "eap_ig", "peak_memory_gb"),
        ("EAP-IG extra memory (GB)", "eap_ig", "extra_memory_gb"),
        ("exact s / edge", "exact", "exact_s_per_edge"),
        ("EAP-IG speed-up vs exact", "exact", "eap_ig_speedup_vs_exact_edges"),
        ("Spearman sampled edges", "exact", "spearman_sampled_edges"),
        ("packed sweep (tok/s)", "packed_sweep", "packed_tokens_per_s"),
        ("separate sweep (tok/s)", "packed_sweep", "separate_tokens_per_s"),
        ("packed / separate", "packed_sweep", "packed_vs_separate_throughput"),
        ("packed slots (tok/s)", "packed_sweep", "packed_slots_tokens_per_s"),
        ("packed slots / separate", "packed_sweep", "packed_slots_vs_separate_throughput"),
        ("slots rows = packed rows", "packed_sweep", "packed_slots_rows_equal_share"),
        ("refill / fixed batches", "refill", "refill_vs_fixed_throughput"),
        ("compiled / eager decoding", "compiled", "compiled_vs_eager_throughput"),
        ("eager bandwidth ratio", "bandwidth", "eager_bandwidth_ratio"),
        ("compiled bandwidth ratio", "bandwidth", "compiled_bandwidth_ratio"),
        ("slots bandwidth ratio", "bandwidth", "slots_bandwidth_ratio"),
        ("EAP-IG s / ex. (batch)", "eap_ig_batch", "batch_s_per_example"),
        ("paper study (GPU h)", "paper_estimate", "total_h"),
        ("new paths study (GPU h)", "paper_estimate_new_paths", "total_h"),
    ]
    names = list(results["models"])
    lines = [f"{'':28s}" + "".join(f"{n:>16s}" for n in names)]
    for label, key, sub in rows:
        cells = []
        for n in names:
            v = results["models"][n].get(key)
            v = v.get(sub) if isinstance(v, dict) and sub else (None if sub else v)
            cells.append(f"{v:16.3f}" if isinstance(v, float) else f"{str(v):>16s}")
        lines.append(f"{label:28s}" + "".join(cells))
    return "\n".join(lines)
