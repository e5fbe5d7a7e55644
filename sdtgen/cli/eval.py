"""`sdtgen eval`: FID / IS / KID / precision-recall of a checkpoint (sampled across all processes) or of a sample set."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdtgen.cli.options import (
    DTYPES,
    add_guidance_arguments,
    asking_for_flags,
    check_seed,
    out_folder,
    torch_dtype,
)

EPILOG = """\
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
      --labels uniform --guidance-scale 1.5 --sampler ddpm --steps 250 --ref VIRTUAL_imagenet256_labeled.npz \\
      --inception-weights weights-inception-2015-12-05-6726825d.pth --out eval/xl2
  sdtgen eval --samples eval/xl2/samples.npz --ref animals
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen eval` on `subparsers`."""
    parser = subparsers.add_parser(
        "eval",
        help="sample a checkpoint (or read samples) and compute FID, IS, KID, precision/recall",
        description="Generate samples from a checkpoint across all processes (or read an existing sample set), "
        "save them as an ADM-style .npz, and write metrics.json with the numbers and everything that produced them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="run, checkpoint, model or pipeline folder (default: the built-in run)")
    source.add_argument("--samples", help="evaluate an existing sample set: an .npz (arr_0, arr_1) or a folder of PNGs")
    parser.add_argument(
        "--num-samples", type=int, default=1000, help="samples to generate (default: 1000; FID-50K: 50000)"
    )
    parser.add_argument(
        "--labels",
        default="balanced",
        choices=("balanced", "uniform"),
        help="class-balanced (default) or one uniform label per sample, as DiT",
    )
    parser.add_argument(
        "--ref", default="animals", help="reference: animals (default), an .npz reference batch, or an image folder"
    )
    add_guidance_arguments(parser)
    parser.add_argument("--sampler", help="sampler (default: the run's, else the objective's default)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's, else the sampler's default)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed * 1000003 + i (default: 0)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch, per process")
    parser.add_argument("--vae", help="VAE override (default: the run's)")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="fp32",
        help="model precision for sampling (default: fp32; "
        "bf16 pays on GPUs and on CPUs with AVX512-BF16 or AMX, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--inception-weights", help="path of torch-fidelity's Inception weights (for .npz and folder references)"
    )
    parser.add_argument(
        "--out", default="eval", type=out_folder, help="folder for samples.npz and metrics.json (default: eval)"
    )
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """Sample the checkpoint (or read the sample set), score it, and write samples.npz and metrics.json."""
    from sdtgen.evaluation import evaluate

    try:
        evaluate.check_reference(args.ref, args.inception_weights)  # before sampling, which may take hours
    except evaluate.InceptionWeightsNotFound as error:
        raise FileNotFoundError(error.asking_for("--inception-weights")) from None
    except ValueError as error:
        raise ValueError(f"--ref: {error}") from None
    out = Path(args.out)
    if args.samples:
        images, labels = evaluate.load_samples(args.samples)
        settings = {"samples": str(args.samples), "num_samples": len(images)}
    else:
        check_seed(args.seed, args.num_samples)
        with asking_for_flags(args):
            images, labels, settings = _sample_checkpoint(args)
        if images is None:  # not the main process: it has handed its share to the main one
            return
        evaluate.save_npz(out / "samples.npz", images, labels)
    metrics = evaluate.score(images, labels, args.ref, inception_weights_path=args.inception_weights)
    path = evaluate.write_metrics(out, metrics, settings, args.ref)
    shown = ", ".join(
        f"{k} {metrics[k]:.4g}"
        for k in ("fid", "is", "kid", "precision", "recall", "class_accuracy")
        if metrics.get(k) is not None
    )
    print(f"{shown}  ->  {path}")
    if metrics.get("class_accuracy_per_class"):
        print("\n".join(evaluate.class_accuracy_lines(metrics["class_accuracy_per_class"])))


def _sample_checkpoint(args: argparse.Namespace):
    """(images, labels, settings) of --num-samples samples of --ckpt, as evaluate.sample_eval_set, with the
    model's provenance added; the run's `sample:` config gives the defaults of --sampler, --steps and --guidance-*."""
    from sdtgen.data.latents import file_sha256
    from sdtgen.distributed import process_state
    from sdtgen.evaluation.evaluate import sample_eval_set
    from sdtgen.runs import find_source, load_pipeline

    source = find_source(args.ckpt)
    sampling = source.sample_settings(
        args.sampler, args.steps, args.guidance_scale, args.guidance_channels, args.guidance_interval
    )
    pipe = load_pipeline(source, vae=args.vae, sampler=sampling.sampler, dtype=torch_dtype(args.dtype))
    pipe.to(process_state().device).set_progress_bar_config(disable=True)
    images, labels, settings = sample_eval_set(
        pipe,
        args.num_samples,
        labels_mode=args.labels,
        seed=args.seed,
        steps=sampling.steps,
        guidance=sampling.guidance,
        batch_size=args.batch_size,
    )
    weights = next(source.model_dir.glob("*.safetensors"), None)
    model = {
        "ckpt": str(source.path),
        "model": str(source.model_dir),
        "model_sha256": file_sha256(weights) if weights else None,
    }
    return images, labels, {**model, **settings, "vae": args.vae or source.vae_spec() or "pipeline's own"}
