"""DPM-Solver++ (multistep) for flow models, on the time grid they were trained with.

A flow model here predicts the velocity noise - x0 of x_t = (1 - t) x0 + t noise and takes the
timestep 1000 t (sdtgen.diffusion.flow). diffusers' DPMSolverMultistepScheduler solves this ODE
with `use_flow_sigmas=True, prediction_type="flow_prediction"`, but its grid starts at t = 0.999
instead of 1 and hands the model `int(1000 t)` (t = 0.8991 is called as 899): the model is asked
for the velocity at other times than the solver steps through, an error more steps do not
remove. This subclass keeps diffusers' solver and replaces the grid alone.
"""

from __future__ import annotations

import torch

# A saved pipeline records this class by its module, and DiffusionPipeline.from_pretrained finds how to
# load it by looking diffusers' base classes up in that module: SchedulerMixin must be named here.
from diffusers import DPMSolverMultistepScheduler, SchedulerMixin  # noqa: F401


class FlowMatchDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ on t_k = 1 - k / N, k = 0..N, with the model called at 1000 t_k, unrounded.

    Build it with `use_flow_sigmas=True, prediction_type="flow_prediction"` (as make_scheduler
    does); the grid is uniform in t whatever diffusers' sigma-spacing options say. Its name
    starts with FlowMatch, as diffusers' flow-matching schedulers do, which is how a scheduler's
    objective is told (sampling.objective_of).
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The grid of `num_inference_steps` equal steps from t = 1 to t = 0; resets the solver's history."""
        super().set_timesteps(num_inference_steps, device=device)
        # Starting at t = 1 (alpha_t = 0) makes diffusers' log-SNR step h infinite there: the first
        # step is exactly an Euler step and the second drops to first order (its D1 term is 0).
        t = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        self.sigmas = t
        self.timesteps = (t[:-1] * self.config.num_train_timesteps).to(device)
