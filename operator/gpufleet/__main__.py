"""`python -m gpufleet` is the same command line as the `gpufleet` script."""

import sys

from gpufleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
