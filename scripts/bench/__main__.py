"""`python -m scripts.bench`: the parent run, or one measurement side with `--child` (see scripts/bench/cli.py)."""

from scripts.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
