"""`sdtgen export`: a run, checkpoint or model as an SDTPipeline folder (model_index.json)."""

from __future__ import annotations

import argparse

from sdtgen.cli.options import add_model_arguments, asking_for_flags


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen export` on `subparsers`."""
    parser = subparsers.add_parser(
        "export",
        help="write an SDTPipeline folder (model_index.json) from a run, checkpoint or model",
        description="Write an SDTPipeline folder (EMA model, VAE, scheduler, class names) that loads with "
        "SDTPipeline.from_pretrained(DIR) and `sdtgen sample --ckpt DIR`.",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """Load the model as a pipeline, save it, and say what was written."""
    from sdtgen.runs import find_source, load_pipeline

    with asking_for_flags(args):
        source = find_source(args.ckpt)
        pipe = load_pipeline(source, vae=args.vae, objective=args.objective, sampler=args.sampler)
    pipe.save_pretrained(args.out)
    vae = "none (pixel space)" if pipe.vae is None else "AutoencoderKL"
    print(
        f"Saved SDTPipeline ({pipe.objective}, {type(pipe.scheduler).__name__}, VAE {vae}, "
        f"{source.num_classes} classes) from {source.model_dir} to {args.out}"
    )
