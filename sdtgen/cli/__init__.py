"""The `sdtgen` command: one module per subcommand, thin over the library.

Each module of COMMANDS (sdtgen/cli/<module>.py) declares its subcommand with
`add_parser(subparsers)` and runs it with `run(args)`. Building the parser imports only
argparse and the light part of those modules: torch, diffusers and the library are
imported inside `run`, so `sdtgen --help` and `sdtgen <command> --help` start fast. Every
flag name lives in this package; the library raises plain ValueError / OSError, and the
commands name their flags where a message needs one.

Errors become one line `sdtgen <command>: error: ...` and exit code 2 (bad input) or 1 (a
failure while running); see sdtgen/cli/errors.py. SDTGEN_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence

from sdtgen.cli.errors import one_line_errors
from sdtgen.distributed import leave_process_group

# The modules of the subcommands, in the order `sdtgen --help` lists them.
COMMANDS = ("train", "sample", "export", "eval", "inspect", "convert", "extract_latents")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (argparse adds the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `sdtgen` parser with the subcommand of every module in COMMANDS."""
    parser = _Parser(prog="sdtgen", description="Class-conditional image generation with Spatial Decay Transformers.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"sdtgen.cli.{name}").add_parser(subparsers)
    return parser


class _Formatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.prog}: {level}{record.getMessage()}"


@contextlib.contextmanager
def _library_messages_to_stderr(prog: str) -> Iterator[None]:
    """Show the library's info and warnings on stderr, prefixed by the subcommand, for one run."""
    package_logger = logging.getLogger("sdtgen")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdtgen` console script; returns 0, or exits 2 (bad input) or 1 (failure)."""
    args = build_parser().parse_args(argv)
    with _library_messages_to_stderr(args.parser.prog), one_line_errors(args.parser.prog):
        args.run(args)
        leave_process_group()  # on success only: a failed process leaving could stall the others' collectives
    return 0
