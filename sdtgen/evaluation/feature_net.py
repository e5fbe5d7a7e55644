"""The built-in feature network: a small CNN classifier of the 1x32x32 animal silhouettes.

It plays Inception's role for the built-in dataset: penultimate activations feed FID, KID
and precision/recall, logits feed the Inception Score, and the argmax gives class accuracy.
The network is a diffusers ``ModelMixin`` (config.json + safetensors, like the built-in
VAE); :class:`AnimalsFeatureExtractor` wraps it for torch-fidelity, which calls it with
uint8 (N, 3, H, W) batches, and is registered as ``sdtgen-animals``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

EXTRACTOR_NAME = "sdtgen-animals"
FEATURE_PENULTIMATE = "penultimate"
FEATURE_LOGITS = "logits_unbiased"  # torch-fidelity's name for the features IS reads
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' default file name
IMAGE_SIZE = 32


def default_weights_dir() -> Path:
    """The folder of the shipped feature-network weights."""
    return Path(str(importlib.resources.files("sdtgen") / "assets" / "feature_net"))


class AnimalsFeatureNet(ModelMixin, ConfigMixin):
    """Three conv stages (32->16->8->4 px) + global average pool + two linear layers.

    ``forward`` maps float images (N, 1, 32, 32) in [-1, 1] to ``(penultimate, logits)``
    of shapes (N, feature_dim) and (N, num_classes).
    """

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), feature_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 1
        for width in channels:
            layers += [_conv_bn_relu(width_in, width), _conv_bn_relu(width, width), nn.MaxPool2d(2)]
            width_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(width_in, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(self.body(images))
        return features, self.head(features)


def _conv_bn_relu(width_in: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width_in, width_out, 3, padding=1, bias=False), nn.BatchNorm2d(width_out), nn.ReLU())


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, 32, 32) with C = 1 or 3 -> float (N, 1, 32, 32) in [-1, 1].

    RGB is averaged to gray because torch-fidelity always hands over three channels.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"the animals feature network needs {IMAGE_SIZE}x{IMAGE_SIZE} images, "
            f"got {images.shape[-2]}x{images.shape[-1]}"
        )
    return images.float().mean(dim=1, keepdim=True) / 127.5 - 1.0


def weights_sha256(folder: Path | None = None) -> str:
    """sha256 of the weights file in ``folder`` (default: the shipped one); for provenance."""
    path = Path(folder or default_weights_dir()) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"feature-network weights not found: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_feature_net(folder: Path | None = None) -> AnimalsFeatureNet:
    """The trained network from ``folder`` (default: the shipped weights), frozen, in eval mode."""
    folder = Path(folder or default_weights_dir())
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"feature-network weights not found in {folder}; train them with scripts/train_feature_net.py"
        )
    net = AnimalsFeatureNet.from_pretrained(folder)
    return net.eval().requires_grad_(False)


class AnimalsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter for :class:`AnimalsFeatureNet`.

    Features: ``"penultimate"`` (FID, KID, PRC) and ``"logits_unbiased"`` (IS), named like
    torch-fidelity's Inception extractor names its own. ``feature_extractor_weights_path``
    (torch-fidelity's keyword) may point to a folder of other weights.
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ) -> None:
        super().__init__(name, features_list)
        folder = Path(feature_extractor_weights_path) if feature_extractor_weights_path else None
        # A submodule of its own, so torch-fidelity's .cuda() moves only this copy.
        self.net = load_feature_net(folder)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return FEATURE_PENULTIMATE, FEATURE_LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {
            "isc": FEATURE_LOGITS,
            "fid": FEATURE_PENULTIMATE,
            "kid": FEATURE_PENULTIMATE,
            "prc": FEATURE_PENULTIMATE,
        }[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # too small to gain from compilation

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        penultimate, logits = self.net(uint8_to_unit_range(images))
        features = {FEATURE_PENULTIMATE: penultimate, FEATURE_LOGITS: logits}
        return tuple(features[name].float() for name in self.features_list)


def register() -> None:
    """Register ``sdtgen-animals`` with torch-fidelity (idempotent)."""
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, AnimalsFeatureExtractor)
