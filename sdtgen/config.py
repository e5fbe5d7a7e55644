"""Run configuration: typed defaults (the built-in run), YAML files and dotted overrides.

    config = load_config("configs/imagenet256_sdt_xl2.yaml", ["train.max_steps=1000", "seed=1"])

Defaults describe the built-in run (SDT on the `animals` set, CPU-sized). A YAML file
overrides any subset; `key=value` overrides (values parsed as YAML) come last. Unknown keys
are errors that list the valid ones, so a typo never trains the wrong model silently. Renamed
keys still read under their old names (`OLD_NAMES`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdtgen.diffusion.sampling import SAMPLERS, Guidance
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.models.backends import BACKENDS
from sdtgen.models.dit import MLPS, NORMS, PRESETS

PRECISIONS = ("auto", "no", "bf16", "fp16")  # train.mixed_precision; "auto" is resolved in training/precision.py
# train.ema_std: EDM2's power-function profiles (training/ema.py) reach at most this relative std (exponent 0).
MAX_EMA_STD = math.sqrt(1 / 12)
LR_SCHEDULES = ("constant", "cosine", "linear")  # train.lr_schedule; training/trainer.learning_rate has the formulas


@dataclass
class ModelConfig:
    preset: str = "T/2"  # size / patch: T (tiny, CPU), S, B, L, XL; depth, hidden_size, num_heads override it
    attention: str = "sdt"  # vanilla | fixed | learned-fixed | sdt | sdt-decomposed
    attention_backend: str = "auto"  # auto | sdpa | flex | folded | math
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    learn_sigma: bool | None = None  # None: True for ddpm, False for flow
    rope: bool = True  # 2D rotary q/k (LightningDiT); the built-in recipe has it
    lepe: bool = False
    qk_norm: bool = False
    mlp: str = "swiglu"  # swiglu (LightningDiT; as many weights as gelu) | gelu (DiT)
    norm: str = "rmsnorm"  # rmsnorm (LightningDiT) | layernorm (DiT); also the kind of qk_norm
    pretrained: str | None = None  # an SDTDiT folder to start from (fine-tuning, warm start)
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    dataset: str = "animals"  # animals, or a class-per-folder image directory
    split: str = "train"
    image_size: int = 32
    vae: str = "builtin"  # builtin | identity | a local AutoencoderKL folder | a hub id
    latent_cache: str | None = "cache/animals-latents"  # null: encode images on the fly
    extract_batch_size: int = 250
    num_workers: int = 0  # DataLoader workers (useful when encoding images on the fly)
    on_error: str = "raise"  # corrupt images in folders: raise | skip


@dataclass
class TrainConfig:
    # The built-in recipe (docs/recipe.md, the ladder): 9,600 steps of 16 with a cosine decay,
    # AdamW betas (0.9, 0.95), SwiGLU, RMSNorm, RoPE and the velocity-direction loss. The run
    # is step-limited: at equal images, batch 32 beats batch 64 by ten FID and 16 beats 32 by five.
    max_steps: int = 9600
    global_batch_size: int = 16  # per optimizer step, summed over processes and accumulation
    micro_batch_size: int | None = None  # per process per forward; None = the whole share
    lr: float = 3e-3  # DiT uses 1e-4 for 400K steps; the short built-in run at batch 16 needs more (docs/recipe.md)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)  # LightningDiT's; DiT's (0.9, 0.999)
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # after warm-up: constant (DiT) | cosine | linear, both decaying to 0 at max_steps
    grad_clip: float | None = 1.0
    mixed_precision: str = "auto"  # auto (bf16 where the device computes it natively, else no) | no | bf16 | fp16
    tf32: bool = True
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)): for short runs
    ema_std: float | None = None  # EDM2's power-function EMA of this length / run length; replaces the two above
    # Representation losses on the tokens after `representation_depth` blocks (training/representation.py).
    dispersive_weight: float = 0.0  # dispersive loss (no teacher); the paper uses 0.5
    dispersive_tau: float = 0.5
    repa_weight: float = 0.0  # REPA: align to a frozen encoder's features; the paper uses 0.5
    repa_encoder: str | None = None  # DIR:ENTRY (local torch.hub folder) or OWNER/REPO:ENTRY (hub cache)
    representation_depth: int | None = None  # None: max(1, depth // 3)
    compile: bool = False
    cpu_threads: int | None = None  # CPU only: torch threads per process; None = cores / processes
    log_every: int = 25
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    sample_every: int | None = None  # sample grid of every class; null = only at the end
    eval_every: int | None = None  # built-in set only: FID / class accuracy of the EMA model every N steps
    eval_samples: int = 1000  # samples per evaluation (class-balanced)
    eval_steps: int | None = None  # sampler steps for evaluation samples; null = sample.steps
    final_eval: bool = True  # built-in set only: evaluate once at the end and print it
    resume: str | None = None  # latest | a checkpoint folder | null


@dataclass
class SampleConfig:
    sampler: str | None = None  # None: the objective's default
    steps: int | None = None
    # Guidance at noise levels up to 0.8, off at the noisiest steps (Kynkaanniemi et al., 2024): better
    # FID and class accuracy on the built-in run than 2 everywhere; 2.5 balances lr 3e-3 (docs/recipe.md).
    guidance_scale: float = 2.5
    guidance_interval: tuple[float, float] = (0.0, 0.8)  # noise levels (timestep / 1000, 1 = pure noise) guided
    per_class: int = 8
    classes: list[int] | None = None  # which classes the grids show; None = all

    def guidance(self) -> Guidance:
        """The run's own guidance: `guidance_scale` at the noise levels of `guidance_interval`, every channel."""
        return Guidance(self.guidance_scale, interval=tuple(self.guidance_interval))


