"""`sdtgen extract-latents`: encode a dataset once into the sharded latent cache
(`sdtgen.data.latents.extract_latents`), or check one with `--verify` (`verify_cache`).

It works as is under `accelerate launch` (the images are split over the processes).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sdtgen.cli.options import out_folder

if TYPE_CHECKING:  # torch is imported only when the command runs, to keep `sdtgen --help` fast
    from torch.utils.data import Dataset

EPILOG = """\
data:
  --data animals      the built-in animal silhouettes (1x32x32); --split train|test|all
  --data FOLDER       a class-per-folder tree (FOLDER/<class>/<image>, the ImageNet layout),
                      centre-cropped to --image-size as in ADM/DiT; with --split S the
                      images are read from FOLDER/S

output (see docs/latents.md):
  OUT/manifest.json and OUT/shard-00000.safetensors, ...: for every image and its
  horizontal flip the VAE posterior mean and log-variance (unscaled), plus the labels.
  Re-running the same command resumes: shards that verify are kept, missing or damaged
  ones are recomputed. A cache made from other data or another VAE is an error unless
  --overwrite. Training opens a finished cache by its manifest and shard headers alone;
  --verify checks every byte: each shard's sha256, and that the images (the animals split
  or the image folder the manifest records, where it still exists) are unchanged.

examples:
  sdtgen extract-latents
  sdtgen extract-latents --verify --out cache/animals-latents
  sdtgen extract-latents --data ~/imagenet --split train --vae stabilityai/sd-vae-ft-ema \\
      --out cache/imagenet256-latents
  accelerate launch -m sdtgen.cli extract-latents --data ~/imagenet --split train \\
      --vae ~/sd-vae-ft-ema --out cache/imagenet256-latents      (one shard per process in turn)
"""


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``minimum`` (errors are argparse's one line)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `extract-latents` on ``subparsers``; ``args.run`` is :func:`run`."""
    parser = subparsers.add_parser(
        "extract-latents",
        help="encode a dataset (and its horizontal flips) with a VAE into a latent cache",
        description="Encode every image of a dataset, and its horizontal flip, with a VAE once, and "
        "store the posterior moments in sharded safetensors files for fast training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="animals",
        metavar="animals|FOLDER",
        help="the built-in dataset or an image folder (default: animals)",
    )
    parser.add_argument(
        "--split", metavar="SPLIT", help="animals: train, test or all (default: train); FOLDER: read FOLDER/SPLIT"
    )
    parser.add_argument(
        "--vae",
        default="builtin",
        metavar="builtin|identity|FOLDER|HUB_ID",
        help="the VAE: the shipped one, pixel space, a diffusers AutoencoderKL folder, "
        "or a Hugging Face Hub id (default: builtin)",
    )
    parser.add_argument(
        "--out",
        type=out_folder,
        metavar="DIR",
        help="cache folder (default: cache/animals-latents for the animals train split; required for folders)",
    )
    parser.add_argument(
        "--image-size", type=_count(1), metavar="N", help="FOLDER only: side of the centre crop (default: 256)"
    )
    parser.add_argument(
        "--batch-size",
        type=_count(1),
        default=64,
        metavar="N",
        help="images per encoder call, per process; each is encoded with its flip, so the VAE sees 2N (default: 64)",
    )
    parser.add_argument(
        "--shard-size",
        type=_count(1),
        default=10_000,
        metavar="N",
        help="images per shard file: the unit of resuming and of work per process (default: 10000)",
    )
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "float32"),
        help="storage dtype of the moments (default: float16; see docs/latents.md)",
    )
    parser.add_argument(
        "--num-workers",
        type=_count(0),
        metavar="N",
        help="DataLoader workers decoding images (default: 0 for animals, min(8, CPU count) for folders)",
    )
    parser.add_argument(
        "--on-error",
        default="raise",
        choices=("raise", "skip"),
        help="FOLDER only: an unreadable image stops the run (raise, default) or is "
        "replaced by the next readable image of its class (skip)",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="single-process runs: where the VAE runs, e.g. cpu or cuda:1 (default: "
        "the GPU if there is one; under accelerate launch each process uses its own)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete an existing cache in --out first, instead of resuming it"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the finished cache in --out instead of extracting: every shard's sha256 "
        "and the dataset the manifest records; exit status 0 if it is intact",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run, parser=parser)
    return parser


def _dataset(args: argparse.Namespace) -> tuple[Dataset, int, Path]:
    """The dataset, its image channel count and the output folder that ``args`` ask for."""
    from sdtgen.data.animals import AnimalsDataset
    from sdtgen.data.folders import ImageFolderDataset

    out_dir = _default_out(args)
    if args.data == "animals":
        if args.image_size not in (None, 32):
            raise ValueError("--image-size is for image folders; the animals images are 32x32.")
        return AnimalsDataset(args.split or "train"), 1, out_dir
    root = Path(args.data).expanduser()
    if args.split:
        root = root / args.split
    dataset = ImageFolderDataset(root, args.image_size or 256, on_error=args.on_error)
    return dataset, 3, out_dir


def _default_out(args: argparse.Namespace) -> Path:
    """--out, or the built-in set's cache folder for its split."""
    if args.out is not None:
        return args.out
    if args.data != "animals":
        raise ValueError("--out is required when --data is a folder, e.g. --out cache/imagenet256-latents.")
    split = args.split or "train"
    return Path("cache/animals-latents" if split == "train" else f"cache/animals-{split}-latents")


def verify(args: argparse.Namespace) -> int:
    """Check the cache ``--out`` names, print one line saying what was checked; return 0."""
    from sdtgen.data.latents import verify_cache

    if args.overwrite:
        raise ValueError("--verify checks a cache and changes nothing; leave out --overwrite.")
    print(f"Verified the latent cache {verify_cache(_default_out(args))}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Extract the latents that ``args`` describe (or verify them); return the exit code (0)."""
    if args.verify:
        return verify(args)
    import torch
    from accelerate import Accelerator

    from sdtgen.data.folders import CorruptImageError
    from sdtgen.data.latents import CacheMismatchError, extract_latents
    from sdtgen.vae import load_vae

    accelerator = Accelerator(cpu=args.device == "cpu")
    if args.device not in (None, "cpu") and accelerator.num_processes > 1:
        raise ValueError(
            "--device is for single-process runs; under accelerate launch each process "
            "uses its own device (use `accelerate launch --cpu` for CPUs)."
        )
    try:
        device = torch.device(args.device) if args.device else accelerator.device
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device; use e.g. cpu, cuda or cuda:1.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu.")
    dataset, image_channels, out_dir = _dataset(args)
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = 0 if args.data == "animals" else min(8, os.cpu_count() or 1)
    vae = load_vae(args.vae, image_channels=image_channels, device=device)
    try:
        manifest = extract_latents(
            dataset,
            vae,
            out_dir,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            dtype=args.dtype,
            num_workers=num_workers,
            overwrite=args.overwrite,
            accelerator=accelerator,
            progress=args.progress,
        )
    except CacheMismatchError as error:
        raise CacheMismatchError(f"{error} Pass a new --out, or --overwrite to replace it.") from None
    except CorruptImageError as error:
        # From a DataLoader worker the message carries the worker's traceback; its last
        # line is the error itself.
        raise ValueError(str(error).strip().splitlines()[-1].split("CorruptImageError: ")[-1]) from None
    if accelerator.is_main_process:
        print(f"Wrote the latent cache of {len(dataset)} images (and their flips) to {manifest.parent}")
    return 0
