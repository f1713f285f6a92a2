"""`python -m gpunn` runs the `gpunn` command."""

import sys

from gpunn.cli import main

sys.exit(main())
