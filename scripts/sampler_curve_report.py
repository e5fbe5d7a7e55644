"""The sampler curve's report: the tables (sampler_curve.md) and plots (sampler_curve.png,
guidance_curve.png) of the points scripts/sampler_curve.py measured.
"""

from __future__ import annotations

from pathlib import Path

TABLE_FILE = "sampler_curve.md"
NFE_PLOT = "sampler_curve.png"
GUIDANCE_PLOT = "guidance_curve.png"
NFE_COUNTING = (
    "NFE: model evaluations per sample over the whole trajectory, one per scheduler timestep; a guided step "
    "(conditional and unconditional input in one doubled batch) counts as one, as in the DiT and EDM papers. "
    "Euler, DDPM, DDIM and DPM++ evaluate once per step, Heun 2 x steps - 1 times."
)


def write_report(out: Path, nfe_points: list[dict], guidance_points: list[dict], reference: str) -> None:
    """The tables of both parts and the plot of each part that has points, in `out`."""
    if nfe_points or guidance_points:
        write_tables(out / TABLE_FILE, nfe_points, guidance_points, reference)
    if nfe_points:
        plot_nfe(nfe_points, out / NFE_PLOT)
    if guidance_points:
        plot_guidance(guidance_points, out / GUIDANCE_PLOT)


def write_tables(path: Path, nfe_points: list[dict], guidance_points: list[dict], reference: str) -> None:
    """sampler_curve.md: what was measured and how, the NFE table and the guidance table."""
    first = (nfe_points or guidance_points)[0]
    lines = [
        "# Sampler curve",
        "",
        f"Model `{first['model']}` (weights sha256 {first['model_sha256'][:12]}, {first['objective']} objective); "
        f"{first['num_samples']} class-balanced samples a point, seed {first['seed']}, scored against `{reference}` "
        "with the built-in feature network. Seconds: sampling and scoring of a point.",
        "",
        NFE_COUNTING,
    ]
    if nfe_points:
        lines += [
            "",
            f"## FID and class accuracy against NFE (guidance scale {nfe_points[0]['guidance_scale']:g})",
            "",
            "| sampler | NFE | steps | FID | class accuracy | seconds |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {p['sampler']} | {p['nfe']} | {p['steps']} | {p['fid']:.2f} | {100 * p['class_accuracy']:.1f} % "
                f"| {p['seconds']:.1f} |"
                for p in nfe_points
            ),
        ]
    if guidance_points:
        p = guidance_points[0]
        lines += [
            "",
            f"## FID against class accuracy over guidance scales ({p['sampler']}, {p['steps']} steps, NFE {p['nfe']})",
            "",
            "| guidance scale | FID | class accuracy | seconds |",
            "| ---: | ---: | ---: | ---: |",
            *(
                f"| {p['guidance_scale']:g} | {p['fid']:.2f} | {100 * p['class_accuracy']:.1f} % | {p['seconds']:.1f} |"
                for p in guidance_points
            ),
        ]
    path.write_text("\n".join(lines) + "\n")


def plot_nfe(points: list[dict], path: Path) -> None:
    """FID and class accuracy against NFE (log x), one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    samplers = list(dict.fromkeys(p["sampler"] for p in points))
    nfes = sorted({p["nfe"] for p in points})
    for ax, key, scale, label in (
        (axes[0], "fid", 1, "FID (lower is better)"),
        (axes[1], "class_accuracy", 100, "class accuracy, % (higher is better)"),
    ):
        for sampler in samplers:
            mine = sorted((p for p in points if p["sampler"] == sampler), key=lambda p: p["nfe"])
            ax.plot([p["nfe"] for p in mine], [scale * p[key] for p in mine], marker="o", ms=3, lw=1.2, label=sampler)
        ax.set_xscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes], fontsize=7)  # the measured NFEs, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel("model evaluations per sample (NFE)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"guidance scale {points[0]['guidance_scale']:g}, {points[0]['num_samples']} samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_guidance(points: list[dict], path: Path) -> None:
    """FID against class accuracy, each point labelled with its guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["guidance_scale"])
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    accuracy = [100 * p["class_accuracy"] for p in points]
    ax.plot(accuracy, [p["fid"] for p in points], marker="o", ms=4, lw=1.2, color="#4c72b0")
    for x, p in zip(accuracy, points):
        ax.annotate(f"{p['guidance_scale']:g}", (x, p["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("class accuracy, % (higher is better)", fontsize=8)
    ax.set_ylabel("FID (lower is better)", fontsize=8)
    first = points[0]
    ax.set_title(
        f"by guidance scale ({first['sampler']}, {first['steps']} steps, {first['num_samples']} samples)", fontsize=9
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
