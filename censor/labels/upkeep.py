"""The session store's housekeeping on a shared disk: its quotas, how much a folder takes, and the
sweep that removes what a kill or an idle visitor leaves behind (run at start and periodically)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TEMP_PREFIX = ".import-"  # a session import unpacks here, then renames into place


@dataclass(frozen=True)
class Quotas:
    """What the store refuses beyond (None: unbounded). The studio's values are in studio.common."""
    max_items: int | None = None  # images per session
    max_round: int | None = None  # labelling round numbers
    session_bytes: int | None = None  # one session's images and folder
    total_bytes: int | None = None  # the whole data directory
    max_pending: int = 256  # page-view sessions kept in memory before the first label


def tree_bytes(path: str | Path | None) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist); links are not followed."""
    if path is None or not os.path.exists(path):
        return 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for top, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(top, f)).st_size
            except OSError:  # removed while we walked
                pass
    return total


def sweep_root(root: Path, orphan: Callable[[str], bool], temp_age_s: float) -> tuple[int, int]:
    """Remove the folders under ``root`` that ``orphan(name)`` calls orphaned, and temporary import
    folders (``TEMP_PREFIX``, or ``tmp*`` from older versions) untouched for ``temp_age_s`` seconds."""
    leftovers = temps = 0
    now = time.time()
    for entry in list(os.scandir(root)):
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith((TEMP_PREFIX, "tmp")):
            if now - entry.stat(follow_symlinks=False).st_mtime >= temp_age_s:
                shutil.rmtree(entry.path, ignore_errors=True)
                temps += 1
        elif orphan(entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)
            leftovers += 1
    return leftovers, temps
