"""Pretrained DiT weights into an SDTDiT: from diffusers' DiT port or from the original checkpoints.

Both sources hold the same network as SDTDiT with `attention="vanilla"`; only the names
differ (SDTDiT uses the original DiT's names). Any other attention variant is a *warm
start*: the pretrained weights plus a spatial decay that starts near zero and trains
(our extension, docs/method.md "Warm start"; the value is documented in docs/converting.md).

    model = convert_original_dit("DiT-XL-2-256x256.pt", attention="sdt")
    model.save_pretrained("dit-xl-2-sdt")
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

from sdtgen.models.attention import ATTENTION_VARIANTS, CONTENT_GATED
from sdtgen.models.dit import SDTDiT

logger = logging.getLogger(__name__)

# Our choice, not the paper's: multiplies the initial log decay so that a converted model
# stays within ~1e-4 of the pretrained DiT (measured; see docs/converting.md) while the
# decay parameters still get gradient. Only variants whose decay trains can warm-start.
WARM_START_DECAY_SCALE = 1e-4
TRAINABLE_DECAY = (*CONTENT_GATED, "learned-fixed")

# DiT's size table: heads by width (S, B, L, XL), used when a checkpoint does not say.
DIT_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}

# Settings a checkpoint fixes: overriding one would silently change or break the function.
CHECKPOINT_SETTINGS = (
    "patch_size",
    "in_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "num_classes",
    "learn_sigma",
    "timestep_freq_shift",
    "norm_eps",
    "mlp_norm_eps",
)

_DIT_TOP_MODULES = (
    "x_embedder.proj",
    "t_embedder.mlp.0",
    "t_embedder.mlp.2",
    "final_layer.linear",
    "final_layer.adaLN_modulation.1",
)
_DIT_BLOCK_MODULES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")

# diffusers module -> DiT module. Block modules are relative to transformer_blocks.i / blocks.i.
_DIFFUSERS_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
_DIFFUSERS_BLOCK = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
# Inside every block's norm1.emb; DiT (and SDTDiT) has one shared copy.
_DIFFUSERS_EMBEDDER = {
    "timestep_embedder.linear_1": "t_embedder.mlp.0",
    "timestep_embedder.linear_2": "t_embedder.mlp.2",
    "class_embedder.embedding_table": "y_embedder.embedding_table",
}


class ConversionError(ValueError):
    """A source that cannot be converted; the message says what is wrong and what to do."""


def dit_state_keys(depth: int) -> set[str]:
    """The keys of an original DiT state dict of `depth` blocks (and of a vanilla SDTDiT)."""
    modules = [*_DIT_TOP_MODULES, *(f"blocks.{i}.{name}" for i in range(depth) for name in _DIT_BLOCK_MODULES)]
    return {f"{module}.{param}" for module in modules for param in ("weight", "bias")} | {
        "pos_embed",
        "y_embedder.embedding_table.weight",
    }


def warm_start_settings(attention: str, **overrides) -> dict:
    """SDTDiT settings that start `attention` as close to the pretrained DiT as it can.

    Variants whose decay trains get `decay_scale_init=WARM_START_DECAY_SCALE` unless the
    caller sets it. Settings that change the pretrained function (fixed decay, the
    decomposed attention, RoPE, q/k norm) are allowed but logged as warnings.
    """
    if attention not in ATTENTION_VARIANTS:
        raise ConversionError(
            f"Unknown attention variant {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}."
        )
    settings = {"attention": attention, **overrides}
    if attention in TRAINABLE_DECAY:
        scale = settings.setdefault("decay_scale_init", WARM_START_DECAY_SCALE)
        if not scale > 0:
            # At 0 the SDT decay has no gradient (|alpha|) and learned-fixed's logit is infinite.
            raise ConversionError(
                f"decay_scale_init must be > 0 for a trainable decay, got {scale}; try {WARM_START_DECAY_SCALE}."
            )
    elif "decay_scale_init" in overrides and attention == "vanilla":
        logger.warning("decay_scale_init has no effect with attention 'vanilla' (there is no decay).")
    if attention == "fixed":
        logger.warning(
            "attention 'fixed' has no trainable decay, so it cannot warm-start: the converted model applies "
            "RMT's fixed decay (scaled by decay_scale_init=%s) and its output differs from the pretrained DiT until fine-tuned.",
            settings.get("decay_scale_init", 1.0),
        )
    if attention == "sdt-decomposed":
        # Row-then-column attention differs from full attention even with a zero decay.
        logger.warning(
            "attention 'sdt-decomposed' attends along rows then columns, not over the whole grid, so even with "
            "a near-zero decay its output differs from the pretrained DiT; expect to fine-tune before it samples well."
        )
    if settings.get("rope"):
        logger.warning("rope=True rotates q and k, which the pretrained DiT never saw: the output changes.")
    if settings.get("qk_norm"):
        logger.warning("qk_norm=True normalises q and k, which the pretrained DiT never did: the output changes.")
    return settings


def convert_original_dit(
    path: str | Path,
    attention: str = "vanilla",
    input_size: int | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
    **model_overrides,
) -> SDTDiT:
    """An SDTDiT from an original facebookresearch DiT checkpoint (e.g. `DiT-XL-2-256x256.pt`).

    Accepts a bare state dict or a training checkpoint with `ema` / `model` entries (the
    EMA weights are preferred; the choice is logged). Depth, width, patch size, channels,
    learned sigma, classes and input size are read from the tensor shapes.

    Args:
        path: the `.pt` file, loaded with `torch.load(weights_only=True)`.
        attention: the SDTDiT attention variant; anything but "vanilla" is a warm start.
        input_size: latent size to run at; None keeps the checkpoint's. A different size
            recomputes the fixed sin-cos positions for the new grid.
        num_classes: None infers it, assuming the table's last row is the null class
            (DiT always trains with label dropout); give it for tables without one.
        num_heads: None looks the width up in DiT's size table (384: 6, 768: 12, 1024 and
            1152: 16); needed for other widths.
        model_overrides: further SDTDiT settings (decay_scale_init, lepe, rope, ...).
    """
    settings = warm_start_settings(attention, **model_overrides)
    state = _read_original_checkpoint(Path(path))
    config = _original_config(state, num_classes, num_heads)
    if input_size is not None and input_size != config["input_size"]:
        _drop_sincos_positions(state, config["hidden_size"], config["input_size"] // config["patch_size"])
        settings["input_size"] = input_size
    return _build(config, state, settings)


def convert_diffusers_dit(
    folder_or_model: str | Path | DiTTransformer2DModel, attention: str = "vanilla", **model_overrides
) -> SDTDiT:
    """An SDTDiT from diffusers' DiT port (`DiTTransformer2DModel`, e.g. facebook/DiT-XL-2-256).

    Args:
        folder_or_model: a loaded model, a local model folder (config.json + safetensors)
            or a DiTPipeline folder (its `transformer/` subfolder is used).
        attention: the SDTDiT attention variant; anything but "vanilla" is a warm start.
        model_overrides: further SDTDiT settings (decay_scale_init, lepe, input_size, ...).

    diffusers gives every block its own copy of the timestep and label embedders; SDTDiT
    shares one, as the original DiT does. The copies must be identical (they are in
    converted official weights), otherwise a ConversionError is raised.
    """
    settings = warm_start_settings(attention, **model_overrides)
    if isinstance(folder_or_model, DiTTransformer2DModel):
        transformer = folder_or_model
    else:
        transformer = _load_diffusers_transformer(Path(folder_or_model))
    config = _diffusers_config(transformer)
    state = _rename_diffusers_state(transformer.state_dict(), config["depth"])
    return _build(config, state, settings)


def _build(config: dict, state: dict[str, torch.Tensor], settings: dict) -> SDTDiT:
    """An SDTDiT of the checkpoint's architecture and the requested settings, holding its weights."""
    for key in CHECKPOINT_SETTINGS:
        if key in settings and settings[key] != config[key]:
            raise ConversionError(
                f"{key}={settings[key]} conflicts with the checkpoint, which has {key}={config[key]}; leave it out."
            )
    model = SDTDiT(**{**config, **settings})
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ConversionError(
            f"The checkpoint does not fit the requested model: {str(error).splitlines()[-1].strip()}"
        ) from None
    # Everything the source holds must land, and only SDT's additions (plus recomputed positions) stay at init.
    left_at_init = set(missing) - (set(model.state_dict()) - dit_state_keys(config["depth"])) - {"pos_embed"}
    if unexpected or left_at_init:
        raise RuntimeError(
            f"Conversion mapping out of sync with SDTDiT: unexpected {unexpected}, missing {sorted(left_at_init)}."
        )
    return model.eval()


