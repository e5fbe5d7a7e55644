"""The `sdtgen` command: thin subcommands over the library.

Each subcommand is a pair: `add_<name>_parser(subparsers)` declares its arguments and
`run_<name>(args)` calls library code with them; `SUBCOMMANDS` lists the adders. Errors
become one line `sdtgen <name>: error: ...` and exit code 2 (bad input: the library raises
ValueError or OSError with a message that says what to do) or 1 (a failure while running);
see sdtgen/errors.py. SDTGEN_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from sdtgen.errors import one_line_errors
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.sampling_cli import DTYPES, add_export_parser, add_sample_parser, check_seed


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (argparse adds the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


CONVERT_EPILOG = """\
sources:
  --from dit        an original facebookresearch DiT checkpoint (.pt): the released
                    DiT-XL-2-256x256.pt, or a training checkpoint of DiT's train.py
                    (its EMA weights are used)
  --from diffusers  a diffusers DiT folder: a DiTPipeline folder such as a download of
                    facebook/DiT-XL-2-256, or its transformer/ subfolder

attention:
  vanilla reproduces the pretrained DiT exactly. sdt, sdt-decomposed and learned-fixed
  warm-start SDT: the pretrained weights plus a spatial decay that starts tiny
  (--decay-scale-init, default 1e-4) and trains. fixed, sdt-decomposed, --rope and
  --qk-norm change the output (a warning says so); fine-tune before sampling.

examples:
  sdtgen convert --from dit DiT-XL-2-256x256.pt --out models/dit-xl-2
  sdtgen convert --from diffusers ~/DiT-XL-2-256 --out models/sdt-xl-2 --attention sdt
"""


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen convert`: pretrained DiT weights into an SDTDiT folder."""
    parser = subparsers.add_parser(
        "convert",
        help="convert pretrained DiT weights (original .pt or diffusers) into an SDTDiT folder",
        description="Convert pretrained DiT weights into an SDTDiT model folder (config.json + safetensors), "
        "loadable with SDTDiT.from_pretrained and usable as a training starting point.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=("dit", "diffusers"), help="the kind of SOURCE (see below)")
    parser.add_argument("source", metavar="SOURCE", help="the .pt file (--from dit) or the model / pipeline folder (--from diffusers)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the SDTDiT to (created if missing)")
    parser.add_argument("--attention", default="vanilla", choices=ATTENTION_VARIANTS, help="attention of the new model (default: vanilla)")
    parser.add_argument("--decay-scale-init", type=float, metavar="X", help="initial decay strength for a warm start (default: 1e-4; 1 = from-scratch strength)")
    parser.add_argument("--num-heads", type=int, metavar="N", help="--from dit only: heads, for widths outside DiT's S/B/L/XL table")
    parser.add_argument("--input-size", type=int, metavar="N", help="latent size to run at, if not the checkpoint's (positions are recomputed)")
    parser.add_argument("--lepe", action="store_true", help="add LePE (zero-initialised, keeps the warm start exact)")
    parser.add_argument("--rope", action="store_true", help="add 2D RoPE (changes the output)")
    parser.add_argument("--qk-norm", action="store_true", help="add q/k LayerNorm (changes the output)")
    parser.set_defaults(run=run_convert, parser=parser)


def run_convert(args: argparse.Namespace) -> None:
    """Convert, save, and say what was written."""
    from sdtgen.convert import convert_diffusers_dit, convert_original_dit

    overrides = {"lepe": args.lepe, "rope": args.rope, "qk_norm": args.qk_norm}
    if args.decay_scale_init is not None:
        overrides["decay_scale_init"] = args.decay_scale_init
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    if args.source_format == "dit":
        model = convert_original_dit(args.source, attention=args.attention, num_heads=args.num_heads, **overrides)
    elif args.num_heads is not None:
        raise ValueError("--num-heads is only for --from dit; a diffusers config already names its heads.")
    else:
        model = convert_diffusers_dit(args.source, attention=args.attention, **overrides)
    model.save_pretrained(args.out)
    cfg = model.config
    print(
        f"Saved SDTDiT (depth {cfg.depth}, width {cfg.hidden_size}, {cfg.num_heads} heads, patch {cfg.patch_size}, "
        f"{cfg.input_size}x{cfg.input_size}x{cfg.in_channels} input, {cfg.num_classes} classes, attention {cfg.attention}) "
        f"to {args.out}"
    )


def add_extract_latents_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen extract-latents`: encode a dataset once into the sharded latent cache."""
    from sdtgen.data import extract

    extract.add_parser(subparsers)


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen inspect`: picture the learned spatial decay of a model on one generated sample."""
    parser = subparsers.add_parser(
        "inspect",
        help="render where each SDT head looks: decay maps around a token and gate maps",
        description="Generate one sample of a class and draw, for one block, each head's attenuation of "
        "attention around a token (top row) and each token's gate exp(lam) (bottom row). A fixed decay gives "
        "the same diamond for every image; SDT's bends with content.",
        epilog="example:\n  sdtgen inspect --ckpt runs/animals-sdt --class giraffe --out decay.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", help="run, checkpoint, model or pipeline folder (default: the built-in run)")
    parser.add_argument("--class", dest="class_spec", required=True, metavar="CLASS", help="class id or name")
    parser.add_argument("--out", default="decay_maps.png", help="PNG to write (default: decay_maps.png)")
    parser.add_argument("--token", type=int, nargs=2, metavar=("ROW", "COL"), help="query token on the patch grid (default: centre)")
    parser.add_argument("--block", type=int, help="which block (default: the middle one)")
    parser.add_argument("--timestep", type=float, default=100.0, help="noise level the model reads the sample at, 0..1000 (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated sample (default: 0)")
    parser.add_argument("--cfg", type=float, help="guidance scale for the sample (default: 1.5)")
    parser.add_argument("--vae", help="VAE override (default: the run's)")
    parser.set_defaults(run=run_inspect, parser=parser)


def run_inspect(args: argparse.Namespace) -> None:
    from sdtgen.inspect import inspect_checkpoint

    if not 0 <= args.timestep <= 1000:
        raise ValueError(f"--timestep must be in 0..1000 (0 = clean, 1000 = pure noise), got {args.timestep:g}.")
    check_seed(args.seed, 1)

    path = inspect_checkpoint(args.ckpt, args.class_spec, args.out, token=tuple(args.token) if args.token else None,
                              block=args.block, timestep=args.timestep, seed=args.seed, cfg=args.cfg, vae=args.vae)
    print(f"Wrote {path}")


EVAL_EPILOG = """\
references (--ref):
  animals           the built-in set's training split, scored with the built-in feature
                    network (FID, IS, KID, precision/recall and class accuracy), offline
  FILE.npz          an ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz): FID from
                    its precomputed mu/sigma, the rest from its images, with Inception
  FOLDER            an image folder (class sub-folders), ADM-cropped to the samples' size

