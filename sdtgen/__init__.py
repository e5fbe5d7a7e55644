"""sdtgen: class-conditional image generation with Spatial Decay Transformers.

The public entry points are imported lazily so that `import sdtgen` stays cheap for
the command line and for tools that only need a submodule.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["SDTDiT", "SDTPipeline", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "SDTDiT":
        from sdtgen.models.dit import SDTDiT

        return SDTDiT
    if name == "SDTPipeline":
        from sdtgen.pipeline import SDTPipeline

        return SDTPipeline
    raise AttributeError(f"module 'sdtgen' has no attribute {name!r}")