# ---------------------------------------------------------------- original DiT checkpoints


def _read_original_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The DiT state dict in a .pt file: the file itself, or its `ema` (preferred) or `model` entry."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file; give the original DiT checkpoint, e.g. DiT-XL-2-256x256.pt.")
    try:
        # DiT's train.py also stores its argparse.Namespace under "args": plain data, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for foreign files; all mean "unreadable"
        refusal = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refusal is None:
            raise ConversionError(
                f"{path} is not a PyTorch checkpoint that torch.load can read ({type(error).__name__})."
            ) from None
        raise ConversionError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle ({refusal[1]}). "
            "If you trust the file, load it with torch.load(path, weights_only=False), torch.save just its state dict "
            "(a training checkpoint's 'ema' entry) and convert that."
        ) from None
    if _is_state_dict(payload):
        return payload
    if isinstance(payload, dict):
        for entry in ("ema", "model"):
            if _is_state_dict(payload.get(entry)):
                logger.info(
                    "Using the %r weights of training checkpoint %s (entries: %s).",
                    entry,
                    path,
                    ", ".join(map(str, payload)),
                )
                return payload[entry]
    raise ConversionError(
        f"{path} is not a DiT checkpoint: expected a state dict of tensors, or a dict with an 'ema' or 'model' state dict."
    )


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _original_config(state: dict[str, torch.Tensor], num_classes: int | None, num_heads: int | None) -> dict:
    """SDTDiT architecture settings read from the shapes of an original DiT state dict."""
    block_ids = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    depth = 1 + max((int(i) for i in block_ids if i.isdigit()), default=-1)
    expected = dit_state_keys(depth)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected or depth == 0:
        found = f"missing {', '.join(missing[:3]) or 'nothing'}; unexpected {', '.join(unexpected[:3]) or 'nothing'}"
        raise ConversionError(f"Not a DiT state dict ({found}). Expected the original facebookresearch DiT layout.")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if grid * grid != tokens or out_channels not in (in_channels, 2 * in_channels):
        raise ConversionError(
            f"Not a DiT state dict: {tokens} positions or {out_channels} output channels do not fit a square DiT."
        )
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    if num_classes is None:
        num_classes = rows - 1
    if num_classes not in (rows - 1, rows):
        raise ConversionError(
            f"num_classes={num_classes} does not fit the label table of {rows} rows (classes + 1 null class)."
        )
    if num_heads is None:
        if hidden not in DIT_HEADS_BY_WIDTH:
            raise ConversionError(
                f"Width {hidden} is not a DiT size ({', '.join(map(str, DIT_HEADS_BY_WIDTH))}); give num_heads."
            )
        num_heads = DIT_HEADS_BY_WIDTH[hidden]
    return dict(
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        num_classes=num_classes,
        class_dropout_prob=0.1 if rows > num_classes else 0.0,
        learn_sigma=out_channels == 2 * in_channels,
        timestep_freq_shift=0.0,
        norm_eps=1e-6,
        mlp_norm_eps=1e-6,
    )