@dataclass
class FlowConfig:
    time_sampling: str = "logit_normal"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    direction_weight: float = 1.0  # velocity-direction (cosine) loss, as LightningDiT; 0 = plain MSE


@dataclass
class RunConfig:
    output_dir: str = "runs/animals-sdt"
    seed: int = 0
    objective: str = "flow"  # ddpm | flow
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# Old key -> new key, in any section: config files, overrides and runs written before the rename still
# read (`current_names`), and so do the settings.json and metrics.json such runs wrote.
OLD_NAMES = {"cfg": "guidance_scale", "cfg_interval": "guidance_interval", "cfg_channels": "guidance_channels"}


def current_names(values: dict, prefix: str = "") -> dict:
    """`values` with every key of OLD_NAMES under its new name, in the same order; ValueError if both are given
    (`prefix`, e.g. `sample.`, names the section in the message)."""
    for old, new in OLD_NAMES.items():
        if old in values and new in values:
            raise ValueError(f"'{prefix}{old}' is the old name of '{prefix}{new}'; give only '{prefix}{new}'.")
    return {OLD_NAMES.get(key, key): value for key, value in values.items()}


def _apply(target: Any, values: dict, prefix: str = "") -> None:
    for key, value in current_names(values, prefix).items():
        if key not in _field_names(type(target)):
            valid = ", ".join(prefix + name for name in _field_names(type(target)))
            raise ValueError(f"Unknown config key '{prefix}{key}'. Valid keys here: {valid}.")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(
                    f"Config key '{prefix}{key}' is a section; set its fields, e.g. {prefix}{key}.<name>=..."
                )
            _apply(current, value, f"{prefix}{key}.")
        else:
            setattr(target, key, _typed(prefix + key, value, typing.get_type_hints(type(target))[key]))


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    return _KINDS[hint]


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the field's annotation; ValueError naming the key otherwise.

    Ints pass for floats, and so do strings that read as numbers: YAML 1.1 reads `1e-4`
    (no dot) as a string. Lists become tuples for tuple fields.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            with contextlib.suppress(ValueError):
                return _typed(key, value, option)
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)) and (origin is list or len(value) == len(args)):
            items = args if origin is tuple else args * len(value)
            return origin(_typed(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, items)))
    elif hint is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                if math.isfinite(number := float(value)):
                    return number
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"Config key '{key}' must be {_describe(hint)}, got {value!r}.")


class _Loader(yaml.SafeLoader):
    """YAML with 1.2's booleans, true and false only: in 1.1 `no` is False, and `mixed_precision: no`
    or `train.mixed_precision=no` must stay the word."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader


def parse_overrides(overrides: Sequence[str]) -> dict:
    """['train.lr=3e-4', 'model.attention=vanilla'] -> nested dict, values parsed as YAML."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {item!r} is not of the form key=value (e.g. train.max_steps=1000).")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(raw)
    return nested


