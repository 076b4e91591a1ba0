"""The DECOMP ML backend: label-studio-ml 2.x's model contract over the project's pipeline and state.

``BackendRuntime`` lives as long as the process: settings, the loaded models (one per project, reloaded
when the served version changes), the training worker and the /predict timings. ``DecompBackend`` is made
per request for one project, like label-studio-ml's model class, and is cheap: ``setup()`` reads a small
JSON file and parses the labelling config; the weights load on a background thread once /setup has answered
(``warm_up``), or on the first ``predict`` at the latest.

Prediction ``score``: Label Studio's "Uncertainty sampling" serves tasks by ascending prediction score,
so each prediction's score is ``1 - priority``, where the DECOMP priority (the summed class weights of the
classes the image shows; the weights sum to 1) lies in [0, 1]. The task DECOMP wants most comes first. A
task whose image cannot be read scores 1.0 and so comes last.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_backend.labelstudio.state import ProjectState
from ml_backend.labelstudio.worker import (
    TrainedHook,
    TrainingError,
    TrainingHyperparameters,
    TrainingOutcome,
    TrainingRequest,
    TrainingRun,
    TrainingWorker,
    train_project,
)

if TYPE_CHECKING:
    import torch

    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.strategies.base import Region, ScoredImage

logger = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], Any]
TRAINING_EVENTS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    }
)
UNREADABLE_SCORE = 1.0
SCORE_DECIMALS = 6
LATENCY_WINDOW = 1000
PREDICT_STAGES = ("load", "forward", "decomp", "encode", "total")
INITIAL_WEIGHTS_SEED = 0

_WarmUpKey = tuple[str, str, tuple[str, ...]]  # project, model version, class names


def default_model_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "label-studio-decomp" / "models"


def prediction_score(priority: float) -> float:
    """The prediction score under which Label Studio's "Uncertainty sampling" (ascending score) serves
    the highest DECOMP priority first: ``1 - priority``, clipped to [0, 1] against rounding, rounded."""
    if not np.isfinite(priority):
        raise ValueError(f"priority must be a finite number, got {priority!r}")
    return round(min(1.0, max(0.0, 1.0 - float(priority))), SCORE_DECIMALS)


def proposal_rng(project_id: str, task_id: object, version: str) -> np.random.Generator:
    """The random stream of a task's proposals: the same task under the same model version gets the same
    regions, in /predict and in the adapter's queue alike, across restarts (a stable hash, not hash())."""
    return np.random.default_rng(zlib.crc32(f"{project_id}:{task_id}:{version}".encode()))


def input_window(model: torch.nn.Module, image: np.ndarray) -> tuple[float, float]:
    """The raw intensities that map to 0 and 1 when ``model`` predicts the 2-D ``image`` ((H, W) or
    (H, W, C), native dtype): the window of the channels the network takes, alpha left out. /predict and
    the adapter's batched scoring both scale with it, so a task gets the same prediction on either path
    (a stack of images would otherwise share one window, and an opaque 16-bit alpha would stretch it)."""
    from ml_backend.model.inference import as_planes
    from ml_backend.model.network import channels_last, intensity_window, model_spec

    in_channels = model_spec(model).in_channels
    planes, _ = as_planes(image, 2, in_channels)
    return intensity_window(channels_last(planes, in_channels))


