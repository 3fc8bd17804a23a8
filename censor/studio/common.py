"""What every studio tab shares: the server-side bounds a person's numbers are held to, the crash
hygiene around a job, and how images are shown. No UI code and no method logic here."""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import os
import re
import string

import numpy as np
from PIL import Image

from censor.core.errors import CensorError
from censor.core.settings import STUDIO_LIMITS
from censor.diffusion.models import DiffusionModel

MAX_GALLERY = 256
DISPLAY_SIZE = 112
PAGE_SIZE = 25
LABEL_TARGET = 100  # images a three-minute session views (the paper's budget); the counter shows it
POOL_PER_SESSION = 200
LIMITS = STUDIO_LIMITS  # server-side bounds of every number a person sets; the UI's sliders read the same
# Reward training keeps encoder features of every label (~0.4 MB each), so the label count is bounded too.
MAX_TRAIN_LABELS = 1000
# Below these the training readout warns that the reward (and its held-out figure) rests on too little:
# judged labels in all, and of each class (malign, benign).
MIN_TRUSTED_LABELS, MIN_TRUSTED_CLASS = 20, 5
# Censored galleries keep this many baseline galleries (per model, seeds and steps) and their judgements.
BASELINE_CACHE_SIZE = 8
# What one person (or one uploaded bundle) may hold on the shared Space: items are what ranking and
# training scale with; bytes are what fills the persistent disk. Over a limit -> a one-line refusal.
MAX_SESSION_ITEMS = 2000
MAX_ROUND = 10_000  # labelling rounds; a bundle's 2**63-1 would overflow SQLite on the next round
MAX_SESSION_BYTES = 64 * 1024 * 1024  # a session's images, reward, shares and comparison runs
MAX_TOTAL_BYTES = int(float(os.environ.get("CENSOR_MAX_DISK_GB", "20")) * 1024 ** 3)  # the whole data dir
SESSION_IDLE_DAYS = 30  # a session untouched this long is deleted by the sweep (at start, then hourly)
SWEEP_EVERY_S = 3600
# Informative-first ranking: candidates ranked per call (greedy coverage is cubic in them) and the
# labelled images it measures coverage against; per-session caches kept for this many sessions.
RANK_CANDIDATES = 300
RANK_REFERENCE = 1000
RANKER_CACHE_SESSIONS = 8
MAX_PENDING_SESSIONS = 256  # page views not yet labelled, kept in memory only (~160 kB each)
# A shared public Space: one heavy job (training, a gallery, a reproduction, a comparison) per browser at
# a time, each stopped after JOB_TIME_LIMIT_S; a queued job that never started stops counting after
# QUEUED_EXPIRY_S (its browser went away and Gradio dropped it).
JOBS_PER_CLIENT = 1
JOB_TIME_LIMIT_S = 15 * 60
QUEUED_EXPIRY_S = 120
# Gradio's uploads and outputs in its cache: swept every hour, deleted once a day old (Blocks(delete_cache=))
DELETE_CACHE = (3600, 86400)
# The key that signs each browser's stored session id: $CENSOR_SECRET on a Space, else made once in the data folder
SECRET_ENV, SECRET_FILE, MIN_SECRET_CHARS = "CENSOR_SECRET", "browser_secret", 16
MAX_TEXT = 200  # the longest string an uploaded manifest may hold in any field
SHOWN_VALUE = 40  # how much of a refused value a message echoes (escaped)
_MARKDOWN = str.maketrans({c: "\\" + c for c in string.punctuation if c not in "&<>;"})


def inert(text) -> str:
    """``text`` as literal characters in Markdown and HTML: no link, heading, tag or autolink can form."""
    flat = " ".join(str(text).split())
    return html.escape(flat, quote=False).translate(_MARKDOWN)


def echo(value) -> str:
    """A refused value as a message (a toast, a Markdown line) may quote it: short, letters, digits and
    ``.+-`` only, so it reads the same and forms nothing in any renderer."""
    r = re.sub(r"[^\w .+-]", "?", repr(value))
    return r if len(r) <= SHOWN_VALUE else r[:SHOWN_VALUE] + "…"


def check_range(name: str, value: float, bounds: tuple | None = None) -> float:
    """``value`` when it is a real number within ``bounds`` (default ``LIMITS[name]``), else a CensorError."""
    lo, hi = bounds or LIMITS[name]
    # not a number (None, a string from a hand-made request or a manifest), NaN or inf: refused
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not lo <= value <= hi:
        raise CensorError(f"{name} must be between {lo} and {hi}, got {echo(value)}")
    return value


def reported(what: str):
    """Crash hygiene: an unexpected failure inside a job becomes a one-line CensorError, which the UI
    shows (Gradio hides other exceptions' messages from users); the traceback goes to the log."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except CensorError:
                raise
            except Exception as e:
                logging.getLogger(__name__).exception("%s failed", what)
                raise CensorError(f"{what} failed ({type(e).__name__}); your labels are kept, try again") from e
        return run
    return wrap


def png_data_uri(image: np.ndarray) -> str:
    """An image inline in the label grid's HTML (no file to serve)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def display(images: np.ndarray) -> list[Image.Image]:
    """Images at the size the galleries show them, pixels kept sharp (nearest neighbour)."""
    return [Image.fromarray(im).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST) for im in images]


def conditioning_info(model: DiffusionModel) -> dict | None:
    """The prompt or class (and CFG scale) a gallery was sampled with: part of what reproduces it."""
    c = model.conditioning
    return None if c is None else dict(kind=c.kind, label=c.label, scale=c.scale)
