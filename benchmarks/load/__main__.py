"""`python -m benchmarks.load ...`, the same as `python -m benchmarks load ...` without importing the lab
harness (the form the load Job's image runs)."""

import sys

from .cli import main

sys.exit(main())
