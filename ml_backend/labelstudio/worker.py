"""Background training: one worker thread per process, so /webhook answers at once and runs never overlap.

Requests for a project that is already waiting merge into that waiting request; requests that arrive while
the project trains queue exactly one follow-up run (which sees every annotation made meanwhile, because a
run reads the project's labelled tasks when it starts). Projects are served first come, first served. The
queueing itself is :class:`ml_backend.background.CoalescingWorker`, shared with the queue updater.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml_backend.background import COALESCED, CoalescingWorker

if TYPE_CHECKING:
    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.labelstudio.state import ProjectState

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
    """Runs ``train(request)`` on one background thread (a :class:`~ml_backend.background.CoalescingWorker`
    keyed by project), so that /webhook answers at once and runs never overlap.

    ``train`` must leave the served model untouched when it raises: the worker only records the failure.
    After a successful run every hook added with :meth:`add_on_trained` is called (in the worker thread,
    before the next run starts); a failing hook is logged and does not fail the run. ``on_finished`` sees
    every finished run, succeeded or failed (the backend persists them).
    """

    def __init__(self, train: TrainFunction, *, on_finished: RunListener | None = None) -> None:
        self._train = train
        self._on_finished = on_finished
        self._hooks: list[TrainedHook] = []
        self._running: TrainingRun | None = None
        self._recent: list[TrainingRun] = []
        self._counts = {"requested": 0, "coalesced": 0, "succeeded": 0, "failed": 0}
        self._lock = threading.Lock()
        self._runs: CoalescingWorker[TrainingRequest] = CoalescingWorker(
            self._execute, TrainingRequest.merged, name="decomp-training"
        )

    def add_on_trained(self, hook: TrainedHook) -> None:
        with self._lock:
            self._hooks.append(hook)

    def submit(self, project_id: str, reason: str, *, from_scratch: bool = False) -> str:
        """Ask for a run; "queued", or "coalesced" when merged into a run already waiting. Never blocks."""
        outcome = self._runs.submit(project_id, TrainingRequest(project_id, (reason,), from_scratch))
        with self._lock:
            self._counts["requested"] += 1
            self._counts["coalesced"] += outcome == COALESCED
        logger.info("training for project %s %s (%s)", project_id, outcome, reason)
        return outcome

    def is_busy(self, project_id: str | None = None) -> bool:
        return self._runs.is_busy(project_id)

    def wait_until_idle(self, timeout: float | None = None, project_id: str | None = None) -> bool:
        """Block until nothing (or nothing of ``project_id``) is running or waiting; False on timeout."""
        return self._runs.wait_until_idle(timeout, project_id)

    def snapshot(self) -> dict[str, Any]:
        """The worker's state for /metrics."""
        pending = [
            {"project_id": r.project_id, "reasons": list(r.reasons), "from_scratch": r.from_scratch}
            for _project, r in self._runs.pending()
        ]
        with self._lock:
            return {
                "running": self._running.as_dict() if self._running else None,
                "pending": pending,
                "counts": dict(self._counts),
                "recent_runs": [run.as_dict() for run in self._recent],
            }

    def stop(self, timeout: float | None = None) -> None:
        """Let the current run finish, drop waiting requests, end the thread."""
        self._runs.stop(timeout)

    def _execute(self, project_id: str, request: TrainingRequest) -> None:
        run = TrainingRun(project_id, request.reasons, request.from_scratch, time.time())
        with self._lock:
            self._running = run
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
        with self._lock:
            self._running = None
            self._recent = [*self._recent, run][-RECENT_RUNS:]
            self._counts[run.status] += 1

    def _notify(self, run: TrainingRun) -> None:
        listeners = [self._on_finished] if self._on_finished else []
        if run.status == "succeeded":
            with self._lock:
                listeners += self._hooks
        for listener in listeners:
            try:
                listener(run)
            except Exception:  # a broken hook must not break training
                logger.exception("after-training hook %r failed for project %s", listener, run.project_id)


# -- one training run -----------------------------------------------------------------------------------

# ``only_annotated=True`` does not filter in Label Studio 1.23.2; this Data Manager query does.
LABELLED_TASKS_QUERY = {
    "filters": {
        "conjunction": "and",
        "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
        ],
    }
}
TASK_PAGE_SIZE = 100


class TrainingError(RuntimeError):
    """A run cannot start or finish; the served model stays as it was."""


@dataclass(frozen=True)
class TrainingHyperparameters:
    epochs: int
    learning_rate: float
    batch_size: int
    crop_size: int
    validation_share: float
    seed: int
    device: str


