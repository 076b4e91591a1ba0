"""DecompBackend through the Flask app: predict, fit, training runs, versions, metrics, restarts.

Label Studio is mocked: images come from a dict (an unknown URL raises ImageLoadError, as a broken
download would), the SDK client is a fake whose ``tasks.list`` returns Label Studio task dicts.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.labelstudio.app import create_app, create_app_from_env
from ml_backend.labelstudio.backend import BackendRuntime, BackendSettings, prediction_score
from ml_backend.labelstudio.config import ProjectConfig
from ml_backend.labelstudio.images import ImageLoadError
from ml_backend.labelstudio.rle import mask_to_rle
from ml_backend.labelstudio.state import ProjectState
from ml_backend.labelstudio.worker import LABELLED_TASKS_QUERY, TrainingOutcome, TrainingWorker
from ml_backend.strategies.base import ScoredImage

K = 4
LABEL_CONFIG = f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object"/>
  </BrushLabels>
  <RectangleLabels name="decomp_regions" toName="image" decomp_k="{K}" decomp_region_size="8"
                   decomp_train_every="2" decomp_epochs="2">
    <Label value="Annotate here"/>
  </RectangleLabels>
</View>"""
SIZE = 64


def _photo(seed: int) -> np.ndarray:
    """A bright square object on a darker textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    image[16 + seed : 40 + seed, 20:44] = rng.integers(180, 256, (24, 24, 3), dtype=np.uint8)
    return image


IMAGES = {f"/data/upload/1/{n}.png": _photo(n) for n in range(4)}


def load_fake_image(url: str, task_id: int | None, label_studio_url: str | None, api_key: str | None):
    if url not in IMAGES:
        raise ImageLoadError(url, "HTTP 404 from Label Studio")
    return IMAGES[url]


def _task(task_id: int, url: str, annotations: list[dict] | None = None) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": url}, "project": 1, "annotations": annotations or []}


def _annotation(seed: int, *, cancelled: bool = False, updated_at: str = "2026-11-27T10:00:00Z") -> dict:
    """Paint the object of photo ``seed`` inside one proposal rectangle covering the image's top half."""
    painted = np.zeros((SIZE, SIZE), np.uint8)
    painted[16 + seed : 40 + seed, 20:44] = 255
    return {
        "id": 100 + seed,
        "was_cancelled": cancelled,
        "updated_at": updated_at,
        "result": [
            {
                "id": "p1",
                "from_name": "decomp_regions",
                "to_name": "image",
                "type": "rectanglelabels",
                "value": {"x": 0, "y": 0, "width": 100, "height": 50, "rectanglelabels": ["Annotate here"]},
            },
            {
                "id": "b1",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": SIZE,
                "original_height": SIZE,
                "value": {"format": "rle", "rle": mask_to_rle(painted), "brushlabels": ["Object"]},
            },
        ],
    }


class FakeTasks:
    def __init__(self, tasks: list[dict] | Exception) -> None:
        self.tasks = tasks
        self.calls: list[dict] = []

    def list(self, **kwargs: Any):
        self.calls.append(kwargs)
        if isinstance(self.tasks, Exception):
            raise self.tasks
        return iter(self.tasks)


class FakeClient:
    def __init__(self, tasks: list[dict] | Exception) -> None:
        self.tasks = FakeTasks(tasks)


def _settings(tmp_path: Path, **changes: Any) -> BackendSettings:
    values = {
        "model_dir": tmp_path / "models",
        "label_studio_url": "http://ls.test:8080",
        "api_key": "token123",
        "device": "cpu",
        "encoder_weights": None,
        "crop_size": 64,
        "batch_size": 2,
    }
    return BackendSettings(**{**values, **changes})


@pytest.fixture
def client_tasks() -> list:
    return [
        _task(1, "/data/upload/1/0.png", [_annotation(0)]),
        _task(2, "/data/upload/1/1.png", [_annotation(1, updated_at="2026-01-01"), _annotation(1)]),
        _task(3, "/data/upload/1/2.png", [_annotation(2, cancelled=True)]),
        _task(4, "/data/upload/1/missing.png", [_annotation(3)]),
        _task(5, "/data/upload/1/3.png", [_annotation(3)]),
    ]


@pytest.fixture
def fake_client(client_tasks) -> FakeClient:
    return FakeClient(client_tasks)