def issued_regions(regions: list[Region], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Proposed regions as ``ProjectState.record_proposals`` keeps them (JSON): the class each was drawn
    for, its seed pixel, bounding box, size and confidence."""
    return [
        {
            "class_index": region.class_index,
            "class_name": None if region.class_index is None else class_names[region.class_index],
            "seed": [int(coordinate) for coordinate in region.seed],
            "bbox": [[axis.start, axis.stop] for axis in region.bbox],
            "size": region.size,
            "confidence": region.confidence,
        }
        for region in regions
    ]


def prediction_result(
    scored: ScoredImage, regions: list[Region], config: ProjectConfig
) -> list[dict[str, Any]]:
    """A prediction's ``result``: the pre-annotation in the class control (brush masks or polygons) and
    the proposals as read-only regions of the proposals control."""
    from ml_backend.labelstudio.results import class_map_to_results, proposal_results

    height, width = scored.spatial_shape
    result = class_map_to_results(scored.labels, scored.confidence, config)
    return result + proposal_results(regions, config, height, width)


def _env_number(environ: Mapping[str, str], name: str, default: float, kind: type, low: float, high: float):
    text = environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        expected = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={text!r} is not {expected} between {low} and {high}")
    return value


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    text = environ.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={environ[name]!r} is not a yes/no value (true/false, 1/0)")


@dataclass(frozen=True)
class BackendSettings:
    """Process-wide configuration; :meth:`from_env` documents the environment variable of each field."""

    model_dir: Path
    label_studio_url: str | None = None
    api_key: str | None = None
    device: str = "auto"
    log_level: str = "INFO"
    architecture: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = "imagenet"
    train_from_scratch: bool = False
    learning_rate: float = 5e-4
    batch_size: int = 4
    crop_size: int = 256
    validation_share: float = 0.2
    tile_size: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BackendSettings:
        """MODEL_DIR, LABEL_STUDIO_URL (or LABEL_STUDIO_HOST), LABEL_STUDIO_API_KEY, DEVICE, LOG_LEVEL,
        and DECOMP_ARCHITECTURE, DECOMP_ENCODER, DECOMP_ENCODER_WEIGHTS ("none" for random weights),
        DECOMP_TRAIN_FROM_SCRATCH, DECOMP_LEARNING_RATE, DECOMP_BATCH_SIZE, DECOMP_CROP_SIZE,
        DECOMP_VALIDATION_SHARE, DECOMP_TILE_SIZE (predict large images in tiles of this many pixels)."""
        weights = environ.get("DECOMP_ENCODER_WEIGHTS", "imagenet").strip()
        log_level = environ.get("LOG_LEVEL", "INFO").strip().upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"LOG_LEVEL={log_level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        tile = _env_number(environ, "DECOMP_TILE_SIZE", 0, int, 0, 1 << 16)
        if tile % 32:
            raise ValueError(f"DECOMP_TILE_SIZE={tile} must be a multiple of 32 (or 0 for no tiling)")
        crop = _env_number(environ, "DECOMP_CROP_SIZE", 256, int, 64, 4096)
        if crop % 32:
            raise ValueError(f"DECOMP_CROP_SIZE={crop} must be a multiple of 32")
        return cls(
            model_dir=Path(environ.get("MODEL_DIR") or default_model_dir()).expanduser(),
            label_studio_url=environ.get("LABEL_STUDIO_URL") or environ.get("LABEL_STUDIO_HOST") or None,
            api_key=environ.get("LABEL_STUDIO_API_KEY") or None,
            device=environ.get("DEVICE", "auto").strip() or "auto",
            log_level=log_level,
            architecture=environ.get("DECOMP_ARCHITECTURE", "Unet").strip(),
            encoder=environ.get("DECOMP_ENCODER", "resnet18").strip(),
            encoder_weights=None if weights.lower() in ("", "none") else weights,
            train_from_scratch=_env_flag(environ, "DECOMP_TRAIN_FROM_SCRATCH"),
            learning_rate=_env_number(environ, "DECOMP_LEARNING_RATE", 5e-4, float, 1e-7, 1.0),
            batch_size=_env_number(environ, "DECOMP_BATCH_SIZE", 4, int, 1, 1024),
            crop_size=crop,
            validation_share=_env_number(environ, "DECOMP_VALIDATION_SHARE", 0.2, float, 0.0, 0.9),
            tile_size=tile or None,
        )


class LatencyRecorder:
    """Per-task /predict timings by stage over the last LATENCY_WINDOW tasks, plus running counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, deque[float]] = {
            stage: deque(maxlen=LATENCY_WINDOW) for stage in PREDICT_STAGES
        }
        self._counts = {"requests": 0, "tasks": 0, "failed_tasks": 0}

    def request(self) -> None:
        with self._lock:
            self._counts["requests"] += 1

    def task(self, seconds_by_stage: dict[str, float], failed: bool) -> None:
        with self._lock:
            self._counts["tasks"] += 1
            self._counts["failed_tasks"] += failed
            for stage, seconds in seconds_by_stage.items():
                self._stages[stage].append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latency = {
                stage: {
                    "count": len(values),
                    "median_ms": round(1000 * float(np.median(values)), 2),
                    "p95_ms": round(1000 * float(np.percentile(values, 95)), 2),
                }
                for stage, values in self._stages.items()
                if values
            }
            return {**self._counts, "latency": latency}


@dataclass
class _ServedModel:
    version: str
    model: torch.nn.Module
    inference_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        from ml_backend.model.network import model_spec

        return model_spec(self.model).class_names


