"""One background thread that runs keyed requests one at a time, merging the requests that wait.

The backend uses it twice: training runs (key: the project) and queue reprioritisations (key: the project).
Both want the same discipline: a request never blocks its caller (a webhook must answer within Label
Studio's 1 s); a request for a key that is already waiting merges into the waiting one; a request for a
key whose run is going waits as exactly one follow-up run, which every later request merges into (the
follow-up starts after the run and so sees everything that happened meanwhile); keys are served first come,
first served; runs never overlap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Request = TypeVar("Request")

QUEUED = "queued"
COALESCED = "coalesced"


class CoalescingWorker(Generic[Request]):
    """Runs ``run(key, request)`` on one daemon thread, started on the first request.

    ``merge(waiting, new)`` folds a new request into the one already waiting for the same key. A ``run``
    that raises is logged and the worker carries on with the next key.
    """

    def __init__(
        self,
        run: Callable[[str, Request], object],
        merge: Callable[[Request, Request], Request],
        *,
        name: str,
    ) -> None:
        self.name = name
        self._run = run
        self._merge = merge
        self._pending: dict[str, Request] = {}
        self._running: str | None = None
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, key: str, request: Request) -> str:
        """Ask for a run: "queued", or "coalesced" when merged into the request waiting for ``key``."""
        with self._condition:
            if self._stopping:
                raise RuntimeError(f"the {self.name} worker is stopped and takes no more requests")
            if key in self._pending:
                self._pending[key] = self._merge(self._pending[key], request)
                outcome = COALESCED
            else:
                self._pending[key] = request
                outcome = QUEUED
            self._ensure_thread()
            self._condition.notify_all()
        return outcome

    def pending(self) -> list[tuple[str, Request]]:
        """The waiting requests, in the order they will run."""
        with self._condition:
            return list(self._pending.items())

    def is_busy(self, key: str | None = None) -> bool:
        """Whether anything (or anything for ``key``) is running or waiting."""
        with self._condition:
            return self._busy(key)

    def wait_until_idle(self, timeout: float | None = None, key: str | None = None) -> bool:
        """Block until nothing (or nothing for ``key``) is running or waiting; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._busy(key), timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Let the current run finish, drop the waiting requests, end the thread."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _busy(self, key: str | None) -> bool:
        if key is None:
            return self._running is not None or bool(self._pending)
        return self._running == key or key in self._pending

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                key = next(iter(self._pending))
                request = self._pending.pop(key)
                self._running = key
            try:
                self._run(key, request)
            except Exception:  # one failed run must not end the thread that serves every later one
                logger.exception("%s: the run for %s failed", self.name, key)
            finally:
                with self._condition:
                    self._running = None
                    self._condition.notify_all()
