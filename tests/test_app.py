"""Every route of the Flask app through its test client with a fake backend: shapes, auth, bad input."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ml_backend.commands import serve
from ml_backend.labelstudio import app as app_module
from ml_backend.labelstudio.app import create_app


class FakeBackend:
    handled_events = frozenset({"ANNOTATION_CREATED", "START_TRAINING"})

    def __init__(
        self, project: str = "default", label_config: str | None = None, log: list | None = None
    ) -> None:
        self.project = project
        self.label_config = label_config
        self.log = log if log is not None else []
        self.model_version = f"fake-{project}"

    def setup(self, **kwargs: Any) -> None:
        self.log.append(("setup", self.project, self.label_config, kwargs))

    def warm_up(self) -> None:
        self.log.append(("warm_up", self.project))

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> dict:
        self.log.append(("predict", self.project, self.label_config, context, kwargs))
        return {
            "model_version": self.model_version,
            "predictions": [{"result": [], "score": 0.5} for _ in tasks],
        }

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict:
        self.log.append(("fit", self.project, event))
        return {"queued": True}

    def versions(self) -> list[str]:
        return [self.model_version, "fake-old"]

    def metrics(self) -> dict:
        return {"project": self.project}


@pytest.fixture
def calls() -> list:
    return []


@pytest.fixture
def client(calls):
    app = create_app(lambda project, label_config: FakeBackend(project, label_config, calls))
    return app.test_client()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_module_builds_no_app_at_import() -> None:
    assert not hasattr(app_module, "app")


@pytest.mark.parametrize("route", ["/", "/health"])
def test_health(client, route: str) -> None:
    response = client.get(route)
    assert response.status_code == 200
    assert response.get_json() == {"status": "UP", "model_class": "FakeBackend"}


@pytest.mark.parametrize(("sent", "key"), [("12.1764264073", "12"), (12, "12"), (None, "default")])
def test_setup_accepts_every_project_form(client, calls, sent, key) -> None:
    body = {"schema": "<View/>", "hostname": "http://ls:8080", "access_token": "tok", "extra_params": None}
    if sent is not None:
        body["project"] = sent
    response = client.post("/setup", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"model_version": f"fake-{key}"}
    assert calls == [
        ("setup", key, "<View/>", {"hostname": "http://ls:8080", "access_token": "tok", "extra_params": None})
    ]


def test_setup_warms_the_model_up_only_once_its_answer_is_sent(client, calls) -> None:
    response = client.post("/setup", json={"project": 4, "schema": "<View/>"})
    assert response.get_json() == {"model_version": "fake-4"}
    assert [call[0] for call in calls] == ["setup"]
    response.close()  # what the WSGI server does after sending the answer
    assert calls[-1] == ("warm_up", "4")


def test_predict_returns_one_result_per_task_with_model_version(client, calls) -> None:
    tasks = [{"id": n, "data": {"image": f"/data/upload/{n}.png"}, "project": 3} for n in range(4)]
    response = client.post(
        "/predict",
        json={
            "tasks": tasks,
            "project": "3.1700000000",
            "label_config": "<View/>",
            "params": {"login": None, "password": None, "context": {"result": []}},
        },
    )
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results == [{"model_version": "fake-3", "result": [], "score": 0.5}] * 4
    assert calls == [("predict", "3", "<View/>", {"result": []}, {"login": None, "password": None})]


def test_predict_takes_the_project_from_the_tasks_when_missing(client, calls) -> None:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {}, "project": 9}]})
    assert response.status_code == 200
    assert calls[0][1] == "9"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"project": 1}, "'tasks' must be a list"),
        ({"tasks": {"id": 1}}, "'tasks' must be a list"),
        ({"tasks": [1]}, "tasks[0] must be a task object"),
        ({"tasks": [{"id": 1}]}, "tasks[0] needs a 'data' object"),
        ({"tasks": [], "params": [1]}, "'params' must be a JSON object"),
        ({"tasks": [], "params": {"context": "x"}}, "'params.context' must be a JSON object"),
        ({"tasks": [], "label_config": 5}, "'label_config' must be a string"),
        ({"tasks": [], "project": "../../etc"}, "not a project id"),
        ({"tasks": [], "project": [1]}, "project must be an int or a string"),
    ],
)
def test_malformed_predict_requests_get_a_clear_400(client, body, message) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    payload = response.get_json()
    assert payload["status"] == 400
    assert message in payload["detail"]


@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
def test_non_json_bodies_get_a_400(client, route: str) -> None:
    for body in (b"not json", b"[1, 2]", b""):
        response = client.post(route, data=body, content_type="application/json")
        assert response.status_code == 400, (route, body)
        assert response.get_json()["detail"] == "request body must be a JSON object"


def test_a_backend_returning_the_wrong_count_is_a_500_not_a_silent_drop() -> None:
    class Short(FakeBackend):
        def predict(self, tasks, context=None, **kwargs):
            return {"model_version": "x", "predictions": []}

    response = create_app(Short()).test_client().post("/predict", json={"tasks": [{"id": 1, "data": {}}]})
    assert response.status_code == 500
    assert response.get_json()["detail"] == "RuntimeError: the backend returned 0 predictions for 1 tasks"


def test_a_crashing_backend_answers_json_without_traceback() -> None:
    class Broken(FakeBackend):
        def predict(self, tasks, context=None, **kwargs):
            raise OSError("checkpoint unreadable")

    response = create_app(Broken()).test_client().post("/predict", json={"tasks": []})
    assert response.status_code == 500
    assert response.get_json() == {"status": 500, "detail": "OSError: checkpoint unreadable"}


def test_webhook_handled_event_is_201_ok(client, calls) -> None:
    response = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": 4, "label_config": "<V/>"}}
    )
    assert response.status_code == 201
    assert response.get_json() == {"result": {"queued": True}, "status": "ok"}
    assert calls == [("fit", "4", "START_TRAINING")]


def test_webhook_unknown_event_is_200_and_not_fitted(client, calls) -> None:
    response = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 4}})
    assert response.status_code == 200
    assert response.get_json() == {"status": "Unknown event"}
    assert calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"project": {"id": 1}}, "needs an 'action' string"),
        ({"action": 5}, "needs an 'action' string"),
        ({"action": "START_TRAINING"}, "START_TRAINING needs 'project.id'"),
        ({"action": "START_TRAINING", "project": 4}, "'project' must be the project object"),
        ({"action": "START_TRAINING", "project": {"id": "x/y"}}, "not a project id"),
    ],
)
def test_malformed_webhooks_get_a_clear_400(client, calls, body, message) -> None:
    response = client.post("/webhook", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["detail"]
    assert calls == []


def test_versions_by_get_query_post_body_or_missing(client) -> None:
    assert client.get("/versions?project=5").get_json() == {"versions": ["fake-5", "fake-old"]}
    assert client.post("/versions", json={"project": "6.17"}).get_json() == {
        "versions": ["fake-6", "fake-old"]
    }
    assert client.get("/versions").get_json() == {"versions": ["fake-default", "fake-old"]}


def test_metrics(client) -> None:
    assert client.get("/metrics?project=2").get_json() == {"project": "2"}
    assert client.get("/metrics").get_json() == {"project": "default"}


def test_unknown_route_and_wrong_method_are_json(client) -> None:
    assert client.get("/nope").get_json()["status"] == 404
    assert client.get("/predict").status_code == 405


ROUTES = [
    ("get", "/", None),
    ("get", "/health", None),
    ("post", "/setup", {"project": 1}),
    ("post", "/predict", {"tasks": []}),
    ("post", "/webhook", {"action": "START_TRAINING", "project": {"id": 1}}),
    ("get", "/versions", None),
    ("post", "/versions", {}),
    ("get", "/metrics", None),
]


@pytest.mark.parametrize(("method", "route", "body"), ROUTES)
def test_basic_auth_guards_every_route(method: str, route: str, body: dict | None) -> None:
    client = create_app(FakeBackend(), basic_auth=("ls", "s3cret")).test_client()
    call = getattr(client, method)
    for headers in ({}, _basic("ls", "wrong"), _basic("other", "s3cret"), {"Authorization": "Bearer s3cret"}):
        refused = call(route, json=body, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="label-studio-decomp"'
        assert "credentials" in refused.get_json()["detail"]
    allowed = call(route, json=body, headers=_basic("ls", "s3cret"))
    assert allowed.status_code in (200, 201)


@pytest.mark.parametrize(("method", "route", "body"), ROUTES)
def test_without_basic_auth_every_route_is_open(method: str, route: str, body: dict | None) -> None:
    response = getattr(create_app(FakeBackend()).test_client(), method)(route, json=body)
    assert response.status_code in (200, 201)


# -- label-studio-decomp serve ------------------------------------------------------------------------


def _serve_args(**flags: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    argv = [item for name, value in flags.items() for item in (f"--{name.replace('_', '-')}", value)]
    return parser.parse_args(argv)


def test_serve_flags_beat_the_environment_which_beats_the_defaults() -> None:
    environ = {"PORT": "9100", "LABEL_STUDIO_HOST": "http://ls:8080", "MODEL_DIR": "/env/models", "X": "y"}
    served = serve.serve_environment(_serve_args(model_dir="/flag/models", threads="2"), environ)
    assert served["MODEL_DIR"] == "/flag/models"
    assert served["THREADS"] == "2"
    assert served["PORT"] == "9100"
    assert served["LABEL_STUDIO_URL"] == "http://ls:8080"
    assert served["HOST"] == "0.0.0.0" and served["LOG_LEVEL"] == "INFO" and served["DEVICE"] == "auto"
    assert served["X"] == "y"
    assert "LABEL_STUDIO_API_KEY" not in served


def test_serve_runs_one_gunicorn_worker_with_threads_and_no_timeout() -> None:
    command = serve.gunicorn_command(serve.serve_environment(_serve_args(port="9200"), {}))
    assert command[:3] == [sys.executable, "-m", "gunicorn"]

    def option(name: str) -> str:
        return command[command.index(name) + 1]

    assert option("--bind") == "0.0.0.0:9200"
    assert (option("--workers"), option("--threads"), option("--timeout")) == ("1", "4", "0")
    assert "--no-control-socket" in command
    assert command[-1] == "ml_backend.labelstudio.app:create_app_from_env()"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"PORT": "http"}, "PORT='http' must be a positive whole number"),
        ({"BASIC_AUTH_USER": "ls"}, "set both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
        ({"DECOMP_VALIDATION_SHARE": "2"}, "DECOMP_VALIDATION_SHARE='2' is not a number"),
    ],
)
def test_serve_refuses_a_bad_environment_before_starting(environ, problem, capsys, monkeypatch) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert serve.run(_serve_args()) == 2
    assert problem in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_serve_starts_gunicorn_that_answers_and_stops_on_sigterm(tmp_path) -> None:
    """... and, once /setup with a labelling config has answered, builds the model in the background."""
    port = _free_port()
    environment = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "MODEL_DIR": str(tmp_path / "models"),
        "DECOMP_ENCODER_WEIGHTS": "none",
    }
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "PORT", "HOST"):
        environment.pop(name, None)
    (tmp_path / "home").mkdir()
    command = [sys.executable, "-m", "ml_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not answer /health in time"
                time.sleep(0.3)
        assert health == {"status": "UP", "model_class": "DecompBackend"}
        setup = f"http://127.0.0.1:{port}/setup"
        assert _post_json(setup, {"project": "5.1700000000"}) == {"model_version": "decomp-v0"}
        schema = (Path(__file__).parents[1] / "examples" / "brush_project.xml").read_text()
        assert _post_json(setup, {"project": "6.1700000000", "schema": schema}) == {
            "model_version": "decomp-v0"
        }
        warmed = tmp_path / "models" / "6" / "checkpoints" / "decomp-v0.pt"
        while not warmed.is_file():
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the model was not built after /setup"
            time.sleep(0.3)
        assert not (tmp_path / "models" / "5").exists(), "no config, nothing to warm up"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert "DECOMP backend on http://127.0.0.1" in output
    assert list((tmp_path / "home").iterdir()) == [], "no control socket or other file under HOME"
