"""The adapter's pure parts against an in-memory stand-in for the label-studio-sdk client.

The stand-in keeps tasks, predictions, views, ML backends and webhooks like Label Studio 1.23.2 does for
the calls the adapter makes (shapes checked against a real server, label-studio.md §3), and logs every call,
so that the tests can assert both the outcome and the number of writes.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import httpx
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
    prediction_score,
    publish_queue,
)

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
        QueueEntry(task_id, priority, [{"id": f"r{task_id}"}], regions)
        for task_id, priority in priorities.items()
    ]


def image_tasks(count: int) -> dict[int, dict]:
    return {task_id: {"image": f"/data/upload/{task_id}.png"} for task_id in range(1, count + 1)}


# -- priority -> score ------------------------------------------------------------------------------------


def test_prediction_score_reverses_priority_so_ascending_score_serves_highest_priority_first() -> None:
    priorities = [0.05, 0.9, 0.5, 0.0, 1.0]
    by_score = sorted(priorities, key=prediction_score)
    assert by_score == sorted(priorities, reverse=True)
    assert prediction_score(0.25) == 0.75
    assert prediction_score(1.0000001) == 0.0  # rounding noise above 1 is clipped
    with pytest.raises(ValueError, match="finite"):
        prediction_score(float("nan"))


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
    entry = QueueEntry(1, 0.25, [], 4)
    assert data_update(task, entry) == {"image": "a.png", PRIORITY_FIELD: 0.25, REGIONS_FIELD: 4}
    current = PoolTask(1, {"image": "a.png", PRIORITY_FIELD: 0.25, REGIONS_FIELD: 4})
    assert data_update(current, entry) is None
    # priorities are compared after rounding, so float noise does not cause writes
    assert data_update(current, QueueEntry(1, 0.25 + 1e-12, [], 4)) is None


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
