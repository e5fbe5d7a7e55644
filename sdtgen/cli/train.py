"""`sdtgen train`: train a model from a config file and dotted key=value overrides.

    sdtgen train [--config FILE] [key=value ...]

is `accelerate launch -m sdtgen.cli.train [--config FILE] [key=value ...]`, run through
accelerate's own launch command, and so the same as `accelerate launch
scripts/train_gen.py ...`: the launcher reads the settings saved by `accelerate config`
(processes, GPUs, machines, mixed precision) and starts the processes; each runs `main`
below. scripts/train_gen.py is `main` too, so it also works under plain `python` (one
process).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence

from sdtgen.cli.errors import one_line_errors

DESCRIPTION = """\
Train an SDT-DiT (or a DiT baseline) on VAE latents. Without --config it trains the
built-in run: SDT on the animals silhouettes, sized for a laptop CPU. Dotted key=value
overrides come after the config file (sdtgen/config.py lists every key)."""
EPILOG = """\
launching:
  sdtgen train ARGS runs `accelerate launch -m sdtgen.cli.train ARGS` (through accelerate's
  launch command), the same as `accelerate launch scripts/train_gen.py ARGS`: processes,
  GPUs and machines are those saved by `accelerate config` (one process without a saved
  config). For launcher options on the command line (--multi_gpu, --num_processes N, ...)
  call accelerate launch directly, e.g.
    accelerate launch --multi_gpu --num_processes 8 -m sdtgen.cli.train --config CONFIG

errors are one line on stderr, exit status 2 (bad config or input) or 1 (the run failed);
SDTGEN_DEBUG=1 shows the traceback. docs/errors.md says how to recover.

examples:
  sdtgen train
  sdtgen train model.attention=vanilla train.max_steps=2000
  sdtgen train --config configs/imagenet256_sdt_xl2.yaml train.resume=latest
"""
MODULE = "sdtgen.cli.train"  # what each launched process runs
LAUNCH_LOGGER = "accelerate.commands.launch"
DEFAULTS_NOTE = "The following values were not passed to `accelerate launch`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options: a config file and overrides."""
    parser.add_argument("--config", metavar="FILE", help="a YAML file of configs/ (default: the built-in run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.max_steps=1000")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen train` on `subparsers`."""
    parser = subparsers.add_parser(
        "train",
        help="train a model (the same as `accelerate launch scripts/train_gen.py`)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=launch, parser=parser)


class _DropDefaultsNote(logging.Filter):
    """Drops accelerate's note that it used its defaults (no `accelerate config`): they are the ones wanted here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DEFAULTS_NOTE)


def launch(args: argparse.Namespace) -> None:
    """Run `accelerate launch -m sdtgen.cli.train ARGS`; exit with the launched processes' status."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = [*(["--config", args.config] if args.config else []), *args.overrides]
    launcher_log, note_filter = logging.getLogger(LAUNCH_LOGGER), _DropDefaultsNote()
    launcher_log.addFilter(note_filter)
    try:
        launch_command(launch_command_parser().parse_args(["-m", MODULE, *argv]))
    except subprocess.CalledProcessError as error:
        # The process has printed its one-line error; the launcher's traceback would only repeat it.
        raise SystemExit(error.returncode) from None
    except ChildFailedError as error:  # several processes (torchrun): the status of the first that failed
        raise SystemExit(error.get_first_failure()[1].exitcode or 1) from None
    finally:
        launcher_log.removeFilter(note_filter)


def main(argv: Sequence[str] | None = None, prog: str = "sdtgen train") -> int:
    """Train in this process (one of a launch's processes); returns 0, or exits 2 (bad input) or 1 (failure)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    from sdtgen.config import load_config  # after parsing, so that --help imports no torch
    from sdtgen.distributed import leave_process_group
    from sdtgen.training.trainer import train

    with one_line_errors(prog):
        train(load_config(args.config, args.overrides))
        leave_process_group()  # a run found already finished returns without accelerate's end_training
    return 0


if __name__ == "__main__":
    sys.exit(main())
