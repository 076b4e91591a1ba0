"""The HTTP face of the backend: the routes Label Studio 1.23 calls, with the JSON shapes it expects.

Label Studio's callers and their time limits (see shared notes on Label Studio, §1.3): ``GET /health`` (1 s),
``POST /setup`` (3 s), ``POST /predict`` (100 s, exactly one result per task or Label Studio silently stores
nothing), ``POST /webhook`` (1 s for annotation events), ``GET /versions``. ``/metrics`` is for people.

The app is thin: it validates requests, turns the project id into a directory key, and hands over to a
backend object that keeps the label-studio-ml 2.x contract (``setup()``, ``predict(tasks, context)``,
``fit(event, data)``). Like label-studio-ml, it asks a factory for a backend per request, with the project
and labelling config of that request; the factory keeps whatever is expensive (models, the training worker)
per process.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from ml_backend.labelstudio.config import LabelConfigError
from ml_backend.labelstudio.state import project_key

logger = logging.getLogger(__name__)

MODEL_MODULES = ("ml_backend.model.inference", "ml_backend.model.checkpoint", "segmentation_models_pytorch")


class Backend(Protocol):
    """What the routes need from a backend: the label-studio-ml 2.x contract, plus ``warm_up()`` (start
    loading the model in the background; called after /setup has answered), versions and metrics."""

    handled_events: frozenset[str]

    @property
    def model_version(self) -> str: ...

    def setup(self, **kwargs: Any) -> None: ...

    def warm_up(self) -> None: ...

    def predict(
        self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]: ...

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> Any: ...

    def versions(self) -> list[str]: ...

    def metrics(self) -> dict[str, Any]: ...


BackendFactory = Callable[[str, str | None], Backend]


def create_app(backend: BackendFactory | Backend, *, basic_auth: tuple[str, str] | None = None) -> Flask:
    """A Flask app serving ``backend``: a factory ``(project_key, label_config) -> backend``, or one backend
    object used for every request (handy in tests). With ``basic_auth=(user, password)`` every route asks for
    HTTP Basic credentials."""
    factory = _as_factory(backend)
    app = Flask("label-studio-decomp")
    app.json.sort_keys = False
    if basic_auth is not None:
        _require_basic_auth(app, *basic_auth)
    _register_error_handlers(app)

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class=type(factory("default", None)).__name__)

    @app.post("/setup")
    def setup() -> Response:
        body = _json_object()
        label_config = _optional_string(body, "schema")
        model = factory(_project(body.get("project")), label_config)
        model.setup(
            hostname=_optional_string(body, "hostname"),
            access_token=_optional_string(body, "access_token"),
            extra_params=body.get("extra_params"),
        )
        response = jsonify(model_version=model.model_version)
        # Only once the answer is sent (the WSGI server closes the response), so that loading the model
        # never competes with /setup's 3 s; the first /predict then finds the model ready.
        response.call_on_close(model.warm_up)
        return response

    @app.post("/predict")
    def predict() -> Response:
        body = _json_object()
        tasks = _tasks(body)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"'params' must be a JSON object, got {type(params).__name__}")
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise BadRequest(f"'params.context' must be a JSON object or null, got {type(context).__name__}")
        project = body.get("project")
        if project is None and tasks:
            project = tasks[0].get("project")
        model = factory(_project(project), _optional_string(body, "label_config"))
        extra = {key: value for key, value in params.items() if key != "context"}
        response = model.predict(tasks, context=context, **extra)
        return jsonify(results=_one_result_per_task(response, tasks))

    @app.post("/webhook")
    def webhook() -> Response:
        started = time.perf_counter()
        data = _json_object()
        event = data.get("action")
        if not isinstance(event, str) or not event:
            raise BadRequest("webhook body needs an 'action' string, e.g. 'ANNOTATION_CREATED'")
        project = data.get("project")
        if project is not None and not isinstance(project, dict):
            raise BadRequest(f"'project' must be the project object, got {type(project).__name__}")
        project = project or {}
        model = factory(_project(project.get("id")), _optional_string(project, "label_config"))
        if event not in model.handled_events:
            return jsonify(status="Unknown event")
        if "id" not in project:
            raise BadRequest(f"{event} needs 'project.id' to know which project to train")
        result = model.fit(event, data)
        logger.debug("webhook %s answered in %.1f ms", event, 1000 * (time.perf_counter() - started))
        return jsonify(result=result, status="ok"), 201

    @app.route("/versions", methods=["GET", "POST"])
    def versions() -> Response:
        body = request.get_json(silent=True, force=True)
        project = request.args.get("project")
        if project is None and isinstance(body, dict):
            project = body.get("project")
        return jsonify(versions=factory(_project(project), None).versions())

    @app.get("/metrics")
    def metrics() -> Response:
        return jsonify(factory(_project(request.args.get("project")), None).metrics())

    return app


def create_app_from_env() -> Flask:
    """The app gunicorn serves (``ml_backend.labelstudio.app:create_app_from_env()``), configured by env."""
    from adapters.queue import QueueUpdater
    from ml_backend.labelstudio.backend import BackendRuntime, BackendSettings

    settings = BackendSettings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    )
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    basic_auth = (user, password) if user and password else None
    _preload_heavy_modules()
    runtime = BackendRuntime(settings)
    # The active-learning loop: every new model rescores the pool and reorders the queue, new tasks get a
    # priority as they arrive (TASKS_CREATED).
    QueueUpdater(runtime).attach()
    return create_app(runtime.backend, basic_auth=basic_auth)


def _preload_heavy_modules() -> None:
    """Import now what the first requests would otherwise import while Label Studio waits: the SDK's
    config parser (seconds on a busy CPU, against /setup's 3 s limit) before serving, and PyTorch with the
    model code (about 10 s) in the background, for the first /predict."""
    import importlib

    importlib.import_module("label_studio_sdk.label_interface")

    def import_model_code() -> None:
        for name in MODEL_MODULES:
            importlib.import_module(name)

    threading.Thread(target=import_model_code, name="decomp-preload", daemon=True).start()


def _as_factory(backend: BackendFactory | Backend) -> BackendFactory:
    if hasattr(backend, "predict"):
        return lambda _project, _label_config: backend
    return backend


def _require_basic_auth(app: Flask, user: str, password: str) -> None:
    @app.before_request
    def check_credentials() -> Response | None:
        sent = request.authorization
        if (
            sent is not None
            and sent.type == "basic"
            and hmac.compare_digest((sent.username or "").encode(), user.encode())
            and hmac.compare_digest((sent.password or "").encode(), password.encode())
        ):
            return None
        response = jsonify(status=401, detail="HTTP Basic credentials required (BASIC_AUTH_USER/PASS)")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="label-studio-decomp"'
        return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return jsonify(status=error.code, detail=error.description), error.code or 500

    @app.errorhandler(LabelConfigError)
    def unusable_label_config(error: LabelConfigError) -> tuple[Response, int]:
        # The request is well formed but the project's labelling config cannot drive DECOMP; Label Studio
        # shows this message when the backend is connected.
        logger.error("%s %s: %s", request.method, request.path, error)
        return jsonify(status=422, detail=str(error)), 422

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> tuple[Response, int]:
        logger.exception("%s %s failed", request.method, request.path)
        return jsonify(status=500, detail=f"{type(error).__name__}: {error}"), 500


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _optional_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {type(value).__name__}")
    return value or None


def _project(value: object) -> str:
    try:
        return project_key(value)
    except ValueError as error:
        raise BadRequest(str(error)) from error


def _tasks(body: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of Label Studio task objects")
    for position, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise BadRequest(f"tasks[{position}] must be a task object, got {type(task).__name__}")
        if not isinstance(task.get("data"), dict):
            raise BadRequest(f"tasks[{position}] needs a 'data' object holding the image URL")
    return tasks


def _one_result_per_task(response: dict[str, Any], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The backend's predictions, each carrying a model_version; their count must equal the task count
    because Label Studio drops the whole batch otherwise (and still reports success)."""
    predictions = response.get("predictions", [])
    if len(predictions) != len(tasks):
        raise RuntimeError(f"the backend returned {len(predictions)} predictions for {len(tasks)} tasks")
    version = response.get("model_version")
    if version is None:
        return predictions
    return [{"model_version": version, **prediction} for prediction in predictions]
