"""The harness is a top-level package of the checkout (`python -m benchmarks`), not installed: make it
importable from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
