"""The sampler curve: FID and class accuracy of a trained run against the number of model evaluations (NFE),
for every sampler of its objective, and FID against class accuracy over a range of guidance scales.

    python scripts/sampler_curve.py --ckpt runs/animals-sdt --num-samples 1000 --out docs/sampler_curve   # both parts
    python scripts/sampler_curve.py --part nfe --nfe 4 8 16 --samplers euler heun
    python scripts/sampler_curve.py --part guidance --guidance-scales 1 2 4

Two parts (`--part nfe|guidance|both`):

- nfe: for each sampler that fits the run's objective (all of sdtgen.diffusion.sampling.SAMPLERS
  for it, or --samplers) and each target NFE, the largest number of steps whose NFE is at most
  the target (targets that give a sampler the same steps are measured once), at guidance
  scale --guidance-scale (default: the run's sample.guidance_scale).
- guidance: one sampler and number of steps (default: the run's sample.sampler and
  sample.steps, else the objective's defaults) at each of --guidance-scales.

Each point is what `sdtgen eval --ckpt RUN --num-samples N --seed S --sampler X --steps K
--guidance-scale C --guidance-interval 0 1` measures: N class-balanced samples (sample i has
class i * classes // N and seed S * 1000003 + i), sampled by
sdtgen.evaluation.evaluate.sample_eval_set and scored against the built-in set's training split
("animals") with the built-in feature network. The seconds of a point are its sampling and
scoring together (the JSON has the sampling alone too).

NFE counting: model evaluations per sample over the whole trajectory, one per timestep of the
scheduler. A guided step (conditional and unconditional input in one doubled batch) counts as
one evaluation, the convention of the DiT and EDM papers. Euler, DDPM, DDIM and DPM++ evaluate
once per step; Heun (diffusers' FlowMatchHeunDiscreteScheduler) twice per step except the last,
2 x steps - 1 in all. tests/test_sampler_curve.py checks the counts by counting model calls.

Outputs, in --out (default docs/sampler_curve):

    sampler_curve.json   every point measured: settings, NFE, FID, class accuracy (overall, per class), seconds
    sampler_curve.md     the tables (per sampler: NFE, steps, FID, class accuracy, seconds; the guidance table)
    sampler_curve.png    FID and class accuracy against NFE (log x), one line per sampler
    guidance_curve.png   FID against class accuracy, each point labelled with its guidance scale

The JSON is rewritten after every point, so an interrupted run keeps what it measured, and a
rerun skips the points it already holds (a point is keyed by the model's weights, sampler,
steps, guidance scale, number of samples and seed). The tables and plots show the points of
this invocation's plan (both parts) that the JSON holds. One process; the model runs on
the GPU when there is one. docs/sampling.md ("Sampler curve") describes it; the built-in run's
numbers there come from the first command above.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from results_file import read_results, write_results
from sampler_curve_report import NFE_COUNTING, TABLE_FILE, write_report

DEFAULT_NFE = (4, 6, 8, 12, 16, 25, 50, 100, 250)
DEFAULT_GUIDANCE_SCALES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
REFERENCE = "animals"
JSON_FILE = "sampler_curve.json"
KEY_FIELDS = ("model_sha256", "sampler", "steps", "guidance_scale", "num_samples", "seed")
# What a point keeps: a curve has dozens of points, and precision/recall would cost more than the rest of a score.
METRICS = ("fid", "class_accuracy", "class_accuracy_per_class")


def model_evaluations(scheduler, steps: int) -> int:
    """NFE per sample of `steps` steps of `scheduler`: its timesteps, as denoise evaluates the model once at each."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def steps_for_targets(scheduler, targets: list[int]) -> list[tuple[int, int]]:
    """(steps, NFE) of `scheduler` for each target NFE: the largest steps whose NFE is at most the target, without
    repeats. NFE grows with the steps, so the scan stops at the first count above the largest target; a target
    below the NFE of one step gives nothing.
    """
    nfe_of_steps = {}
    steps = 1
    while (nfe := model_evaluations(scheduler, steps)) <= max(targets):
        nfe_of_steps[steps] = nfe
        steps += 1
    chosen = {}
    for target in sorted(targets):
        fitting = [s for s, nfe in nfe_of_steps.items() if nfe <= target]
        if fitting:
            chosen[max(fitting)] = nfe_of_steps[max(fitting)]
    return list(chosen.items())