def _drop_sincos_positions(state: dict[str, torch.Tensor], hidden: int, grid: int) -> None:
    """Remove pos_embed so the model recomputes it for a new grid, if it is DiT's fixed sin-cos one."""
    from sdtgen.models.embeddings import sincos_pos_embed_2d

    if not torch.allclose(state["pos_embed"][0].float(), sincos_pos_embed_2d(hidden, grid), atol=1e-5):
        raise ConversionError(
            "This checkpoint's position embedding is not DiT's fixed sin-cos one, so it cannot run at another input_size."
        )
    logger.info("Recomputing the sin-cos position embedding for the new input size.")
    del state["pos_embed"]


# ---------------------------------------------------------------- diffusers' DiT port


def _load_diffusers_transformer(folder: Path) -> DiTTransformer2DModel:
    """Load a DiTTransformer2DModel from a model folder or a DiTPipeline folder, with clear errors."""
    if folder.is_file():
        raise ConversionError(
            f"{folder} is a file; give a diffusers DiT model or pipeline folder (an original DiT .pt checkpoint is converted by convert_original_dit)."
        )
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder; give a diffusers DiT model or pipeline folder.")
    subfolder = "transformer" if (folder / "transformer" / "config.json").is_file() else None
    config_file = folder / (subfolder or "") / "config.json"
    if not config_file.is_file():
        raise ConversionError(
            f"{folder} has no config.json: expected a diffusers DiTTransformer2DModel folder (config.json + safetensors) "
            "or a DiTPipeline folder with a transformer/ subfolder."
        )
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except ValueError:
        raise ConversionError(f"{config_file} is not valid JSON.") from None
    # Hub folders converted before diffusers had a DiT class still say Transformer2DModel.
    if class_name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise ConversionError(f"{config_file} describes a {class_name}, not a DiT transformer.")
    try:
        model, info = DiTTransformer2DModel.from_pretrained(folder, subfolder=subfolder, output_loading_info=True)
    except (OSError, ValueError, NotImplementedError, TypeError) as error:
        raise ConversionError(f"diffusers could not load {folder} as a DiT: {str(error).splitlines()[0]}") from None
    problems = {kind: keys for kind, keys in info.items() if keys}
    if problems:
        raise ConversionError(f"{folder} does not hold a complete DiT: {problems}.")
    return model


