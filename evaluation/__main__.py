"""`python -m evaluation run ...`: closed-loop episodes on the simulated task (see evaluation/episodes.py)."""

import sys

from evaluation.episodes import main

sys.exit(main())
