"""`sdtgen sample`: class-conditional samples of a trained model as PNGs, a grid and settings.json.

A sampling request is every (class, k) for the chosen classes and k < --num, numbered
class by class: sample i has class `classes[i // num]` and seed `sample_seed(seed, i)`, so
its image is the same whatever --batch-size and however many processes share the work.
Under `accelerate launch`, each process samples a contiguous range of i and writes its
PNGs; the main process gathers the images and writes the grid and settings.json.

The parser part imports nothing heavy (`sdtgen --help` stays fast); torch and the
library are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdtgen.cli.options import (
    DTYPES,
    SAMPLERS,
    SHOWN_DEFAULT_GUIDANCE,
    add_guidance_arguments,
    add_model_arguments,
    asking_for_flags,
    check_seed,
    out_folder,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

    from sdtgen.runs import SampleSettings, Source

# Classes sampled when --class is absent and the run names none: all of them, if this few.
MAX_DEFAULT_CLASSES = 32

EPILOG = f"""\
--ckpt kinds:
  run folder         its newest checkpoint's EMA model (default: the built-in run)
  checkpoint folder  <run>/checkpoints/checkpoint-<step>
  model folder       an SDTDiT folder, e.g. from `sdtgen convert` (needs --vae)
  pipeline folder    from `sdtgen export`

samplers: {", ".join(SAMPLERS["ddpm"])} for ddpm models; {", ".join(SAMPLERS["flow"])} for flow models.
Defaults for --sampler, --steps and --guidance-* come from the run's `sample:` config when there
is a run; otherwise the objective's default sampler and steps, and guidance scale {SHOWN_DEFAULT_GUIDANCE:g}
(1 for a model trained without label dropout, which has no null class to guide with).

--guidance-interval LOW HIGH: guidance only at steps whose noise level, timestep / 1000, lies in
[LOW, HIGH] (1 = pure noise, 0 = clean; for flow models the t of (1 - t) x0 + t noise).

