"""Build a training objective by name."""

from typing import Any

from sdtgen.diffusion.ddpm import DDPMObjective
from sdtgen.diffusion.flow import FlowObjective

Objective = DDPMObjective | FlowObjective

OBJECTIVES: dict[str, type[DDPMObjective] | type[FlowObjective]] = {
    "ddpm": DDPMObjective,
    "flow": FlowObjective,
}


def make_objective(name: str, **kwargs: Any) -> Objective:
    """Return the objective called ``name`` (``ddpm`` or ``flow``) built with ``kwargs``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
