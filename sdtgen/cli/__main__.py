"""`python -m sdtgen.cli ...` (and `accelerate launch -m sdtgen.cli ...`): the `sdtgen` command."""

import sys

from sdtgen.cli import main

sys.exit(main())