def _diffusers_config(transformer: DiTTransformer2DModel) -> dict:
    """SDTDiT architecture settings that reproduce a diffusers DiT exactly."""
    config = transformer.config
    if config.activation_fn != "gelu-approximate" or config.norm_elementwise_affine or not config.attention_bias:
        raise ConversionError(
            "Only DiT's own layout converts (activation_fn='gelu-approximate', norm_elementwise_affine=False, "
            f"attention_bias=True); this model has {config.activation_fn!r}, {config.norm_elementwise_affine}, "
            f"{config.attention_bias}."
        )
    block = transformer.transformer_blocks[0]
    embedder = block.norm1.emb
    time_proj = embedder.time_proj
    if not time_proj.flip_sin_to_cos or time_proj.scale != 1 or time_proj.num_channels != 256:
        raise ConversionError("This diffusers DiT uses a timestep embedding SDTDiT does not implement.")
    # SDTDiT shares one eps between the attention norm and the final norm; diffusers uses 1e-6 for both.
    if block.norm1.norm.eps != transformer.norm_out.eps:
        raise ConversionError(
            f"Attention norm eps {block.norm1.norm.eps} differs from the final norm's {transformer.norm_out.eps}."
        )
    hidden = transformer.inner_dim
    out_channels = transformer.out_channels
    if out_channels not in (config.in_channels, 2 * config.in_channels):
        raise ConversionError(f"out_channels={out_channels} must be in_channels or twice it (learned sigma).")
    return dict(
        input_size=config.sample_size,
        patch_size=config.patch_size,
        in_channels=config.in_channels,
        hidden_size=hidden,
        depth=config.num_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=block.ff.net[0].proj.out_features / hidden,
        num_classes=config.num_embeds_ada_norm,
        class_dropout_prob=embedder.class_embedder.dropout_prob,
        learn_sigma=out_channels == 2 * config.in_channels,
        timestep_freq_shift=float(time_proj.downscale_freq_shift),
        norm_eps=block.norm1.norm.eps,
        mlp_norm_eps=block.norm3.eps,
    )


def _rename_diffusers_state(source: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """diffusers DiT parameters under the original DiT names (q, k, v fused into qkv)."""
    state: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str) -> None:
        for key, tensor in source.items():
            if key.startswith(src + ".") and key.count(".") == src.count(".") + 1:
                state[dst + key[len(src) :]] = tensor

    for src, dst in _DIFFUSERS_TOP.items():
        move(src, dst)
    for src, dst in _DIFFUSERS_EMBEDDER.items():
        move(f"transformer_blocks.0.norm1.emb.{src}", dst)
    for i in range(depth):
        prefix = f"transformer_blocks.{i}."
        for src, dst in _DIFFUSERS_BLOCK.items():
            move(prefix + src, f"blocks.{i}.{dst}")
        for param in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{param}"] = torch.cat(
                [source[f"{prefix}attn1.to_{name}.{param}"] for name in "qkv"]
            )
        _check_shared_embedder(source, i)
    return state


def _check_shared_embedder(source: dict[str, torch.Tensor], block: int) -> None:
    """Refuse models whose block `block` embedder differs from block 0's: SDTDiT cannot hold it."""
    for name in _DIFFUSERS_EMBEDDER:
        for param in ("weight", "bias"):
            key = f"transformer_blocks.{block}.norm1.emb.{name}.{param}"
            if key in source and not torch.equal(source[key], source[key.replace(f"blocks.{block}.", "blocks.0.", 1)]):
                raise ConversionError(
                    f"The timestep/label embedder of block {block} ({key}) differs from block 0's. diffusers' DiT keeps "
                    "one embedder copy per block, but SDTDiT shares a single embedder across blocks (as the original "
                    "DiT does), so it cannot represent this model. Official DiT weights have identical copies; a model "
                    "whose copies were trained apart cannot be converted."
                )
