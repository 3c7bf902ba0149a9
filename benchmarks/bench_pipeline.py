"""Wall-clock and peak memory of the whole demo pipeline (`steerscope demo`) on this machine.

    .venv/bin/python benchmarks/bench_pipeline.py [--out DIR] [--threads N]

Runs :func:`steerscope.pipeline.demo.run_demo` (the demo config: every stage, on the demo refusal model,
which must already be cached: `steerscope model prepare-demo`) into a fresh folder, then runs
it again to time a resume with every stage finished. Prints each stage's seconds, the total
against the 30-minute target for 2 CPU cores, the resume time and the peak RSS of the
process (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

TARGET_S = 30 * 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="runs folder (default: a fresh temporary folder)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    import torch

    from steerscope.pipeline.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    t0 = time.perf_counter()
    first = run_demo(out, progress=True)
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = run_demo(out, progress=False)
    resume = time.perf_counter() - t1
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"\nrun folder {first.run_dir}; torch threads {torch.get_num_threads()}")
    print(f"{'stage':12s} {'status':8s} {'seconds':>8s}")
    for name, rec in first.records.items():
        took = f"{rec.seconds:8.1f}" if rec.seconds is not None else f"{'-':>8s}"
        print(f"{name:12s} {rec.status:8s} {took}")
    print(f"total wall-clock {total:.0f} s = {total / TARGET_S:.2f}x the 30-minute target")
    print(f"resume with every stage done: {resume:.1f} s ({len(again.skipped)} stages skipped, "
          f"{len(again.ran)} ran)")
    print(f"peak RSS {peak_gb:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
