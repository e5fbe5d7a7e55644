"""The VAE between images and latents: a diffusers ``AutoencoderKL`` or the identity.

Latent convention (as in Stable Diffusion): the diffusion model sees
``scaled = (z - shift) * scale`` where ``z`` is a sample of the VAE posterior, and
:meth:`LatentVAE.decode` inverts that before decoding. ``encode_moments`` returns the
*unscaled* posterior (mean, logvar), which is what a latent cache stores, so that a fresh
posterior sample can be drawn every epoch.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

BUILTIN_VAE = "builtin"
IDENTITY_VAE = "identity"
# diffusers clamps posterior log-variances to this range; the identity "posterior" sits at the floor.
LOGVAR_RANGE = (-30.0, 20.0)
# Resampled images overshoot [-1, 1] a little (bicubic, antialiasing); that is no mistake.
IMAGE_RANGE_SLACK = 0.1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def sample_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None, *, scale: float, shift: float
) -> torch.Tensor:
    """The model's latent ``(z - shift) * scale`` of the posterior sample ``z = mean + exp(logvar / 2) * noise``.

    The one posterior sampler: training (noise from the step's generator),
    :meth:`LatentVAE.sample_latent` and the latent cache's ``draw_latents`` call it. The
    log-variance is clamped to :data:`LOGVAR_RANGE` as diffusers does, which changes nothing
    for moments an ``AutoencoderKL`` returned (they are clamped already). ``noise=None``
    takes the mean: the identity VAE, whose posterior is a point.
    """
    z = mean if noise is None else mean + torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE)) * noise
    return (z - shift) * scale


def standard_normal(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, on its device and dtype.

    Drawn on ``generator``'s device and then moved, so a seed gives the same noise on every
    device.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class LatentVAE(torch.nn.Module):
    """Encode images to scaled latents and decode them back; frozen, no gradients.

    ``autoencoder=None`` is the identity VAE (pixel-space diffusion): the latent is the
    image itself and sampling is deterministic. Images are (B, C, H, W) in [-1, 1].
    """

    def __init__(
        self,
        autoencoder: AutoencoderKL | None,
        *,
        scale: float,
        shift: float,
        source: str,
        image_channels: int,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.scale = float(scale)
        self.shift = float(shift)
        self.source = source
        self.image_channels = image_channels
        if autoencoder is None:
            self.latent_channels, self.downsample_factor = image_channels, 1
        else:
            autoencoder.eval().requires_grad_(False)
            self.latent_channels = autoencoder.config.latent_channels
            self.downsample_factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (unscaled), each (B, latent_channels, H/f, W/f).

        `check=False` skips the dtype and range check: for sdtgen's own data pipeline, which
        scales its images itself, and where a batch of bright images (nothing below 0) would
        pass for [0, 1] images and a device would wait for the check every step.
        """
        if check:
            self._check_images(images)
        if self.autoencoder is None:
            return images.clone(), torch.full_like(images, LOGVAR_RANGE[0])
        posterior = self.autoencoder.encode(images.to(self.autoencoder.dtype)).latent_dist
        return posterior.mean, posterior.logvar

    def sample_latent(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``z ~ N(mean, exp(logvar))`` and return the scaled latent ``(z - shift) * scale``.

        ``noise`` (standard normal, shaped like ``mean``) is used as given, else drawn with
        :func:`standard_normal` on ``generator``. The identity VAE returns the mean, without
        noise. See :func:`sample_posterior`.
        """
        if self.autoencoder is None:
            noise = None
        elif noise is None:
            noise = standard_normal(mean, generator)
        return sample_posterior(mean, logvar, noise, scale=self.scale, shift=self.shift)

    def scale_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Map an unscaled latent ``z`` to the model's space: ``(z - shift) * scale``."""
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, scaled_latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, image_channels, H, W), from scaled latents."""
        if getattr(scaled_latents, "ndim", None) != 4 or scaled_latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode expects latents of shape (B, {self.latent_channels}, h, w), got {tuple(scaled_latents.shape)}."
            )
        if not torch.is_tensor(scaled_latents) or not scaled_latents.is_floating_point():
            raise ValueError(
                f"decode takes float latents (a pipeline's output_type='latent'), got {_kind(scaled_latents)}."
            )
        z = scaled_latents / self.scale + self.shift
        if self.autoencoder is not None:
            z = self.autoencoder.decode(z.to(self.autoencoder.dtype)).sample
        return z.clamp(-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for run manifests."""
        return {
            "type": "identity" if self.autoencoder is None else "autoencoder_kl",
            "source": self.source,
            "image_channels": self.image_channels,
            "latent_channels": self.latent_channels,
            "downsample_factor": self.downsample_factor,
            "scale": self.scale,
            "shift": self.shift,
        }

    def _check_images(self, images: torch.Tensor) -> None:
        factor = self.downsample_factor
        if (
            getattr(images, "ndim", None) != 4
            or images.shape[1] != self.image_channels
            or images.shape[2] % factor
            or images.shape[3] % factor
        ):
            raise ValueError(
                f"The VAE {self.source!r} expects images of shape (B, {self.image_channels}, "
                f"H, W) with H and W divisible by {factor}, got {tuple(getattr(images, 'shape', ()))}."
            )
        check_image_values(images, f"The VAE {self.source!r}")


def check_image_values(images: torch.Tensor, what: str) -> None:
    """ValueError unless `images` are finite float images in [-1, 1], naming the likely mistake.

    Catches uint8 images, 0..255 floats, and [0, 1] floats (a pipeline's output_type 'pt'
    or 'np', torchvision's ToTensor): a batch with no value below 0 is read as [0, 1], as
    diffusers' image processor reads it. Reads two values, once per batch, never in a model's forward.
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        hint = " (0..255: pass images.float() / 127.5 - 1)" if getattr(images, "dtype", None) == torch.uint8 else ""
        raise ValueError(f"{what} takes float images in [-1, 1], got {_kind(images)}{hint}.")
    if images.numel() == 0:
        return
    low, high = (float(v) for v in images.aminmax())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{what} takes float images in [-1, 1], got NaN or inf values.")
    if low < -1 - IMAGE_RANGE_SLACK or high > 1 + IMAGE_RANGE_SLACK:
        hint = ", as 0..255 images do: pass images / 127.5 - 1" if low >= 0 else ""
        raise ValueError(f"{what} takes float images in [-1, 1], got values in [{low:.4g}, {high:.4g}]{hint}.")
    if low >= 0:
        raise ValueError(
            f"{what} takes float images in [-1, 1], got values in [{low:.4g}, {high:.4g}], as images in [0, 1] "
            "(a pipeline's output_type 'pt' or 'np', ToTensor) have: pass images * 2 - 1."
        )


def _kind(value: Any) -> str:
    """`torch.uint8 tensor`, `list`: what a wrong argument is, for a message."""
    return f"a {value.dtype} tensor" if torch.is_tensor(value) else f"a {type(value).__name__}"


def builtin_vae_dir() -> Path:
    """Folder of the small VAE shipped with sdtgen (trained by scripts/train_vae.py)."""
    return Path(str(importlib.resources.files("sdtgen") / "assets" / "vae"))


def _load_folder(folder: Path) -> AutoencoderKL:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no config.json, so it is not a diffusers AutoencoderKL folder. "
            "Pass the folder that holds config.json and the .safetensors weights (for a "
            "full Stable Diffusion pipeline, its vae/ sub-folder)."
        )
    return AutoencoderKL.from_pretrained(folder)


def _load_hub(repo_id: str) -> AutoencoderKL:
    """Load from the local Hugging Face cache, else try the Hub; one clear error if neither."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    with warnings.catch_warnings():
        # diffusers passes a deprecated argument to huggingface_hub; the warning is noise.
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        for local_files_only in (True,) if offline else (True, False):
            try:
                return AutoencoderKL.from_pretrained(repo_id, local_files_only=local_files_only)
            except (OSError, ValueError):
                pass  # not cached (then try the Hub) or not reachable (then the error below)
    raise FileNotFoundError(
        f"Could not load the VAE {repo_id!r}: there is no local folder of that name, it is "
        "not in the local Hugging Face cache, and it could not be downloaded (offline, or "
        "not on the Hub). On a machine with network access run "
        f"`hf download {repo_id} --local-dir DIR` (older huggingface_hub: "
        "`huggingface-cli download ...`), copy DIR here and pass `--vae DIR`; or set "
        "HF_HOME to a Hugging Face cache that already holds it."
    )


def load_vae(
    spec: str = BUILTIN_VAE,
    *,
    scale: float | None = None,
    shift: float | None = None,
    image_channels: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LatentVAE:
    """Load a VAE from ``spec`` and wrap it as a :class:`LatentVAE`.

    ``spec`` is ``"builtin"`` (the shipped 1-channel VAE for the animals dataset),
    ``"identity"`` (pixel space; needs ``image_channels``), a local folder holding a
    diffusers ``AutoencoderKL``, or a Hugging Face Hub id such as
    ``"stabilityai/sd-vae-ft-ema"`` (used from the local cache when present).
    ``scale``/``shift`` default to the config's ``scaling_factor`` (0.18215 when absent,
    as for SD VAEs) and ``shift_factor`` (0 when absent). ``image_channels``, if given, is
    checked against the VAE.
    """
    if spec == IDENTITY_VAE:
        if image_channels is None:
            raise ValueError(
                "The identity VAE needs image_channels (1 for the built-in animals dataset, 3 for RGB image folders)."
            )
        vae = LatentVAE(
            None,
            scale=1.0 if scale is None else scale,
            shift=0.0 if shift is None else shift,
            source=spec,
            image_channels=image_channels,
        )
        return vae.to(device=device, dtype=dtype)

    folder = builtin_vae_dir() if spec == BUILTIN_VAE else Path(spec).expanduser()
    if folder.is_dir():
        autoencoder = _load_folder(folder)
    elif _HUB_ID.match(spec):
        autoencoder = _load_hub(spec)
    else:
        raise FileNotFoundError(
            f"VAE folder not found: {spec}. Pass 'builtin', 'identity', an existing folder "
            "with a diffusers AutoencoderKL (config.json + .safetensors), or a Hugging Face "
            "Hub id such as stabilityai/sd-vae-ft-ema."
        )
    config = autoencoder.config
    if image_channels is not None and image_channels != config.in_channels:
        raise ValueError(
            f"The VAE {spec!r} takes {config.in_channels}-channel images, but "
            f"image_channels={image_channels} was requested; pick a VAE that matches the data."
        )
    vae = LatentVAE(
        autoencoder,
        scale=config.scaling_factor if scale is None else scale,
        shift=(config.shift_factor or 0.0) if shift is None else shift,
        source=spec,
        image_channels=config.in_channels,
    )
    return vae.to(device=device, dtype=dtype)


def reconstruction_psnr(vae: LatentVAE, images: torch.Tensor, batch_size: int = 250) -> float:
    """Mean per-image PSNR (dB, images in [0, 1]) of ``decode(posterior mean)``.

    ``images`` are in [-1, 1]. A perfect reconstruction counts as 100 dB rather than
    infinity, so the mean stays finite.
    """
    scores = []
    for batch in images.split(batch_size):
        mean, _ = vae.encode_moments(batch)
        recon = vae.decode(vae.scale_latent(mean))
        mse = ((recon.float() - batch.float()) / 2).square().flatten(1).mean(1)
        scores.append(-10 * torch.log10(mse.clamp_min(1e-10)))
    return torch.cat(scores).mean().item()
