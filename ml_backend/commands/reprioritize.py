"""``label-studio-decomp reprioritize``: score a project's unlabelled pool with the current model and
reorder the project's queue by DECOMP priority (the "DECOMP queue" tab and Uncertainty sampling)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from ml_backend.commands.connect import add_environment_option, add_label_studio_arguments

if TYPE_CHECKING:
    from adapters.connect import LabelStudioSettings
    from ml_backend.labelstudio.backend import BackendRuntime

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_label_studio_arguments(parser)
    add_environment_option(
        parser,
        "--model-dir",
        "MODEL_DIR",
        "the backend's model folder",
        otherwise=", else the backend's default",
    )
    parser.add_argument(
        "--tasks",
        type=_task_ids,
        help="comma-separated task ids: score only these (new) tasks against the stored pool weights",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward batch (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--count-api-calls", action="store_true", help="report how many HTTP requests went to Label Studio"
    )


def _task_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tasks wants comma-separated task ids like 12,13, got {text!r}"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("--tasks needs at least one task id")
    return ids


def run(args: argparse.Namespace) -> int:
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from adapters.connect import LabelStudioSettings, check_backend, require_project
    from adapters.errors import AdapterError, explain
    from adapters.queue import reprioritize
    from ml_backend.labelstudio.config import LabelConfigError
    from ml_backend.labelstudio.state import ProjectState

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    calls: list[str] = []
    try:
        if args.batch_size < 1:
            raise AdapterError(f"--batch-size must be at least 1, got {args.batch_size}")
        settings = LabelStudioSettings.resolve(args.label_studio_url, args.api_key)
        client = settings.client(on_request=lambda request: calls.append(request.url.path))
        require_project(client, args.project, settings)
        runtime = backend_runtime(settings, args.model_dir)
        version = ProjectState(runtime.settings.model_dir, args.project).current_version()
        warning = check_backend(client, settings, args.project, version)
        if warning:
            logger.warning(warning)
        calls.clear()
        try:
            report = reprioritize(
                client,
                runtime,
                args.project,
                task_ids=args.tasks,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
        except LabelConfigError as error:
            raise AdapterError(
                f"project {args.project}'s labelling config does not suit DECOMP: {error}"
            ) from error
        except (ApiError, httpx.HTTPError) as error:
            raise explain(error, action="reprioritising", label_studio_url=settings.url) from error
    except AdapterError as error:
        print(f"label-studio-decomp reprioritize: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("label-studio-decomp reprioritize: interrupted", file=sys.stderr)
        return 130
    if args.count_api_calls:
        report.api_calls = len(calls)
    print(report.summary())
    return 0


def backend_runtime(settings: LabelStudioSettings, model_dir: str | None) -> BackendRuntime:
    """The backend's runtime (models, image loading) as configured by the environment, pointed at this
    Label Studio and model folder."""
    from dataclasses import replace
    from pathlib import Path

    from ml_backend.labelstudio.backend import BackendRuntime, BackendSettings

    backend = BackendSettings.from_env()
    backend = replace(backend, label_studio_url=settings.url, api_key=settings.api_key)
    if model_dir:
        backend = replace(backend, model_dir=Path(model_dir).expanduser())
    return BackendRuntime(backend)