def point_key(point: dict[str, Any]) -> tuple:
    """What makes two points the same measurement (KEY_FIELDS)."""
    return tuple(point[field] for field in KEY_FIELDS)


def load_points(path: Path) -> list[dict[str, Any]]:
    """The points a previous run saved, or none; a guidance scale saved as `cfg` (older files) reads as guidance_scale."""
    from sdtgen.config import current_names

    return [current_names(point) for point in read_results(path, {"points": []})["points"]]


def save_points(path: Path, points: list[dict[str, Any]]) -> None:
    """The JSON, replaced whole (written aside, then renamed), so an interruption never leaves half a file."""
    write_results(path, json.dumps({"nfe_counting": NFE_COUNTING, "reference": REFERENCE, "points": points}, indent=2))


def measure(pipe, spec: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Sample and score one point: `spec` (sampler, steps, guidance_scale, num_samples, seed, ...) with its metrics
    and seconds. Guidance acts at every step."""
    from sdtgen.diffusion.sampling import Guidance
    from sdtgen.evaluation.evaluate import sample_eval_set
    from sdtgen.evaluation.metrics import compute_metrics

    start = time.perf_counter()
    pipe.use_sampler(spec["sampler"])
    images, labels, _ = sample_eval_set(
        pipe,
        spec["num_samples"],
        labels_mode="balanced",
        seed=spec["seed"],
        steps=spec["steps"],
        guidance=Guidance(spec["guidance_scale"]),
        batch_size=batch_size,
    )
    sampled = time.perf_counter()
    metrics = compute_metrics(images, labels, reference=REFERENCE, fid_and_accuracy_only=True)
    seconds = {"seconds": round(time.perf_counter() - start, 1), "sampling_seconds": round(sampled - start, 1)}
    return {**spec, **{k: metrics[k] for k in METRICS}, **seconds}


def plan(args: argparse.Namespace, source) -> tuple[list[dict], list[dict]]:
    """The specs of the nfe part and of the guidance part (before anything is measured)."""
    from sdtgen.data.latents import file_sha256
    from sdtgen.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, Guidance, make_scheduler

    objective = source.objective()
    learn_sigma = source.model_config["learn_sigma"]
    for sampler in [*(args.samplers or []), *([args.guidance_sampler] if args.guidance_sampler else [])]:
        if sampler not in SAMPLERS[objective]:
            raise ValueError(
                f"The sampler {sampler} does not fit this {objective} model; choose from {', '.join(SAMPLERS[objective])}."
            )
    run = source.sample_settings(guidance_scale=args.guidance_scale)  # the run's sampler and steps, and the scale
    for scale in args.guidance_scales:  # before any sampling: a model without a null class has no guidance
        Guidance(scale).check(source.model_config)
    weights = next(source.model_dir.glob("*.safetensors"), None)
    common = {
        "ckpt": str(source.path),
        "model": str(source.model_dir),
        "model_sha256": file_sha256(weights) if weights else str(source.model_dir),  # the key's model identity
        "objective": objective,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    nfe_part = [
        {**common, "sampler": sampler, "steps": steps, "nfe": nfe, "guidance_scale": run.guidance.scale}
        for sampler in args.samplers or SAMPLERS[objective]
        for steps, nfe in steps_for_targets(make_scheduler(objective, sampler, learn_sigma), args.nfe)
    ]
    run_sampler = run.sampler or DEFAULT_SAMPLER[objective]
    sampler = args.guidance_sampler or run_sampler
    # The run's steps are for its own sampler; another sampler gets its own default.
    steps = args.guidance_steps or (run.steps if sampler == run_sampler else None) or DEFAULT_STEPS[objective][sampler]
    nfe = model_evaluations(make_scheduler(objective, sampler, learn_sigma), steps)
    guidance_part = [
        {**common, "sampler": sampler, "steps": steps, "nfe": nfe, "guidance_scale": scale}
        for scale in args.guidance_scales
    ]
    return nfe_part, guidance_part


def measured(specs: list[dict], points: list[dict]) -> list[dict]:
    """The measured points of `specs`, in their order."""
    by_key = {point_key(p): p for p in points}
    return [by_key[point_key(s)] for s in specs if point_key(s) in by_key]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sampler_curve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", metavar="DIR", help="run, checkpoint, model or pipeline folder (default: the built-in run)"
    )
    parser.add_argument(
        "--part", choices=("nfe", "guidance", "both"), default="both", help="what to measure (default: both)"
    )
    parser.add_argument("--num-samples", type=int, default=1000, metavar="N", help="samples per point (default: 1000)")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="sample i uses seed * 1000003 + i (default: 0)"
    )
    parser.add_argument(
        "--nfe",
        type=int,
        metavar="N",
        nargs="+",
        default=list(DEFAULT_NFE),
        help=f"target NFEs of the nfe part (default: {' '.join(map(str, DEFAULT_NFE))})",
    )
    parser.add_argument(
        "--samplers", nargs="+", metavar="NAME", help="samplers of the nfe part (default: all of the objective's)"
    )
    parser.add_argument(
        "--guidance-scale",
        "--cfg",
        type=float,
        metavar="SCALE",
        help="guidance scale of the nfe part (default: the run's sample.guidance_scale)",
    )
    parser.add_argument(
        "--guidance-scales",
        type=float,
        metavar="SCALE",
        nargs="+",
        default=list(DEFAULT_GUIDANCE_SCALES),
        help=f"scales of the guidance part (default: {' '.join(f'{s:g}' for s in DEFAULT_GUIDANCE_SCALES)})",
    )
    parser.add_argument(
        "--guidance-sampler",
        metavar="NAME",
        help="sampler of the guidance part (default: the run's sample.sampler, else the default)",
    )
    parser.add_argument(
        "--guidance-steps",
        type=int,
        metavar="N",
        help="steps of the guidance part (default: the run's sample.steps, else the sampler's default)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=250,
        metavar="N",
        help="images per sampling batch (does not change the samples)",
    )
    parser.add_argument(
        "--out", default="docs/sampler_curve", metavar="DIR", help="output folder (default: docs/sampler_curve)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: write the tables and plots of the plan's points the JSON already holds (to gather "
        "points measured by several narrower invocations into one table)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure the points of the chosen parts that the JSON lacks; then write the tables and plots of the plan."""
    from sdtgen.cli.errors import one_line_errors

    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.nfe) < 1 or (args.guidance_steps is not None and args.guidance_steps < 1):
        parser.error("--nfe and --guidance-steps must be at least 1")
    with one_line_errors(parser.prog):
        run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    """`main` after the flags are parsed; errors are the library's, or name the flags."""
    from tqdm.auto import tqdm

    from sdtgen.cli.options import asking_for_flags, check_seed
    from sdtgen.distributed import process_state
    from sdtgen.runs import find_source, load_pipeline

    check_seed(args.seed, args.num_samples)
    if args.num_samples < 2:
        raise ValueError(f"--num-samples must be at least 2, got {args.num_samples}.")
    if process_state().num_processes > 1:
        raise ValueError("The sampler curve runs as one process; start it with python, not accelerate launch.")
    with asking_for_flags(args):
        source = find_source(args.ckpt)
        nfe_part, guidance_part = plan(args, source)
    out = Path(args.out)
    points = load_points(out / JSON_FILE)
    wanted = {"nfe": nfe_part, "guidance": guidance_part, "both": nfe_part + guidance_part}[args.part]
    done = {point_key(p) for p in points}
    todo = [] if args.report_only else list({point_key(s): s for s in wanted if point_key(s) not in done}.values())
    if todo:
        pipe = load_pipeline(source)
        pipe.to(process_state().device).set_progress_bar_config(disable=True)
        bar = tqdm(todo, desc="sampler curve", unit="point", dynamic_ncols=True)
        for spec in bar:
            bar.set_postfix_str(f"{spec['sampler']} {spec['steps']} steps, guidance {spec['guidance_scale']:g}")
            points.append(measure(pipe, spec, args.batch_size))
            save_points(out / JSON_FILE, points)
    nfe_points, guidance_points = measured(nfe_part, points), measured(guidance_part, points)
    write_report(out, nfe_points, guidance_points, REFERENCE)
    print(f"{len(todo)} points measured, {len(nfe_points) + len(guidance_points)} shown  ->  {out / TABLE_FILE}")


if __name__ == "__main__":
    sys.exit(main())
