"""Reordering a Label Studio project's queue by DECOMP priority.

Label Studio Community Edition has no active-learning queue, but it orders work in two ways we can steer
(behaviour checked on Label Studio 1.23.2, see docs/adapter.md):

* a Data Manager tab ("DECOMP queue") that shows the unlabelled tasks ordered by the task data field
  ``decomp_priority`` (highest first); "Label All Tasks" from that tab, or ``/next?view=<tab>``, follows it;
* "Uncertainty sampling", which serves the task whose prediction of ``project.model_version`` has the lowest
  ``score``. Every pool task gets one prediction of the model's version whose score is
  :func:`prediction_score` of its priority, so both paths serve the same task first.

What is written, per unlabelled task: ``data.decomp_priority`` (the DECOMP image priority, rounded to
:data:`PRIORITY_DECIMALS`), ``data.decomp_regions`` (how many regions are proposed) and one prediction of
the current model version carrying the pre-annotation and the proposed regions. A rerun writes only what
changed: a task whose two data fields already hold the new values and which already has a prediction of the
version is left alone, so running twice in a row makes no second write (the call counts say so). In the
backend's state (:class:`ProjectState`) it keeps the pool's statistics totals (what /predict turns into class
weights), each scored image's own statistics, and the proposals of every task whose prediction it wrote.

API cost (Label Studio 1.23.2, see docs/adapter.md): the pool is read in pages; predictions are created
in bulk (``import_predictions``); Label Studio has no bulk call that writes different data to different
tasks (the Data Manager's "Add or modify data field" writes one value to all selected tasks), so each
changed task costs one PATCH.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from label_studio_sdk import LabelStudio
from tqdm import tqdm

from ml_backend.background import CoalescingWorker
from ml_backend.labelstudio.backend import (
    input_window,
    issued_regions,
    prediction_result,
    prediction_score,
    proposal_rng,
)
from ml_backend.labelstudio.state import ProjectState
from ml_backend.strategies.base import ScoredImage
from ml_backend.strategies.stats import PoolStatistics

if TYPE_CHECKING:
    from ml_backend.labelstudio.backend import BackendRuntime
    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.labelstudio.worker import TrainingRun

logger = logging.getLogger(__name__)

QUEUE_VIEW_TITLE = "DECOMP queue"
PRIORITY_FIELD = "decomp_priority"
REGIONS_FIELD = "decomp_regions"
PRIORITY_DECIMALS = 4
PAGE_SIZE = 100
PREDICTIONS_PER_IMPORT = 50
BATCH_SIZE = 8
IMAGE_LOADERS = 4
UNLABELLED_FILTER = {
    "filter": "filter:tasks:total_annotations",
    "operator": "equal",
    "type": "Number",
    "value": 0,
}
QUEUE_VIEW_DATA = {
    "title": QUEUE_VIEW_TITLE,
    "ordering": [f"-tasks:data.{PRIORITY_FIELD}"],
    "filters": {"conjunction": "and", "items": [UNLABELLED_FILTER]},
}


@dataclass(frozen=True)
class PoolTask:
    """An unlabelled task as the queue needs it: its data and the model versions it has predictions of."""

    id: int
    data: dict[str, Any]
    model_versions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QueueEntry:
    """What DECOMP decided for one task: its priority, the prediction (pre-annotation + proposals) and the
    proposed regions as ``ProjectState.record_proposals`` keeps them."""

    task_id: int
    priority: float
    result: list[dict[str, Any]]
    proposals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def regions(self) -> int:
        return len(self.proposals)


@dataclass
class PublishReport:
    """What :func:`publish_queue` wrote: the tab's id, how many of ``tasks`` entries changed which part,
    whether ``project.model_version`` moved, the tasks whose prediction (and so proposals) was written, and
    the tasks skipped because they left the pool meanwhile."""

    view_id: int
    tasks: int
    data_updated: int = 0
    predictions_created: int = 0
    predictions_replaced: int = 0
    model_version: str | None = None
    model_version_changed: bool = False
    published: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        nothing_written = not (self.data_updated or self.predictions_created or self.predictions_replaced)
        return nothing_written and not self.model_version_changed


def pool_query(task_ids: Sequence[int] | None = None) -> str:
    """The task-list query for the unlabelled pool, in a stable order so that paging is repeatable; with
    ``task_ids``, only the id range they span (new tasks have consecutive ids, so a few pages at most)."""
    items = [UNLABELLED_FILTER]
    if task_ids:
        span = {"min": min(task_ids), "max": max(task_ids)}
        items.append({"filter": "filter:tasks:id", "operator": "in", "type": "Number", "value": span})
    return json.dumps({"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]})


def iter_pool_tasks(
    client: LabelStudio, project_id: int, *, page_size: int = PAGE_SIZE, task_ids: Sequence[int] | None = None
) -> Iterator[PoolTask]:
    """The project's unlabelled tasks (or those of ``task_ids`` that are unlabelled), page by page.

    The SDK's pager asks for one page past the end (Label Studio answers 404 and logs an error);
    this stops at the ``total`` the first page reports instead.
    """
    wanted = None if task_ids is None else set(task_ids)
    page, seen, total = 1, 0, None
    while total is None or seen < total:
        response = client.tasks.list(
            project=project_id,
            query=pool_query(task_ids),
            fields="all",  # predictions_model_versions is only filled in with "all"
            include="id,data,predictions_model_versions",
            page=page,
            page_size=page_size,
        )
        tasks = response.items or []
        total = response.response.total if total is None else total
        if not tasks:
            return
        for task in tasks:
            if wanted is None or task.id in wanted:
                yield PoolTask(task.id, dict(task.data or {}), _versions(task.predictions_model_versions))
        seen += len(tasks)
        page += 1


def _versions(joined: str | Sequence[str] | None) -> frozenset[str]:
    """Label Studio joins a task's prediction versions with commas ("v1,v2")."""
    if not joined:
        return frozenset()
    items = joined.split(",") if isinstance(joined, str) else joined
    return frozenset(item.strip() for item in items if item.strip())


