"""One exception type for every user-facing mistake.

The CLI turns a ``CensorError`` into a single ``error: ...`` line and a non-zero exit, so a bad
path or a bad number never shows a traceback wall; anything else is a bug and keeps its traceback.
The studio shows the same messages to the public, so they name a folder or file by its last
component (``shown``), never by the server's absolute path: a CLI user still learns which one.
"""

from __future__ import annotations

import re
from pathlib import Path

# an absolute path inside a third-party message (not the "//" of a URL): /a/b/c -> c
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])(?:/[^\s/'\"`,;:()\[\]]+)+/?")


class CensorError(Exception):
    """A problem with the user's input or files, explained in one sentence."""


def shown(path) -> str:
    """A folder or file as a message names it: its last component, quoted."""
    p = Path(str(path))
    return repr(p.name or p.resolve().name or str(path))


def hide_paths(text: str) -> str:
    """A library's error text (diffusers, torch, safetensors) with every absolute path cut to its name."""
    return _ABSOLUTE.sub(lambda m: Path(m.group().rstrip("/")).name or "/", text)


def source_name(source) -> str:
    """A model source as bundles and messages record it: a hub id as is, a local folder by its name."""
    s = str(source)
    p = Path(s)
    local = p.is_absolute() or s.startswith((".", "~")) or p.exists()
    return (p.expanduser().resolve().name or s) if local else s


class JobCancelled(CensorError):
    """A job the person stopped (Cancel, or a closed tab), raised from its progress callback at the next
    check: the loop unwinds before anything of the run is written."""

    def __init__(self, message: str = "cancelled; nothing was saved from this run"):
        super().__init__(message)
