"""Training-step cost of every attention variant x backend, side by side in one process.

One training step is forward + backward of the MSE against a random target (no optimizer,
which costs the same for every variant). Configurations are timed round-robin, one step
each per round, so drifts in machine load hit all of them alike; the table reports the
median step time, its ratio to vanilla (1.00), and memory:

- on CUDA, the peak allocated memory during the step (torch.cuda.max_memory_allocated);
- on CPU, the bytes autograd saves for backward during the forward (activation memory,
  exact and repeatable, which an RSS reading on a shared machine is not).

The FLOPs of one step (forward + backward, counted by torch's FlopCounterMode on the
vanilla model) turn times into GFLOP/s, and into MFU when --peak-tflops gives the device's
dense peak (989 for an H100 / H200 SXM in bf16).

The model's blocks are the built-in recipe's (ModelConfig's rope, mlp, norm, qk_norm);
`--blocks dit` times DiT's (GELU, LayerNorm, no RoPE). Each table marks with `auto` the
backend `attention_backend=auto` picks for that variant, device, precision and size.

Examples:
    python benchmarks/bench_model.py --table --math                  # docs/benchmarks.md's auto table: both shapes x fp32 / bf16
    python benchmarks/bench_model.py                                 # S/2, 256 tokens, batch 8, CPU fp32
    python benchmarks/bench_model.py --input-size 64 --batch 2      # 1024 tokens
    python benchmarks/bench_model.py --preset T/2 --input-size 16 --batch 128   # the built-in run's step
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --markdown
    python benchmarks/bench_model.py --device cuda --dtype bf16 --preset XL/2 --batch 32 --peak-tflops 989 --variants vanilla sdt
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import TypeVar

import torch

from sdtgen import SDTDiT
from sdtgen.config import ModelConfig
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.models.backends import flex_available, resolve_backend

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# --table's shapes: (preset, latent size, batch): the main job's step and S/2 at 256 tokens.
TABLE_SHAPES = (("T/2", 16, 64), ("S/2", 32, 8))
K = TypeVar("K")  # what names a timed model, e.g. (variant, backend)


def configurations(device: torch.device, include_math: bool, variants: list[str]) -> list[tuple[str, str]]:
    backends = (
        ["sdpa", "folded"]
        + (["flex"] if flex_available() and device.type == "cuda" else [])
        + (["math"] if include_math else [])
    )
    rows = [("vanilla", "sdpa")]
    if device.type == "cuda" and flex_available():
        rows.append(("vanilla", "flex"))
    if include_math:
        rows.append(("vanilla", "math"))
    for variant in variants:
        if variant != "vanilla":
            rows += [(variant, backend) for backend in backends]
    return rows


def step_flops(model: SDTDiT, batch, dtype: torch.dtype) -> int:
    """Floating-point operations of one vanilla training step, as counted by torch's dispatcher.

    Counted through the math backend, whose attention is plain matmuls: the counter has no
    formula for SDPA's fused CPU kernel and would leave attention out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    backend = model.config.attention_backend
    model.set_attention_backend("math")
    with FlopCounterMode(display=False) as counter:
        training_step(model, batch, dtype)
    model.set_attention_backend(backend)
    return counter.get_total_flops()


class SavedBytes:
    """Counts the bytes autograd keeps for backward while active."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:  # parameters and views are counted once
            self._seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def training_step(model: SDTDiT, batch: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    x, t, y, target = batch
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x, t, y)
    torch.nn.functional.mse_loss(out.float(), target).backward()
    model.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training_steps(
    models: dict[K, torch.nn.Module],
    batch: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
) -> dict[K, list[float]]:
    """Seconds of each model's training step on `batch`, `repeats` per model after two warm-up rounds.

    Round-robin, one step of each model per round, so drifts in machine load hit all of them alike.
    """
    times: dict[K, list[float]] = {key: [] for key in models}
    for round_index in range(repeats + 2):
        for key, model in models.items():
            synchronize(device)
            start = time.perf_counter()
            training_step(model, batch, dtype)
            synchronize(device)
            if round_index >= 2:
                times[key].append(time.perf_counter() - start)
    return times


def measure_memory(model: SDTDiT, batch, dtype: torch.dtype, device: torch.device) -> float:
    """MiB: peak allocated on CUDA, saved-for-backward bytes on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        training_step(model, batch, dtype)
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with SavedBytes() as counter:
        x, t, y, _ = batch
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, t, y)
    model.zero_grad(set_to_none=True)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del out
    return max(counter.total - parameter_bytes, 0) / 2**20


