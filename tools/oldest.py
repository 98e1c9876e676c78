"""Print pip constraints that pin every dependency of pyproject.toml to its lower bound.

    python tools/oldest.py > .oldest-constraints.txt     # what `make test-oldest` does

Each `name>=X` of the package's dependencies (and of its test and book extras) becomes
`name==X`, so that the suite runs against the oldest versions we claim to support (torch's
bound is the 2.13.0 on this machine's disk). Requirements with an environment marker or
without a lower bound are left to pip.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOWER = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?$")


def lower_bounds(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """{name: lowest allowed version} of the dependencies and the test and book extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    out = {}
    for req in project["dependencies"] + extras.get("test", []) + extras.get("book", []):
        match = LOWER.match(req.split("#")[0]) if ";" not in req else None
        if match:
            name, version = match.groups()
            out[name.lower()] = max(out.get(name.lower(), version), version, key=_key)
    return out


def _key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


# Where an extra's own bound needs more than the package's bound, the extra wins in this run
# (the package alone passed the suite at its bound: make test-oldest on 2026-12-07, with
# transformers 4.52, failed only where transformers itself was compared).
EXTRAS_NEED = {"safetensors": "0.8.0"}  # transformers 5.25, the test and book extras' bound


def main() -> int:
    for name, version in sorted({**lower_bounds(), **EXTRAS_NEED}.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
