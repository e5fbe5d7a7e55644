"""The recipe ladder: each training ingredient added in turn to the old built-in recipe, and
each removed from the final one, scored on the main job's protocol over several seeds.

    python scripts/sweep_recipe.py --rows base +betas +direction --seeds 0 1   # train and score
    python scripts/sweep_recipe.py --steps 600 --seeds 0                       # a screen at half the budget
    python scripts/sweep_recipe.py --table                                     # docs/recipe.md's tables
    python scripts/sweep_recipe.py --rows base final --seeds 0 --eval-every 200 \
        --out runs/ladder-curves --results docs/recipe_curves.json --plot base final   # FID against images

A row is the built-in run of the old recipe (OLD_RECIPE: the defaults before the ladder) plus
the overrides of ROWS, trained as the main job trains (one process, all cores, the shared
latent cache) into `<out>/<row>-<steps>-s<seed>`. Its score is the run's own final evaluation:
1,000 class-balanced samples, DPM++ 12 steps, guidance 2, sampling seed = training seed, FID
and class accuracy (overall and per class) with the built-in feature network, which takes no
part in training. Results go to `--results`, one entry per run, written as soon as a run is
scored; a scored run is skipped and a run folder that reached its last step is not trained
again, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from results_file import read_results, write_results
from sweep_recipe_report import plot, table

# The recipe before the ladder, spelled out so the ladder keeps its meaning when the defaults change.
OLD_RECIPE = [
    "train.global_batch_size=64",
    "train.lr=1e-3",
    "train.betas=[0.9,0.999]",
    "train.warmup_steps=50",
    "train.grad_clip=1.0",
    "train.ema_decay=0.999",
    "flow.direction_weight=0",
    "model.mlp=gelu",
    "model.norm=layernorm",
    "model.rope=false",
    "model.qk_norm=false",
    "train.dispersive_weight=0",
    # The ladder's protocol: guidance 2 at every step, as the old recipe sampled.
    "sample.guidance_scale=2",
    "sample.guidance_interval=[0,1]",
]

# The ladder, in the order the ingredients are added (LightningDiT's order where it has them).
LADDER = {
    "+betas": ["train.betas=[0.9,0.95]"],
    "+direction": ["flow.direction_weight=1"],
    "+swiglu": ["model.mlp=swiglu"],
    "+rmsnorm": ["model.norm=rmsnorm"],
    "+rope": ["model.rope=true"],
    # Smaller batches: twice, then four times the steps for the same images.
    "+batch32": ["train.global_batch_size=32"],
    "+batch16": ["train.global_batch_size=16"],
    "+lr2e-3": ["train.lr=2e-3"],
}


def _ladder_rows() -> dict[str, list[str]]:
    rows, overrides = {"base": []}, []
    for name, extra in LADDER.items():
        overrides = overrides + extra
        rows[name] = overrides
    return rows


def without(top: str, ingredients: tuple[str, ...]) -> dict[str, list[str]]:
    """Rows `top-X`: the ladder's row `top` with ingredient X taken out, for each X."""
    return {f"{top}-{x.lstrip('+')}": [o for o in ROWS[top] if o not in LADDER[x]] for x in ingredients}


ROWS = _ladder_rows()
# The final recipe is the whole ladder. Each ingredient but the batch and the learning rate (the
# ladder's last rows) is removed from it in turn, and other knobs go on top; the default config is
# `final+lr3e-3`, sampled with its own guidance (docs/recipe.md).
FINAL = ROWS["+lr2e-3"]
ROWS["final"] = FINAL
ROWS |= without("final", ("+betas", "+direction", "+swiglu", "+rmsnorm", "+rope"))
ROWS |= {
    "final+batch8": [*FINAL, "train.global_batch_size=8"],
    "final+lr3e-3": [*FINAL, "train.lr=3e-3"],
    "final+nowarmup-noclip": [*FINAL, "train.warmup_steps=0", "train.grad_clip=null"],
    "final+ema0.05": [*FINAL, "train.ema_std=0.05"],  # EDM2's power-function EMA (the default is about 0.09)
    "final+ema0.15": [*FINAL, "train.ema_std=0.15"],
    "final+qk-norm": [*FINAL, "model.qk_norm=true"],
    "final+dispersive": [*FINAL, "train.dispersive_weight=0.5"],
    "final+wide256": [*FINAL, "model.hidden_size=256", "model.num_heads=4"],
    "final+deep6": [*FINAL, "model.depth=6"],
}
# Measured before the learning rate joined the ladder, on its row then at the top (+batch16, lr 1e-3).
ROWS |= without("+batch16", ("+direction", "+swiglu", "+rope"))
ROWS |= {f"+batch16+ema{std}": [*ROWS["+batch16"], f"train.ema_std={std}"] for std in ("0.05", "0.15")}
# Measured before the batch joined the ladder: on the +rope recipe, at batch 64.
ROWS["+rope+dispersive"] = [*ROWS["+rope"], "train.dispersive_weight=0.5"]


BUDGET_BATCH = 64  # budgets are counted in steps of the old recipe's batch


def run_name(row: str, steps: int, seed: int) -> str:
    return f"{row}-{steps}-s{seed}"


