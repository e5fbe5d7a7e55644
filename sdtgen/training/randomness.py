"""Which samples each step sees, and every random number it draws, as pure functions of the step.

Exact resume and process-count independence both follow from one rule: nothing random
depends on history. The samples of step s are positions [s * G, (s + 1) * G) of an
endless stream that visits the data set once per epoch in a seeded permutation; the flip
bits, the latent draws, the label drops, the timesteps and the noise of step s come from a
generator seeded with (seed, s), drawn for the whole global batch, and each process keeps
its own slice. A run resumed at step s, or run on another number of processes, therefore
computes the same batches as an uninterrupted single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Large odd multipliers keep (seed, step), (seed, epoch) and (seed, init) streams apart.
_STEP_STREAM = 0x9E3779B1
_EPOCH_STREAM = 0x85EBCA77
_INIT_STREAM = 0xC2B2AE3D


def init_seed(seed: int) -> int:
    """The seed of model initialisation: its own stream, so nothing run before can shift it."""
    return (seed * _INIT_STREAM + 1) % 2**63


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of every random draw of step `step`, on `device`."""
    return torch.Generator(device=device).manual_seed((seed * _STEP_STREAM + step) % 2**63)


class EpochOrder:
    """Sample indices of global batches: a seeded permutation per epoch, concatenated."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError("The training set is empty.")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order in which epoch `epoch` visits the samples."""
        if epoch not in self._cache:
            if len(self._cache) > 2:  # a step spans at most two epochs
                self._cache.pop(min(self._cache))
            generator = torch.Generator().manual_seed((self.seed * _EPOCH_STREAM + epoch) % 2**63)
            self._cache[epoch] = torch.randperm(self.num_samples, generator=generator)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """The sample indices of step `step`'s global batch."""
        positions = step * self.global_batch_size + torch.arange(self.global_batch_size)
        epochs, offsets = positions // self.num_samples, positions % self.num_samples
        return torch.stack([self.permutation(int(e))[int(o)] for e, o in zip(epochs, offsets)])

    def epoch_of(self, step: int) -> float:
        """Epochs completed after `step` steps (fractional)."""
        return step * self.global_batch_size / self.num_samples


@dataclass
class StepRandomness:
    """The random draws the loop makes for one step, for the whole global batch (then sliced per process).

    The step's first draw, its flips, goes into the data loader's keys instead (`step_keys`).
    """

    latent_eps: torch.Tensor  # (G, C, H, W): z = mean + std * eps from the stored moments
    drop_labels: torch.Tensor  # (G,) bool: replace the label by the null class
    times: torch.Tensor  # (G,) integer timesteps (ddpm) or times in (0, 1) (flow)
    noise: torch.Tensor  # (G, C, H, W) diffusion noise

    def slice(self, positions: slice) -> StepRandomness:
        """The draws of the samples at `positions` of the global batch (one process's share)."""
        return StepRandomness(*(getattr(self, f)[positions] for f in self.__dataclass_fields__))


def _draw_flips(generator: torch.Generator, global_batch_size: int, device: torch.device | str) -> torch.Tensor:
    # The first draw from a step's generator, shared so that `step_keys` and
    # `draw_step_randomness` make the same one.
    return torch.rand(global_batch_size, generator=generator, device=device) < 0.5


def draw_step_randomness(
    objective,
    seed: int,
    step: int,
    global_batch_size: int,
    latent_shape: tuple[int, ...],
    class_dropout_prob: float,
    device: torch.device,
) -> StepRandomness:
    """All random numbers of step `step`, in a fixed order, from the (seed, step) generator."""
    generator = step_generator(seed, step, device)
    shape = (global_batch_size, *latent_shape)
    _draw_flips(generator, global_batch_size, device)  # step_keys's; drawn here to keep the stream's order
    latent_eps = torch.randn(shape, generator=generator, device=device)
    drop = torch.rand(global_batch_size, generator=generator, device=device) < class_dropout_prob
    times = objective.sample_timesteps(global_batch_size, device, generator=generator)
    noise = torch.randn(shape, generator=generator, device=device)
    return StepRandomness(latent_eps, drop, times, noise)


def step_keys(order: EpochOrder, step: int, positions: slice, device: torch.device | str) -> list[tuple[int, bool]]:
    """The `(sample index, flip)` keys at `positions` of step `step`'s global batch (one process's share).

    The flips are the ones `draw_step_randomness` draws for the same step: the same
    generator's first draw, made on the same device.
    """
    flips = _draw_flips(step_generator(order.seed, step, device), order.global_batch_size, device)
    return [(int(i), bool(f)) for i, f in zip(order.indices(step)[positions], flips[positions].cpu())]


class StepKeys:
    """A batch sampler: this process's keys (`step_keys`) for steps start, start + 1, ..., stop - 1.

    The training loop consumes its batches in the same order and draws each step's other
    random numbers itself; with DataLoader workers this sampler runs ahead by the prefetch.
    """

    def __init__(self, order: EpochOrder, start: int, stop: int, positions: slice, device: torch.device | str) -> None:
        self.order, self.start, self.stop, self.positions, self.device = order, start, stop, positions, device

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield step_keys(self.order, step, self.positions, self.device)
