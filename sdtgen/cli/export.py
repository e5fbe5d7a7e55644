"""`sdtgen export`: a run, checkpoint or model as an SDTPipeline folder (model_index.json) with a model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdtgen.cli.options import add_model_arguments, asking_for_flags, out_folder

METRICS_FILE = "metrics.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen export` on `subparsers`."""
    parser = subparsers.add_parser(
        "export",
        help="write an SDTPipeline folder (model_index.json) from a run, checkpoint or model",
        description="Write an SDTPipeline folder (EMA model, VAE, scheduler, class names, sdtgen_pipeline.py) and "
        "its model card README.md. It loads with DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True) "
        "or SDTPipeline.from_pretrained(DIR) where sdtgen is installed, and with `sdtgen sample --ckpt DIR`.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--out", required=True, type=out_folder, metavar="DIR", help="the pipeline folder to write (new or empty)"
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        metavar="FILE",
        help=f"a {METRICS_FILE} of `sdtgen eval` for the model card (default: the --ckpt folder's, if any)",
    )
    parser.add_argument(
        "--license", default="other", metavar="ID", help="the model card's license field (default: other)"
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """Load the model as a pipeline, save it with its model card, and say what was written."""
    from sdtgen.model_card import model_card, read_metrics
    from sdtgen.runs import find_source, load_pipeline

    with asking_for_flags(args):
        source = find_source(args.ckpt)
        _check_out(args.out, source.path)
        metrics_file = args.metrics or (source.path / METRICS_FILE)
        if args.metrics and not metrics_file.is_file():
            raise FileNotFoundError(f"--metrics {metrics_file} does not exist.")
        metrics = read_metrics(metrics_file) if metrics_file.is_file() else None
        pipe = load_pipeline(source, vae=args.vae, objective=args.objective, sampler=args.sampler)
    pipe.save_pretrained(args.out)
    card = model_card(source, pipe.objective, str(args.out), license_id=args.license, metrics=metrics)
    (args.out / "README.md").write_text(card)
    vae = "none (pixel space)" if pipe.vae is None else "AutoencoderKL"
    print(
        f"Saved SDTPipeline ({pipe.objective}, {type(pipe.scheduler).__name__}, VAE {vae}, "
        f"{source.num_classes} classes) from {source.model_dir} to {args.out}, with its model card README.md"
    )


def _check_out(out: Path, source: Path) -> None:
    """Refuse an --out that is the --ckpt folder or holds other files than a pipeline: saving there would mix them."""
    same = out.resolve() == source.resolve()
    if same or (out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file()):
        what = "the --ckpt folder" if same else "a folder of other files"
        raise ValueError(f"--out {out} is {what}; export to a new or empty folder (nothing was written).")
