"""Shared fixtures and settings of the test suite.

The course tooling in tools/ (the book, the benchmarks) is not part of the installed package;
its tests import it from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
