"""SDTDiT: DiT (Peebles & Xie, 2023) whose self-attention carries SDT's learned spatial decay.

The backbone follows DiT's `models.py`: patch embedding, fixed 2D sin-cos positions,
timestep and label embedders, adaLN-Zero blocks and final layer, learned sigma. Module and
parameter names match DiT's so original checkpoints load with no renaming; only the
attention (sdtgen.models.attention) differs. Saved and loaded as safetensors + config.json
through diffusers' ModelMixin / ConfigMixin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from sdtgen.models.attention import SpatialDecayAttention
from sdtgen.models.embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d

# name -> (depth, hidden_size, num_heads): DiT's table, plus sdtgen's tiny "T" that trains
# the built-in animals model on a laptop CPU in minutes.
MODEL_SIZES = {"T": (4, 192, 3), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCH_SIZES = (1, 2, 4, 8)  # patch 1: every latent pixel a token (the ablation's 256-token grid)
PRESETS = tuple(f"{size}/{patch}" for size in MODEL_SIZES for patch in PATCH_SIZES)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Mlp(nn.Module):
    """Linear - GELU(tanh) - Linear, named like timm's Mlp that DiT uses."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """SiLU(x W1) * (x W2), then W3 (Shazeer, 2020; LightningDiT's MLP).

    `hidden` is the GELU MLP's hidden size; SwiGLU uses two thirds of it, so its three
    matrices hold as many weights as the GELU MLP's two.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = round(2 * hidden / 3)
        self.w12 = nn.Linear(dim, 2 * self.hidden)
        self.w3 = nn.Linear(self.hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)  # (B, N, hidden) each
        return self.w3(F.silu(gate) * value)


