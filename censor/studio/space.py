"""What a shared public Space needs beyond one person's studio: a browser-state key that survives a
restart, and a gate that lets each browser run one heavy job at a time, each under a deadline.

The gate's two halves: ``reserve`` runs when Gradio puts a job in its queue (the event's
``validator``), so a flood from one browser is refused before it takes queue places that other
people's clicks need; ``job`` runs inside the job, holds the place while it works and stops it
at the deadline or when its browser cancels it (cooperatively, from the job's progress callback:
Gradio's own ``cancels=`` only stops waiting for a worker thread, which runs on).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from censor.core.errors import CensorError, JobCancelled
from censor.core.progress import reporter
from censor.studio.common import (
    JOB_TIME_LIMIT_S,
    JOBS_PER_CLIENT,
    MIN_SECRET_CHARS,
    QUEUED_EXPIRY_S,
    SECRET_ENV,
    SECRET_FILE,
)


def browser_secret(data_dir: str | Path, environ=os.environ) -> str:
    """The key Gradio encrypts each browser's stored session id with. A random key per launch (Gradio's
    default) makes every browser lose its session at a restart; this one is ``$CENSOR_SECRET`` or is made
    once into the data folder (mode 0600) and read back on every later launch."""
    if environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV]
        if len(secret) < MIN_SECRET_CHARS:
            raise CensorError(f"{SECRET_ENV} must hold at least {MIN_SECRET_CHARS} characters")
        return secret
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    if not path.exists():
        tmp = folder / f".{SECRET_FILE}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites: two launches at once agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise CensorError(f"the browser secret in the data folder is damaged; delete {SECRET_FILE} there to make a new one")
    return secret


class _Job:
    """One running job: its deadline and the flag a Cancel sets (its own, so none outlives the job)."""

    def __init__(self, deadline: float):
        self.deadline, self.cancelled = deadline, threading.Event()


class JobGate:
    """At most ``per_client`` heavy jobs queued or running per browser (Gradio's session hash), each
    stopped after ``time_limit`` seconds or when its browser asks (``cancel``)."""

    def __init__(self, per_client: int = JOBS_PER_CLIENT, time_limit: float = JOB_TIME_LIMIT_S,
                 queued_expiry: float = QUEUED_EXPIRY_S, clock: Callable[[], float] = time.monotonic):
        self.per_client, self.time_limit, self.queued_expiry, self.clock = per_client, time_limit, queued_expiry, clock
        self._lock = threading.Lock()
        self._queued: dict[str, list[float]] = {}  # client -> when each of its queued jobs was reserved
        self._dropped: dict[str, list[float]] = {}  # client -> queued places cancelled before their job started
        self._running: dict[str, list[_Job]] = {}

    def _fresh(self, table: dict[str, list[float]], client: str) -> list[float]:
        now = self.clock()
        table[client] = [t for t in table.get(client, []) if now - t < self.queued_expiry]
        return table[client]

    def _busy(self, client: str) -> int:
        return len(self._fresh(self._queued, client)) + len(self._running.get(client, []))

    def _refuse(self) -> CensorError:
        return CensorError("you already have a job queued or running; wait for it to finish, then try again")

    def reserve(self, client: str | None) -> None:
        """A place for one more of ``client``'s jobs in the queue, or a CensorError when it has its share."""
        with self._lock:
            if self._busy(client or "") >= self.per_client:
                raise self._refuse()
            self._queued.setdefault(client or "", []).append(self.clock())

    def cancel(self, client: str | None) -> bool:
        """Stop ``client``'s jobs: a running one raises ``JobCancelled`` at its next progress call, a queued
        one is refused when it starts; their places are free at once for the next job. Safe from any
        thread (a Cancel button's or a closed tab's event). Returns whether anything was queued or running."""
        key = client or ""
        with self._lock:
            running, queued = self._running.get(key, []), self._fresh(self._queued, key)
            for job in running:
                job.cancelled.set()
            self._dropped.setdefault(key, []).extend(queued)
            self._queued.pop(key, None)
            return bool(running or queued)

    @contextmanager
    def job(self, client: str | None, progress: Callable[..., None] | None = None
            ) -> Iterator[Callable[..., None]]:
        """Run one heavy job for ``client``: its reserved place becomes a running one (a job that skipped
        the queue's check is checked here), and the callback it yields, ``tick(fraction, desc=None)``,
        reports progress (the text too, when ``progress`` takes it) and raises a CensorError once the job
        has run past the time limit, or ``JobCancelled`` once it was cancelled."""
        key = client or ""
        with self._lock:
            queued = self._fresh(self._queued, key)
            if queued:
                queued.pop(0)
            elif self._fresh(self._dropped, key):  # its place was cancelled while it waited in the queue
                self._dropped[key].pop(0)
                raise JobCancelled()
            elif self._busy(key) >= self.per_client:
                raise self._refuse()
            job = _Job(self.clock() + self.time_limit)
            self._running.setdefault(key, []).append(job)
        report = reporter(progress)

        def tick(fraction: float, desc: str | None = None) -> None:
            if job.cancelled.is_set():
                raise JobCancelled()
            if self.clock() > job.deadline:
                raise CensorError(f"this job ran past the time limit of {self.time_limit / 60:g} minutes and was "
                                  "stopped; try fewer images or steps")
            if report is not None:
                report(fraction, desc=desc)
        try:
            yield tick
        finally:
            with self._lock:
                self._running[key].remove(job)
                for table in (self._running, self._queued, self._dropped):
                    if not table.get(key):
                        table.pop(key, None)