def block_settings(blocks: str) -> dict:
    """SDTDiT arguments of the timed blocks: the built-in recipe's (ModelConfig) or DiT's."""
    if blocks == "dit":
        return {"rope": False, "mlp": "gelu", "norm": "layernorm", "qk_norm": False}
    m = ModelConfig()
    return {"rope": m.rope, "mlp": m.mlp, "norm": m.norm, "qk_norm": m.qk_norm}


def benchmark(args: argparse.Namespace, preset: str, input_size: int, batch_size: int, dtype_name: str) -> None:
    """Time every row of one shape and precision round-robin and print its table."""
    device = torch.device(args.device)
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    rows = configurations(device, args.math, args.variants)
    models = {}
    for variant, backend in rows:
        model = SDTDiT.from_preset(
            preset, attention=variant, attention_backend=backend, input_size=input_size, **block_settings(args.blocks)
        )
        models[variant, backend] = model.to(device).train()
    runners = {row: torch.compile(model) if args.compile else model for row, model in models.items()}
    out_channels = models[rows[0]].out_channels
    batch = (
        torch.randn(batch_size, 4, input_size, input_size, device=device),
        torch.randint(0, 1000, (batch_size,), device=device),
        torch.randint(0, 1000, (batch_size,), device=device),
        torch.randn(batch_size, out_channels, input_size, input_size, device=device),
    )
    times = time_training_steps(runners, batch, dtype, device, args.repeats)
    memory = {row: measure_memory(models[row], batch, dtype, device) for row in rows}
    flops = step_flops(models[rows[0]], batch, dtype)

    tokens = (input_size // models[rows[0]].config.patch_size) ** 2
    auto = {
        variant: resolve_backend("auto", variant, tokens, device, training=True, dtype=dtype) for variant, _ in rows
    }
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    memory_kind = "peak MiB" if device.type == "cuda" else "saved-for-backward MiB"
    base_time, base_memory = statistics.median(times[rows[0]]), memory[rows[0]]
    print(
        f"\n{preset}, {tokens} tokens, batch {batch_size}, {dtype_name}, {args.blocks} blocks{', compiled' if args.compile else ''}, "
        f"{name}, torch {torch.__version__}, median of {args.repeats}"
    )
    print("auto picks: " + ", ".join(f"{variant} -> {backend}" for variant, backend in auto.items()))
    print(f"vanilla step: {flops / 1e9:.1f} GFLOP (forward + backward); GFLOP/s and MFU below use it for every row")
    header = (
        f"| variant | backend | auto | step ms | x vanilla | images/s | GFLOP/s | MFU | {memory_kind} | x vanilla |"
    )
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        step = statistics.median(times[row])
        achieved = flops / step / 1e9
        mfu = f"{achieved / 1e3 / args.peak_tflops:.1%}" if args.peak_tflops else "-"
        line = (
            f"| {row[0]} | {row[1]} | {'auto' if auto[row[0]] == row[1] else ''} | {step * 1e3:.1f} | {step / base_time:.2f} | "
            f"{batch_size / step:.1f} | {achieved:.1f} | {mfu} | {memory[row]:.0f} | {memory[row] / base_memory:.2f} |"
        )
        print(line if args.markdown else line.replace("|", " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S/2")
    parser.add_argument("--input-size", type=int, default=32, help="latent size; tokens = (size / patch)^2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after 2 warm-up rounds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--math", action="store_true", help="also time the reference math backend")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(ATTENTION_VARIANTS),
        choices=ATTENTION_VARIANTS,
        help="attention variants to time",
    )
    parser.add_argument(
        "--compile", action="store_true", help="time torch.compile'd models (compiled in the warm-up rounds)"
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak TFLOP/s in --dtype, to report MFU")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--blocks", default="recipe", choices=["recipe", "dit"], help="the built-in recipe's blocks or DiT's"
    )
    parser.add_argument(
        "--table", action="store_true", help="every shape of TABLE_SHAPES in fp32 and bf16 (ignores the shape options)"
    )
    args = parser.parse_args()

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.table:
        for preset, input_size, batch_size in TABLE_SHAPES:
            for dtype_name in DTYPES:
                benchmark(args, preset, input_size, batch_size, dtype_name)
    else:
        benchmark(args, args.preset, args.input_size, args.batch, args.dtype)


if __name__ == "__main__":
    main()
