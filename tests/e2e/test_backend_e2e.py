"""Issue 3 end to end: a real Label Studio 1.23 and our backend (``label-studio-decomp serve``), driven only
through the label-studio-sdk client, as a user's project would be: a brush project with a DECOMP proposals
control, local-file tasks, the backend connected with ``ml.create``, predictions retrieved and stored by Label
Studio, annotations submitted inside the proposals, training started by the webhook and finished in the
background, and the new model version reported by Label Studio."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from ml_backend.devtools import local_http_client
from ml_backend.devtools.backend_process import basic_auth_header

pytestmark = pytest.mark.e2e

K = 3
REGION_SIZE = 32
CLASS_LABELS = {"Tumor", "Stroma", "Lymphocytes", "Necrosis"}
PROPOSAL_LABELS = {"Annotate here"} | CLASS_LABELS
DECOMP_SETTINGS = {
    "decomp_k": str(K),
    "decomp_region_size": str(REGION_SIZE),
    "decomp_train_every": "2",
    "decomp_epochs": "1",
}
TRAINING_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def project(image_project, sample_images):
    """A brush project with K proposals per image and its tasks' image sizes, {task id: (height, width)}."""
    return image_project("DECOMP e2e", sample_images, **DECOMP_SETTINGS)


@pytest.fixture(scope="module")
def connected(ls_client, project, backend):
    created = ls_client.ml.create(project=project[0].id, url=backend.url, title="DECOMP")
    return ls_client.ml.get(created.id)


@pytest.fixture(scope="module")
def predictions(ls_client, project, connected) -> dict[int, Any]:
    """The predictions Label Studio stored after "Retrieve predictions" over all tasks, by task id."""
    ls_client.actions.create(
        id="retrieve_tasks_predictions", project=project[0].id, selected_items={"all": True, "excluded": []}
    )
    stored: dict[int, list] = {}
    for prediction in ls_client.predictions.list(project=project[0].id):
        stored.setdefault(prediction.task, []).append(prediction)
    assert all(len(kept) == 1 for kept in stored.values()), "one prediction per task expected"
    return {task: kept[0] for task, kept in stored.items()}


def _backend_metrics(backend, project_id: int) -> dict[str, Any]:
    with local_http_client(base_url=backend.url, timeout=10, headers=backend.auth_headers) as http:
        answer = http.get("/metrics", params={"project": project_id})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_connected_backend_is_ready_and_gets_the_webhook(ls_client, project, connected, backend) -> None:
    assert connected.state == "CO"
    assert connected.model_version  # reported by /setup
    hooks = ls_client.webhooks.list(project=str(project[0].id))
    assert [hook.url for hook in hooks] == [f"{backend.url}/webhook"]


def test_stored_predictions_decode_to_class_masks_and_carry_k_proposals(
    ls_client, project, connected, predictions, proposal_box
) -> None:
    _, sizes = project
    assert set(predictions) == set(sizes)
    version = ls_client.ml.get(connected.id).model_version
    for task_id, prediction in predictions.items():
        height, width = sizes[task_id]
        assert prediction.model_version == version
        assert 0.0 <= prediction.score <= 1.0
        brushes = [item for item in prediction.result if item["from_name"] == "tag"]
        proposals = [item for item in prediction.result if item["from_name"] == "decomp_regions"]
        assert len(brushes) + len(proposals) == len(prediction.result)

        labels = [item["value"]["brushlabels"][0] for item in brushes]
        assert brushes and set(labels) <= CLASS_LABELS and len(labels) == len(set(labels))
        painted = np.zeros((height, width), int)
        for item in brushes:
            assert item["type"] == "brushlabels" and item["to_name"] == "image"
            assert (item["original_height"], item["original_width"]) == (height, width)
            alpha = decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
            assert set(np.unique(alpha)) <= {0, 255} and alpha.any()
            painted += alpha == 255
        assert painted.max() == 1  # one class per pixel

        assert len(proposals) == K
        for item in proposals:
            assert item["type"] == "rectanglelabels" and item["readonly"] is True
            assert (item["original_height"], item["original_width"]) == (height, width)
            assert set(item["value"]["rectanglelabels"]) <= PROPOSAL_LABELS
            rows, cols = proposal_box(item)
            assert 0 <= rows.start < rows.stop <= height and 0 <= cols.start < cols.stop <= width
            assert rows.stop - rows.start <= REGION_SIZE and cols.stop - cols.start <= REGION_SIZE


def test_annotations_train_a_new_model_in_the_background(
    ls_client, project, connected, predictions, backend, annotate_inside_proposals
) -> None:
    project_id = project[0].id
    before = ls_client.ml.get(connected.id).model_version
    first, second = sorted(predictions)[:2]

    ls_client.annotations.create(
        id=first, result=annotate_inside_proposals(predictions[first], "Tumor", painted=1)
    )
    waiting = _backend_metrics(backend, project_id)["training"]
    assert waiting["annotations_since_last_run"] == 1 and waiting["runs"] == []  # train_every is 2

    stored = ls_client.annotations.list(id=first)[0].result
    assert {item["from_name"] for item in stored} == {"tag", "decomp_regions"}

    started = time.monotonic()
    ls_client.annotations.create(
        id=second, result=annotate_inside_proposals(predictions[second], "Stroma", painted=1)
    )
    while True:
        runs = _backend_metrics(backend, project_id)["training"]["runs"]
        if runs:
            break
        assert time.monotonic() - started < TRAINING_TIMEOUT_S, "no training run finished in time"
        time.sleep(1.0)
    print(f"training after the second annotation finished in {time.monotonic() - started:.1f} s")
    (run,) = runs
    assert run["status"] == "succeeded", run.get("error")
    assert run["reasons"] and run["model_version"] != before

    after = ls_client.ml.get(connected.id)
    assert after.state == "CO" and after.model_version == run["model_version"]
    assert _backend_metrics(backend, project_id)["training"]["annotations_since_last_run"] == 0


def test_basic_auth_backend_connects_and_receives_annotation_events(
    ls_client, image_project, sample_images, start_backend, tmp_path_factory
) -> None:
    credentials = ("annotator", "s3cret-pass")
    guarded = start_backend(tmp_path_factory.mktemp("guarded-models"), basic_auth=credentials)
    try:
        with local_http_client(base_url=guarded.url, timeout=10) as http:
            assert http.get("/health").status_code == 401
        project, sizes = image_project("DECOMP basic auth", sample_images[:1], **DECOMP_SETTINGS)
        created = ls_client.ml.create(
            project=project.id,
            url=guarded.url,
            title="DECOMP (basic auth)",
            auth_method="BASIC_AUTH",
            basic_auth_user=credentials[0],
            basic_auth_pass=credentials[1],
        )
        assert ls_client.ml.get(created.id).state == "CO"
        # Label Studio creates the backend's webhook without credentials (shared notes §7.1): add them.
        (hook,) = ls_client.webhooks.list(project=str(project.id))
        ls_client.webhooks.update(hook.id, headers={"Authorization": basic_auth_header(*credentials)})

        (task_id,) = sizes
        height, width = sizes[task_id]
        painted = np.zeros((height, width), np.uint8)
        painted[: height // 2] = 255
        stroke = {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "value": {"format": "rle", "rle": mask2rle(painted), "brushlabels": ["Necrosis"]},
        }
        ls_client.annotations.create(id=task_id, result=[stroke])
        assert _backend_metrics(guarded, project.id)["training"]["annotations_since_last_run"] == 1
    finally:
        guarded.stop()
