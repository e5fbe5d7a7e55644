"""Sampling throughput (images/s) of vanilla vs SDT attention through each backend and dtype.

Every configuration is built up front and timed round-robin, one full sampling call each
per round (so drifts in machine load hit all alike), after one warm-up round that also
compiles FlexAttention. A call draws `--batch` latents with `--steps` DDIM steps and
classifier-free guidance (two model passes per step unless --guidance-scale 1), as `sdtgen sample`
does, without the VAE decode (the same for every row). Models are at initialisation:
the speed does not depend on the weights.

Examples:
    python benchmarks/bench_sampling.py --preset T/2 --input-size 16 --batch 8 --steps 5   # tiny, CPU
    python benchmarks/bench_sampling.py --preset T/2 --input-size 16 --batch 50 --dtype fp32 bf16   # fp32 vs bf16
    python benchmarks/bench_sampling.py --device cuda --dtype bf16 --preset XL/2 --batch 64 --markdown
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from diffusers.utils import logging as diffusers_logging

from sdtgen import SDTDiT
from sdtgen.diffusion.sampling import Guidance, denoise, make_scheduler, sample_generators
from sdtgen.models.backends import flex_available

ROWS = (("vanilla", "sdpa"), ("vanilla", "flex"), ("sdt", "sdpa"), ("sdt", "folded"), ("sdt", "flex"))


def sampling_call(model: SDTDiT, labels: torch.Tensor, args: argparse.Namespace) -> float:
    """Seconds for one sampling call of len(labels) latents."""
    if labels.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    scheduler = make_scheduler("ddpm", "ddim", model.config.learn_sigma)
    latents = denoise(
        model,
        scheduler,
        labels,
        steps=args.steps,
        guidance=Guidance(args.guidance_scale),
        generator=sample_generators(0, range(len(labels))),
    )
    latents.sum().item()  # waits for the device
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S/2")
    parser.add_argument("--input-size", type=int, default=32, help="latent size; tokens = (size / patch)^2")
    parser.add_argument("--batch", type=int, default=8, help="images per sampling call")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance-scale", "--cfg", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after 1 warm-up round)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="one or more, timed side by side"
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    diffusers_logging.set_verbosity_error()  # ModelMixin.to(dtype) warns about fp32 modules that SDTDiT does not have
    device = torch.device(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = [(*row, name) for name in args.dtype for row in ROWS if row[1] != "flex" or flex_available()]
    torch.manual_seed(0)
    models = {
        (variant, backend, name): SDTDiT.from_preset(
            args.preset, attention=variant, attention_backend=backend, input_size=args.input_size
        )
        .to(device=device, dtype=dtypes[name])
        .eval()
        for variant, backend, name in rows
    }
    labels = torch.arange(args.batch, device=device) % models[rows[0]].config.num_classes
    times: dict[tuple[str, str, str], list[float]] = {row: [] for row in rows}
    for round_index in range(args.repeats + 1):
        for row in rows:
            seconds = sampling_call(models[row], labels, args)
            if round_index:
                times[row].append(seconds)

    tokens = (args.input_size // models[rows[0]].config.patch_size) ** 2
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"\n{args.preset}, {tokens} tokens, batch {args.batch}, DDIM {args.steps} steps, guidance {args.guidance_scale}, {args.dtype}, "
        f"{name}, torch {torch.__version__}, median of {args.repeats}"
    )
    base = statistics.median(times[rows[0]])
    table = [["attention", "backend", "dtype", "images/s", f"x vanilla sdpa {args.dtype[0]}", "s per call"]]
    for row in rows:
        seconds = statistics.median(times[row])
        table.append([*row, f"{args.batch / seconds:.1f}", f"{base / seconds:.2f}", f"{seconds:.3f}"])
    print_table(table, args.markdown)


def print_table(table: list[list[str]], markdown: bool) -> None:
    """A header row and data rows, as markdown (numbers right-aligned) or plain columns."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for index, cells in enumerate(table):
        if markdown:
            print("| " + " | ".join(cells) + " |")
            if index == 0:
                print("|---|---|---|" + "---:|" * (len(cells) - 3))
        else:
            print("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)))


if __name__ == "__main__":
    main()
