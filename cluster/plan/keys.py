"""Content keys: a short hash of everything that determines a cell's output.

JSON with sorted keys, so dicts hash the same whatever their order; `versions` reads installed
package versions from metadata (no imports), so a tool upgrade changes exactly the keys of the
cells that tool computes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
from functools import cache

KEY_LEN = 16


def content_key(*parts: object) -> str:
    """A stable 16-hex-digit hash of the parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LEN]


@cache
def version(name: str) -> str:
    """The installed version of a distribution, or 'absent'."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"


def versions(names: tuple[str, ...]) -> dict[str, str]:
    """name -> installed version (or 'absent') for each name."""
    return {n: version(n) for n in names}
