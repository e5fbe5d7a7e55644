"""The quickstart notebook runs top to bottom, as a newcomer would run it.

It is executed with nbclient (what nbmake uses) in a fresh kernel started in notebooks/, the
way `pytest --nbmake notebooks/quickstart.ipynb` starts it. The notebook trains a short run in
process (about 1.5 minutes on a 2-core CPU); SDTGEN_QUICKSTART_RUN points that run at a temporary
folder, so the test trains and leaves runs/ untouched. Under .ci/run (SDTGEN_REQUIRE_MAIN_JOB),
where the main job has just trained runs/animals-sdt, the notebook takes its other path and
loads that run, as it does for a newcomer who ran the main job first.
The latent cache cache/animals-latents is shared with the other tools (made once, ~20 s).
Skip it with `pytest -m "not slow"`.
"""

import os
import time
from pathlib import Path

import pytest

from tiny_runs import main_job_run

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
TIMEOUT_S = 600  # the whole notebook, kernel start included


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    if os.environ.get("SDTGEN_REQUIRE_MAIN_JOB"):
        run_dir = main_job_run()  # fails if the main job left no run
    else:
        run_dir = tmp_path / "quickstart"
        monkeypatch.setenv("SDTGEN_QUICKSTART_RUN", str(run_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit notebooks/quickstart.ipynb with its outputs cleared"
    )
    deadline = time.monotonic() + TIMEOUT_S

    def time_left(cell) -> int:  # every cell gets what is left of the notebook's budget
        return max(1, int(deadline - time.monotonic()))

    client = nbclient.NotebookClient(
        notebook,
        timeout_func=time_left,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError (with the cell's traceback) or CellTimeoutError

    assert (run_dir / "quickstart_grid.png").is_file()
    assert (run_dir / "decay_giraffe.png").is_file()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "FID" in printed and "class accuracy" in printed
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