class BackendRuntime:
    """What one backend process keeps: settings, models, the training worker, timings.

    ``image_loader(url, task_id, label_studio_url, api_key)`` and ``client_factory(url, api_key)`` default
    to the project's image loader and the SDK's ``LabelStudio`` client; tests pass fakes.
    """

    def __init__(
        self,
        settings: BackendSettings,
        *,
        image_loader: Callable[..., np.ndarray] | None = None,
        client_factory: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.latency = LatencyRecorder()
        self.worker = TrainingWorker(self._train, on_finished=self._record_run)
        self._image_loader = image_loader
        self._client_factory = client_factory
        self._models: dict[str, _ServedModel] = {}
        self._models_lock = threading.Lock()
        self._warm_ups: set[_WarmUpKey] = set()
        self._warm_ups_lock = threading.Lock()
        self._configs: dict[str, ProjectConfig] = {}
        self._connections: dict[str, tuple[str | None, str | None]] = {}
        self.event_handlers: dict[str, EventHandler] = {}

    def backend(self, project_id: str, label_config: str | None = None) -> DecompBackend:
        """The per-request backend (the app's factory)."""
        return DecompBackend(project_id, label_config, runtime=self)

    def add_on_trained(self, hook: TrainedHook) -> None:
        """Call ``hook(run)`` after every successful training run (e.g. to reprioritise the queue)."""
        self.worker.add_on_trained(hook)

    def on_event(self, event: str, handler: EventHandler) -> None:
        """Answer webhook ``event`` (e.g. TASKS_CREATED) with ``handler(project_id, payload)``; the handler
        must return within Label Studio's 1 s webhook limit, so it should only enqueue work."""
        if event in TRAINING_EVENTS:
            raise ValueError(f"{event} is a training event; the backend handles it itself")
        self.event_handlers[event] = handler

    # -- configuration and connection ---------------------------------------------------------------

    def project_config(self, state: ProjectState, label_config: str | None) -> ProjectConfig:
        """The parsed labelling config (sent now, or the last one stored for the project); parsed once."""
        from ml_backend.labelstudio.config import LabelConfigError, ProjectConfig

        if label_config:
            state.save_label_config(label_config)
        else:
            label_config = state.label_config()
        if not label_config:
            raise LabelConfigError(
                f"no labelling config is known for project {state.project_id}: Label Studio sends it when it "
                "connects the backend (/setup); reconnect the backend or send label_config with the request"
            )
        parsed = self._configs.get(label_config)
        if parsed is None:
            parsed = self._configs[label_config] = ProjectConfig.from_label_config(label_config)
        return parsed

    def remember_connection(self, project_id: str, hostname: str | None, access_token: str | None) -> None:
        """Label Studio's /setup carries its URL and a token; used only where the env sets none."""
        if hostname or access_token:
            self._connections[project_id] = (hostname, access_token)

    def connection(self, project_id: str) -> tuple[str | None, str | None]:
        hostname, token = self._connections.get(project_id, (None, None))
        return self.settings.label_studio_url or hostname, self.settings.api_key or token

    def load_image(self, project_id: str, url: str, task_id: int | None) -> np.ndarray:
        label_studio_url, api_key = self.connection(project_id)
        if self._image_loader is not None:
            return self._image_loader(url, task_id, label_studio_url, api_key)
        from ml_backend.labelstudio.images import load_task_image

        return load_task_image(url, task_id=task_id, label_studio_url=label_studio_url, api_key=api_key)

    def client(self, project_id: str) -> Any:
        url, api_key = self.connection(project_id)
        if not url or not api_key:
            raise TrainingError(
                "training pulls annotations from Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                "(a legacy token or a personal access token) where the backend runs"
            )
        if self._client_factory is not None:
            return self._client_factory(url, api_key)
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=url, api_key=api_key)

    # -- models -------------------------------------------------------------------------------------------

    def device(self) -> torch.device:
        from ml_backend.model.network import resolve_device

        return resolve_device(self.settings.device)

    def served_model(self, state: ProjectState, config: ProjectConfig) -> _ServedModel:
        """The project's current model, loaded once per version; the first call creates and publishes
        the initial version, so that its predictions can be reproduced after a restart."""
        version = state.current_version()
        with self._models_lock:
            served = self._models.get(state.project_id)
            if served is None or served.version != version or served.class_names != config.class_names:
                served = self._load_or_create(state, config)
                self._models[state.project_id] = served
            return served

    def warm_up(self, state: ProjectState, config: ProjectConfig) -> threading.Thread | None:
        """Load (or create) the project's served model on a background thread, so that the first /predict
        after a start does not spend Label Studio's 100 s importing torch and building the network.

        Once per project, version and classes: returns the thread, or None when that model was warmed (or
        is warming) already. A predict that arrives meanwhile waits for the same load instead of starting
        its own. A failed warm-up is logged and forgotten, so the next /setup tries again."""
        key = (state.project_id, state.current_version(), config.class_names)
        with self._warm_ups_lock:
            if key in self._warm_ups:
                return None
            self._warm_ups.add(key)
        name = f"decomp-warm-up-{state.project_id}"
        thread = threading.Thread(target=self._warm, args=(state, config, key), name=name, daemon=True)
        thread.start()
        return thread

    def _warm(self, state: ProjectState, config: ProjectConfig, key: _WarmUpKey) -> None:
        started = time.perf_counter()
        try:
            served = self.served_model(state, config)
        except Exception:  # the first /predict loads it instead, and reports what fails
            with self._warm_ups_lock:
                self._warm_ups.discard(key)
            logger.exception("project %s: warming up the model failed", state.project_id)
            return
        logger.info(
            "project %s: model %s ready for /predict (%.1f s)",
            state.project_id,
            served.version,
            time.perf_counter() - started,
        )

    def _load_or_create(self, state: ProjectState, config: ProjectConfig) -> _ServedModel:
        from ml_backend.model.checkpoint import load_checkpoint, save_checkpoint
        from ml_backend.model.network import model_spec

        # Under the project's exclusive lock: another process (the reprioritize command, a second
        # server) may be creating the initial model at the same moment, and must find it, not publish a
        # second "initial" version next to it.
        with state.exclusive():
            checkpoint = state.current_checkpoint()
            if checkpoint is not None:
                model, _ = load_checkpoint(checkpoint, self.device())
                if model_spec(model).class_names == config.class_names:
                    return _ServedModel(state.current_version(), model)
                logger.warning(
                    "project %s: the labelling config's classes %s differ from those of model %s (%s); "
                    "starting a new model for the new classes",
                    state.project_id,
                    list(config.class_names),
                    state.current_version(),
                    list(model_spec(model).class_names or ()),
                )
            model = self.initial_model(config)
            version = state.next_version()
            metadata = {"model_version": version, "initial": True}
            save_checkpoint(state.checkpoint_path(version), model, metadata)
            state.publish_version(version, {"initial": True})
        logger.info("project %s: created the initial model %s", state.project_id, version)
        return _ServedModel(version, model)

    def initial_model(self, config: ProjectConfig) -> torch.nn.Module:
        """A fresh network for the project's classes, the same on every machine for the same settings."""
        import torch

        from ml_backend.model.network import build_segmentation_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INITIAL_WEIGHTS_SEED)
            model = build_segmentation_model(
                config.num_classes,
                architecture=self.settings.architecture,
                encoder=self.settings.encoder,
                encoder_weights=self.settings.encoder_weights,
                class_names=list(config.class_names),
            )
        return model.to(self.device()).eval()

    # -- training -------------------------------------------------------------------------------------------

    def _train(self, request: TrainingRequest) -> TrainingOutcome:
        from ml_backend.labelstudio.images import image_url_from_task
        from ml_backend.model.checkpoint import load_checkpoint

        state = ProjectState(self.settings.model_dir, request.project_id)
        config = self.project_config(state, None)
        served = self.served_model(state, config)
        if request.from_scratch or self.settings.train_from_scratch:
            model = self.initial_model(config)
        else:
            model, _ = load_checkpoint(state.checkpoint_path(served.version), self.device())
        hyper = TrainingHyperparameters(
            epochs=config.decomp.epochs,
            learning_rate=self.settings.learning_rate,
            batch_size=self.settings.batch_size,
            crop_size=self.settings.crop_size,
            validation_share=self.settings.validation_share,
            seed=zlib.crc32(f"{state.project_id}:{state.next_version()}".encode()),
            device=str(self.device()),
        )

        def load_task(task: dict[str, Any]) -> np.ndarray:
            return self.load_image(state.project_id, image_url_from_task(task, config), task.get("id"))

        outcome = train_project(state, config, self.client(state.project_id), load_task, model, hyper)
        with self._models_lock:
            self._models[state.project_id] = _ServedModel(outcome.model_version, model.eval())
        return outcome

    def _record_run(self, run: TrainingRun) -> None:
        ProjectState(self.settings.model_dir, run.project_id).record_run(run.as_dict())