@pytest.fixture
def runtime(tmp_path, fake_client):
    runtime = BackendRuntime(
        _settings(tmp_path), image_loader=load_fake_image, client_factory=lambda url, key: fake_client
    )
    yield runtime
    runtime.worker.stop(timeout=60)


@pytest.fixture
def http(runtime):
    return create_app(runtime.backend).test_client()


def _setup(http, project: object = "1.1700000000") -> dict:
    response = http.post("/setup", json={"project": project, "schema": LABEL_CONFIG, "hostname": "http://x"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _predict(http, tasks: list[dict], project: object = "1.1700000000") -> list[dict]:
    response = http.post("/predict", json={"tasks": tasks, "project": project, "label_config": LABEL_CONFIG})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    return results


def _proposals(prediction: dict) -> list[dict]:
    return [r for r in prediction["result"] if r["from_name"] == "decomp_regions"]


def test_setup_answers_the_version_without_loading_weights(http, runtime) -> None:
    assert _setup(http) == {"model_version": "decomp-v0"}
    assert runtime._models == {}
    state = ProjectState(runtime.settings.model_dir, 1)
    assert state.current_checkpoint() is None
    assert state.label_config() == LABEL_CONFIG


def test_setup_answers_before_the_model_warms_up_and_predict_reuses_the_warm_model(
    http, runtime, monkeypatch
) -> None:
    release, built = threading.Event(), []
    build = runtime.initial_model

    def slow_build(config):
        assert release.wait(30), "the test never let the build finish"
        built.append(build(config))
        return built[-1]

    def warm_ups() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "decomp-warm-up-1"]

    monkeypatch.setattr(runtime, "initial_model", slow_build)
    response = http.post("/setup", json={"project": "1.1700000000", "schema": LABEL_CONFIG})
    assert response.get_json() == {"model_version": "decomp-v0"}
    assert warm_ups() == [], "nothing competes with /setup before its answer is sent"
    response.close()  # the server has sent the answer
    (warming,) = warm_ups()
    assert warming.is_alive() and runtime._models == {}, "/setup did not wait for the model"
    http.post("/setup", json={"project": 1, "schema": LABEL_CONFIG}).close()
    assert warm_ups() == [warming], "Label Studio's repeated /setup calls start no second warm-up"

    release.set()
    warming.join(60)
    (model,) = built
    assert runtime._models["1"].model is model
    assert ProjectState(runtime.settings.model_dir, 1).current_checkpoint().is_file()
    assert _predict(http, [_task(91, "/data/upload/1/0.png")])[0]["model_version"] == "decomp-v0"
    assert runtime._models["1"].model is model and built == [model], "predict reused the warm model"


def test_setup_with_an_unusable_config_names_what_is_missing(http) -> None:
    config = (
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="A"/></BrushLabels></View>'
    )
    response = http.post("/setup", json={"project": 1, "schema": config})
    assert response.status_code == 422
    assert "no proposals control named 'decomp_regions'" in response.get_json()["detail"]


def test_predict_gives_every_task_a_result_even_with_a_bad_image(http, runtime) -> None:
    tasks = [
        _task(11, "/data/upload/1/0.png"),
        _task(12, "/data/upload/1/missing.png"),
        _task(13, "/data/upload/1/1.png"),
        {"id": 14, "data": {"picture": "/data/upload/1/1.png"}},
    ]
    results = _predict(http, tasks)

    for failed in (results[1], results[3]):
        assert failed == {"result": [], "score": 1.0, "model_version": "decomp-v0"}
    for good in (results[0], results[2]):
        assert good["model_version"] == "decomp-v0"
        assert 0.0 <= good["score"] <= 1.0
        proposals = _proposals(good)
        assert len(proposals) == K
        assert all(p["readonly"] is True and p["type"] == "rectanglelabels" for p in proposals)
        assert all(p["value"]["rectanglelabels"] == ["Annotate here"] for p in proposals)
        assert all(p["meta"]["text"][0].startswith("class: ") for p in proposals)
        brushes = [r for r in good["result"] if r["from_name"] == "tag"]
        assert all(r["type"] == "brushlabels" and r["original_width"] == SIZE for r in brushes)

    state = ProjectState(runtime.settings.model_dir, 1)
    assert state.current_version() == "decomp-v0"
    assert state.current_checkpoint().is_file(), "the initial model is saved so a restart serves the same"
    issued = state.issued_proposals(11)
    assert issued["model_version"] == "decomp-v0"
    assert len(issued["regions"]) == K
    assert issued["score"] == pytest.approx(results[0]["score"])
    assert state.issued_proposals(12) is None
    counts = runtime.latency.snapshot()
    assert (counts["requests"], counts["tasks"], counts["failed_tasks"]) == (1, 4, 2)
    assert set(counts["latency"]) == {"load", "forward", "decomp", "encode", "total"}


def test_proposals_are_deterministic_per_task_and_version_and_survive_a_restart(tmp_path, http) -> None:
    task = _task(21, "/data/upload/1/2.png")
    first = _predict(http, [task])[0]
    again = _predict(http, [task])[0]

    restarted = BackendRuntime(_settings(tmp_path), image_loader=load_fake_image)
    after_restart = _predict(create_app(restarted.backend).test_client(), [task])[0]

    def geometry(prediction: dict) -> list:
        return [(p["value"], p["meta"]) for p in _proposals(prediction)]

    assert geometry(first) == geometry(again) == geometry(after_restart)
    assert first["score"] == again["score"] == after_restart["score"]
    assert after_restart["model_version"] == "decomp-v0"


def test_score_orders_tasks_by_descending_decomp_priority(http, runtime, monkeypatch) -> None:
    """With a model that sees class 1 exactly where the red channel is bright, the task showing both
    classes has priority w0 + w1 = 1 and the all-background one w0 = 0.2: the former must score lower."""

    def fake_score_image(model, image, **options):
        labels = (image[..., 0] > 127).astype(np.uint8)
        return ScoredImage(labels, np.full(labels.shape, 0.9, np.float32))

    monkeypatch.setattr("ml_backend.pipeline.score_image", fake_score_image)
    state = ProjectState(runtime.settings.model_dir, 1)
    state.write_pool_statistics({"tau": 0.7, "predicted": [100, 100], "confident": [80, 20]}, "decomp-v0")
    IMAGES["/data/upload/1/dark.png"] = np.zeros((SIZE, SIZE, 3), np.uint8)
    tasks = [_task(31, "/data/upload/1/dark.png"), _task(32, "/data/upload/1/0.png")]
    try:
        dark, mixed = _predict(http, tasks)
    finally:
        del IMAGES["/data/upload/1/dark.png"]

    weights = np.array([0.2, 0.8])  # 1 - rates [0.8, 0.2], normalised
    assert dark["score"] == pytest.approx(1 - weights[0])
    assert mixed["score"] == pytest.approx(1 - weights.sum())
    assert mixed["score"] < dark["score"]
    assert state.issued_proposals(32)["priority"] == pytest.approx(1.0)
    queue = http.get("/metrics?project=1").get_json()["queue"]
    assert queue["pool"] == {"tau": 0.7, "predicted": [100, 100], "confident": [80, 20]}
    assert queue["class_weights"] == {"background": pytest.approx(0.2), "Object": pytest.approx(0.8)}
    assert queue["proposals_issued"] == 2


def test_predict_before_any_pool_statistics_uses_uniform_weights(http, runtime, monkeypatch) -> None:
    def all_object(model, image, **options):
        labels = np.ones(image.shape[:2], np.uint8)
        return ScoredImage(labels, np.full(labels.shape, 0.9, np.float32))

    monkeypatch.setattr("ml_backend.pipeline.score_image", all_object)
    (prediction,) = _predict(http, [_task(41, "/data/upload/1/0.png")])
    assert prediction["score"] == pytest.approx(0.5)


class GatedTrain:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list = []

    def __call__(self, request):
        self.requests.append(request)
        assert self.release.wait(10)
        return TrainingOutcome("decomp-v9")


def test_webhook_only_enqueues_and_answers_while_training_runs(http, runtime) -> None:
    gate = GatedTrain()
    runtime.worker = TrainingWorker(gate)
    try:
        project = {"id": 1, "label_config": LABEL_CONFIG}
        response = http.post("/webhook", json={"action": "START_TRAINING", "project": project})
        assert response.status_code == 201
        assert response.get_json() == {
            "result": {"event": "START_TRAINING", "training": "queued"},
            "status": "ok",
        }
        assert not gate.release.is_set(), "the answer came while the run was still blocked"

        created = {
            "action": "ANNOTATION_CREATED",
            "annotation": {"id": 1},
            "task": {"id": 1},
            "project": project,
        }
        first = http.post("/webhook", json=created).get_json()["result"]
        assert first == {
            "event": "ANNOTATION_CREATED",
            "training": "waiting",
            "annotations_since_last_run": 1,
            "train_every": 2,
        }
        cancelled = {**created, "annotation": {"id": 2, "was_cancelled": True}}
        assert http.post("/webhook", json=cancelled).get_json()["result"]["annotations_since_last_run"] == 1
        second = http.post("/webhook", json={**created, "action": "ANNOTATION_UPDATED"}).get_json()["result"]
        assert second["training"] == "queued"
        bulk = {"action": "ANNOTATIONS_CREATED", "annotations": [{}, {}], "project": project}
        assert http.post("/webhook", json=bulk).get_json()["result"]["training"] == "coalesced"
        unknown = http.post("/webhook", json={"action": "TASKS_CREATED", "project": project})
        assert unknown.status_code == 200 and unknown.get_json() == {"status": "Unknown event"}
    finally:
        gate.release.set()
        assert runtime.worker.wait_until_idle(timeout=10)
        runtime.worker.stop()
    assert len(gate.requests) == 2
    assert gate.requests[1].reasons == ("ANNOTATION_UPDATED x2", "ANNOTATIONS_CREATED x2")


def test_start_training_runs_in_the_background_and_serves_a_new_version(http, runtime, fake_client) -> None:
    _setup(http)
    before = _predict(http, [_task(51, "/data/upload/1/0.png")])[0]
    assert before["model_version"] == "decomp-v0"

    response = http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert response.status_code == 201
    assert runtime.worker.wait_until_idle(timeout=120)

    (call,) = fake_client.tasks.calls
    assert call["project"] == 1 and call["fields"] == "all"
    assert json.loads(call["query"]) == LABELLED_TASKS_QUERY

    assert http.get("/versions?project=1").get_json() == {"versions": ["decomp-v1", "decomp-v0"]}
    after = _predict(http, [_task(51, "/data/upload/1/0.png")])[0]
    assert after["model_version"] == "decomp-v1"

    metrics = http.get("/metrics?project=1").get_json()
    (run,) = metrics["training"]["runs"]
    assert run["status"] == "succeeded" and run["model_version"] == "decomp-v1"
    assert run["metrics"]["samples"] == 3, "tasks 1, 2, 5; task 3 cancelled, task 4 unreadable"
    assert run["metrics"]["labelled_tasks"] == 5
    assert len(run["metrics"]["losses"]) == 2
    skipped = run["metrics"]["skipped"]
    assert any("task 3" in reason and "cancelled" in reason for reason in skipped)
    assert any("task 4" in reason and "HTTP 404" in reason for reason in skipped)
    assert metrics["training"]["last_loss"] == run["metrics"]["loss"]
    assert metrics["training"]["unchanged_runs"] == int(run["metrics"]["weights_unchanged"])
    assert metrics["model_version"] == "decomp-v1"
    assert metrics["versions"][0]["metrics"]["samples"] == 3
    assert metrics["predict"]["tasks"] == 2
    assert metrics["queue"] == {
        "model_version": None,
        "updated_at": None,
        "pool": {},
        "class_weights": {"background": 0.5, "Object": 0.5},
        "images_scored": 0,
        "proposals_issued": 1,
    }


def test_a_run_whose_epochs_never_beat_the_start_publishes_the_unchanged_weights_and_says_so(
    http, runtime, monkeypatch, caplog
) -> None:
    from types import SimpleNamespace

    def no_epoch_helps(model, samples, **options):
        return SimpleNamespace(
            history=[object(), object()],
            losses=[0.9, 0.8],
            val_mious=[0.30, 0.35],
            initial_val_miou=0.40,
            best_val_miou=0.40,
            best_epoch=0,  # the trainer handed back the starting weights
            validation="samples",
            train_pixels=100,
            val_pixels=40,
        )

    monkeypatch.setattr("ml_backend.model.training.train_segmentation", no_epoch_helps)
    _setup(http)
    _predict(http, [_task(52, "/data/upload/1/0.png")])
    with caplog.at_level("WARNING", logger="ml_backend.labelstudio.worker"):
        http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert runtime.worker.wait_until_idle(timeout=60)

    assert "no epoch of this run beat its starting weights" in caplog.text
    assert "val mIoU 0.4000 before training, 0.3500 at best" in caplog.text
    assert "the weights did not change: decomp-v1 serves the starting weights again" in caplog.text
    metrics = http.get("/metrics?project=1").get_json()
    (run,) = metrics["training"]["runs"]
    assert run["status"] == "succeeded" and run["model_version"] == "decomp-v1"
    assert run["metrics"]["weights_unchanged"] is True and run["metrics"]["best_epoch"] == 0
    assert metrics["training"]["unchanged_runs"] == 1
    assert metrics["model_version"] == "decomp-v1", "a version per run, as Label Studio expects"
    state = ProjectState(runtime.settings.model_dir, 1)
    before = torch_state(state.checkpoint_path("decomp-v0"))
    after = torch_state(state.checkpoint_path("decomp-v1"))
    assert before.keys() == after.keys()
    assert all(before[key].equal(after[key]) for key in before), "the published weights are the old ones"


def torch_state(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (ConnectionError("Label Studio is down"), "ConnectionError: Label Studio is down"),
        ([], "TrainingError: no labelled task could be used"),
    ],
)
def test_a_failed_run_leaves_the_served_model_untouched(tmp_path, failure, message) -> None:
    runtime = BackendRuntime(
        _settings(tmp_path), image_loader=load_fake_image, client_factory=lambda url, key: FakeClient(failure)
    )
    http = create_app(runtime.backend).test_client()
    _setup(http)
    assert _predict(http, [_task(61, "/data/upload/1/0.png")])[0]["model_version"] == "decomp-v0"
    http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert runtime.worker.wait_until_idle(timeout=60)
    runtime.worker.stop()

    assert _predict(http, [_task(61, "/data/upload/1/0.png")])[0]["model_version"] == "decomp-v0"
    assert http.get("/versions?project=1").get_json() == {"versions": ["decomp-v0"]}
    training = http.get("/metrics?project=1").get_json()["training"]
    assert training["failed_runs"] == 1
    assert training["runs"][0]["status"] == "failed"
    assert training["runs"][0]["error"].startswith(message)
    assert training["last_loss"] is None