def train_row(row: str, steps: int, seed: int, out: Path, eval_every: int | None, extra: list[str]) -> Path:
    """Train one row into its run folder (skipped when it already reached its last step); `extra`
    overrides come after the row's own."""
    from sdtgen.config import load_config
    from sdtgen.runs import CHECKPOINTS_DIR, checkpoint_name
    from sdtgen.training.trainer import train

    run_dir = out / run_name(row, steps, seed)
    overrides = [*OLD_RECIPE, *ROWS[row], *extra, f"seed={seed}", f"output_dir={run_dir}", "train.keep_checkpoints=1"]
    batch = load_config(None, overrides).train.global_batch_size
    # Every row sees the images of `steps` steps of 64; a row with another batch takes more or fewer steps.
    scale = BUDGET_BATCH / batch
    overrides += [
        f"train.max_steps={round(steps * scale)}",
        f"train.eval_every={round(eval_every * scale) if eval_every else 'null'}",
    ]
    config = load_config(None, overrides)
    if not (run_dir / CHECKPOINTS_DIR / checkpoint_name(config.train.max_steps)).is_dir():
        train(config)
    return run_dir


def flops_per_image(run_dir: Path) -> float:
    """Training FLOPs of one image (forward + backward of the denoiser), counted by torch on the math backend."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sdtgen.models.dit import SDTDiT
    from sdtgen.runs import find_source

    model = SDTDiT.from_pretrained(find_source(run_dir).model_dir)
    model.set_attention_backend("math")
    x = torch.randn(1, model.config.in_channels, model.config.input_size, model.config.input_size)
    with FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500.0]), torch.tensor([0])).square().mean().backward()
    return float(counter.get_total_flops())


def summarize(row: str, steps: int, seed: int, run_dir: Path) -> dict:
    """A run's entry: settings, speed, loss, FLOPs and its final evaluation (and the evaluations along the way)."""
    from sdtgen.config import load_config
    from sdtgen.runs import CONFIG_FILE, LOG_FILE, read_log

    records = read_log(run_dir / LOG_FILE)
    final = records[-1]
    if "eval_fid" not in final:
        raise RuntimeError(f"{run_dir} has no final evaluation in its log; was train.final_eval off?")
    config = load_config(run_dir / CONFIG_FILE)
    # Windows that ran an evaluation count its time too; a run too short to log without one has only those.
    images_per_s = [r["images_per_s"] for r in records if "eval_fid" not in r] or [r["images_per_s"] for r in records]
    return {
        "row": row,
        "seed": seed,
        "steps": steps,
        "overrides": ROWS[row],
        "images_seen": config.train.max_steps * config.train.global_batch_size,
        "train_flops_per_image": flops_per_image(run_dir),
        "images_per_s": round(statistics.median(images_per_s), 1),
        "precision": config.train.mixed_precision,
        "final_loss": final["loss"],
        "fid": final["eval_fid"],
        "class_accuracy": final["eval_class_accuracy"],
        "class_accuracy_per_class": final["eval_class_accuracy_per_class"],
        "curve": [
            {
                "images": r["step"] * config.train.global_batch_size,
                "fid": r["eval_fid"],
                "acc": r["eval_class_accuracy"],
            }
            for r in records
            if "eval_fid" in r
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--steps", type=int, default=1200, help="the budget, in steps of 64 images (the cosine schedule ends there)"
    )
    parser.add_argument("--eval-every", type=int, help="also evaluate every N steps (FID against images seen)")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every row (e.g. another data set)"
    )
    parser.add_argument("--out", default="runs/ladder", help="folder of the run folders")
    parser.add_argument("--results", default="docs/recipe_ladder.json", help="the results file (read, then extended)")
    parser.add_argument("--table", action="store_true", help="print the tables of the results file and stop")
    parser.add_argument(
        "--plot", nargs="+", metavar="ROW", help="then plot FID against images seen of these rows (next to --results)"
    )
    args = parser.parse_args(argv)
    results_path = Path(args.results)
    results = read_results(results_path, {})
    if not args.table:
        for seed in args.seeds:
            for row in args.rows:
                name = run_name(row, args.steps, seed)
                if name in results:
                    continue
                same = [r for r in results.values() if (r["steps"], r["seed"]) == (args.steps, seed)]
                same = [r for r in same if sorted(r["overrides"]) == sorted(ROWS[row]) and not args.set]
                if same:  # the same settings under another row's name (final-rope is +rmsnorm): not trained twice
                    results[name] = {**same[0], "row": row, "overrides": ROWS[row]}
                else:
                    run_dir = train_row(row, args.steps, seed, Path(args.out), args.eval_every, args.set)
                    results[name] = summarize(row, args.steps, seed, run_dir)
                write_results(results_path, json.dumps(results, indent=2) + "\n")
                print(f"{name}: FID {results[name]['fid']:.2f}, class accuracy {results[name]['class_accuracy']:.1%}")
    if args.plot:
        plot(results, args.plot, results_path.with_suffix(".png"))
    for steps in sorted({r["steps"] for r in results.values()}):
        print(f"\n{steps} steps\n" + table(results, steps, ROWS))


if __name__ == "__main__":
    main()
