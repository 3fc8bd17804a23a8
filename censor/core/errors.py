"""One exception type for every user-facing mistake.

The CLI turns a ``CensorError`` into a single ``error: ...`` line and a non-zero exit, so a bad
path or a bad number never shows a traceback wall; anything else is a bug and keeps its traceback.
"""


class CensorError(Exception):
    """A problem with the user's input or files, explained in one sentence."""
