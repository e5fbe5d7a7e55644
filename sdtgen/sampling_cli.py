"""`sdtgen sample` and `sdtgen export`: SDTPipeline from the command line.

A sampling request is every (class, k) for the chosen classes and k < --num, numbered
class by class: sample i has class `classes[i // num]` and seed `sample_seed(seed, i)`, so
its image is the same whatever --batch-size and however many processes share the work.
Under `accelerate launch`, each process samples a contiguous range of i and writes its
PNGs; the main process gathers the images and writes the grid and settings.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sdtgen.class_names import resolve_class, slug
from sdtgen.diffusion.sampling import SAMPLERS, SEED_STRIDE, Guidance, check_steps, default_steps, sample_generators
from sdtgen.loading import Source, find_source, load_pipeline, process_state

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Classes sampled when --class is absent and the run names none: all of them, if this few.
MAX_DEFAULT_CLASSES = 32
DEFAULT_CFG = 1.5  # DiT's FID-50K setting

SAMPLE_EPILOG = f"""\
--ckpt kinds:
  run folder         its newest checkpoint's EMA model (default: the built-in run)
  checkpoint folder  <run>/checkpoints/checkpoint-<step>
  model folder       an SDTDiT folder, e.g. from `sdtgen convert` (needs --vae)
  pipeline folder    from `sdtgen export`

samplers: {', '.join(SAMPLERS['ddpm'])} for ddpm models; {', '.join(SAMPLERS['flow'])} for flow models.
Defaults for --sampler, --steps and --cfg come from the run's `sample:` config when there is
a run; otherwise the objective's default sampler and steps, and cfg {DEFAULT_CFG}.

--cfg-interval LOW HIGH: guidance only at steps whose noise level, timestep / 1000, lies in
[LOW, HIGH] (1 = pure noise, 0 = clean; for flow models the t of (1 - t) x0 + t noise).

examples:
  sdtgen sample --class dog --class cat --num 8
  sdtgen sample --ckpt models/dit-xl-2 --vae stabilityai/sd-vae-ft-ema --class "golden retriever" --cfg 4 --cfg-channels 3
  accelerate launch -m sdtgen.cli sample --ckpt runs/imagenet256_sdt_xl2 --class 207 --num 64
