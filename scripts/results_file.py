"""A study's results file: read whole, replaced whole, so that an interrupted study resumes from it.

The studies (scripts/ablation.py, sampler_curve.py, sweep_recipe.py) rewrite theirs after every
measurement, each in its own JSON layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(path: Path, empty: Any) -> Any:
    """What a previous invocation saved in `path`, else `empty`."""
    return json.loads(path.read_text()) if path.is_file() else empty


def write_results(path: Path, text: str) -> None:
    """`text` written aside, then renamed over `path`: an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
