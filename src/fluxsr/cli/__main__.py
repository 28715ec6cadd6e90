"""`python -m fluxsr.cli ...` runs the command line."""

import sys

from .commands import main

sys.exit(main())
