"""`python -m bench`: see `bench.cli`."""

import sys

from bench.cli import main

try:
    sys.exit(main())
except KeyboardInterrupt:
    # `main` answers an interrupt during the run with 130; one that lands just outside it (while
    # starting or exiting) means the same. Every child dies with us (parent-death signal).
    sys.exit(130)
