"""Run folders: their layout, and the model folder a command is pointed at (the SDTPipeline it gives).

A training run writes (sdtgen/training/trainer.py, sdtgen/training/checkpoint.py):

    <run>/config.yaml                 the resolved training config (CONFIG_FILE)
    <run>/log.jsonl                   one JSON line per logged step (LOG_FILE)
    <run>/class_names.json            the class names, by label (CLASS_NAMES_FILE)
    <run>/.lock                       held while a process trains into the run (LOCK_FILE, training/run_lock.py)
    <run>/checkpoints/checkpoint-<step>/
        model/                        the EMA model, an SDTDiT folder (MODEL_DIR)
        trainer_state.json            written last: its presence marks a complete checkpoint

Four kinds of folder can be sampled from (`find_source`):

    run         <run>/ with checkpoints/: its newest complete checkpoint's EMA model
    checkpoint  <run>/checkpoints/checkpoint-<step>/: its model/ (EMA weights)
    model       an SDTDiT folder (config.json + safetensors): a checkpoint's model/, or
                the output of `sdtgen convert`
    pipeline    an SDTPipeline folder (model_index.json), e.g. from `sdtgen export`

Inside a run, the training config says the objective (`objective`) and the VAE
(`data.vae`), and class_names.json the class names. A pipeline knows all three. A bare
model folder knows none: a learned variance means DDPM (flow models never learn it); the
objective otherwise, and the VAE always, must be given (MissingInput says which).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from sdtgen.class_names import display_names, id2label_names
from sdtgen.config import RunConfig, current_names
from sdtgen.diffusion.sampling import Guidance, check_steps, default_guidance, make_scheduler, objective_of

if TYPE_CHECKING:
    from sdtgen.pipeline import SDTPipeline

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
CLASS_NAMES_FILE = "class_names.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

DEFAULT_RUN = RunConfig().output_dir
KINDS = ("run", "checkpoint", "model", "pipeline")
_FOLDER_KINDS = (
    "a run folder (with checkpoints/), a checkpoint folder (with model/), "
    "a model folder (with config.json) or a pipeline folder (with model_index.json)"
)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of `step` inside checkpoints/."""
    return f"checkpoint-{step}"


def is_complete_checkpoint(folder: Path) -> bool:
    """True when `folder` holds a finished checkpoint save (its trainer state is written last)."""
    return (folder / TRAINER_STATE_FILE).is_file()


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name)) and is_complete_checkpoint(p)
    ]
    return [p for _, p in sorted(found)]


