"""`python -m runtime ...` entry point (see runtime.cli)."""

import sys

from runtime.cli import main

sys.exit(main())
