"""Train an SDT-DiT (or a DiT baseline) on VAE latents.

    accelerate launch scripts/train_gen.py                                  # the built-in run
    accelerate launch scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml
    accelerate launch scripts/train_gen.py model.attention=vanilla train.max_steps=2000
    accelerate launch scripts/train_gen.py --config CONFIG train.resume=latest

Without --config it trains the built-in default: SDT on the `animals` silhouettes, sized
for a laptop CPU. Dotted key=value overrides come after the config file (see
sdtgen/training/config.py for every key). Works under plain `python` too (one process).
Errors are one line on stderr, exit status 2 (bad config or input) or 1 (the run failed);
SDTGEN_DEBUG=1 shows the traceback. docs/errors.md says how to recover.
"""

import argparse
import sys

from sdtgen.errors import one_line_errors
from sdtgen.training.config import load_config
from sdtgen.training.trainer import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML file of configs/ (default: the built-in run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.max_steps=1000")
    args = parser.parse_args()
    with one_line_errors("train_gen.py"):
        train(load_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
