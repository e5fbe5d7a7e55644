"""Train the small AutoencoderKL shipped as sdtgen's built-in VAE (sdtgen/assets/vae).

It maps the 1x32x32 animal silhouettes to 4x16x16 latents. Training uses the animals
TRAIN split only, with an L1 + L2 reconstruction loss on posterior samples and a small KL
term, on the CPU. At the end the script sets ``scaling_factor`` to 1 / std of the
training-set posterior means (so the diffusion model sees roughly unit-variance latents,
as Stable Diffusion does), reports the reconstruction PSNR on the TEST split, and writes
the weights (safetensors) plus ``training_report.json`` to ``--out``.

    python scripts/train_vae.py --out sdtgen/assets/vae
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from sdtgen.data.animals import load_animals
from sdtgen.vae import LatentVAE, reconstruction_psnr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the VAE")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--kl-weight", type=float, default=1e-4, help="weight of the KL term, averaged over latent elements"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def build_autoencoder() -> AutoencoderKL:
    """Two resolution levels (factor-2 downsampling), 4 latent channels, ~0.17 M params."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def train(model: AutoencoderKL, images: torch.Tensor, args: argparse.Namespace) -> float:
    """Optimise ``model`` on ``images`` (N, 1, 32, 32) in [-1, 1]; return the last loss."""
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, args.steps // 20, args.steps)
    model.train()
    progress = tqdm(range(args.steps), desc="training VAE", unit="step")
    for _ in progress:
        batch = images[torch.randint(len(images), (args.batch_size,), generator=generator)]
        flip = torch.rand(args.batch_size, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        posterior = model.encode(batch).latent_dist
        recon = model.decode(posterior.sample(generator=generator)).sample
        error = recon - batch
        kl_per_element = posterior.kl().mean() / posterior.mean[0].numel()
        loss = error.abs().mean() + error.square().mean() + args.kl_weight * kl_per_element
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return loss.item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # weight initialisation
    train_images = load_animals("train")[0].float() / 127.5 - 1.0
    test_images = load_animals("test")[0].float() / 127.5 - 1.0

    model = build_autoencoder()
    start = time.perf_counter()
    final_loss = train(model, train_images, args)
    train_seconds = time.perf_counter() - start

    unscaled = LatentVAE(model, scale=1.0, shift=0.0, source=str(args.out), image_channels=1)
    means = torch.cat([unscaled.encode_moments(batch)[0] for batch in train_images.split(500)])
    latent_std = means.std().item()
    test_psnr = reconstruction_psnr(unscaled, test_images)
    model.register_to_config(scaling_factor=1.0 / latent_std)
    model.save_pretrained(args.out, safe_serialization=True)
    # The weights file is written owner-only (0600); shipped files must be world-readable.
    (args.out / "diffusion_pytorch_model.safetensors").chmod(0o644)

    report = {
        "test_psnr_db": round(test_psnr, 3),
        "train_latent_mean": round(means.mean().item(), 5),
        "train_latent_std": round(latent_std, 5),
        "scaling_factor": 1.0 / latent_std,
        "final_loss": round(final_loss, 5),
        "train_seconds": round(train_seconds, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "args": {key: str(value) for key, value in vars(args).items()},
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"test PSNR {test_psnr:.2f} dB, latent std {latent_std:.4f}, "
        f"training {train_seconds:.0f} s; saved to {args.out}"
    )


if __name__ == "__main__":
    main()