def check_finite_weights(tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """ValueError naming `source` if a weight is NaN or inf: such a model samples black images silently.

    One reduction per tensor, cheap next to reading it.
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{source} holds non-finite weights (NaN or inf in {name}); use another checkpoint.")


class MissingInput(ValueError):
    """A value that a folder does not record and the caller must give.

    `argument` is the keyword that gives it (`ckpt` of find_source, `vae` or `objective` of
    load_pipeline). The message asks for that keyword; a command line asks for its own
    option instead with `asking_for`.
    """

    def __init__(self, argument: str, reason: str, accepted: str) -> None:
        self.argument, self.reason, self.accepted = argument, reason, accepted
        super().__init__(self.asking_for(f"{argument}=..."))

    def asking_for(self, how: str) -> str:
        """The message, asking for the value as `how` (a keyword, a command-line option)."""
        return f"{self.reason}; pass {how} ({self.accepted})."


@dataclass(frozen=True)
class SampleSettings:
    """How a command samples a model, checked against it (see `Source.sample_settings`)."""

    sampler: str | None  # None: the objective's default sampler; a pipeline folder keeps its own scheduler
    steps: int | None  # None: the sampler's default (`default_steps`)
    guidance: Guidance


@dataclass
class Source:
    """A model folder, read without loading any weights."""

    kind: str  # one of KINDS
    path: Path  # the folder given
    model_dir: Path  # the SDTDiT folder (a pipeline's transformer/)
    model_config: dict[str, Any]
    run_config: dict[str, Any] | None  # the training config, for folders inside a run
    class_names: list[str] | None
    known_objective: str | None  # from the run config or the pipeline's scheduler

    @property
    def num_classes(self) -> int:
        return self.model_config["num_classes"]

    def objective(self, requested: str | None = None) -> str:
        """`ddpm` or `flow`: what the folder says, else `requested`; ValueError if they disagree, MissingInput if neither knows."""
        known = self.known_objective or ("ddpm" if self.model_config.get("learn_sigma") else None)
        if requested and known and requested != known:
            raise ValueError(f"{self.path} holds a {known} model, not a {requested} one.")
        if not (requested or known):
            raise MissingInput(
                "objective",
                f"Cannot tell whether {self.model_dir} was trained with ddpm or flow (no run folder around it "
                "and no learned variance)",
                "ddpm or flow",
            )
        return requested or known

    @property
    def sample_defaults(self) -> dict[str, Any]:
        """The run's `sample:` settings (sampler, steps, guidance_scale, classes) that commands default to, under
        their current names however old the run; {} outside a run."""
        return current_names((self.run_config or {}).get("sample") or {}, "sample.")

    def sample_settings(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_channels: int | None = None,
        guidance_interval: tuple[float, float] | list[float] | None = None,
    ) -> SampleSettings:
        """A command's sampler, steps and guidance: each setting it was given, else the run's `sample:` one, else
        the library's default (see `SampleSettings`; the guidance scale's is `default_guidance` of the model, the
        interval's every step). ValueError if the steps or the guidance do not fit the model."""
        run = self.sample_defaults
        steps = run.get("steps") if steps is None else steps
        if steps is not None:
            check_steps(steps)
        if guidance_scale is None:
            guidance_scale = default_guidance(self.model_config, run.get("guidance_scale"))
        if guidance_interval is None:
            guidance_interval = run.get("guidance_interval") or (0.0, 1.0)
        guidance = Guidance(guidance_scale, guidance_channels, tuple(guidance_interval))
        guidance.check(self.model_config)
        return SampleSettings(sampler or run.get("sampler"), steps, guidance)

    def vae_spec(self, requested: str | None = None) -> str | None:
        """The VAE to load: `requested`, else the run's data.vae; None keeps a pipeline's own. MissingInput if unknown."""
        if requested or self.kind == "pipeline":
            return requested
        if self.run_config is None:
            raise MissingInput(
                "vae",
                f"{self.model_dir} has no run folder around it, so its VAE is unknown",
                "builtin, identity, a diffusers AutoencoderKL folder, or a hub id such as stabilityai/sd-vae-ft-ema "
                "for DiT's ImageNet models",
            )
        return self.run_config["data"]["vae"]


def find_source(ckpt: str | Path | None) -> Source:
    """Read the folder `ckpt` names (None: the built-in run), or raise OSError / ValueError saying what is wrong."""
    if ckpt is None:
        if not Path(DEFAULT_RUN).is_dir():
            raise MissingInput(
                "ckpt",
                f"No model folder given and the built-in run {DEFAULT_RUN} does not exist here (train it with "
                "`accelerate launch -q scripts/train_gen.py`)",
                "a run, checkpoint, model or pipeline folder",
            )
        ckpt = DEFAULT_RUN
    path = Path(ckpt).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a folder; expected {_FOLDER_KINDS}.")
    if (path / "model_index.json").is_file():
        return _pipeline_source(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        found = list_checkpoints(path / CHECKPOINTS_DIR)
        if not found:
            raise FileNotFoundError(
                f"The run {path} has no complete checkpoint yet; train it further or use a checkpoint folder."
            )
        return _model_source("run", path, found[-1] / MODEL_DIR)
    if (path / MODEL_DIR).is_dir():
        return _model_source("checkpoint", path, path / MODEL_DIR)
    if (path / "config.json").is_file():
        return _model_source("model", path, path)
    raise FileNotFoundError(f"{path} is none of {_FOLDER_KINDS}.")


def load_pipeline(
    source: Source,
    *,
    vae: str | None = None,
    objective: str | None = None,
    sampler: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SDTPipeline:
    """The SDTPipeline of `source` in `dtype`, with the VAE, objective and sampler overrides applied.

    Without `sampler`, a pipeline folder keeps its scheduler and other folders get the
    objective's default sampler.
    """
    from sdtgen.models.dit import SDTDiT
    from sdtgen.pipeline import SDTPipeline
    from sdtgen.vae import IDENTITY_VAE, load_vae

    objective = source.objective(objective)
    scheduler = None
    if sampler or source.kind != "pipeline":
        # Built before any weights load, so that a sampler that does not fit fails fast.
        scheduler = make_scheduler(objective, sampler, source.model_config["learn_sigma"])
    spec = source.vae_spec(vae)
    autoencoder = None
    if spec is not None:
        image_channels = source.model_config["in_channels"] if spec == IDENTITY_VAE else None
        autoencoder = load_vae(spec, image_channels=image_channels, dtype=dtype).autoencoder
    if source.kind != "pipeline":
        model = _load(SDTDiT.from_pretrained, source.model_dir, dtype=dtype)
        check_finite_weights(model.state_dict(), _weights_file(source.model_dir))
        return SDTPipeline(
            model, scheduler, autoencoder, dict(enumerate(source.class_names)) if source.class_names else None
        )
    pipe = _load(SDTPipeline.from_pretrained, source.path, dtype=dtype)
    check_finite_weights(pipe.transformer.state_dict(), _weights_file(source.model_dir))
    if scheduler is None and spec is None:
        return pipe
    return SDTPipeline(
        pipe.transformer,
        scheduler or pipe.scheduler,
        autoencoder if spec is not None else pipe.vae,
        pipe.config.id2label,
    )


def _weights_file(model_dir: Path) -> Path:
    return next(model_dir.glob("*.safetensors"), model_dir)


def _load(loader: Callable, folder: Path, **kwargs):
    """`loader(folder, **kwargs)`, with a failure (missing or corrupt files) turned into one OSError line."""
    try:
        return loader(folder, **kwargs)
    except Exception as error:  # noqa: BLE001 - diffusers and safetensors raise many kinds; all mean "unreadable"
        reason = " ".join(str(error).split()) or type(error).__name__
        raise OSError(f"Could not load {folder}: it is missing files or corrupt ({reason[:300]}).") from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; {path.parent} is not a complete model folder.") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is unreadable or corrupt ({error}).") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"{path} is unreadable or not valid YAML ({reason}); fix it or delete it.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a training config (a mapping); fix it or delete it.")
    return config


def _model_config(model_dir: Path) -> dict[str, Any]:
    config = _read_json(model_dir / "config.json")
    if config.get("_class_name") != "SDTDiT":
        raise ValueError(
            f"{model_dir} holds a {config.get('_class_name', 'unknown model')}, not an SDTDiT; "
            "convert DiT weights first with `sdtgen convert`."
        )
    return config


def _model_source(kind: str, path: Path, model_dir: Path) -> Source:
    """A run, checkpoint or model folder; the run around it (if any) gives objective, VAE and names."""
    config = _model_config(model_dir)
    checkpoint = model_dir.parent
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else None
    run_config = None
    if (checkpoint / TRAINER_STATE_FILE).is_file():
        run_config = _read_json(checkpoint / TRAINER_STATE_FILE).get("config")
    if run_config is None and run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        run_config = _read_yaml(run_dir / CONFIG_FILE)
    own_names = None
    if run_dir is not None and (run_dir / CLASS_NAMES_FILE).is_file():
        own_names = _read_json(run_dir / CLASS_NAMES_FILE)
    return Source(
        kind,
        path,
        model_dir,
        config,
        run_config,
        display_names(own_names, config["num_classes"]),
        run_config["objective"] if run_config else None,
    )


def _pipeline_source(path: Path) -> Source:
    index = _read_json(path / "model_index.json")
    config = _model_config(path / "transformer")
    scheduler_class = (index.get("scheduler") or [None, ""])[1] or ""
    return Source(
        "pipeline",
        path,
        path / "transformer",
        config,
        None,
        id2label_names(index.get("id2label"), config["num_classes"]),
        objective_of(scheduler_class),
    )


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl, one dict per line, oldest first.

    Blank lines are skipped. A last line that does not parse is dropped: it is a record cut
    short by a process killed while writing it (the trainer writes a whole line, then flushes).
    A bad line anywhere else is corruption: ValueError naming the file and line.
    """
    path = Path(path)
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if index == len(lines) - 1:
                break
            raise ValueError(f"{path} line {number} is not a JSON record; the log is corrupt.") from None
    return records
