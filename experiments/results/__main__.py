"""``python -m experiments.results`` (from the repository root)."""

import sys

from experiments.results.runner import main

sys.exit(main())
