"""Reordering a Label Studio project's queue by DECOMP priority.

Label Studio Community Edition has no active-learning queue, but it orders work in two ways we can steer
(label-studio.md §3.2, §2.1):

* a Data Manager tab ("DECOMP queue") that shows the unlabelled tasks ordered by the task data field
  ``decomp_priority`` (highest first); "Label All Tasks" from that tab, or ``/next?view=<tab>``, follows it;
* "Uncertainty sampling", which serves the task whose prediction of ``project.model_version`` has the lowest
  ``score``. Every pool task gets one prediction of the model's version whose score is
  :func:`prediction_score` of its priority, so both paths serve the same task first.

What is written, per unlabelled task: ``data.decomp_priority`` (the DECOMP image priority, rounded to
:data:`PRIORITY_DECIMALS`), ``data.decomp_regions`` (how many regions are proposed) and one prediction of
the current model version carrying the pre-annotation and the proposed regions. A rerun writes only what
changed: a task whose two data fields already hold the new values and which already has a prediction of the
version is left alone, so running twice in a row makes no second write (the call counts say so).

API cost (Label Studio 1.23.2, see docs/adapter.md): the pool is read in pages; predictions are created
in bulk (``import_predictions``); Label Studio has no bulk call that writes different data to different
tasks (the Data Manager's "Add or modify data field" writes one value to all selected tasks), so each
changed task costs one PATCH.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk import LabelStudio
from tqdm import tqdm

logger = logging.getLogger(__name__)

QUEUE_VIEW_TITLE = "DECOMP queue"
PRIORITY_FIELD = "decomp_priority"
REGIONS_FIELD = "decomp_regions"
PRIORITY_DECIMALS = 6
PAGE_SIZE = 100
PREDICTIONS_PER_IMPORT = 50
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
    """What DECOMP decided for one task: its priority, and the prediction (pre-annotation + proposals)."""

    task_id: int
    priority: float
    result: list[dict[str, Any]]
    regions: int


@dataclass
class PublishReport:
    view_id: int
    tasks: int
    data_updated: int = 0
    predictions_created: int = 0
    predictions_replaced: int = 0
    model_version: str | None = None
    model_version_changed: bool = False
    skipped: list[int] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        nothing_written = not (self.data_updated or self.predictions_created or self.predictions_replaced)
        return nothing_written and not self.model_version_changed


def prediction_score(priority: float) -> float:
    """The prediction score that makes "Uncertainty sampling" (ascending score) serve the highest DECOMP
    priority first. DECOMP priorities are sums of class weights that add up to 1, so they lie in [0, 1]
    and ``1 - priority`` does; values a hair outside (rounding) are clipped."""
    if not math.isfinite(priority):
        raise ValueError(f"priority must be a finite number, got {priority!r}")
    return round(min(1.0, max(0.0, 1.0 - priority)), PRIORITY_DECIMALS)


def pool_query() -> str:
    """The task-list query for the unlabelled pool, in a stable order so that paging is repeatable."""
    return json.dumps({"filters": QUEUE_VIEW_DATA["filters"], "ordering": ["tasks:id"]})


def iter_pool_tasks(
    client: LabelStudio, project_id: int, *, page_size: int = PAGE_SIZE, task_ids: Sequence[int] | None = None
) -> Iterator[PoolTask]:
    """The project's unlabelled tasks (or those of ``task_ids`` that are unlabelled), page by page.

    The SDK's pager asks for one page past the end (a logged 404 in Label Studio, label-studio.md §7.5);
    this stops at the ``total`` the first page reports instead.
    """
    wanted = None if task_ids is None else set(task_ids)
    page, seen, total = 1, 0, None
    while total is None or seen < total:
        response = client.tasks.list(
            project=project_id,
            query=pool_query(),
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
        disable=not progress,
    )
    with bar:
        for batch in _chunks(new_predictions, PREDICTIONS_PER_IMPORT):
            payload = [prediction_payload(entry, model_version) for entry in batch]
            client.projects.import_predictions(project_id, request=payload)
            report.predictions_created += len(batch)
            bar.update(len(batch))
        for entry in replaced:
            _replace_prediction(client, entry, model_version)
            report.predictions_replaced += 1
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
    """Set ``project.model_version`` (Label Studio refuses a version no prediction carries, §7.2)."""
    if not has_predictions:
        logger.info(
            "no unlabelled task holds a %s prediction; project.model_version left as is", model_version
        )
        return False
    if client.projects.get(project_id).model_version == model_version:
        return False
    client.projects.update(project_id, model_version=model_version)
    return True
