"""Train an SDT-DiT (or a DiT baseline) on VAE latents.

    accelerate launch scripts/train_gen.py                                  # the built-in run
    accelerate launch scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml
    accelerate launch scripts/train_gen.py model.attention=vanilla train.max_steps=2000
    accelerate launch scripts/train_gen.py --config CONFIG train.resume=latest

Without --config it trains the built-in default: SDT on the `animals` silhouettes, sized
for a laptop CPU. Dotted key=value overrides come after the config file (see
sdtgen/config.py for every key). Works under plain `python` too (one process).
Errors are one line on stderr, exit status 2 (bad config or input) or 1 (the run failed);
SDTGEN_DEBUG=1 shows the traceback. docs/errors.md says how to recover.
The installed `sdtgen train` runs the same code (sdtgen/cli/train.py).
"""

import sys

from sdtgen.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train_gen.py"))