def queue_data_fields(entry: QueueEntry) -> dict[str, Any]:
    return {
        PRIORITY_FIELD: round(float(entry.priority), PRIORITY_DECIMALS),
        REGIONS_FIELD: int(entry.regions),
    }


def data_update(task: PoolTask, entry: QueueEntry) -> dict[str, Any] | None:
    """The task's full new data (Label Studio replaces data as a whole), or None when already current."""
    wanted = queue_data_fields(entry)
    if all(task.data.get(key) == value for key, value in wanted.items()):
        return None
    return {**task.data, **wanted}


def prediction_payload(entry: QueueEntry, model_version: str) -> dict[str, Any]:
    return {
        "task": entry.task_id,
        "result": entry.result,
        "score": prediction_score(entry.priority),
        "model_version": model_version,
    }


def ensure_queue_view(client: LabelStudio, project_id: int) -> int:
    """The id of the project's "DECOMP queue" tab, created or corrected as needed.

    The tab is found by title; settings the user added to it (hidden columns, widths) are kept; copies with
    the same title (from an interrupted run) are removed so there is exactly one.
    """
    views = [view for view in client.views.list(project=project_id) if _title(view) == QUEUE_VIEW_TITLE]
    if not views:
        return client.views.create(project=project_id, data=QUEUE_VIEW_DATA).id
    keep, extras = views[0], views[1:]
    for extra in extras:
        client.views.delete(str(extra.id))
    current = dict(keep.data or {})
    if any(current.get(key) != value for key, value in QUEUE_VIEW_DATA.items()):
        client.views.update(str(keep.id), project=project_id, data={**current, **QUEUE_VIEW_DATA})
    return keep.id