"""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options saying which model to load and how to sample it (shared by sample and export)."""
    parser.add_argument("--ckpt", metavar="DIR", help="a run, checkpoint, model or pipeline folder (see below)")
    parser.add_argument("--vae", metavar="SPEC", help="builtin, identity, an AutoencoderKL folder or a hub id (default: the run's data.vae)")
    parser.add_argument("--objective", choices=tuple(SAMPLERS), help="only for a bare model folder without a learned variance")
    parser.add_argument("--sampler", choices=sorted({s for names in SAMPLERS.values() for s in names}), help="see below")


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen sample`: class-conditional samples as PNGs and a grid."""
    parser = subparsers.add_parser(
        "sample", help="sample images of chosen classes from a trained model",
        description="Sample images of chosen classes: one PNG per sample (CLASS-NAME-K.png) and grid.png.",
        epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(parser)
    parser.add_argument("--class", dest="classes", action="append", metavar="C", help="a class id or name; repeat for more (default: all)")
    parser.add_argument("--num", type=int, default=4, metavar="N", help="samples per class (default: 4)")
    parser.add_argument("--cfg", type=float, metavar="S", help="guidance scale, 1 = off")
    parser.add_argument("--cfg-channels", type=int, metavar="N", help="guide only the first N latent channels (default: all; 3 = DiT's original)")
    parser.add_argument("--cfg-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"), help="noise levels where guidance applies (default: 0 1)")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed * 1000003 + i (default: 0)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="samples per forward pass (default: 16)")
    parser.add_argument("--out", default="samples", metavar="DIR", help="output folder (default: samples)")
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the process's accelerator, else cpu)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision (default: fp32)")
    parser.add_argument("--list-classes", action="store_true", help="print the model's class ids and names, and exit")
    parser.set_defaults(run=run_sample, parser=parser)


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    """`sdtgen export`: a training run as an SDTPipeline folder."""
    parser = subparsers.add_parser(
        "export", help="write an SDTPipeline folder (model_index.json) from a run, checkpoint or model",
        description="Write an SDTPipeline folder (EMA model, VAE, scheduler, class names) that loads with "
        "SDTPipeline.from_pretrained(DIR) and `sdtgen sample --ckpt DIR`.",
    )
    _add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.set_defaults(run=run_export, parser=parser)


def run_export(args: argparse.Namespace) -> None:
    source = find_source(args.ckpt)
    pipe = load_pipeline(source, vae=args.vae, objective=args.objective, sampler=args.sampler)
    pipe.save_pretrained(args.out)
    vae = "none (pixel space)" if pipe.vae is None else "AutoencoderKL"
    print(f"Saved SDTPipeline ({pipe.objective}, {type(pipe.scheduler).__name__}, VAE {vae}, "
          f"{source.num_classes} classes) from {source.model_dir} to {args.out}")


def run_sample(args: argparse.Namespace) -> None:
    source = find_source(args.ckpt)
    state = process_state()
    if args.list_classes:
        if state.is_main_process:
            print(_class_listing(source.class_names, source.num_classes))
        return
    plan = SamplePlan.from_args(args, source)
    plan.run(state)


def _class_listing(names: Sequence[str] | None, num_classes: int) -> str:
    if not names:
        return f"This model's {num_classes} classes have no names; use ids 0..{num_classes - 1}."
    width = len(str(num_classes - 1))
    return "\n".join(f"{i:>{width}}  {name}" for i, name in enumerate(names))


def check_seed(seed: int, count: int) -> None:
    """ValueError unless samples 0..count-1 of `seed` all get a seed torch accepts (0..2**64 - 1)."""
    largest = (2**64 - count) // SEED_STRIDE
    if not 0 <= seed <= largest:
        raise ValueError(f"--seed must be in 0..{largest}, got {seed}.")


def check_finite(images: torch.Tensor, what: str) -> None:
    """Refuse samples with NaN or inf: saved as images they would be black, and look like a result."""
    if not torch.isfinite(images).all():
        raise RuntimeError(
            f"{what} came out non-finite (NaN or inf): the model's weights or the sampler settings are broken "
            "(try --dtype fp32, fewer --cfg, or another checkpoint)."
        )


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use e.g. cpu, cuda or cuda:1.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} needs CUDA, which this machine does not have; use --device cpu.")


class SamplePlan:
    """A checked `sdtgen sample` request: what to sample, how, and where to write it."""

    def __init__(self, args: argparse.Namespace, source: Source, classes: list[int], cfg: float, steps: int | None, sampler: str | None) -> None:
        self.args, self.source, self.classes = args, source, classes
        self.cfg, self.steps, self.sampler = cfg, steps, sampler
        self.total = len(classes) * args.num

    @classmethod
    def from_args(cls, args: argparse.Namespace, source: Source) -> "SamplePlan":
        """Check everything that can be checked before any weights load; ValueError on bad input."""
        for name, value in (("--num", args.num), ("--batch-size", args.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if args.device:
            _check_device(args.device)
        run_sample_config: dict[str, Any] = (source.run_config or {}).get("sample") or {}
        steps = args.steps if args.steps is not None else run_sample_config.get("steps")
        if steps is not None:
            check_steps(steps)
        # Without label dropout there is no null class, so no guidance by default.
        default_cfg = run_sample_config.get("cfg", DEFAULT_CFG) if source.model_config["class_dropout_prob"] > 0 else 1.0
        cfg = default_cfg if args.cfg is None else args.cfg
        Guidance(cfg, args.cfg_channels, tuple(args.cfg_interval)).check(source.model_config)
        specs = args.classes or run_sample_config.get("classes")
        if specs is None:
            if source.num_classes > MAX_DEFAULT_CLASSES:
                raise ValueError(
                    f"This model has {source.num_classes} classes; choose some with --class (an id or a name, "
                    "e.g. --class 207); --list-classes lists them."
                )
            specs = range(source.num_classes)
        classes = list(dict.fromkeys(resolve_class(spec, source.class_names, source.num_classes) for spec in specs))
        check_seed(args.seed, len(classes) * args.num)
        return cls(args, source, classes, cfg, steps, args.sampler or run_sample_config.get("sampler"))

    def label(self, index: int) -> int:
        return self.classes[index // self.args.num]

    def file_name(self, index: int) -> str:
        class_id, k = self.label(index), index % self.args.num
        digits = max(3, len(str(self.args.num - 1)))
        name = f"-{slug(self.source.class_names[class_id])}" if self.source.class_names else ""
        return f"{class_id}{name}-{k:0{digits}d}.png"

    def run(self, state) -> None:
        """Load the pipeline, sample this process's share, and (main process) write the grid."""
        from accelerate.utils import gather_object

        args = self.args
        pipe = load_pipeline(self.source, vae=args.vae, objective=args.objective, sampler=self.sampler, dtype=DTYPES[args.dtype])
        pipe.to(torch.device(args.device) if args.device else state.device)
        if self.steps is None:
            self.steps = default_steps(pipe.scheduler)
        pipe.set_progress_bar_config(disable=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with state.split_between_processes(list(range(self.total))) as mine:
            images = self.sample(pipe, mine, out, progress=state.is_main_process)
        everything = gather_object([images])
        if state.is_main_process:
            self.write_summary(pipe, torch.cat(everything), out, state.num_processes)

    def sample(self, pipe, indices: Sequence[int], out: Path | None, progress: bool = False) -> torch.Tensor:
        """Images (len(indices), C, H, W) in [0, 1] of the given samples, each also saved as a PNG in `out`."""
        from tqdm.auto import tqdm

        args, batches = self.args, []
        bar = tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(indices), args.batch_size):
            chunk = list(indices[start : start + args.batch_size])
            images = pipe(
                class_labels=[self.label(i) for i in chunk], num_inference_steps=self.steps, guidance_scale=self.cfg,
                generator=sample_generators(args.seed, chunk), guidance_channels=args.cfg_channels,
                guidance_interval=tuple(args.cfg_interval), output_type="pt",
            ).images.float().cpu()
            check_finite(images, f"Samples {chunk[0]}..{chunk[-1]}")
            if out is not None:
                for i, image in zip(chunk, pipe.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())):
                    image.save(out / self.file_name(i))
            batches.append(images)
            bar.update(len(chunk))
        bar.close()
        return torch.cat(batches) if batches else torch.empty(0)

    def write_summary(self, pipe, images: torch.Tensor, out: Path, num_processes: int) -> None:
        """grid.png (one row per class) and settings.json, which records how the samples were made."""
        from sdtgen.training.reporting import grid_image

        names = self.source.class_names
        rows = [names[c] if names else str(c) for c in self.classes]  # as the trainer's grids
        grid_image(images * 2 - 1, rows=len(self.classes), row_labels=rows, scale=2 if images.shape[-1] < 128 else 1).save(out / "grid.png")
        args = self.args
        settings = {
            "ckpt": str(self.source.path), "model": str(self.source.model_dir), "kind": self.source.kind,
            "objective": pipe.objective, "scheduler": type(pipe.scheduler).__name__, "steps": self.steps,
            "cfg": self.cfg, "cfg_channels": args.cfg_channels, "cfg_interval": list(args.cfg_interval),
            "vae": args.vae or self.source.vae_spec() or (str(self.source.path / "vae") if pipe.vae is not None else "identity"), "seed": args.seed, "classes": self.classes, "num_per_class": args.num,
            "dtype": args.dtype, "num_processes": num_processes,
        }
        (out / "settings.json").write_text(json.dumps(settings, indent=2))
        print(f"Wrote {self.total} samples ({len(self.classes)} classes x {args.num}), grid.png and settings.json to {out}")
