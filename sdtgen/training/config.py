"""Run configuration: typed defaults (the built-in run), YAML files and dotted overrides.

    config = load_config("configs/imagenet256_sdt_xl2.yaml", ["train.max_steps=1000", "seed=1"])

Defaults describe the built-in run (SDT on the `animals` set, CPU-sized). A YAML file
overrides any subset; `key=value` overrides (values parsed as YAML) come last. Unknown keys
are errors that list the valid ones, so a typo never trains the wrong model silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml


@dataclass
class ModelConfig:
    preset: str = "T/2"  # size / patch: T (tiny, CPU), S, B, L, XL; depth, hidden_size, num_heads override it
    attention: str = "sdt"  # vanilla | fixed | learned-fixed | sdt | sdt-decomposed
    attention_backend: str = "auto"  # auto | sdpa | flex | math
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    learn_sigma: bool | None = None  # None: True for ddpm, False for flow
    rope: bool = False
    lepe: bool = False
    qk_norm: bool = False
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
    max_steps: int = 600
    global_batch_size: int = 128  # per optimizer step, summed over processes and accumulation
    micro_batch_size: int | None = None  # per process per forward; None = the whole share
    lr: float = 1e-3  # DiT uses 1e-4 for 400K steps; the short built-in run needs more
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    tf32: bool = True
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)): for short runs
    compile: bool = False
    cpu_threads: int | None = None  # CPU only: torch threads per process; None = cores / processes
    log_every: int = 25
    checkpoint_every: int = 300
    keep_checkpoints: int = 2
    sample_every: int | None = None  # sample grid of every class; null = only at the end
    eval_every: int | None = None  # built-in set only: FID / class accuracy of the EMA model every N steps
    eval_samples: int = 200  # samples per evaluation (class-balanced)
    eval_steps: int | None = 25  # sampler steps for evaluation samples; null = sample.steps
    final_eval: bool = True  # built-in set only: evaluate once at the end and print it
    resume: str | None = None  # latest | a checkpoint folder | null


@dataclass
class SampleConfig:
    sampler: str | None = None  # None: the objective's default
    steps: int | None = None
    cfg: float = 2.0
    per_class: int = 8
    classes: list[int] | None = None  # which classes the grids show; None = all


@dataclass
class FlowConfig:
    time_sampling: str = "logit_normal"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0


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


def _apply(target: Any, values: dict, prefix: str = "") -> None:
    for key, value in values.items():
        if key not in _field_names(type(target)):
            valid = ", ".join(prefix + name for name in _field_names(type(target)))
            raise ValueError(f"Unknown config key '{prefix}{key}'. Valid keys here: {valid}.")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"Config key '{prefix}{key}' is a section; set its fields, e.g. {prefix}{key}.<name>=...")
            _apply(current, value, f"{prefix}{key}.")
        else:
            setattr(target, key, tuple(value) if isinstance(current, tuple) else value)


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
    """YAML scalars, plus plain floats like 1e-3 that YAML 1.1 would read as strings."""
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The defaults, then the YAML file (if any), then the overrides."""
    config = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist (see configs/ for the shipped ones).")
        _apply(config, yaml.safe_load(path.read_text()) or {})
    _apply(config, parse_overrides(overrides))
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Catch inconsistent settings before any work starts."""
    if config.objective not in ("ddpm", "flow"):
        raise ValueError(f"objective must be 'ddpm' or 'flow', got {config.objective!r}.")
    if config.train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be no, bf16 or fp16, got {config.train.mixed_precision!r}.")
    if config.train.max_steps < 1 or config.train.global_batch_size < 1:
        raise ValueError("train.max_steps and train.global_batch_size must be positive.")
    if config.model.learn_sigma and config.objective == "flow":
        raise ValueError("model.learn_sigma=true only applies to objective=ddpm.")


def config_to_dict(config: RunConfig) -> dict:
    data = dataclasses.asdict(config)
    data["train"]["betas"] = list(config.train.betas)
    return data


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