def _title(view: Any) -> str | None:
    data = view.data or {}
    return data.get("title") if isinstance(data, dict) else None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def publish_queue(
    client: LabelStudio,
    project_id: int,
    pool: Sequence[PoolTask],
    entries: Sequence[QueueEntry],
    model_version: str,
    *,
    progress: bool = False,
) -> PublishReport:
    """Write priorities, proposal counts and predictions of ``model_version`` for ``entries``, make sure the
    queue tab exists, and point ``project.model_version`` at ``model_version``. Writes only what changed.

    ``pool`` is what Label Studio held when scoring began; entries of tasks that are no longer in it (for
    example annotated meanwhile) are skipped.
    """
    tasks = {task.id: task for task in pool}
    report = PublishReport(view_id=ensure_queue_view(client, project_id), tasks=len(entries))
    new_predictions: list[QueueEntry] = []
    replaced: list[QueueEntry] = []
    patches: list[tuple[int, dict[str, Any]]] = []
    for entry in entries:
        task = tasks.get(entry.task_id)
        if task is None:
            report.skipped.append(entry.task_id)
            continue
        new_data = data_update(task, entry)
        if new_data is not None:
            patches.append((task.id, new_data))
        if model_version not in task.model_versions:
            new_predictions.append(entry)
        elif new_data is not None:
            replaced.append(entry)

    bar = tqdm(
        total=len(new_predictions) + len(replaced) + len(patches),
        desc="writing the queue",
        unit="write",
        disable=not progress or not (new_predictions or replaced or patches),
    )
    with bar:
        for batch in _chunks(new_predictions, PREDICTIONS_PER_IMPORT):
            payload = [prediction_payload(entry, model_version) for entry in batch]
            client.projects.import_predictions(project_id, request=payload)
            report.predictions_created += len(batch)
            report.published += [entry.task_id for entry in batch]
            bar.update(len(batch))
        for entry in replaced:
            _replace_prediction(client, entry, model_version)
            report.predictions_replaced += 1
            report.published.append(entry.task_id)
            bar.update()
        for task_id, data in patches:
            client.tasks.update(str(task_id), data=data)
            report.data_updated += 1
            bar.update()

    report.model_version = model_version
    has_version = bool(new_predictions) or any(model_version in task.model_versions for task in pool)
    report.model_version_changed = _point_project_at(client, project_id, model_version, has_version)
    return report


def _replace_prediction(client: LabelStudio, entry: QueueEntry, model_version: str) -> None:
    """Overwrite the task's prediction of ``model_version`` in place; extra ones of that version go, so the
    Data Manager's score (a mean over the project's version) is exactly this one."""
    ours = [p for p in client.predictions.list(task=entry.task_id) if p.model_version == model_version]
    fields = _prediction_fields(entry, model_version)
    if not ours:
        client.predictions.create(task=entry.task_id, **fields)
        return
    client.predictions.update(ours[0].id, **fields)
    for extra in ours[1:]:
        client.predictions.delete(extra.id)


def _prediction_fields(entry: QueueEntry, model_version: str) -> dict[str, Any]:
    payload = prediction_payload(entry, model_version)
    payload.pop("task")
    return payload


def _point_project_at(
    client: LabelStudio, project_id: int, model_version: str, has_predictions: bool
) -> bool:
    """Set ``project.model_version`` (Label Studio refuses a version that no prediction carries)."""
    if not has_predictions:
        logger.info(
            "no unlabelled task holds a %s prediction; project.model_version left as is", model_version
        )
        return False
    if client.projects.get(project_id).model_version == model_version:
        return False
    client.projects.update(project_id, model_version=model_version)
    return True


# -- scoring the pool -----------------------------------------------------------------------------------


class ScoredStore:
    """Per-task scoring outcomes (labels, confidence, and the image when superpixels need it) parked on
    disk between the two passes, so a large pool costs disk, not memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, task_id: int, scored: ScoredImage) -> None:
        arrays = {"labels": scored.labels, "confidence": scored.confidence}
        if scored.pixels is not None:
            arrays["pixels"] = scored.pixels
        np.savez(self.folder / f"{task_id}.npz", **arrays)

    def get(self, task_id: int) -> ScoredImage:
        with np.load(self.folder / f"{task_id}.npz") as arrays:
            return ScoredImage(
                labels=arrays["labels"], confidence=arrays["confidence"], pixels=arrays.get("pixels")
            )


@dataclass
class PoolScores:
    """Pass one's outcome: per-image statistics of the tasks that scored, and why the others did not."""

    statistics: dict[int, PoolStatistics] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)

    def pool(self, num_classes: int, tau: float) -> PoolStatistics:
        return sum(self.statistics.values(), PoolStatistics.empty(num_classes, tau))


