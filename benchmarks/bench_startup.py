"""Start-up time against data-set size: from launch to the first training step, with a complete cache.

For each size N it builds (once, under --root) a class-per-folder tree of N tiny PNG files
in 1,000 class folders and a complete latent cache of the same N images, written directly
in the cache format (identity VAE, 3x2x2 float16 latents, random moments; no encoding).
Then it launches fresh `python scripts/train_gen.py` processes (a one-block model, one step,
no evaluation) on them and times launch -> first training step: the step's log line in
log.jsonl (its mtime; train.log_every=1). `--old DIR` times another checkout the same way
(`PYTHONPATH=DIR python DIR/scripts/train_gen.py`), e.g. a git worktree of an earlier commit.

    python benchmarks/bench_startup.py --root /tmp/sdtgen-startup --sizes 10000 100000 1000000 \\
        --old /tmp/base --wrap pause-others.sh

--wrap prefixes each timed launch with a command (above: a script that pauses other jobs
while it runs). The page cache is warm (the trees and caches were just built or read).
The trees take about 4 GB of disk at 1,000,000 files.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 1000
IMAGE_SIZE = 2
SHARD_SIZE = 10_000  # the trainer's default, so that any version of it accepts the cache


def tiny_png() -> bytes:
    """The bytes of one 4x4 RGB PNG (every file of the tree is this image)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 100, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def build_tree(tree: Path, size: int) -> None:
    """`size` PNG files in NUM_CLASSES class folders (as even as possible)."""
    done = tree / ".complete"
    if done.is_file():
        return
    data = tiny_png()
    for index in range(size):
        folder = tree / f"class{index % NUM_CLASSES:04d}"
        if index < NUM_CLASSES:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:07d}.png").write_bytes(data)
    done.write_text(str(size))


def build_cache(tree: Path, cache: Path) -> None:
    """A complete cache of the tree's images: the real manifest (fingerprints), random moments."""
    if (cache / "manifest.json").is_file():
        return
    import torch

    from sdtgen.data.folders import ImageFolderDataset
    from sdtgen.data.latents.format import MOMENT_KEYS
    from sdtgen.data.latents.writer import plan_cache, write_manifest, write_shard
    from sdtgen.vae import load_vae

    dataset = ImageFolderDataset(tree, IMAGE_SIZE)
    plan = plan_cache(dataset, load_vae("identity", image_channels=3), SHARD_SIZE, "float16")
    cache.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    records = []
    for shard in plan["shards"]:
        start, count = shard["start"], shard["count"]
        shape = (count, *plan["latent_shape"])
        tensors = {key: torch.randn(shape, generator=generator).half() for key in MOMENT_KEYS}
        tensors["labels"] = torch.tensor(dataset.targets[start : start + count], dtype=torch.int64)
        records.append(write_shard(cache, shard, tensors))
    write_manifest(cache, {**plan, "complete": True, "shards": records})


def train_command(code: Path, tree: Path, cache: Path, out: Path) -> list[str]:
    """A one-step run of a tiny model on the tree's cache, with the checkout at `code`."""
    return [
        sys.executable,
        str(code / "scripts" / "train_gen.py"),
        f"output_dir={out}",
        f"data.dataset={tree}",
        f"data.image_size={IMAGE_SIZE}",
        "data.vae=identity",
        f"data.latent_cache={cache}",
        "model.preset=S/2",
        "model.depth=1",
        "model.hidden_size=32",
        "model.num_heads=1",
        "train.max_steps=1",
        "train.global_batch_size=8",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "train.final_eval=false",
        "train.mixed_precision=no",
        "sample.per_class=1",
        "sample.classes=[0]",
        "sample.steps=2",
    ]


def check_code(code: Path, cwd: Path) -> str:
    """Where `import sdtgen` resolves with PYTHONPATH=code, run in `cwd` (must be inside code)."""
    found = subprocess.run(
        [sys.executable, "-c", "import sdtgen; print(sdtgen.__file__)"],
        env=environment(code),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"PYTHONPATH={code} imports sdtgen from {found}, not from {code}.")
    return found


