"""The built-in recipe sweep: which settings give the best samples per minute of a laptop CPU.

    python scripts/sweep_recipe.py                              # every candidate, about 20 min each on 2 cores
    python scripts/sweep_recipe.py --only cosine-b64-1200       # some of them
    python scripts/sweep_recipe.py --table                      # the markdown table of docs/recipe_sweep.json

Each candidate is the built-in run (the dataclass defaults of sdtgen/config.py) with a few
overrides, trained as the README's main job trains it (one process, all cores, the shared
latent cache) into `<out>/<name>`, then scored on one protocol, PROTOCOL below: the main
job's final evaluation (1,000 class-balanced samples, DPM++ 12 steps, guidance 2, seed 0;
FID and class accuracy, overall and per class, with the built-in feature network). A run
whose own final evaluation used PROTOCOL is not sampled again; any other is scored by
`sdtgen eval` with it. Results go to `--results` (docs/recipe_sweep.json), one entry per
candidate, written as soon as a candidate is scored; a candidate already there is skipped,
and a run folder holding its last checkpoint is not trained again, so an interrupted sweep
resumes. docs/recipe.md shows `--table`'s output.

Speeds (images/s, the median of the training log) depend on what else the machine ran; the
sweep ran one candidate at a time, and only the main job's timing from a fresh clone is a
timing claim.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# name -> overrides of the built-in defaults, in the order they were tried. The first
# entry is the old default (before issue 12) for reference.
CANDIDATES: dict[str, list[str]] = {
    "old-default": ["train.lr_schedule=constant", "train.max_steps=600", "train.global_batch_size=128"],
    "cosine-b128-500": ["train.lr_schedule=cosine", "train.max_steps=500", "train.global_batch_size=128"],
    "cosine-b64-1000": ["train.lr_schedule=cosine", "train.max_steps=1000", "train.global_batch_size=64"],
    "cosine-b64-1200": [
        "train.lr_schedule=cosine",
        "train.max_steps=1200",
        "train.global_batch_size=64",
        "sample.sampler=dpm++",
        "train.eval_steps=12",
        "train.eval_every=400",  # the FID-against-steps points of docs/recipe.md
    ],
}


# Every candidate is compared on one protocol: the built-in run's final evaluation.
PROTOCOL = {"sampler": "dpm++", "steps": 12, "cfg": 2.0, "num_samples": 1000, "seed": 0}


def run_candidate(name: str, overrides: list[str], run_dir: Path) -> float | None:
    """Train candidate `name` into `run_dir` as the main job would; its seconds, or None if its run already ended."""
    from sdtgen.config import load_config
    from sdtgen.training.trainer import train

    config = load_config(None, [f"output_dir={run_dir}", "train.keep_checkpoints=1", *overrides])
    if (run_dir / "checkpoints" / f"checkpoint-{config.train.max_steps}").is_dir():
        return None
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def protocol_score(run_dir: Path) -> dict:
    """PROTOCOL's metrics of a run: its own final evaluation when that used PROTOCOL, else `sdtgen eval` with it."""
    from sdtgen.cli import main as sdtgen
    from sdtgen.config import load_config

    config = load_config(run_dir / "config.yaml")
    final = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    t, s = config.train, config.sample
    if (s.sampler, t.eval_steps, s.cfg, t.eval_samples, config.seed) == tuple(
        PROTOCOL.values()
    ) and "eval_fid" in final:
        return {
            "fid": final["eval_fid"],
            "class_accuracy": final["eval_class_accuracy"],
            "class_accuracy_per_class": final["eval_class_accuracy_per_class"],
        }
    out = run_dir / "eval-protocol"
    if not (out / "metrics.json").is_file():
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in PROTOCOL.items()]
        sdtgen(["eval", "--ckpt", str(run_dir), *flags, "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: metrics[key] for key in ("fid", "class_accuracy", "class_accuracy_per_class")}


def summarize(name: str, overrides: list[str], run_dir: Path) -> dict:
    """A candidate's entry: its settings, its training speed and loss, and its PROTOCOL metrics."""
    from sdtgen.config import load_config

    config = load_config(run_dir / "config.yaml")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    return {
        "name": name,
        "overrides": overrides,
        "steps": config.train.max_steps,
        "batch": config.train.global_batch_size,
        "lr_schedule": config.train.lr_schedule,
        "images_seen": config.train.max_steps * config.train.global_batch_size,
        "images_per_s": round(statistics.median(speeds), 1),
        "final_loss": records[-1]["loss"],
        "protocol": PROTOCOL,
        **protocol_score(run_dir),
    }


def table(results: dict[str, dict]) -> str:
    lines = [
        "| candidate | batch x steps | lr schedule | final loss | FID | class acc. | worst classes |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in results.values():
        worst = sorted(r["class_accuracy_per_class"].items(), key=lambda item: item[1])[:2]
        lines.append(
            f"| {r['name']} | {r['batch']} x {r['steps']} | {r['lr_schedule']} | {r['final_loss']:.3f} "
            f"| {r['fid']:.2f} | {r['class_accuracy']:.1%} | {', '.join(f'{n} {a:.0%}' for n, a in worst)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="candidates to run (default: all)")
    parser.add_argument("--out", default="runs/sweep", help="folder for the candidates' run folders (<out>/<name>)")
    parser.add_argument("--results", default="docs/recipe_sweep.json", help="the results file (read, then extended)")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the results file and stop")
    args = parser.parse_args(argv)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not args.table:
        for name in args.only or CANDIDATES:
            if name in results:
                print(f"{name}: already measured, skipped")
                continue
            run_dir = Path(args.out) / name
            run_candidate(name, CANDIDATES[name], run_dir)
            results[name] = summarize(name, CANDIDATES[name], run_dir)
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(table({name: results[name] for name in CANDIDATES if name in results}))


if __name__ == "__main__":
    main()