def _load_images(
    runtime: BackendRuntime, project_id: str, config: ProjectConfig, tasks: Sequence[PoolTask]
) -> dict[int, np.ndarray | str]:
    """Each task's image, or the reason it could not be read; downloads overlap (they wait on I/O)."""
    from ml_backend.labelstudio.images import ImageLoadError, image_url_from_task

    def load(task: PoolTask) -> np.ndarray | str:
        try:
            url = image_url_from_task({"id": task.id, "data": task.data}, config)
            return runtime.load_image(project_id, url, task.id)
        except (ImageLoadError, ValueError) as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=IMAGE_LOADERS) as pool:
        return dict(zip((task.id for task in tasks), pool.map(load, tasks), strict=True))


def _stack_key(model: Any, image: np.ndarray) -> tuple[Any, ...]:
    """Images that can share one forward batch: same shape, dtype and intensity scaling (the window
    /predict would scale the image with)."""
    return image.shape, image.dtype.str, input_window(model, image)


def score_tasks(
    runtime: BackendRuntime,
    state: ProjectState,
    config: ProjectConfig,
    served: Any,
    tasks: Sequence[PoolTask],
    store: ScoredStore,
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> PoolScores:
    """Pass one: one forward pass per task image, ``batch_size`` images of equal shape per network batch
    (a stack of same-sized images is a "volume" that ``predict_probabilities`` runs slice-batched, and the
    network is in eval mode, so each image gets exactly what a call of its own would give)."""
    from ml_backend.model.inference import predict_probabilities

    scores = PoolScores()
    keep_pixels = config.decomp.shape == "superpixel"
    with tqdm(total=len(tasks), desc="scoring the pool", unit="image", disable=not progress) as bar:
        for chunk in _chunks(tasks, batch_size):
            loaded = _load_images(runtime, state.project_id, config, chunk)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for task_id, image in loaded.items():
                if isinstance(image, str):
                    scores.failures[task_id] = image
                    logger.error("project %s task %s: not scored: %s", state.project_id, task_id, image)
                else:
                    groups.setdefault(_stack_key(served.model, image), []).append(task_id)
            for (_shape, _dtype, window), task_ids in groups.items():
                stack = np.stack([loaded[task_id] for task_id in task_ids])
                with served.inference_lock:
                    prediction = predict_probabilities(
                        served.model,
                        stack,
                        spatial_dims=3,
                        window=window,
                        batch_size=batch_size,
                        return_probabilities=False,
                        tile_size=runtime.settings.tile_size,
                    )
                for index, task_id in enumerate(task_ids):
                    scored = ScoredImage(
                        labels=prediction.labels[index],
                        confidence=prediction.confidence[index],
                        pixels=loaded[task_id] if keep_pixels else None,
                    )
                    scores.statistics[task_id] = PoolStatistics.from_image(
                        scored, config.num_classes, config.decomp.tau
                    )
                    store.put(task_id, scored)
            bar.update(len(chunk))
    return scores


def queue_entry(
    task_id: int,
    scored: ScoredImage,
    weights: np.ndarray,
    config: ProjectConfig,
    project_id: str,
    version: str,
) -> QueueEntry:
    """Pass two for one task: DECOMP priority and proposals under the pool's weights, and the prediction
    (pre-annotation + proposals), drawn from the same random stream as the backend's /predict."""
    from ml_backend.pipeline import analyse_image

    analysis = analyse_image(scored, weights, config.decomp, proposal_rng(project_id, task_id, version))
    return QueueEntry(
        task_id,
        analysis.priority,
        prediction_result(scored, analysis.regions, config),
        issued_regions(analysis.regions, config.class_names),
    )


def unreadable_entry(task_id: int) -> QueueEntry:
    """A task whose image cannot be read goes last (priority 0, the backend's score 1.0) and proposes
    nothing."""
    return QueueEntry(task_id, 0.0, [])


# -- the whole reprioritisation -------------------------------------------------------------------------


@dataclass
class ReprioritizeReport:
    """What a run did and what it cost: seconds spent scoring (image loading, forward passes, DECOMP,
    result encoding) and waiting on Label Studio, and the number of HTTP requests sent to it."""

    project_id: int
    model_version: str
    pool_size: int
    scored: int
    failures: dict[int, str]
    publish: PublishReport
    scoring_s: float
    label_studio_s: float
    api_calls: int | None = None

    def summary(self) -> str:
        per_task = f" ({self.api_calls / max(self.pool_size, 1):.2f} per task)" if self.api_calls else ""
        lines = [
            f"Project {self.project_id}: {self.pool_size} unlabelled tasks scored with model "
            f"{self.model_version} ({len(self.failures)} unreadable).",
            f"Queue tab '{QUEUE_VIEW_TITLE}' (view {self.publish.view_id}): {self.publish.data_updated} "
            f"priorities written, {self.publish.predictions_created} predictions created, "
            f"{self.publish.predictions_replaced} replaced"
            + (", project model version set." if self.publish.model_version_changed else "."),
            f"Time: scoring {self.scoring_s:.1f} s, Label Studio API {self.label_studio_s:.1f} s"
            + (f"; {self.api_calls} API calls{per_task}." if self.api_calls is not None else "."),
        ]
        return "\n".join(lines)


def stored_pool(state: ProjectState) -> PoolStatistics | None:
    """The pool totals last written for the project, or None before any."""
    record = state.pool_statistics()
    return None if record is None else PoolStatistics.from_dict(record["statistics"])


def record_published_proposals(
    state: ProjectState, entries: Sequence[QueueEntry], published: Sequence[int], model_version: str
) -> None:
    """Remember the proposals of the tasks whose prediction was just written, as /predict does for the
    tasks it predicts, so that the backend knows what each task was last issued."""
    written = set(published)
    for entry in entries:
        if entry.task_id in written:
            state.record_proposals(
                entry.task_id,
                model_version=model_version,
                priority=entry.priority,
                score=prediction_score(entry.priority),
                regions=entry.proposals,
            )


def reprioritize(
    client: LabelStudio,
    runtime: BackendRuntime,
    project_id: int,
    *,
    task_ids: Sequence[int] | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
) -> ReprioritizeReport:
    """Score the unlabelled pool with the project's served model and publish the DECOMP queue.

    With ``task_ids`` only those tasks are scored, against the stored pool weights (tasks added after the
    last full run, reported by Label Studio's TASKS_CREATED); the pool totals stay as they are. Without,
    the whole pool is scored, its statistics replace the stored ones, and every task's priority follows the
    new class weights.
    Nothing is written to Label Studio or the state before scoring has finished.
    """
    from ml_backend.pipeline import pool_weights

    started = time.perf_counter()
    project = client.projects.get(project_id)
    pool = list(iter_pool_tasks(client, project_id, task_ids=task_ids))
    label_studio_s = time.perf_counter() - started

    started = time.perf_counter()
    state = ProjectState(runtime.settings.model_dir, project_id)
    config = runtime.project_config(state, project.label_config)
    served = runtime.served_model(state, config)
    previous_pool = stored_pool(state)
    with tempfile.TemporaryDirectory(prefix="decomp-scores-") as folder:
        store = ScoredStore(Path(folder))
        scores = score_tasks(
            runtime, state, config, served, pool, store, batch_size=batch_size, progress=progress
        )
        # New tasks alone are scored against the stored pool; a full run's pool is what it just saw.
        totals = scores.pool(config.num_classes, config.decomp.tau) if task_ids is None else previous_pool
        weights = pool_weights(totals, config.num_classes)
        entries = [
            queue_entry(task_id, store.get(task_id), weights, config, state.project_id, served.version)
            for task_id in scores.statistics
        ]
    entries += [unreadable_entry(task_id) for task_id in scores.failures]
    scoring_s = time.perf_counter() - started

    started = time.perf_counter()
    if totals is not None:
        images = {task_id: stats.to_dict() for task_id, stats in scores.statistics.items()}
        # A full run describes exactly the pool it scored; new tasks add to the images stored before.
        state.write_image_statistics(images, served.version, keep_others=task_ids is not None)
        state.write_pool_statistics(totals.to_dict(), served.version)
    published = publish_queue(client, project_id, pool, entries, served.version, progress=progress)
    record_published_proposals(state, entries, published.published, served.version)
    label_studio_s += time.perf_counter() - started
    return ReprioritizeReport(
        project_id=project_id,
        model_version=served.version,
        pool_size=len(pool),
        scored=len(scores.statistics),
        failures=scores.failures,
        publish=published,
        scoring_s=scoring_s,
        label_studio_s=label_studio_s,
    )


# -- keeping the queue current from inside the backend ---------------------------------------------------


class QueueUpdater:
    """Keeps each project's queue current from inside the backend process: a full reprioritisation after
    every successful training run (the new model rescores the pool), and the new tasks alone when Label
    Studio reports ``TASKS_CREATED`` (scored against the stored pool weights, no full rescore).

    Work runs on one background thread (a :class:`~ml_backend.background.CoalescingWorker` keyed by
    project), so neither the training worker nor the webhook waits for it. Requests for a project that is
    already waiting merge into that request (a full run absorbs task-only ones); a request that arrives
    while the project's run is going queues exactly one follow-up.
    """

    def __init__(self, runtime: BackendRuntime) -> None:
        self.runtime = runtime
        self._runs: CoalescingWorker[frozenset[int] | None] = CoalescingWorker(
            self._run, _merge_task_ids, name="decomp-queue"
        )
        self.last_reports: dict[str, ReprioritizeReport] = {}
        self.last_errors: dict[str, str] = {}

    def attach(self) -> QueueUpdater:
        """Register on the runtime's after-training hook and its TASKS_CREATED webhook event; returns self."""
        self.runtime.add_on_trained(self.after_training)
        self.runtime.on_event("TASKS_CREATED", self.tasks_created)
        return self

    def after_training(self, run: TrainingRun) -> None:
        self.request(run.project_id)

    def tasks_created(self, project_id: str, payload: dict[str, Any]) -> str:
        """Answer Label Studio's ``TASKS_CREATED`` webhook (payload ``{"tasks": [{"id": ...}, ...]}``)."""
        tasks = payload.get("tasks") if isinstance(payload, dict) else None
        ids = frozenset(
            task["id"] for task in tasks or () if isinstance(task, dict) and isinstance(task.get("id"), int)
        )
        return self.request(project_id, ids) if ids else "nothing to score"

    def request(self, project_id: str, task_ids: frozenset[int] | None = None) -> str:
        """Ask for a run (``task_ids`` None: the whole pool); "queued" or "coalesced". Never blocks."""
        return self._runs.submit(project_id, task_ids)

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        return self._runs.wait_until_idle(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Let the current run finish, drop the waiting ones, end the thread."""
        self._runs.stop(timeout)

    def _run(self, project_id: str, task_ids: frozenset[int] | None) -> None:
        try:
            report = reprioritize(
                self.runtime.client(project_id),
                self.runtime,
                int(project_id),
                task_ids=None if task_ids is None else sorted(task_ids),
            )
        except Exception as error:  # reported here; the worker goes on with later runs
            self.last_errors[project_id] = f"{type(error).__name__}: {error}"
            logger.exception("project %s: the DECOMP queue could not be updated", project_id)
        else:
            self.last_reports[project_id] = report
            self.last_errors.pop(project_id, None)
            logger.info("%s", report.summary())


def _merge_task_ids(waiting: frozenset[int] | None, new: frozenset[int] | None) -> frozenset[int] | None:
    """Two waiting requests as one: a full run (None) absorbs any other, task lists add up."""
    return None if waiting is None or new is None else waiting | new
