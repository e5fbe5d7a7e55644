"""Stand-ins for files that cannot be had here: DiT checkpoints, hub weights, Inception weights.

Each has the real format (file layout, key names, shapes), random contents and a small size,
so the code paths that read the real files run unchanged in the tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from PIL import Image

NUM_CLASSES = 10


def tiny_diffusers_dit(tie_embedders: bool = True, num_classes: int = NUM_CLASSES) -> DiTTransformer2DModel:
    """A 2-block diffusers DiT on 4x8x8 latents with every weight random, the zero-initialised ones included."""
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
        if tie_embedders:
            shared = model.transformer_blocks[0].norm1.emb.state_dict()
            for block in model.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(shared)
    return model.eval()


def original_state_dict(
    depth: int, width: int, patch: int, grid: int, seed: int = 0, num_classes: int = NUM_CLASSES
) -> dict[str, torch.Tensor]:
    """A random state dict in the original DiT layout, at the scale of trained weights.

    Matrices have unit gain (std 1 / sqrt(fan_in)), so the adaLN gates and the output layer,
    zero at DiT's init, carry signal like a trained model's do.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, hidden = 4, 4 * width
    shapes = {
        "x_embedder.proj.weight": (width, channels, patch, patch),
        "x_embedder.proj.bias": (width,),
        "pos_embed": (1, grid * grid, width),
        "t_embedder.mlp.0.weight": (width, 256),
        "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width),
        "t_embedder.mlp.2.bias": (width,),
        "y_embedder.embedding_table.weight": (num_classes + 1, width),
        "final_layer.linear.weight": (patch * patch * 2 * channels, width),
        "final_layer.linear.bias": (patch * patch * 2 * channels,),
        "final_layer.adaLN_modulation.1.weight": (2 * width, width),
        "final_layer.adaLN_modulation.1.bias": (2 * width,),
    }
    for i in range(depth):
        for name, (rows, cols) in {
            "attn.qkv": (3 * width, width),
            "attn.proj": (width, width),
            "mlp.fc1": (hidden, width),
            "mlp.fc2": (width, hidden),
            "adaLN_modulation.1": (6 * width, width),
        }.items():
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (rows, cols), (rows,)
    state = {}
    for key, shape in shapes.items():
        std = (
            0.02
            if len(shape) == 1
            else 1.0
            if "embedding" in key or key == "pos_embed"
            else math.prod(shape[1:]) ** -0.5
        )
        state[key] = torch.randn(shape, generator=generator) * std
    return state


def stand_in_inception_weights(path: Path) -> Path:
    """torch-fidelity's Inception network with random weights, saved where its real weights file would be."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    # Build the network without fetching weights (the real file is not downloadable here).
    load_from_url, load_state_dict = (
        inception.load_state_dict_from_url,
        inception.FeatureExtractorInceptionV3.load_state_dict,
    )
    inception.load_state_dict_from_url = lambda *args, **kwargs: {}
    inception.FeatureExtractorInceptionV3.load_state_dict = lambda self, *args, **kwargs: None
    try:
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        inception.load_state_dict_from_url, inception.FeatureExtractorInceptionV3.load_state_dict = (
            load_from_url,
            load_state_dict,
        )
    torch.save(network.state_dict(), path)
    return path


def tiny_sd_vae() -> AutoencoderKL:
    """A tiny random 3-channel AutoencoderKL with SD's 8x downsampling and 4 latent channels."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        mid_block_add_attention=False,
        scaling_factor=0.18215,
    )


def dit_hub_folder(folder: Path) -> Path:
    """What `hf download facebook/DiT-XL-2-256` leaves: a DiTPipeline folder (transformer/, vae/,
    scheduler/, model_index.json) holding a tiny 1000-class DiT and a tiny SD-like VAE."""
    from diffusers import DDIMScheduler, DiTPipeline

    pipeline = DiTPipeline(
        transformer=tiny_diffusers_dit(num_classes=1000), vae=tiny_sd_vae(), scheduler=DDIMScheduler()
    )
    pipeline.save_pretrained(folder)
    return folder


def cache_hub_vae(hf_home: Path, repo_id: str) -> AutoencoderKL:
    """Put `tiny_sd_vae()` into a Hugging Face cache under `repo_id`, laid out as the hub client
    leaves a download."""
    vae = tiny_sd_vae()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    vae.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return vae


def image_folder(root: Path, class_names, per_class: int = 1) -> Path:
    """A class-per-folder tree: `per_class` small random JPEGs (40 to 71 px a side) in each class folder."""
    generator = np.random.default_rng(0)
    for name in class_names:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            height, width = generator.integers(40, 72, size=2)
            pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{index}.JPEG", quality=85)
    return root


def stand_in_imagenet(root: Path, num_classes: int = 1000) -> Path:
    """ImageNet's train/ layout: `num_classes` class folders (wnid-like names), one small JPEG each."""
    return image_folder(root, [f"n{index:08d}" for index in range(num_classes)])
