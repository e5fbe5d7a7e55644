"""Training objectives (DDPM with learned sigma, flow matching) and sampling with diffusers schedulers (sampling.py)."""

from sdtgen.diffusion.ddpm import DDPMObjective
from sdtgen.diffusion.flow import FlowObjective
from sdtgen.diffusion.objective import Objective, make_objective

__all__ = ["DDPMObjective", "FlowObjective", "Objective", "make_objective"]
