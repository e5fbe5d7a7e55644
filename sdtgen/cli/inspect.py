"""`sdtgen inspect`: picture the learned spatial decay of a model on one generated sample (sdtgen/decay_maps.py)."""

from __future__ import annotations

import argparse

from sdtgen.cli.options import SHOWN_DEFAULT_GUIDANCE, asking_for_flags, check_seed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen inspect` on `subparsers`."""
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
    parser.add_argument(
        "--token", type=int, nargs=2, metavar=("ROW", "COL"), help="query token on the patch grid (default: centre)"
    )
    parser.add_argument("--block", type=int, help="which block (default: the middle one)")
    parser.add_argument(
        "--timestep",
        type=float,
        default=100.0,
        help="noise level the model reads the sample at, 0..1000 (default: 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated sample (default: 0)")
    parser.add_argument(
        "--guidance-scale",
        "--cfg",
        type=float,
        metavar="S",
        help=f"guidance scale for the sample, at every step (default: the run's sample.guidance_scale, else "
        f"{SHOWN_DEFAULT_GUIDANCE:g}; 1 for a model trained without label dropout)",
    )
    parser.add_argument("--vae", help="VAE override (default: the run's)")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """Load the model, draw the decay maps of one sample, and say where they are."""
    from sdtgen.decay_maps import draw_decay_maps
    from sdtgen.runs import find_source, load_pipeline

    if not 0 <= args.timestep <= 1000:
        raise ValueError(f"--timestep must be in 0..1000 (0 = clean, 1000 = pure noise), got {args.timestep:g}.")
    check_seed(args.seed, 1)
    with asking_for_flags(args):
        source = find_source(args.ckpt)
        guidance = source.sample_settings(guidance_scale=args.guidance_scale).guidance  # its scale, at every step
        pipe = load_pipeline(source, vae=args.vae)
    path = draw_decay_maps(
        pipe,
        args.class_spec,
        args.out,
        token=tuple(args.token) if args.token else None,
        block=args.block,
        timestep=args.timestep,
        seed=args.seed,
        guidance_scale=guidance.scale,
    )
    print(f"Wrote {path}")
