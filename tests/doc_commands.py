"""Running the commands that README.md and docs/*.md show, as a reader would type them.

Shared by tests/test_readme.py and tests/test_docs.py: reading the commands out of a
markdown file, turning one into the shell line that runs here (its stand-in replacements
applied, {names} filled in) and running that in a scratch folder, offline.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tiny_runs import REPO, main_job_run, random_model, write_run

README = REPO / "README.md"
COMMAND_PREFIXES = ("sdtgen ", "accelerate ", "python ", "python3 ")
EIGHT_GPUS = ("--num_processes 8", "--num_processes 2")  # two CPU processes (gloo) stand in for 8 GPUs


def markdown_commands(text: str, python_blocks: bool = True) -> list[str]:
    """The commands of a markdown text, one string each, in order and without repeats.

    Lines of ```bash blocks, joined at `\\`, comments dropped, whitespace collapsed; inline
    `sdtgen ...` / `accelerate ...` / `python ...` spans of the prose; and, if
    `python_blocks`, each ```python block as "python:" + its first line.
    """
    commands: list[str] = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if language == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
                if line:
                    commands.append(line)
        elif language == "python" and python_blocks:
            commands.append("python:" + body.splitlines()[0])
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        # "..." marks a fragment; a bare name such as `sdtgen eval` is not a command line either.
        if span.startswith(COMMAND_PREFIXES) and "..." not in span and len(span.split()) >= 3:
            commands.append(" ".join(span.split()))
    return list(dict.fromkeys(commands))


def python_block(text: str, first_line: str) -> str:
    for body in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        if body.splitlines()[0] == first_line:
            return body
    raise AssertionError(f"no Python block starts with {first_line!r}")


def shell_command(command: str, replacements=(), source: Path = README, **values) -> str:
    """`command` as it runs here: the replacements applied, {names} filled in. A "python:"
    command is the Python block of `source` that starts with the rest of it."""
    is_python_block = command.startswith("python:")
    text = python_block(source.read_text(), command[len("python:") :]) if is_python_block else command
    for old, new in replacements:
        assert old in text, f"the stand-in for {old!r} no longer matches the command {command!r}"
        text = text.replace(old, new.format(**values))
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(text)}" if is_python_block else text


def run(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"command failed ({result.returncode}): {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def scratch_env(tmp: Path) -> dict:
    """This interpreter's tools first on PATH, no network, caches inside the scratch folder."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf"),
        TORCH_HOME=str(tmp / "torch"),
        SDTGEN_CACHE_DIR=str(tmp / "sdtgen-cache"),
        ACCELERATE_USE_CPU="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def link_repo_folders(cwd: Path, *names: str) -> None:
    """The commands run from the repository root; link the folders they read."""
    for name in names:
        (REPO / name).mkdir(parents=True, exist_ok=True)
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).symlink_to(REPO / name, target_is_directory=True)


def built_in_run(tmp: Path) -> Path:
    """The main job's run when .ci/run has made one, else a tiny random flow model in the same
    layout: the commands that read runs/animals-sdt do not care how good it is."""
    return main_job_run() or write_run(tmp / "tiny-run", random_model("flow", input_size=16), objective="flow")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_cpu_processes() -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` of two real CPU processes (gloo) on a free port, up to the script; and its environment.

    ACCELERATE_USE_CPU with --multi_gpu is what runs two processes on CPU (plain --cpu runs one).
    """
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    return launch, {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