def test_training_without_label_studio_credentials_fails_clearly(tmp_path) -> None:
    runtime = BackendRuntime(
        _settings(tmp_path, label_studio_url=None, api_key=None), image_loader=load_fake_image
    )
    http = create_app(runtime.backend).test_client()
    http.post("/setup", json={"project": 1, "schema": LABEL_CONFIG})
    http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert runtime.worker.wait_until_idle(timeout=60)
    runtime.worker.stop()
    (run,) = ProjectState(runtime.settings.model_dir, 1).runs()
    assert "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in run["error"]


def test_setup_credentials_stand_in_when_the_env_has_none(tmp_path) -> None:
    seen = []
    runtime = BackendRuntime(
        _settings(tmp_path, label_studio_url=None, api_key=None),
        image_loader=lambda url, task_id, ls_url, key: seen.append((ls_url, key)) or IMAGES[url],
    )
    http = create_app(runtime.backend).test_client()
    http.post(
        "/setup",
        json={"project": 1, "schema": LABEL_CONFIG, "hostname": "http://ls:8080", "access_token": "t"},
    )
    _predict(http, [_task(71, "/data/upload/1/0.png")])
    assert seen == [("http://ls:8080", "t")]


def test_changed_classes_start_a_new_model_version(http, runtime) -> None:
    _predict(http, [_task(81, "/data/upload/1/0.png")])
    more_classes = LABEL_CONFIG.replace(
        '<Label value="Object"/>', '<Label value="Object"/><Label value="Edge"/>'
    )
    response = http.post(
        "/predict",
        json={"tasks": [_task(81, "/data/upload/1/0.png")], "project": 1, "label_config": more_classes},
    )
    assert response.get_json()["results"][0]["model_version"] == "decomp-v1"
    assert http.get("/versions?project=1").get_json() == {"versions": ["decomp-v1", "decomp-v0"]}


