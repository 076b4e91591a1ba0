"""Background training: one worker thread per process, so /webhook answers at once and runs never overlap.

Requests for a project that is already waiting merge into that waiting request; requests that arrive while
the project trains queue exactly one follow-up run (which sees every annotation made meanwhile, because a
run reads the project's labelled tasks when it starts). Projects are served first come, first served.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RECENT_RUNS = 20


@dataclass(frozen=True)
class TrainingRequest:
    project_id: str
    reasons: tuple[str, ...]
    from_scratch: bool = False

    def merged(self, other: TrainingRequest) -> TrainingRequest:
        reasons = self.reasons + tuple(r for r in other.reasons if r not in self.reasons)
        return TrainingRequest(self.project_id, reasons, self.from_scratch or other.from_scratch)


@dataclass(frozen=True)
class TrainingOutcome:
    """What a successful run produced: the newly served version and its numbers (loss, mIoU, sizes)."""

    model_version: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingRun:
    project_id: str
    reasons: tuple[str, ...]
    from_scratch: bool
    started_at: float
    finished_at: float | None = None
    status: str = "running"  # running | succeeded | failed
    model_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["reasons"] = list(self.reasons)
        return record


TrainFunction = Callable[[TrainingRequest], TrainingOutcome]
TrainedHook = Callable[[TrainingRun], None]
RunListener = Callable[[TrainingRun], None]


class TrainingWorker:
    """Runs ``train(request)`` on one daemon thread, started on the first request.

    ``train`` must leave the served model untouched when it raises: the worker only records the failure.
    After a successful run every hook added with :meth:`add_on_trained` is called (in the worker thread,
    before the next run starts); a failing hook is logged and does not fail the run. ``on_finished`` sees
    every finished run, succeeded or failed (the backend persists them).
    """

    def __init__(self, train: TrainFunction, *, on_finished: RunListener | None = None) -> None:
        self._train = train
        self._on_finished = on_finished
        self._hooks: list[TrainedHook] = []
        self._pending: dict[str, TrainingRequest] = {}
        self._running: TrainingRun | None = None
        self._recent: list[TrainingRun] = []
        self._counts = {"requested": 0, "coalesced": 0, "succeeded": 0, "failed": 0}
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add_on_trained(self, hook: TrainedHook) -> None:
        with self._condition:
            self._hooks.append(hook)

    def submit(self, project_id: str, reason: str, *, from_scratch: bool = False) -> str:
        """Ask for a run; "queued", or "coalesced" when merged into a run already waiting. Never blocks."""
        request = TrainingRequest(project_id, (reason,), from_scratch)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the training worker is stopped")
            self._counts["requested"] += 1
            waiting = self._pending.get(project_id)
            if waiting is not None:
                self._pending[project_id] = waiting.merged(request)
                self._counts["coalesced"] += 1
                outcome = "coalesced"
            else:
                self._pending[project_id] = request
                outcome = "queued"
            self._ensure_thread()
            self._condition.notify_all()
        logger.info("training for project %s %s (%s)", project_id, outcome, reason)
        return outcome

    def is_busy(self, project_id: str | None = None) -> bool:
        with self._condition:
            return self._busy(project_id)

    def _busy(self, project_id: str | None) -> bool:
        if project_id is None:
            return self._running is not None or bool(self._pending)
        running = self._running is not None and self._running.project_id == project_id
        return running or project_id in self._pending

    def wait_until_idle(self, timeout: float | None = None, project_id: str | None = None) -> bool:
        """Block until nothing (or nothing of ``project_id``) is running or waiting; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._busy(project_id), timeout)

    def snapshot(self) -> dict[str, Any]:
        """The worker's state for /metrics."""
        with self._condition:
            return {
                "running": self._running.as_dict() if self._running else None,
                "pending": [
                    {"project_id": r.project_id, "reasons": list(r.reasons), "from_scratch": r.from_scratch}
                    for r in self._pending.values()
                ],
                "counts": dict(self._counts),
                "recent_runs": [run.as_dict() for run in self._recent],
            }

    def stop(self, timeout: float | None = None) -> None:
        """Let the current run finish, drop waiting requests, end the thread."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="decomp-training", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                project_id = next(iter(self._pending))
                request = self._pending.pop(project_id)
                self._running = TrainingRun(project_id, request.reasons, request.from_scratch, time.time())
                run = self._running
            self._execute(request, run)
            with self._condition:
                self._running = None
                self._recent = [*self._recent, run][-RECENT_RUNS:]
                self._counts[run.status] += 1
                self._condition.notify_all()

    def _execute(self, request: TrainingRequest, run: TrainingRun) -> None:
        try:
            outcome = self._train(request)
        except Exception as error:  # any failure must leave the worker alive
            run.status, run.error = "failed", f"{type(error).__name__}: {error}"
            logger.error(
                "training for project %s failed; the served model is unchanged\n%s",
                request.project_id,
                traceback.format_exc(),
            )
        else:
            run.status, run.model_version, run.metrics = "succeeded", outcome.model_version, outcome.metrics
            logger.info("project %s serves %s: %s", run.project_id, run.model_version, run.metrics)
        run.finished_at = time.time()
        self._notify(run)

    def _notify(self, run: TrainingRun) -> None:
        listeners = [self._on_finished] if self._on_finished else []
        if run.status == "succeeded":
            with self._condition:
                listeners += self._hooks
        for listener in listeners:
            try:
                listener(run)
            except Exception:  # a broken hook must not break training
                logger.exception("after-training hook %r failed for project %s", listener, run.project_id)