Inception weights never download here: pass --inception-weights or place the file in
torch hub's cache (the error message names it).

examples:
  sdtgen eval --ckpt runs/animals-sdt --num-samples 1000 --out eval/animals-sdt
  accelerate launch -m sdtgen.cli eval --ckpt runs/imagenet256_sdt_xl2 --num-samples 50000 \\
      --labels uniform --cfg 1.5 --sampler ddpm --steps 250 --ref VIRTUAL_imagenet256_labeled.npz \\
      --inception-weights weights-inception-2015-12-05-6726825d.pth --out eval/xl2
  sdtgen eval --samples eval/xl2/samples.npz --ref animals
"""


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen eval`: FID / IS / KID / precision-recall of a checkpoint or a sample set."""
    parser = subparsers.add_parser(
        "eval", help="sample a checkpoint (or read samples) and compute FID, IS, KID, precision/recall",
        description="Generate samples from a checkpoint across all processes (or read an existing sample set), "
        "save them as an ADM-style .npz, and write metrics.json with the numbers and everything that produced them.",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="run, checkpoint, model or pipeline folder (default: the built-in run)")
    source.add_argument("--samples", help="evaluate an existing sample set: an .npz (arr_0, arr_1) or a folder of PNGs")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples to generate (default: 1000; FID-50K: 50000)")
    parser.add_argument("--labels", default="balanced", choices=("balanced", "uniform"), help="class-balanced (default) or one uniform label per sample, as DiT")
    parser.add_argument("--ref", default="animals", help="reference: animals (default), an .npz reference batch, or an image folder")
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the run's sample.cfg)")
    parser.add_argument("--cfg-channels", type=int, help="guide only the first N latent channels (default: all)")
    parser.add_argument("--sampler", help="sampler (default: the run's, else the objective's default)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's, else the sampler's default)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed * 1000003 + i (default: 0)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch, per process")
    parser.add_argument("--vae", help="VAE override (default: the run's)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision for sampling (default: fp32; "
                        "bf16 pays on GPUs and on CPUs with AVX512-BF16 or AMX, see docs/benchmarks.md)")
    parser.add_argument("--inception-weights", help="path of torch-fidelity's Inception weights (for .npz and folder references)")
    parser.add_argument("--out", default="eval", help="folder for samples.npz and metrics.json (default: eval)")
    parser.set_defaults(run=run_eval, parser=parser)


def run_eval(args: argparse.Namespace) -> None:
    from sdtgen.evaluation import evaluate

    evaluate.check_reference(args.ref, args.inception_weights)  # before sampling, which may take hours
    out = Path(args.out)
    if args.samples:
        images, labels = evaluate.load_samples(args.samples)
        settings = {"samples": str(args.samples), "num_samples": len(images)}
    else:
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}.")
        check_seed(args.seed, args.num_samples)
        images, labels, settings = evaluate.sample_checkpoint(
            args.ckpt, args.num_samples, labels_mode=args.labels, seed=args.seed, steps=args.steps, cfg=args.cfg,
            cfg_channels=args.cfg_channels, sampler=args.sampler, vae=args.vae, batch_size=args.batch_size, dtype=DTYPES[args.dtype])
        if images is None:  # not the main process: it has handed its share to the main one
            return
        evaluate.save_npz(out / "samples.npz", images, labels)
    metrics = evaluate.score(images, labels, args.ref, inception_weights_path=args.inception_weights)
    path = evaluate.write_metrics(out, metrics, settings, args.ref)
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("fid", "is", "kid", "precision", "recall", "class_accuracy") if metrics.get(k) is not None)
    print(f"{shown}  ->  {path}")


SUBCOMMANDS = (add_sample_parser, add_export_parser, add_convert_parser, add_extract_latents_parser, add_inspect_parser, add_eval_parser)


def build_parser() -> argparse.ArgumentParser:
    """The `sdtgen` parser with every subcommand of SUBCOMMANDS."""
    parser = _Parser(prog="sdtgen", description="Class-conditional image generation with Spatial Decay Transformers.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


class _Formatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.prog}: {level}{record.getMessage()}"


@contextlib.contextmanager
def _library_messages_to_stderr(prog: str) -> Iterator[None]:
    """Show the library's info and warnings on stderr, prefixed by the subcommand, for one run."""
    package_logger = logging.getLogger("sdtgen")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdtgen` console script; returns 0, or exits 2 (bad input) or 1 (failure)."""
    args = build_parser().parse_args(argv)
    with _library_messages_to_stderr(args.parser.prog), one_line_errors(args.parser.prog):
        args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
