"""What several commands share: the model options, the library's choices they offer, and checks of flag values.

This module is imported to build the parser, so it imports nothing heavy: the library's
choices are listed here rather than imported (torch and diffusers would come with them),
and tests/test_cli.py checks that the lists agree with the library's.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

ATTENTION_VARIANTS = ("vanilla", "fixed", "learned-fixed", "sdt", "sdt-decomposed")  # sdtgen.models.attention
SAMPLERS = {"ddpm": ("ddpm", "ddim", "dpm++"), "flow": ("euler", "heun", "dpm++")}  # sdtgen.diffusion.sampling
# Shown in --help; the value used is sdtgen.diffusion.sampling.DEFAULT_GUIDANCE (the library fills in an absent
# --guidance-scale).
SHOWN_DEFAULT_GUIDANCE = 2.0
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype: the torch dtype of each name


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """--guidance-scale, --guidance-channels and --guidance-interval, shared by sample and eval; each absent is the
    run's `sample:` setting, else the library's. Their old names (--cfg, --cfg-channels, --cfg-interval) still work."""
    parser.add_argument(
        "--guidance-scale",
        "--cfg",
        type=float,
        metavar="S",
        help=f"guidance scale, 1 = off (default: the run's sample.guidance_scale, else {SHOWN_DEFAULT_GUIDANCE:g})",
    )
    parser.add_argument(
        "--guidance-channels",
        "--cfg-channels",
        type=int,
        metavar="N",
        help="guide only the first N latent channels (default: all; 3 = DiT's original)",
    )
    parser.add_argument(
        "--guidance-interval",
        "--cfg-interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="noise levels (timestep / 1000, 1 = pure noise) where guidance applies "
        "(default: the run's sample.guidance_interval, else 0 1)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options saying which model to load and how to sample it (shared by sample and export)."""
    parser.add_argument("--ckpt", metavar="DIR", help="a run, checkpoint, model or pipeline folder (see below)")
    parser.add_argument(
        "--vae",
        metavar="SPEC",
        help="builtin, identity, an AutoencoderKL folder or a hub id (default: the run's data.vae)",
    )
    parser.add_argument(
        "--objective", choices=tuple(SAMPLERS), help="only for a bare model folder without a learned variance"
    )
    parser.add_argument(
        "--sampler", choices=sorted({s for names in SAMPLERS.values() for s in names}), help="see below"
    )


def out_folder(value: str) -> Path:
    """The argparse type of an --out folder: refused at parse time if it names a file, before any work."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; give a folder (it is created if missing)")
    return path


def torch_dtype(name: str):
    """The torch dtype of a --dtype name."""
    import torch

    return getattr(torch, DTYPES[name])


def check_seed(seed: int, count: int) -> None:
    """ValueError unless samples 0..count-1 of --seed all get a seed torch accepts (0..2**64 - 1)."""
    from sdtgen.diffusion.sampling import SEED_STRIDE

    largest = (2**64 - count) // SEED_STRIDE
    if not 0 <= seed <= largest:
        raise ValueError(f"--seed must be in 0..{largest}, got {seed}.")


def flag(argument: str) -> str:
    """The option of a library keyword: `num_samples` -> `--num-samples` (argparse's dest rule, reversed)."""
    return "--" + argument.replace("_", "-")


@contextlib.contextmanager
def asking_for_flags(args: argparse.Namespace) -> Iterator[None]:
    """Turn the library's MissingInput, which asks for a keyword (`vae=...`), into one asking for the command's option.

    A command without that option (e.g. `objective` of `sdtgen eval`) keeps the keyword.
    """
    from sdtgen.runs import MissingInput

    try:
        yield
    except MissingInput as error:
        if not hasattr(args, error.argument):
            raise
        raise ValueError(error.asking_for(flag(error.argument))) from None