def test_predict_without_any_known_config_is_a_422(http) -> None:
    response = http.post("/predict", json={"tasks": [_task(1, "/data/upload/1/0.png")], "project": 77})
    assert response.status_code == 422
    assert "no labelling config is known for project 77" in response.get_json()["detail"]


def test_settings_from_env_and_their_errors(tmp_path) -> None:
    settings = BackendSettings.from_env(
        {
            "MODEL_DIR": str(tmp_path),
            "LABEL_STUDIO_HOST": "http://ls:8080",
            "LABEL_STUDIO_API_KEY": "abc",
            "DECOMP_ENCODER_WEIGHTS": "none",
            "DECOMP_TRAIN_FROM_SCRATCH": "yes",
            "DECOMP_TILE_SIZE": "512",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.model_dir == tmp_path
    assert settings.label_studio_url == "http://ls:8080"
    assert settings.encoder_weights is None
    assert settings.train_from_scratch is True
    assert settings.tile_size == 512
    assert settings.log_level == "DEBUG"
    assert BackendSettings.from_env({}).model_dir.name == "models"
    for environ, message in [
        ({"DECOMP_VALIDATION_SHARE": "abc"}, "DECOMP_VALIDATION_SHARE='abc' is not a number between 0.0"),
        ({"DECOMP_BATCH_SIZE": "0"}, "DECOMP_BATCH_SIZE='0' is not a whole number between 1"),
        ({"DECOMP_TILE_SIZE": "100"}, "DECOMP_TILE_SIZE=100 must be a multiple of 32"),
        ({"DECOMP_TRAIN_FROM_SCRATCH": "maybe"}, "is not a yes/no value"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='LOUD' is not one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            BackendSettings.from_env(environ)


def test_the_app_from_env_serves_with_basic_auth(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    http = create_app_from_env().test_client()
    assert http.get("/health").status_code == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    assert http.get("/health", headers=auth).get_json() == {"status": "UP", "model_class": "DecompBackend"}
    assert http.post("/setup", json={"project": 3}, headers=auth).get_json() == {"model_version": "decomp-v0"}
    created = {"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": []}
    answer = http.post("/webhook", json=created, headers=auth)
    assert answer.status_code == 201, "the adapter's queue updater answers new tasks"
    assert answer.get_json()["result"] == {"event": "TASKS_CREATED", "result": "nothing to score"}


def test_prediction_score_is_one_minus_priority_within_bounds() -> None:
    assert prediction_score(0.25) == 0.75
    assert prediction_score(1.0000000001) == 0.0
    assert prediction_score(-1e-12) == 1.0
    with pytest.raises(ValueError, match="finite"):
        prediction_score(float("nan"))


def test_extra_webhook_events_reach_their_registered_handler(http, runtime) -> None:
    seen = []
    runtime.on_event("TASKS_CREATED", lambda project, data: seen.append((project, data["tasks"])) or "queued")
    body = {"action": "TASKS_CREATED", "tasks": [{"id": 5}], "project": {"id": 2}}
    response = http.post("/webhook", json=body)
    assert response.status_code == 201
    assert response.get_json()["result"] == {"event": "TASKS_CREATED", "result": "queued"}
    assert seen == [("2", [{"id": 5}])]
    with pytest.raises(ValueError, match="training event"):
        runtime.on_event("START_TRAINING", lambda project, data: None)


def test_two_runtimes_creating_the_initial_model_at_once_publish_one_version(tmp_path, monkeypatch) -> None:
    """`serve` and the reprioritize command share MODEL_DIR: both may create the project's first model."""
    build = BackendRuntime.initial_model
    builds = iter(range(2))

    def build_after_the_first_is_published(self, config):
        if next(builds) == 1:  # a second build may only finish once the first model is published
            deadline = time.monotonic() + 60
            while ProjectState(self.settings.model_dir, 1).current_checkpoint() is None:
                assert time.monotonic() < deadline, "the first initial model was never published"
                time.sleep(0.05)
        return build(self, config)

    monkeypatch.setattr(BackendRuntime, "initial_model", build_after_the_first_is_published)
    config = ProjectConfig.from_label_config(LABEL_CONFIG)
    runtimes = [BackendRuntime(_settings(tmp_path)) for _ in range(2)]
    versions: list[str] = []

    def serve_first_model(runtime: BackendRuntime) -> None:
        versions.append(runtime.served_model(ProjectState(runtime.settings.model_dir, 1), config).version)

    threads = [threading.Thread(target=serve_first_model, args=(runtime,)) for runtime in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    state = ProjectState(runtimes[0].settings.model_dir, 1)
    assert versions == ["decomp-v0", "decomp-v0"]
    assert [entry["version"] for entry in state.versions()] == ["decomp-v0"]
