"""Matmul GFLOP/s in fp32 vs bf16 on this machine: does bf16 pay here?

`train.mixed_precision=auto` trains in bf16 only where the CPU has native bf16 instructions
(sdtgen/training/precision.py); this probe shows what the decision stands on.

    python benchmarks/bench_matmul.py
"""

from __future__ import annotations

import argparse
import time

import torch

from sdtgen.training.precision import cpu_has_fast_bf16


def gflops(size: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of repeated size x size matmuls for about `seconds` (after two warm-up calls)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per size and dtype")
    args = parser.parse_args()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 (AVX512-BF16 or AMX): {cpu_has_fast_bf16()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| matmul | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |\n|---|---:|---:|---:|")
    for size in args.sizes:
        fp32, bf16 = gflops(size, torch.float32, args.seconds), gflops(size, torch.bfloat16, args.seconds)
        print(f"| {size} x {size} | {fp32:.1f} | {bf16:.2f} | {bf16 / fp32:.3f} |")


if __name__ == "__main__":
    main()