examples:
  sdtgen sample --class dog --class cat --num 8
  sdtgen sample --ckpt models/dit-xl-2 --vae stabilityai/sd-vae-ft-ema --class "golden retriever" --guidance-scale 4 --guidance-channels 3
  accelerate launch -m sdtgen.cli sample --ckpt runs/imagenet256_sdt_xl2 --class 207 --num 64
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen sample` on `subparsers`."""
    parser = subparsers.add_parser(
        "sample",
        help="sample images of chosen classes from a trained model",
        description="Sample images of chosen classes: one PNG per sample (CLASS-NAME-K.png) and grid.png.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="C",
        help="a class id or name; repeat for more (default: all)",
    )
    parser.add_argument("--num", type=int, default=4, metavar="N", help="samples per class (default: 4)")
    add_guidance_arguments(parser)
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed * 1000003 + i (default: 0)")
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="samples per forward pass (default: 16)"
    )
    parser.add_argument(
        "--out", default="samples", type=out_folder, metavar="DIR", help="output folder (default: samples)"
    )
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the process's accelerator, else cpu)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision (default: fp32)")
    parser.add_argument("--list-classes", action="store_true", help="print the model's class ids and names, and exit")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """List the classes, or check the request, sample it and write the files."""
    from sdtgen.distributed import process_state
    from sdtgen.runs import find_source

    with asking_for_flags(args):
        source = find_source(args.ckpt)
        state = process_state()
        if args.list_classes:
            if state.is_main_process:
                print(_class_listing(source.class_names, source.num_classes))
            return
        run_plan(SamplePlan.from_args(args, source), state)


def _class_listing(names: Sequence[str] | None, num_classes: int) -> str:
    if not names:
        return f"This model's {num_classes} classes have no names; use ids 0..{num_classes - 1}."
    width = len(str(num_classes - 1))
    return "\n".join(f"{i:>{width}}  {name}" for i, name in enumerate(names))


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use e.g. cpu, cuda or cuda:1.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} needs CUDA, which this machine does not have; use --device cpu.")


@dataclass(frozen=True)
class SamplePlan:
    """A checked `sdtgen sample` request: sample i has class `classes[i // num]` and seed `sample_seed(seed, i)`."""

    source: Source
    classes: tuple[int, ...]
    num: int  # samples per class
    seed: int
    batch_size: int
    sampling: SampleSettings
    vae: str | None  # None: the run's (see `load_pipeline`)
    objective: str | None
    dtype: str  # a --dtype name
    device: str | None  # None: the process's accelerator
    out: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace, source: Source) -> SamplePlan:
        """Check everything that can be checked before any weights load; ValueError on bad input."""
        from sdtgen.class_names import resolve_class

        for name, value in (("--num", args.num), ("--batch-size", args.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if args.device:
            _check_device(args.device)
        sampling = source.sample_settings(
            args.sampler, args.steps, args.guidance_scale, args.guidance_channels, args.guidance_interval
        )
        specs = args.classes or source.sample_defaults.get("classes")
        if specs is None:
            if source.num_classes > MAX_DEFAULT_CLASSES:
                raise ValueError(
                    f"This model has {source.num_classes} classes; choose some with --class (an id or a name, "
                    "e.g. --class 207); --list-classes lists them."
                )
            specs = range(source.num_classes)
        try:
            ids = [resolve_class(spec, source.class_names, source.num_classes) for spec in specs]
        except ValueError as error:
            raise ValueError(f"--class: {error} `sdtgen sample --list-classes` lists them.") from None
        classes = tuple(dict.fromkeys(ids))  # each class once, in the order asked
        check_seed(args.seed, len(classes) * args.num)
        return cls(
            source,
            classes,
            args.num,
            args.seed,
            args.batch_size,
            sampling,
            args.vae,
            args.objective,
            args.dtype,
            args.device,
            Path(args.out),
        )

    @property
    def total(self) -> int:
        return len(self.classes) * self.num

    def label(self, index: int) -> int:
        return self.classes[index // self.num]

    def file_name(self, index: int) -> str:
        from sdtgen.class_names import slug

        class_id, k = self.label(index), index % self.num
        digits = max(3, len(str(self.num - 1)))
        name = f"-{slug(self.source.class_names[class_id])}" if self.source.class_names else ""
        return f"{class_id}{name}-{k:0{digits}d}.png"


def run_plan(plan: SamplePlan, state) -> None:
    """Load the pipeline, sample this process's share as PNGs, and (main process) write the summary."""
    import torch
    from accelerate.utils import gather_object

    from sdtgen.runs import load_pipeline

    pipe = load_pipeline(
        plan.source,
        vae=plan.vae,
        objective=plan.objective,
        sampler=plan.sampling.sampler,
        dtype=torch_dtype(plan.dtype),
    )
    pipe.to(torch.device(plan.device) if plan.device else state.device)
    pipe.set_progress_bar_config(disable=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(list(range(plan.total))) as mine:
        images = sample_images(plan, pipe, mine, plan.out, progress=state.is_main_process)
    everything = gather_object([images])
    if state.is_main_process:
        write_summary(plan, pipe, torch.cat(everything), state.num_processes)


def sample_images(
    plan: SamplePlan, pipe, indices: Sequence[int], out: Path | None = None, progress: bool = False
) -> torch.Tensor:
    """Images (len(indices), C, H, W) in [0, 1] of the given samples of `plan`, each also saved as a PNG in `out`."""
    from sdtgen.generation import generate

    def save(chunk: list[int], images: torch.Tensor) -> None:
        for i, image in zip(chunk, pipe.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())):
            image.save(out / plan.file_name(i))

    return generate(
        pipe,
        [plan.label(i) for i in range(plan.total)],
        indices,
        seed=plan.seed,
        batch_size=plan.batch_size,
        steps=plan.sampling.steps,
        guidance=plan.sampling.guidance,
        output_type="pt",
        progress="sampling" if progress else None,
        on_batch=save if out is not None else None,
    )


def write_summary(plan: SamplePlan, pipe, images: torch.Tensor, num_processes: int) -> None:
    """grid.png (one row per class) and settings.json, which records how the samples were made, in `plan.out`."""
    from sdtgen.diffusion.sampling import default_steps
    from sdtgen.generation import grid_image, to_uint8

    source, guidance = plan.source, plan.sampling.guidance
    names = source.class_names
    rows = [names[c] if names else str(c) for c in plan.classes]  # as the trainer's grids
    grid_image(
        to_uint8(images), rows=len(plan.classes), row_labels=rows, scale=2 if images.shape[-1] < 128 else 1
    ).save(plan.out / "grid.png")
    settings = {
        "ckpt": str(source.path),
        "model": str(source.model_dir),
        "kind": source.kind,
        "objective": pipe.objective,
        "scheduler": type(pipe.scheduler).__name__,
        "steps": default_steps(pipe.scheduler) if plan.sampling.steps is None else plan.sampling.steps,
        "guidance_scale": guidance.scale,
        "guidance_channels": guidance.channels,
        "guidance_interval": list(guidance.interval),
        "vae": plan.vae or source.vae_spec() or (str(source.path / "vae") if pipe.vae is not None else "identity"),
        "seed": plan.seed,
        "classes": list(plan.classes),
        "num_per_class": plan.num,
        "dtype": plan.dtype,
        "num_processes": num_processes,
    }
    (plan.out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(
        f"Wrote {plan.total} samples ({len(plan.classes)} classes x {plan.num}), grid.png and settings.json "
        f"to {plan.out}"
    )
