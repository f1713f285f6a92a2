"""``python -m gpunn.bench [options]``: the same as ``gpunn bench [options]``."""

import sys

from gpunn.bench.cli import main

sys.exit(main())