class DecompBackend:
    """label-studio-ml 2.x's model contract for one project: ``setup()``, ``predict(tasks, context)``,
    ``fit(event, data)``; plus ``versions()`` and ``metrics()`` for the app's /versions and /metrics."""

    def __init__(self, project_id: str, label_config: str | None = None, *, runtime: BackendRuntime) -> None:
        self.runtime = runtime
        self.state = ProjectState(runtime.settings.model_dir, project_id)
        self.label_config = label_config

    @property
    def model_version(self) -> str:
        return self.state.current_version()

    @property
    def handled_events(self) -> frozenset[str]:
        return TRAINING_EVENTS | frozenset(self.runtime.event_handlers)

    def config(self) -> ProjectConfig:
        return self.runtime.project_config(self.state, self.label_config)

    def setup(self, hostname: str | None = None, access_token: str | None = None, **_extra: Any) -> None:
        """Check the labelling config (a config DECOMP cannot use fails here, where Label Studio shows the
        error on connecting) and remember where Label Studio is; loads no weights (see :meth:`warm_up`)."""
        self.runtime.remember_connection(self.state.project_id, hostname, access_token)
        if self._knows_config():
            self.config()

    def warm_up(self) -> None:
        """Start loading the served model in the background (the app calls this once /setup has answered);
        returns at once. Nothing to do while no labelling config is known."""
        if self._knows_config():
            self.runtime.warm_up(self.state, self.config())

    def _knows_config(self) -> bool:
        return bool(self.label_config or self.state.label_config())

    # -- predict ------------------------------------------------------------------------------------------

    def predict(
        self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None, **_kwargs: Any
    ) -> dict:
        """One prediction per task, in order: the pre-annotation, K read-only DECOMP proposals and the
        score ``1 - priority``. A task that fails gets an empty result (score 1.0) and a logged reason."""
        self.runtime.latency.request()
        if not tasks:
            return {"model_version": self.model_version, "predictions": []}
        config = self.config()
        served = self.runtime.served_model(self.state, config)
        weights = self._class_weights(config)
        predictions = [self._predict_task(task, config, served, weights) for task in tasks]
        return {"model_version": served.version, "predictions": predictions}

    def _class_weights(self, config: ProjectConfig) -> np.ndarray:
        from ml_backend.pipeline import pool_weights
        from ml_backend.strategies.stats import PoolStatistics

        stored = None
        try:
            stored = self.state.pool_statistics()
            pool = None if stored is None else PoolStatistics.from_dict(stored["statistics"])
        except (KeyError, TypeError, ValueError) as error:
            logger.warning(
                "project %s: unusable pool statistics (%s); using uniform class weights",
                self.state.project_id,
                error,
            )
            pool = None
        return pool_weights(pool, config.num_classes)

    def _predict_task(
        self, task: dict[str, Any], config: ProjectConfig, served: _ServedModel, weights: np.ndarray
    ) -> dict[str, Any]:
        from ml_backend.labelstudio.images import ImageLoadError, image_url_from_task
        from ml_backend.pipeline import analyse_image, score_image

        task_id = task.get("id")
        timings: dict[str, float] = {}
        started = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        try:
            image = self.runtime.load_image(self.state.project_id, image_url_from_task(task, config), task_id)
            lap("load")
            with served.inference_lock:
                scored = score_image(
                    served.model,
                    image,
                    keep_pixels=config.decomp.shape == "superpixel",
                    tile_size=self.runtime.settings.tile_size,
                    window=input_window(served.model, image),
                )
            lap("forward")
            rng = proposal_rng(self.state.project_id, task_id, served.version)
            analysis = analyse_image(scored, weights, config.decomp, rng)
            lap("decomp")
            result = prediction_result(scored, analysis.regions, config)
            lap("encode")
        except Exception as error:  # one task's failure must not cost the batch its predictions
            if isinstance(error, (ImageLoadError, ValueError)):
                logger.error("project %s task %s: no prediction: %s", self.state.project_id, task_id, error)
            else:
                logger.exception("project %s task %s: no prediction", self.state.project_id, task_id)
            self.runtime.latency.task({"total": time.perf_counter() - started}, failed=True)
            return {"result": [], "score": UNREADABLE_SCORE, "model_version": served.version}
        timings["total"] = time.perf_counter() - started
        self.runtime.latency.task(timings, failed=False)
        score = prediction_score(analysis.priority)
        if isinstance(task_id, int):
            self.state.record_proposals(
                task_id,
                model_version=served.version,
                priority=analysis.priority,
                score=score,
                regions=issued_regions(analysis.regions, config.class_names),
            )
        return {"result": result, "score": score, "model_version": served.version}

    # -- fit ------------------------------------------------------------------------------------------------

    def fit(self, event: str, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        """Count the annotation event and hand training to the worker; never trains here, so the webhook
        answers within Label Studio's 1 s. START_TRAINING asks for a run at once. Other events go to the
        handler registered for them with ``BackendRuntime.on_event``."""
        handler = self.runtime.event_handlers.get(event)
        if handler is not None:
            return {"event": event, "result": handler(self.state.project_id, data)}
        if event not in TRAINING_EVENTS:
            return {"event": event, "handled": False}
        worker = self.runtime.worker
        project = self.state.project_id
        if event == "START_TRAINING":
            return {"event": event, "training": worker.submit(project, event)}
        changed = self._annotations_in(event, data)
        train_every = self._train_every()
        if changed == 0 or not self.state.count_annotations(changed, train_every):
            return {
                "event": event,
                "training": "waiting",
                "annotations_since_last_run": self.state.annotations_since_last_run(),
                "train_every": train_every,
            }
        return {"event": event, "training": worker.submit(project, f"{event} x{train_every}")}

    @staticmethod
    def _annotations_in(event: str, data: dict[str, Any]) -> int:
        """How many annotations the event changed; cancelled (skipped) ones teach nothing."""
        if event in ("ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"):
            annotations = data.get("annotations")
            return len(annotations) if isinstance(annotations, list) else 1
        annotation = data.get("annotation")
        return 0 if isinstance(annotation, dict) and annotation.get("was_cancelled") else 1

    def _train_every(self) -> int:
        from ml_backend.labelstudio.config import DecompSettings, LabelConfigError

        try:
            return self.config().decomp.train_every
        except LabelConfigError as error:
            logger.warning(
                "project %s: %s; counting toward the default train_every", self.state.project_id, error
            )
            return DecompSettings().train_every

    # -- versions and metrics ---------------------------------------------------------------------------

    def versions(self) -> list[str]:
        kept = [entry["version"] for entry in self.state.versions()]
        return kept or [self.model_version]

    def metrics(self) -> dict[str, Any]:
        runs = self.state.runs()
        succeeded = [run for run in runs if run.get("status") == "succeeded"]
        last = succeeded[-1]["metrics"] if succeeded else {}
        return {
            "model_class": type(self).__name__,
            "project": self.state.project_id,
            "model_version": self.model_version,
            "versions": self.state.versions(),
            "training": {
                "runs": runs,
                "last_loss": last.get("loss"),
                "last_val_miou": last.get("val_miou"),
                "failed_runs": sum(run.get("status") == "failed" for run in runs),
                "unchanged_runs": sum(bool(run["metrics"].get("weights_unchanged")) for run in succeeded),
                "annotations_since_last_run": self.state.annotations_since_last_run(),
                "worker": self.runtime.worker.snapshot(),
            },
            "queue": self._queue_metrics(),
            "predict": self.runtime.latency.snapshot(),
        }

    def _queue_metrics(self) -> dict[str, Any]:
        """The queue at a glance: the pool totals and the class weights predict uses, and how many images
        were scored and tasks were issued proposals (the per-image statistics stay in their file)."""
        from ml_backend.labelstudio.config import LabelConfigError

        stored = self.state.pool_statistics() or {}
        totals = stored.get("statistics") or {}
        try:
            config = self.config()
        except LabelConfigError:
            weights = None
        else:
            weights = self._class_weights(config).round(6).tolist()
            weights = dict(zip(config.class_names, weights, strict=True))
        return {
            "model_version": stored.get("model_version"),
            "updated_at": stored.get("updated_at"),
            "pool": {key: totals[key] for key in ("tau", "predicted", "confident") if key in totals},
            "class_weights": weights,
            "images_scored": len(self.state.image_statistics()),
            "proposals_issued": self.state.proposals_issued(),
        }
