"""SDTPipeline: an SDTDiT, its VAE and a scheduler as one diffusers pipeline.

    pipe = SDTPipeline.from_pretrained("pipelines/animals-sdt")
    images = pipe(class_labels=["dog", 3], generator=torch.manual_seed(0)).images

Like diffusers' DiTPipeline, plus: class names as labels, guidance on chosen channels and
noise levels, DDPM with a learned variance, flow-matching schedulers, and pixel space
(`vae=None`). The training objective is the scheduler's: a FlowMatch* scheduler samples a
flow model, any other a DDPM one. `save_pretrained` writes `model_index.json` (with
`id2label`), `transformer/`, `scheduler/` and `vae/` (absent in pixel space), and
`sdtgen_pipeline.py`, which model_index.json's `_class_name` names so that diffusers'
generic loader finds this class: `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` with sdtgen installed (diffusers runs a folder's own code only
when trusted; the file only imports sdtgen). `SDTPipeline.from_pretrained` needs no trust.

One call is one batch; `sdtgen.generation.generate` splits a request of any size into
batches with one seed per sample.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdtgen.class_names import id2label_names, resolve_class
from sdtgen.diffusion.sampling import Guidance, default_guidance, default_steps, denoise, make_scheduler, objective_of
from sdtgen.models.dit import SDTDiT
from sdtgen.vae import IDENTITY_VAE, LatentVAE

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PIPELINE_MODULE = "sdtgen_pipeline"  # <folder>/sdtgen_pipeline.py, for DiffusionPipeline.from_pretrained
PIPELINE_MODULE_SOURCE = '''"""SDTPipeline for diffusers' generic loader: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True).

Written by `sdtgen export` / SDTPipeline.save_pretrained. The code is sdtgen's: `pip install sdtgen`.
"""

from sdtgen.pipeline import SDTPipeline

__all__ = ["SDTPipeline"]
'''


class SDTPipeline(DiffusionPipeline):
    """Class-conditional sampling from an SDTDiT.

    Args:
        transformer: the denoiser.
        scheduler: a diffusers scheduler; `make_scheduler` builds the ones sdtgen tests.
        vae: the AutoencoderKL that decodes the latents (scaled by its config's
            `scaling_factor` and `shift_factor`), or None when the model works on pixels.
        id2label: class id (an int, or its string as in model_index.json) -> name; names
            are accepted as labels.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        transformer: SDTDiT,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        id2label: dict[Any, str] | None = None,
    ) -> None:
        super().__init__()
        latent_channels = transformer.config.in_channels
        if vae is not None and vae.config.latent_channels != latent_channels:
            raise ValueError(
                f"The VAE makes {vae.config.latent_channels}-channel latents but the model takes {latent_channels} channels; "
                "use the VAE the model was trained with."
            )
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        # JSON turns the ids into strings; keep them ints in memory.
        self.register_to_config(id2label={int(k): v for k, v in id2label.items()} if id2label else None)

    @classmethod
    def from_model(
        cls, transformer: SDTDiT, vae: LatentVAE, *, objective: str, sampler: str | None = None
    ) -> SDTPipeline:
        """A pipeline around an in-memory model and its LatentVAE (training-time grids and evaluation), without progress bars.

        `sampler` None is the objective's default. The pipeline decodes with the scaling of
        the VAE's config, so `vae` must use that scaling (as `load_vae` does by default).
        """
        pipe = cls(transformer, make_scheduler(objective, sampler, transformer.config.learn_sigma), vae.autoencoder)
        decoder = pipe.latent_vae()
        if (decoder.scale, decoder.shift) != (vae.scale, vae.shift):
            raise ValueError(
                f"The VAE scales latents by {vae.scale} with shift {vae.shift}, but its config (which a pipeline "
                f"decodes with) says {decoder.scale} and {decoder.shift}."
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' save, plus sdtgen_pipeline.py named by `_class_name` for the generic loader (module docstring)."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        (folder / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_MODULE_SOURCE)
        index_file = folder / self.config_name
        index = json.loads(index_file.read_text())
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' load_config, with `_class_name` read as this class's name: the class is at hand, so the
        folder's sdtgen_pipeline.py (which diffusers would run only with trust_remote_code) is not needed."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][1]
        return loaded

    @property
    def class_names(self) -> list[str] | None:
        """Names of classes 0..num_classes-1 (ImageNet's for a 1,000-class model without its own), or None."""
        return id2label_names(self.config.id2label, self.transformer.config.num_classes)

    @property
    def objective(self) -> str:
        """`flow` or `ddpm`, from the scheduler."""
        return objective_of(self.scheduler)

    def use_sampler(self, sampler: str) -> None:
        """Switch to one of sdtgen's samplers for this objective (ddpm, ddim, dpm++ / euler, heun, dpm++)."""
        self.scheduler = make_scheduler(self.objective, sampler, self.transformer.config.learn_sigma)

    def get_label_ids(self, labels: Sequence[str | int]) -> list[int]:
        """Class ids of names (or ids), as DiTPipeline.get_label_ids."""
        names, num_classes = self.class_names, self.transformer.config.num_classes
        return [resolve_class(label, names, num_classes) for label in labels]

    def latent_vae(self) -> LatentVAE:
        """The pipeline's VAE with its latent scaling (the identity in pixel space)."""
        if self.vae is None:
            return LatentVAE(
                None, scale=1.0, shift=0.0, source=IDENTITY_VAE, image_channels=self.transformer.config.in_channels
            )
        config = self.vae.config
        return LatentVAE(
            self.vae,
            scale=config.scaling_factor,
            shift=config.shift_factor or 0.0,
            source=self.name_or_path or "pipeline",
            image_channels=config.in_channels,
        )

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int | str] | int | str,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_channels: int | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per label.

        Args:
            class_labels: class ids or names (see `class_names`), one per image; or a tensor
                or array of ids.
            num_inference_steps: scheduler steps; None = sdtgen's default for the sampler.
            guidance_scale: classifier-free guidance, 1 = off; None = DEFAULT_GUIDANCE (1 for
                a model trained without label dropout). Unlike DiTPipeline, a scale below 1
                still guides (0 = the unconditional model).
            generator: a generator, or one per image (then each image depends only on its
                own generator, whatever the batch).
            guidance_channels: guide only the first N latent channels (3 = DiT's original
                code); None guides all, as DiTPipeline does.
            guidance_interval: (low, high) noise levels in [0, 1] (1 = pure noise) where
                guidance applies.
            output_type: "pil", "np" ((B, H, W, C) in [0, 1]), "pt" ((B, C, H, W) in
                [0, 1]) or "latent" (the scaled latents).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
        if hasattr(class_labels, "tolist"):  # a torch or numpy array of ids
            class_labels = class_labels.tolist()
        specs = list(class_labels) if isinstance(class_labels, (list, tuple)) else [class_labels]
        if not specs:
            raise ValueError("class_labels is empty; pass one class id or name per image.")
        labels = torch.tensor(self.get_label_ids(specs), dtype=torch.long)
        steps = default_steps(self.scheduler) if num_inference_steps is None else num_inference_steps
        if guidance_scale is None:
            guidance_scale = default_guidance(self.transformer.config)
        guidance = Guidance(guidance_scale, guidance_channels, tuple(guidance_interval))
        latents = denoise(
            self.transformer,
            self.scheduler,
            labels,
            steps=steps,
            guidance=guidance,
            generator=generator,
            progress=self.progress_bar,
        )
        if output_type == "latent":
            images = latents
        else:
            images = (self.latent_vae().decode(latents).float() + 1) / 2
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