MLPS = {"gelu": Mlp, "swiglu": SwiGLU}
NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, eps: float, affine: bool = False) -> nn.Module:
    """LayerNorm (DiT) or RMSNorm (LightningDiT); without affine parameters under adaLN."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=affine)
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning and spatial-decay self-attention."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        norm_eps: float,
        mlp_norm_eps: float,
        mlp: str = "gelu",
        norm: str = "layernorm",
        **attention_kwargs,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, hidden_size, norm_eps)
        self.attn = SpatialDecayAttention(hidden_size, num_heads, norm=norm, **attention_kwargs)
        self.norm2 = make_norm(norm, hidden_size, mlp_norm_eps)
        self.mlp = MLPS[mlp](hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map back to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, norm_eps: float, norm: str) -> None:
        super().__init__()
        self.norm_final = make_norm(norm, hidden_size, norm_eps)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each (B, C)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p * p * out_channels)


class SDTDiT(ModelMixin, ConfigMixin):
    """Class-conditional diffusion transformer with spatial-decay attention.

    Call it as `model(x, timesteps, class_labels)` with x (B, in_channels, input_size,
    input_size), timesteps (B,) or a scalar, and integer labels (B,) in [0, num_classes]
    (num_classes is the null class used for classifier-free guidance). It returns
    (B, out_channels, input_size, input_size), out_channels = 2 * in_channels with learned
    sigma (eps then the variance interpolation value, as DiT).

    Build one with `SDTDiT.from_preset("S/2", attention="sdt")` or load one with
    `SDTDiT.from_pretrained(folder)`. See SpatialDecayAttention for the attention options.
    `timestep_freq_shift` and `mlp_norm_eps` only exist to reproduce diffusers' DiT port
    (1 and 1e-5 there; the original DiT is 0 and 1e-6). `mlp="swiglu"` and `norm="rmsnorm"`
    are LightningDiT's MLP and norm; `projector_dim` > 0 adds REPA's projector (training only,
    sdtgen/training/representation.py).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        attention: str = "sdt",
        attention_backend: str = "auto",
        decay_init: float = 2.0,
        decay_range: float = 4.0,
        decay_scale_init: float = 1.0,
        rope: bool = False,
        lepe: bool = False,
        qk_norm: bool = False,
        timestep_freq_shift: float = 0.0,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float = 1e-6,
        mlp: str = "gelu",
        norm: str = "layernorm",
        projector_dim: int = 0,
        projector_hidden: int = 2048,
    ) -> None:
        super().__init__()
        if mlp not in MLPS:
            raise ValueError(f"Unknown mlp {mlp!r}; choose one of {', '.join(MLPS)}.")
        if norm not in NORMS:
            raise ValueError(f"Unknown norm {norm!r}; choose one of {', '.join(NORMS)}.")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}.")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grid = (input_size // patch_size, input_size // patch_size)
        self.gradient_checkpointing = False

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # A frozen parameter, as in DiT: it is part of the state dict and of DiT's parameter counts.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size), requires_grad=False)
        attention_kwargs = dict(
            attention=attention,
            backend=attention_backend,
            decay_init=decay_init,
            decay_range=decay_range,
            decay_scale_init=decay_scale_init,
            rope=rope,
            lepe=lepe,
            qk_norm=qk_norm,
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, norm_eps, mlp_norm_eps, mlp, norm, **attention_kwargs)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, norm_eps, norm)
        # REPA's projector (training only): block features -> the frozen encoder's width.
        self.projector = (
            nn.Sequential(
                nn.Linear(hidden_size, projector_hidden),
                nn.SiLU(),
                nn.Linear(projector_hidden, projector_hidden),
                nn.SiLU(),
                nn.Linear(projector_hidden, projector_dim),
            )
            if projector_dim
            else None
        )
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SDTDiT:
        """Build a model of DiT's sizes: "S/2", "B/4", "XL/2", ... (size / patch).

        Defaults are DiT's ImageNet-256 setting (32x32x4 latents, 1000 classes, learned
        sigma); any constructor argument can be overridden, e.g. attention="vanilla".
        """
        size, _, patch = name.upper().partition("/")
        if size not in MODEL_SIZES or not patch.isdigit() or int(patch) not in PATCH_SIZES:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        depth, hidden_size, num_heads = MODEL_SIZES[size]
        return cls(
            **{
                "depth": depth,
                "hidden_size": hidden_size,
                "num_heads": num_heads,
                "patch_size": int(patch),
                **overrides,
            }
        )

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation, then each attention's decay initialisation."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size, self.grid[0]).unsqueeze(0))
        patch_weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            block.attn.reset_decay_parameters()
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block to one of sdtgen.models.backends.BACKENDS (recorded in the config)."""
        for block in self.blocks:
            block.attn.backend = backend
        self.register_to_config(attention_backend=backend)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p * p * C) tokens back to (B, C, H, W) images."""
        p, c = self.config.patch_size, self.out_channels
        h, w = self.grid
        x = x.reshape(x.shape[0], h, w, p, p, c)  # (B, h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)  # (B, C, h * p, w * p)

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        config = self.config
        expected = (config.in_channels, config.input_size, config.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"Expected input of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}. "
                f"This model was built for {config.in_channels}-channel {config.input_size}x{config.input_size} inputs "
                "(latents if a VAE is used)."
            )
        batch = x.shape[0]
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(
                f"Expected {batch} timesteps (one per sample) or a scalar, got shape {tuple(timesteps.shape)}."
            )
        if class_labels.shape != (batch,) or class_labels.dtype.is_floating_point:
            raise ValueError(
                f"Expected {batch} integer class labels, got shape {tuple(class_labels.shape)} ({class_labels.dtype})."
            )
        highest = config.num_classes if config.class_dropout_prob > 0 else config.num_classes - 1
        # The range check reads the labels' values: free on CPU, a host sync per forward on an
        # accelerator (and a graph break under torch.compile). There the labels are checked
        # where they enter (the pipeline resolves class names and ids, the training data knows
        # its class count) and the forward stays sync-free.
        on_host = class_labels.device.type == "cpu" and not torch.compiler.is_compiling()
        if on_host and class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > highest):
            bad = class_labels[(class_labels < 0) | (class_labels > highest)][0].item()
            null = f" ({config.num_classes} is the null class for guidance)" if highest == config.num_classes else ""
            raise ValueError(f"Class label {bad} is out of range: this model accepts 0..{highest}{null}.")
        return timesteps

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor,
        features_after: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The prediction (B, out_channels, H, W); with `features_after=k` also the tokens
        (B, N, hidden_size) after the first k blocks, for representation losses."""
        timesteps = self._check_inputs(x, timesteps, class_labels)  # (B,)
        tokens = self.x_embedder(x) + self.pos_embed  # (B, N, C)
        c = self.t_embedder(timesteps) + self.y_embedder(class_labels)  # (B, C)
        features = None
        for index, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, c, self.grid)
            else:
                tokens = block(tokens, c, self.grid)  # (B, N, C)
            if index + 1 == features_after:
                features = tokens
        out = self.unpatchify(self.final_layer(tokens, c))  # (B, out_channels, H, W)
        return out if features_after is None else (out, features)
