"""The annotator's view, in Debian's headless Chromium: log in to a demo-like Label Studio, open the top task
of the "DECOMP queue" tab in the labelling view ("Label All Tasks" from the tab) and read Label Studio's own
state (``window.Htx``, the labelling frontend's store) to check that the pre-annotation and the K read-only
proposal regions are on screen. The screenshot goes to the test's folder, and also to
``$DECOMP_SCREENSHOT_DIR/labelling-view.png`` when that variable is set (the README's picture comes from
``DECOMP_SCREENSHOT_DIR=docs``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from adapters.connect import LabelStudioSettings, connect_backend
from adapters.queue import PRIORITY_FIELD, REGIONS_FIELD, reprioritize
from ml_backend.commands.demo import ensure_local_storage
from ml_backend.commands.reprioritize import backend_runtime
from ml_backend.demo_data import DEMO_LABEL_CONFIG, write_demo_images

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEMO_TILES = ("astronaut_r1_c1", "chelsea_r0_c1", "coffee_r1_c2", "ihc_r1_c1", "voc_r1_c1")
PAGE_TIMEOUT_S = 90

# What the labelling frontend shows: the task, the predictions it loaded, and the regions of the
# annotation it is editing (Label Studio starts it from the prediction), by control name.
STORE_STATE = """
const store = window.Htx && window.Htx.annotationStore;
if (!store || !store.selected || !window.Htx.task) return null;
const regions = (entity) => entity.regionStore.regions.map((region) => ({
  control: region.results[0].from_name.name, type: region.type, readonly: !!region.readonly,
}));
return {
  task: window.Htx.task.id,
  predictions: store.predictions.map(regions),
  editing: regions(store.selected),
  image_loaded: Array.from(document.querySelectorAll("img")).some(
    (img) => img.complete && img.naturalWidth > 0),
};
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.is_file():
            pytest.fail(
                f"{program} is missing: run scripts/setup.sh (apt-get install chromium chromium-driver)"
            )
    profile = tempfile.mkdtemp(prefix="decomp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_project(ls_client, label_studio, backend):
    """A small copy of the demo project: the demo's config, sampling and tiles, connected and queued."""
    project = ls_client.projects.create(
        title="DECOMP demo (browser)", label_config=DEMO_LABEL_CONFIG, sampling="Uncertainty sampling"
    )
    folder = label_studio.local_files_root / "browser-demo"
    for path in write_demo_images(Path(tempfile.mkdtemp(prefix="decomp-tiles-"))):
        if path.stem in DEMO_TILES:
            folder.mkdir(exist_ok=True)
            shutil.copy(path, folder / path.name)
    ensure_local_storage(ls_client, project.id, folder)
    settings = LabelStudioSettings(label_studio.url, label_studio.api_key)
    connect_backend(ls_client, settings, project.id, backend.url)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in backend.extra_env.items():
            patch.setenv(name, value)
        report = reprioritize(ls_client, backend_runtime(settings, str(backend.model_dir)), project.id)
    assert report.scored == len(DEMO_TILES)
    return project.id, report.publish.view_id


def _log_in(browser, label_studio) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(label_studio.username)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda page: "/user/login" not in page.current_url)


def _labelling_state(browser) -> dict:
    """The store's state once the task, its prediction and the image are all on screen."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        state = browser.execute_script(STORE_STATE)
        if state and state["predictions"] and state["editing"] and state["image_loaded"]:
            return state
        assert time.monotonic() < deadline, f"the labelling view did not finish loading: {state}"
        time.sleep(0.5)


def test_top_task_of_the_queue_shows_the_pre_annotation_and_the_proposals(
    browser, label_studio, ls_client, demo_project, tmp_path
) -> None:
    project_id, view_id = demo_project
    tasks = {task.id: task.data for task in ls_client.tasks.list(project=project_id, include="id,data")}
    _log_in(browser, label_studio)
    browser.get(f"{label_studio.url}/projects/{project_id}/data?tab={view_id}&labeling=1")
    state = _labelling_state(browser)
    time.sleep(1.0)  # let the canvas paint the masks before the picture is taken
    screenshot = tmp_path / "labelling-view.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("DECOMP_SCREENSHOT_DIR"):
        shutil.copy(screenshot, Path(os.environ["DECOMP_SCREENSHOT_DIR"]) / screenshot.name)

    opened = tasks[state["task"]]
    assert opened[PRIORITY_FIELD] == max(data[PRIORITY_FIELD] for data in tasks.values())
    (stored,) = [p for p in ls_client.predictions.list(task=state["task"])]
    stored_classes = [item for item in stored.result if item["from_name"] == "tag"]
    (shown,) = state["predictions"]
    for regions in (shown, state["editing"]):
        masks = [region for region in regions if region["control"] == "tag"]
        proposals = [region for region in regions if region["control"] == "decomp_regions"]
        assert len(masks) == len(stored_classes) > 0 and all(r["type"] == "brushregion" for r in masks)
        assert len(proposals) == opened[REGIONS_FIELD] == 6
        assert all(r["type"] == "rectangleregion" and r["readonly"] for r in proposals)