def environment(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "TQDM_DISABLE": "1"}


def launch(command: list[str], code: Path, cwd: Path, wrap: list[str], timeout: float) -> tuple[float, str | None]:
    """Run `command` with the checkout at `code`; (wall time from launch, its output or None on timeout)."""
    # coreutils' timeout stops the run: a --wrap that pauses other python processes pauses this one too.
    wrapped = [*wrap, "timeout", str(timeout), *command]
    launched = time.time()
    result = subprocess.run(
        wrapped, env=environment(code), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode == 124:
        return time.time() - launched, None
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(wrapped)} failed:\n{result.stdout[-3000:]}")
    return launched, result.stdout


def time_first_step(code: Path, tree: Path, cache: Path, out: Path, wrap: list[str], timeout: float) -> str:
    """Seconds from launch to the first training step's log line, as text ("> T" past the timeout)."""
    launched, output = launch(train_command(code, tree, cache, out), code, out.parent, wrap, timeout)
    if output is None:
        return f"> {timeout:.0f}"
    if "Extracting the latent cache" in output:
        raise SystemExit(f"The run in {out} extracted the cache instead of opening it:\n{output[-3000:]}")
    return f"{(out / 'log.jsonl').stat().st_mtime - launched:.1f}"


def time_imports(code: Path, cwd: Path, wrap: list[str]) -> str:
    """Seconds from launch until `import sdtgen.training.trainer` is done: the floor of any start."""
    script = "import sdtgen.training.trainer, time; print(time.time())"
    launched, output = launch([sys.executable, "-c", script], code, cwd, wrap, 600)
    return f"{float(output.split()[-1]) - launched:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/tmp/sdtgen-startup"),
        help="where the trees, caches and runs go (default: /tmp/sdtgen-startup)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--old", type=Path, help="another checkout to time too (e.g. a worktree of an earlier commit)")
    parser.add_argument("--wrap", default="", help="a command to prefix each timed launch with")
    parser.add_argument("--repeats", type=int, default=2, help="launches per size and code (default: 2)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a launch is stopped (default: 600)")
    args = parser.parse_args()

    codes = {"this checkout": REPO, **({"--old": args.old} if args.old else {})}
    wrap = shlex.split(args.wrap)
    runs = args.root / "runs"  # the launches' working folder: no sdtgen there to shadow PYTHONPATH's
    runs.mkdir(parents=True, exist_ok=True)
    for label, code in codes.items():
        print(f"{label}: sdtgen from {check_code(code, runs)}", flush=True)
    rows = {
        "imports only": {
            label: [time_imports(code, runs, wrap) for _ in range(args.repeats)] for label, code in codes.items()
        }
    }
    for size in args.sizes:
        tree, cache = args.root / f"tree-{size}", args.root / f"cache-{size}"
        started = time.perf_counter()
        build_tree(tree, size)
        build_cache(tree, cache)
        print(f"{size} images: tree and cache ready ({time.perf_counter() - started:.0f} s)", flush=True)
        rows[f"{size:,} images"] = {}
        for label, code in codes.items():
            times = rows[f"{size:,} images"][label] = []
            for repeat in range(args.repeats):
                out = runs / f"{'old' if label == '--old' else 'new'}-{size}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                times.append(time_first_step(code, tree, cache, out, wrap, args.timeout))
                print(f"  {label}, run {repeat + 1}: first step after {times[-1]} s", flush=True)
    print("\nSeconds from launch to the first training step (each run):\n")
    print("| | " + " | ".join(codes) + " |\n|---|" + "---:|" * len(codes))
    for name, by_code in rows.items():
        print(f"| {name} | " + " | ".join(" / ".join(by_code.get(label, [])) for label in codes) + " |")


if __name__ == "__main__":
    main()
