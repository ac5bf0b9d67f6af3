"""`python -m scripts.bench_gpu` (or `python scripts/bench_gpu` on a bare GPU machine); the flags are in cli.py."""

import sys
from pathlib import Path

if not __package__:  # run as a folder: import the package from the repository root, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from scripts.bench_gpu.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
