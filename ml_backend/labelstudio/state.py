"""What the backend remembers about one Label Studio project, on disk under ``MODEL_DIR/<project>/``.

Layout::

    version.json           current model version + the last few published versions (with their metrics)
    checkpoints/<v>.pt     one checkpoint per kept version (written by the model's atomic save)
    pool_statistics.json   the pool's DECOMP statistics totals (written by the adapter, read by predict)
    image_statistics.json  each scored image's own statistics, by task id (written by the adapter)
    proposals/<task>.json  the proposals last issued for each task (by predict or the adapter)
    training.json          annotations counted since the last run + the last training runs
    label_config.xml       the last labelling config Label Studio sent (predict may arrive without one)

Every write goes through :mod:`ml_backend.storage` (a temporary file in the same folder renamed over the
target), so a process killed at any instant leaves either the old or the new file, never half of one.
Threads of one process serialise their read-modify-write cycles on a per-project lock; other processes (the
adapter's command line) only ever replace whole files. Nothing here imports torch: /setup reads this state
within Label Studio's 3 s.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml_backend.storage import write_text_atomic

INITIAL_VERSION_NUMBER = 0
VERSION_PREFIX = "decomp-v"
KEPT_VERSIONS = 5
KEPT_RUNS = 20
DEFAULT_PROJECT = "default"
IMAGE_STATISTICS_FILE = "image_statistics.json"

_PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


class StateError(RuntimeError):
    """A state file exists but cannot be used (hand-edited, wrong schema); names the file."""


def version_name(number: int) -> str:
    return f"{VERSION_PREFIX}{number}"


def project_key(project: object) -> str:
    """The project id as Label Studio sends it, reduced to the directory name.

    Label Studio sends ``"<id>.<created_at timestamp>"`` to /setup and /predict, an int in webhooks, and
    older clients send nothing (-> ``"default"``). Anything that could escape MODEL_DIR is rejected.
    """
    if project is None or project == "":
        return DEFAULT_PROJECT
    if isinstance(project, bool) or not isinstance(project, (int, str)):
        raise ValueError(
            f"project must be an int or a string like '12.1700000000', got {type(project).__name__}"
        )
    key = str(project).split(".", 1)[0].strip()
    if not _PROJECT_ID.match(key):
        raise ValueError(f"project {project!r} is not a project id (expected e.g. 12 or '12.1700000000')")
    return key


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise StateError(f"{path} is not valid JSON ({error}); fix or delete it") from error


def _project_lock(root: Path) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(root, threading.RLock())


class ProjectState:
    """Reads and writes one project's folder. Cheap to create: nothing is read until asked for."""

    def __init__(self, model_dir: str | os.PathLike[str], project_id: object) -> None:
        self.project_id = project_key(project_id)
        self.root = Path(model_dir).resolve() / self.project_id
        self._lock = _project_lock(self.root)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the project against other threads and other processes: `serve` and the `reprioritize`
        command share MODEL_DIR, and both may create the initial model. Not reentrant across calls."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    # -- model versions -------------------------------------------------------------------------------

    def _version_record(self) -> dict[str, Any]:
        record = read_json(self.root / "version.json")
        if record is None:
            return {"current": None, "next_number": INITIAL_VERSION_NUMBER, "history": []}
        if not isinstance(record, dict) or "history" not in record or "next_number" not in record:
            raise StateError(f"{self.root / 'version.json'} lacks 'history'/'next_number'; fix or delete it")
        return record

    def current_version(self) -> str:
        """The served model version; before any checkpoint exists, the name the first one will get."""
        record = self._version_record()
        return record["current"] or version_name(record["next_number"])

    def current_checkpoint(self) -> Path | None:
        """The checkpoint of the served version, or None while the model is still untrained and unsaved."""
        record = self._version_record()
        for entry in record["history"]:
            if entry["version"] == record["current"]:
                return self.root / entry["checkpoint"]
        return None

    def versions(self) -> list[dict[str, Any]]:
        """Kept versions, newest first, each with its checkpoint path, creation time and metrics."""
        return list(reversed(self._version_record()["history"]))

    def next_version(self) -> str:
        return version_name(self._version_record()["next_number"])

    def checkpoint_path(self, version: str) -> Path:
        return self.checkpoints_dir / f"{version}.pt"

    def publish_version(self, version: str, metrics: dict[str, Any] | None = None) -> None:
        """Make ``version`` (whose checkpoint is already saved) the served one and forget the oldest ones.

        The checkpoint is written before this call and version.json is replaced in one step, so a kill in
        between leaves the previous version served and an unreferenced checkpoint file.
        """
        checkpoint = self.checkpoint_path(version)
        if not checkpoint.is_file():
            raise StateError(f"cannot publish {version}: its checkpoint {checkpoint} does not exist")
        with self._lock:
            record = self._version_record()
            number = int(version.removeprefix(VERSION_PREFIX)) if version.startswith(VERSION_PREFIX) else None
            history = [entry for entry in record["history"] if entry["version"] != version]
            history.append(
                {
                    "version": version,
                    "checkpoint": str(checkpoint.relative_to(self.root)),
                    "created_at": time.time(),
                    "metrics": metrics or {},
                }
            )
            dropped, kept = history[:-KEPT_VERSIONS], history[-KEPT_VERSIONS:]
            next_number = max(record["next_number"], (number or 0) + 1)
            write_json_atomic(
                self.root / "version.json", {"current": version, "next_number": next_number, "history": kept}
            )
            for entry in dropped:
                (self.root / entry["checkpoint"]).unlink(missing_ok=True)

    # -- pool statistics (the adapter writes, predict reads) ------------------------------------------

    def write_pool_statistics(self, statistics: dict[str, Any], model_version: str) -> None:
        """The pool's totals (``PoolStatistics.to_dict()``: what predict turns into class weights), as
        computed with ``model_version``. Per-image statistics go to :meth:`write_image_statistics`."""
        write_json_atomic(
            self.root / "pool_statistics.json",
            {"model_version": model_version, "updated_at": time.time(), "statistics": statistics},
        )

    def pool_statistics(self) -> dict[str, Any] | None:
        """``{"model_version", "updated_at", "statistics"}`` as last written, or None before any exist."""
        return read_json(self.root / "pool_statistics.json")

    def write_image_statistics(
        self, images: Mapping[int, dict[str, Any]], model_version: str, *, keep_others: bool = False
    ) -> None:
        """Each scored image's own statistics by task id, so that its share of the pool can later be added
        or removed without a forward pass. ``images`` replaces what is stored (a full run describes exactly
        the pool it scored), or with ``keep_others`` is added to it (new tasks scored on their own)."""
        with self._lock:
            stored = self.image_statistics() if keep_others else {}
            stored.update(images)
            write_json_atomic(
                self.root / IMAGE_STATISTICS_FILE,
                {
                    "model_version": model_version,
                    "updated_at": time.time(),
                    "images": {str(task_id): stats for task_id, stats in stored.items()},
                },
            )

    def image_statistics(self) -> dict[int, dict[str, Any]]:
        """The stored per-image statistics by task id (empty before any exist)."""
        record = read_json(self.root / IMAGE_STATISTICS_FILE)
        if record is None:  # written before per-image statistics had a file of their own
            record = {"images": ((self.pool_statistics() or {}).get("statistics") or {}).get("images") or {}}
        try:
            return {int(task_id): stats for task_id, stats in record["images"].items()}
        except (KeyError, AttributeError, TypeError, ValueError) as error:
            raise StateError(
                f"{self.root / IMAGE_STATISTICS_FILE} does not map task ids to statistics ({error}); "
                "delete it and reprioritize the project"
            ) from error

    # -- proposals issued ---------------------------------------------------------------------------------

    def _proposals_path(self, task_id: int) -> Path:
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise ValueError(f"task id must be an int, got {task_id!r}")
        return self.root / "proposals" / f"{task_id}.json"

    def record_proposals(
        self,
        task_id: int,
        *,
        model_version: str,
        priority: float,
        score: float,
        regions: list[dict[str, Any]],
    ) -> None:
        """What was issued for a task (by /predict or the adapter's queue): the model version, the DECOMP
        priority, the prediction score and the proposed regions; replaces the previous record."""
        record = {
            "model_version": model_version,
            "priority": priority,
            "score": score,
            "regions": regions,
            "issued_at": time.time(),
        }
        write_json_atomic(self._proposals_path(task_id), record)

    def issued_proposals(self, task_id: int) -> dict[str, Any] | None:
        """The last record of :meth:`record_proposals` for the task, or None."""
        return read_json(self._proposals_path(task_id))

    def proposals_issued(self) -> int:
        """How many tasks have a proposals record."""
        try:
            return sum(1 for path in (self.root / "proposals").iterdir() if path.suffix == ".json")
        except FileNotFoundError:
            return 0

    # -- training counters and runs -----------------------------------------------------------------------

    def _training_record(self) -> dict[str, Any]:
        return read_json(self.root / "training.json") or {"annotations_since_last_run": 0, "runs": []}

    def count_annotations(self, count: int, train_every: int) -> bool:
        """Add ``count`` new annotations; True (and the count restarts) when they reach ``train_every``."""
        with self._lock:
            record = self._training_record()
            total = record["annotations_since_last_run"] + count
            due = total >= max(train_every, 1)
            record["annotations_since_last_run"] = 0 if due else total
            write_json_atomic(self.root / "training.json", record)
            return due

    def annotations_since_last_run(self) -> int:
        return int(self._training_record()["annotations_since_last_run"])

    def record_run(self, run: dict[str, Any]) -> None:
        with self._lock:
            record = self._training_record()
            record["runs"] = [*record["runs"], run][-KEPT_RUNS:]
            write_json_atomic(self.root / "training.json", record)

    def runs(self) -> list[dict[str, Any]]:
        """The last training runs, oldest first."""
        return list(self._training_record()["runs"])

    # -- labelling config -------------------------------------------------------------------------------

    def save_label_config(self, label_config: str) -> None:
        if label_config != self.label_config():
            write_text_atomic(self.root / "label_config.xml", label_config)

    def label_config(self) -> str | None:
        try:
            return (self.root / "label_config.xml").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