def _parse_value(raw: str):
    """A YAML scalar (`_typed` reads number-like strings such as 1e-3 for number keys)."""
    return _load_yaml(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The defaults, then the YAML file (if any), then the overrides."""
    config = RunConfig()
    if path is not None:
        path = Path(path)
        _apply(config, _read_yaml(path))
    _apply(config, parse_overrides(overrides))
    validate(config)
    return config


def _read_yaml(path: Path) -> dict:
    """The mapping in a YAML config file; one-line errors that name the file otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist (see configs/ for the shipped ones).")
    try:
        values = _load_yaml(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if isinstance(error, yaml.YAMLError) else "not UTF-8 text"
        raise ValueError(f"Config file {path} is not valid YAML ({reason}); see configs/ for examples.") from None
    if values is not None and not isinstance(values, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping of sections (model:, data:, train:, ...), "
            f"not a {type(values).__name__}."
        )
    return values or {}


# Choices of the string settings, and the lowest allowed value of the numeric ones (null is
# not checked: the keys that allow it say what it means).
CHOICES = {
    "objective": tuple(SAMPLERS),
    "model.attention": ATTENTION_VARIANTS,
    "train.lr_schedule": LR_SCHEDULES,
    "model.attention_backend": BACKENDS,
    "data.on_error": ("raise", "skip"),
    "train.mixed_precision": PRECISIONS,
    "flow.time_sampling": ("uniform", "logit_normal"),
    "model.mlp": MLPS,
    "model.norm": NORMS,
}
AT_LEAST = {
    "model.depth": 1,
    "model.hidden_size": 1,
    "model.num_heads": 1,
    "data.image_size": 1,
    "data.extract_batch_size": 1,
    "data.num_workers": 0,
    "train.max_steps": 1,
    "train.global_batch_size": 1,
    "train.micro_batch_size": 1,
    "train.weight_decay": 0.0,
    "train.warmup_steps": 0,
    "train.grad_clip": 0.0,
    "train.cpu_threads": 1,
    "train.log_every": 1,
    "train.checkpoint_every": 1,
    "train.keep_checkpoints": 0,
    "train.sample_every": 1,
    "train.eval_every": 1,
    "train.eval_samples": 1,
    "train.eval_steps": 1,
    "sample.steps": 1,
    "sample.guidance_scale": 0.0,
    "sample.per_class": 1,
    "flow.logit_std": 0.0,
    "flow.direction_weight": 0.0,
    "train.dispersive_weight": 0.0,
    "train.dispersive_tau": 1e-6,
    "train.repa_weight": 0.0,
    "train.representation_depth": 1,
}


def _get(config: RunConfig, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def validate(config: RunConfig) -> None:
    """Catch inconsistent settings before any work starts."""
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}, got {_get(config, key)!r}.")
    for key, lowest in AT_LEAST.items():
        value = _get(config, key)
        if value is not None and value < lowest:
            raise ValueError(f"{key} must be at least {lowest}, got {value}.")
    if config.model.preset.upper() not in PRESETS:
        raise ValueError(f"model.preset must be one of {', '.join(PRESETS)}, got {config.model.preset!r}.")
    t = config.train
    if not 0 < t.lr < 1:  # an AdamW step moves each weight by about lr: 1 or more destroys the model at once
        raise ValueError(f"train.lr must be in (0, 1) (DiT uses 1e-4, the built-in run 3e-3), got {t.lr}.")
    if not config.model.mlp_ratio > 0:
        raise ValueError(f"model.mlp_ratio must be positive (4 in DiT), got {config.model.mlp_ratio}.")
    if not 0 <= t.ema_decay < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}.")
    if t.ema_std is not None and not 0 < t.ema_std < MAX_EMA_STD:
        raise ValueError(f"train.ema_std must be in (0, {MAX_EMA_STD:.4f}) (EDM2 uses 0.05 to 0.15), got {t.ema_std}.")
    low, high = config.sample.guidance_interval
    if not 0 <= low <= high <= 1:
        raise ValueError(
            f"sample.guidance_interval needs 0 <= LOW <= HIGH <= 1 (noise levels, 1 = pure noise), got [{low}, {high}]."
        )
    if not all(0 <= beta < 1 for beta in t.betas):
        raise ValueError(f"train.betas must both be in [0, 1), got {list(t.betas)}.")
    if not 0 <= config.model.class_dropout_prob < 1:
        raise ValueError(f"model.class_dropout_prob must be in [0, 1), got {config.model.class_dropout_prob}.")
    if config.sample.sampler is not None and config.sample.sampler not in SAMPLERS[config.objective]:
        raise ValueError(
            f"sample.sampler={config.sample.sampler!r} does not fit objective={config.objective}; "
            f"choose one of {', '.join(SAMPLERS[config.objective])} or null."
        )
    if t.repa_weight and not t.repa_encoder:
        raise ValueError("train.repa_weight > 0 needs train.repa_encoder (DIR:ENTRY of a local torch.hub folder).")
    if config.model.learn_sigma and config.objective == "flow":
        raise ValueError("model.learn_sigma=true only applies to objective=ddpm.")
    if config.data.dataset != "animals" and config.data.vae == "builtin":
        raise ValueError(
            f"data.vae=builtin is made for the animals set's 32x32 grayscale images, and data.dataset={config.data.dataset} "
            "gives RGB images: set data.vae=stabilityai/sd-vae-ft-ema (or a local AutoencoderKL folder), or "
            "data.vae=identity for pixel space."
        )


def config_to_dict(config: RunConfig) -> dict:
    data = dataclasses.asdict(config)
    data["train"]["betas"] = list(config.train.betas)
    return data


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
