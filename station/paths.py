"""Where the station's files live.

Relative paths in recipes resolve against the station home: `$STATION_HOME` when set, else the
current directory. The home holds `recipes/`, `calibration/` and `data/`.
"""

from __future__ import annotations

import os
from pathlib import Path


def station_home() -> Path:
    return Path(os.environ.get("STATION_HOME") or Path.cwd()).resolve()


def resolve(path: str | Path, home: Path | None = None) -> Path:
    """Absolute path for `path`, relative ones taken from the station home."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (home or station_home()) / p