def fetch_labelled_tasks(client: Any, project_id: str) -> list[dict[str, Any]]:
    """Every task of the project with at least one annotation, as plain dicts, all pages."""
    query = json.dumps(LABELLED_TASKS_QUERY)
    pages = client.tasks.list(project=int(project_id), fields="all", query=query, page_size=TASK_PAGE_SIZE)
    return [task if isinstance(task, dict) else task.model_dump() for task in pages]


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's most recently updated annotation that was not cancelled (skipped), if any."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(kept, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0), default=None)


def build_training_samples(
    tasks: list[dict[str, Any]], config: ProjectConfig, load_image: Callable[[dict[str, Any]], Any]
) -> tuple[list[tuple[Any, Any]], list[str]]:
    """(image, partial target) pairs of the tasks' latest annotations, and why other tasks were skipped.

    A task whose image cannot be read or whose annotation cannot be decoded is skipped with a reason, not
    fatal: one broken task must not block learning from the rest.
    """
    from ml_backend.labelstudio.results import annotation_to_target

    samples, skipped = [], []
    for task in tasks:
        annotation = latest_annotation(task)
        if annotation is None:
            skipped.append(f"task {task.get('id')}: every annotation was cancelled")
            continue
        try:
            image = load_image(task)
            target = annotation_to_target(annotation.get("result") or [], config, *image.shape[:2])
        except Exception as error:  # the reason is reported; the other tasks still train
            skipped.append(f"task {task.get('id')}: {type(error).__name__}: {error}")
            continue
        samples.append((image, target))
    for reason in skipped:
        logger.warning("training skips %s", reason)
    return samples, skipped


def fine_tune(model: Any, samples: list[tuple[Any, Any]], hyper: TrainingHyperparameters) -> dict[str, Any]:
    """Train ``model`` in place on the samples; the run's numbers for /metrics and version.json.

    ``weights_unchanged`` is True when no epoch beat the starting weights on the held-out pixels: the
    trainer then hands back the starting weights (best epoch 0)."""
    from ml_backend.model.training import train_segmentation

    if not samples:
        raise TrainingError("no labelled task could be used for training (see the skipped reasons above)")
    started = time.perf_counter()
    report = train_segmentation(
        model,
        samples,
        epochs=hyper.epochs,
        lr=hyper.learning_rate,
        batch_size=hyper.batch_size,
        crop_size=hyper.crop_size,
        val_fraction=hyper.validation_share,
        seed=hyper.seed,
        device=hyper.device,
    )
    return {
        "samples": len(samples),
        "epochs": len(report.history),
        "loss": report.losses[-1] if report.history else None,
        "losses": report.losses,
        "val_miou": report.best_val_miou,
        "val_mious": report.val_mious,
        "initial_val_miou": report.initial_val_miou,
        "best_epoch": report.best_epoch,
        "weights_unchanged": report.best_epoch == 0,
        "validation": report.validation,
        "train_pixels": report.train_pixels,
        "val_pixels": report.val_pixels,
        "seconds": round(time.perf_counter() - started, 2),
    }


def train_project(
    state: ProjectState,
    config: ProjectConfig,
    client: Any,
    load_image: Callable[[dict[str, Any]], Any],
    model: Any,
    hyper: TrainingHyperparameters,
) -> TrainingOutcome:
    """One run: pull the labelled tasks, fine-tune ``model`` (the served weights, or fresh ones), save it
    atomically as the next version and publish that version. Any exception leaves the served version as
    it was (the checkpoint of a half-finished run is never published)."""
    from ml_backend.model.checkpoint import save_checkpoint

    tasks = fetch_labelled_tasks(client, state.project_id)
    samples, skipped = build_training_samples(tasks, config, load_image)
    metrics = fine_tune(model, samples, hyper)
    metrics.update(labelled_tasks=len(tasks), skipped=skipped)
    version = state.next_version()
    save_checkpoint(state.checkpoint_path(version), model, {"model_version": version, "metrics": metrics})
    state.publish_version(version, metrics)
    if metrics["weights_unchanged"]:
        # Published all the same: Label Studio and the queue expect a new version after every run.
        logger.warning(
            "project %s: no epoch of this run beat its starting weights on the held-out pixels (val mIoU "
            "%s before training, %s at best), so the weights did not change: %s serves the starting "
            "weights again. More annotations, more epochs (decomp_epochs) or another learning rate may help",
            state.project_id,
            _rounded(metrics["initial_val_miou"]),
            _rounded(max((m for m in metrics["val_mious"] if m is not None), default=None)),
            version,
        )
    return TrainingOutcome(version, metrics)


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
