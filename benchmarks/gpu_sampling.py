"""The GPU checks of issue 4 (sampling), as run on a lent H100 (docs/benchmarks.md, "Sampling").

    python3 benchmarks/gpu_sampling.py OUT_DIR

1. `sdtgen sample` on CUDA in fp32 and bf16 against the same request on CPU (a tiny
   random model from tests/tiny_runs.py, 20 DDPM steps): the largest pixel difference.
2. bench_sampling.py at S/2 and XL/2, bf16, batch 64, into OUT_DIR/bench_sampling.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sdtgen.cli import main as sdtgen  # noqa: E402
from tiny_runs import random_model, write_run  # noqa: E402

BENCHMARKS = ("--preset S/2 --batch 64 --steps 10 --repeats 5", "--preset XL/2 --batch 64 --steps 10 --repeats 3")


def compare_devices(out: Path) -> None:
    root = Path(tempfile.mkdtemp())
    run = write_run(root / "run", random_model("ddpm"))
    settings = {
        "cpu": ["--device", "cpu"],
        "cuda": ["--device", "cuda"],
        "bf16": ["--device", "cuda", "--dtype", "bf16"],
    }
    for name, extra in settings.items():
        sdtgen(
            [
                "sample",
                "--ckpt",
                str(run),
                "--out",
                str(root / name),
                "--class",
                "dog",
                "--num",
                "4",
                "--sampler",
                "ddpm",
                "--steps",
                "20",
                *extra,
            ]
        )
    lines = []
    for name in ("cuda", "bf16"):
        diffs = [
            int(
                np.abs(
                    np.asarray(Image.open(p), dtype=int) - np.asarray(Image.open(root / name / p.name), dtype=int)
                ).max()
            )
            for p in sorted((root / "cpu").glob("4-dog-*.png"))
        ]
        lines.append(f"{name} vs cpu: largest pixel difference per image (0..255): {diffs}")
    print("\n".join(lines))
    (out / "sample_cuda.log").write_text("\n".join(lines) + "\n")


def benchmark(out: Path) -> None:
    with open(out / "bench_sampling.md", "w") as log:
        for args in BENCHMARKS:
            command = [
                sys.executable,
                str(ROOT / "benchmarks" / "bench_sampling.py"),
                "--device",
                "cuda",
                "--dtype",
                "bf16",
                "--markdown",
                *args.split(),
            ]
            result = subprocess.run(command, capture_output=True, text=True, timeout=140)
            print(result.stdout)
            log.write(result.stdout)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    compare_devices(out_dir)
    benchmark(out_dir)
