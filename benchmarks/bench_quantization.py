"""Memory and speed of a model loaded in int8 (``quantization="int8"``) vs float32, side by side.

    python benchmarks/bench_quantization.py [--model default] [--batch 4] [--new-tokens 32]
                                            [--rounds 2] [--threads 1]

Each setting runs in a fresh child process (so peak RSS is its own): load the model, then
  - parameter storage (``steerscope.models.quantization.parameter_bytes``: the int8 data and
    scales of quantized weights, not the float shape they present),
  - peak RSS while loading (``ru_maxrss``), RSS right after loading (``VmRSS``), and peak
    RSS of the whole child,
  - RSS after the timed runs (``VmRSS``),
  - one steered forward pass over ``--batch`` prompts (median of ``--repeats``),
  - a steered greedy generation of ``--new-tokens`` tokens per prompt (DIM-free: a fixed
    random unit vector × 8 at the middle layer; median of ``--repeats``),
  - the last-token logits of the forward pass (compared across settings: max |Δ|, top-1
    agreement).
Times are CPU seconds of the process (``time.process_time``; with one thread, what a busy
shared machine's time-slicing does not inflate) and wall seconds. Settings alternate over
``--rounds`` child processes each; every figure is the median over them. Prints one column per setting and the ratio int8 / float32. CPU by default, one
thread (``--threads``) so the numbers depend on the machine's other load as little as they
can.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("float32", "int8")


def current_rss_kb() -> int:
    """This process's resident set size now (kB; Linux ``/proc/self/status``), or -1."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def child(args) -> None:
    import torch
    from safetensors.torch import save_file

    from steerscope.data.builtin import demo_prompts
    from steerscope.generation import generate_ids
    from steerscope.models.chat import encode_prompts, format_prompt
    from steerscope.models.loading import load_model
    from steerscope.models.quantization import parameter_bytes
    from steerscope.runtime import Runtime, steer

    torch.set_num_threads(args.threads)
    quant = None if args.child == "float32" else args.child
    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device, quantization=quant)
    load_s = time.perf_counter() - t0
    peak_load_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_load_kb = current_rss_kb()
    model, tok, arch = lm.model, lm.tokenizer, lm.arch
    pool = demo_prompts("harmful").instructions + demo_prompts("harmless").instructions
    texts = [format_prompt(tok, pool[i % len(pool)]) for i in range(args.batch)]
    enc = encode_prompts(tok, texts, device=lm.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    vec = torch.randn(arch.d_model, generator=torch.Generator().manual_seed(0))
    vec = (8 * vec / vec.norm()).to(lm.device)
    ops = [steer(vec, arch.n_layers // 2, 1.0)]

    def forward():
        with Runtime(model, ops, arch=arch):
            return model(input_ids=ids, attention_mask=mask).logits[:, -1].float()  # [B, V]

    def generate():
        return generate_ids(model, ids, mask, max_new_tokens=args.new_tokens, interventions=ops,
                            stop_at_eos=False, pad_token_id=tok.pad_token_id)

    times: dict[str, list[float]] = {k: [] for k in ("forward", "generate", "forward_cpu",
                                                     "generate_cpu")}
    with torch.inference_mode():
        logits = forward()  # warm-up
        generate()
        for _ in range(args.repeats):
            for name, fn in (("forward", forward), ("generate", generate)):
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t)
                times[f"{name}_cpu"].append(time.process_time() - c)
    save_file({"logits": logits.cpu().contiguous()}, args.logits)
    print(json.dumps({
        "param_bytes": parameter_bytes(model),
        "peak_rss_load_mib": peak_load_kb / 1024,
        "rss_after_load_mib": rss_load_kb / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_s": load_s,
        "rss_end_mib": current_rss_kb() / 1024,
        **{f"{k}_s": statistics.median(v) for k, v in times.items()},
        "prompt_tokens": int(ids.shape[1]),
        "device": str(lm.device),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2,
                    help="child processes per setting, alternating (default: %(default)s)")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--logits", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from safetensors.torch import load_file

    runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    logits = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # settings alternate, so machine load hits both alike
            for setting in SETTINGS:
                out = Path(tmp) / f"{setting}.safetensors"
                cmd = [sys.executable, __file__, "--child", setting, "--logits", str(out),
                       *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                         if k not in ("child", "logits", "rounds")]]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    sys.exit(f"{setting} failed:\n{proc.stderr[-2000:]}")
                runs[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                logits[setting] = load_file(str(out))["logits"]
    rows = {k: {key: (statistics.median(r[key] for r in v) if isinstance(v[0][key], float | int)
                      else v[0][key]) for key in v[0]} for k, v in runs.items()}
    f, q = rows["float32"], rows["int8"]
    print(f"model {args.model} on {f['device']}, {args.threads} thread(s); forward: batch "
          f"{args.batch} x {int(f['prompt_tokens'])} tokens; steered generation: "
          f"{args.new_tokens} new tokens per prompt; median of {args.repeats} x {args.rounds} "
          "rounds")
    print(f"  {'':27s} {'float32':>10s} {'int8':>10s} {'int8/float32':>13s}")
    fmt = {"param_bytes": ("parameter MiB", 2 ** -20),
           "peak_rss_load_mib": ("peak RSS loading MiB", 1),
           "rss_after_load_mib": ("RSS after load MiB", 1),
           "rss_end_mib": ("RSS after the runs MiB", 1),
           "peak_rss_mib": ("peak RSS (all) MiB", 1), "load_s": ("load s (wall)", 1),
           "forward_cpu_s": ("forward s (CPU)", 1), "forward_s": ("forward s (wall)", 1),
           "generate_cpu_s": ("steered generate s (CPU)", 1),
           "generate_s": ("steered generate s (wall)", 1)}
    for key, (label, scale) in fmt.items():
        a, b = f[key] * scale, q[key] * scale
        print(f"  {label:27s} {a:10.3f} {b:10.3f} {b / a:13.3f}")
    lf, lq = logits["float32"], logits["int8"]
    agree = (lf.argmax(-1) == lq.argmax(-1)).float().mean().item()
    print(f"  last-token logits: max |int8 - float32| = {(lq - lf).abs().max().item():.4f} "
          f"(largest |logit| {lf.abs().max().item():.2f}); top-1 agreement {agree:.2f}")


if __name__ == "__main__":
    main()
