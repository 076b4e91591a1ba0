"""What ``reprioritize`` costs against a real Label Studio: wall time split into scoring (image loading,
forward passes, DECOMP, result encoding) and Label Studio API time, and HTTP requests per task.

    python -m adapters.benchmark --tasks 400

starts a throwaway local Label Studio (the project's harness, 127.0.0.1), imports ``--tasks`` small tiles
of the demo photos (rotated and mirrored to get enough distinct images), and times three runs on the CPU:
the first (every task written), a rerun (nothing changed), and a run after a new model version (perturbed
weights, as after training: new predictions for every task, new priorities). Prints a table with the
figures per 1000 tasks (the costs grow linearly: pages of 100 tasks, one PATCH per changed task, one bulk
import per 50 predictions). Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from adapters.connect import LabelStudioSettings
from adapters.queue import ReprioritizeReport, reprioritize

TILE = 96


def benchmark_images(count: int, tile: int = TILE) -> list[np.ndarray]:
    """``count`` distinct small RGB images: demo tiles in their eight rotations and mirror images."""
    from ml_backend.demo_data import demo_tiles

    images = []
    for flip in (False, True):
        for turns in range(4):
            for item in demo_tiles(tile):
                image = np.rot90(item.image[:, ::-1] if flip else item.image, turns)
                images.append(np.ascontiguousarray(image))
                if len(images) == count:
                    return images
    raise ValueError(f"the demo photos give at most {len(images)} tiles of {tile} pixels; ask for fewer")


def _new_model_version(runtime, project_id: int, seed: int = 1) -> str:
    """Publish the served model with slightly perturbed weights as the next version (a stand-in for a
    training run: the pool's predictions and priorities change)."""
    import torch

    from ml_backend.labelstudio.state import ProjectState
    from ml_backend.model.checkpoint import save_checkpoint

    state = ProjectState(runtime.settings.model_dir, project_id)
    served = runtime.served_model(state, runtime.project_config(state, None))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in served.model.parameters():
            parameter.add_(
                0.05 * parameter.std().nan_to_num() * torch.randn(parameter.shape, generator=generator)
            )
    version = state.next_version()
    save_checkpoint(state.checkpoint_path(version), served.model, {"model_version": version})
    state.publish_version(version, {"benchmark": True})
    return version


def run(tasks: int, data_dir: Path) -> list[tuple[str, ReprioritizeReport, Counter]]:
    import cv2

    from ml_backend.demo_data import DEMO_LABEL_CONFIG
    from ml_backend.devtools.label_studio import LocalLabelStudio
    from ml_backend.labelstudio.backend import BackendRuntime, BackendSettings

    rows = []
    with LocalLabelStudio(data_dir / "label-studio") as studio:
        folder = studio.local_files_root / "benchmark"
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(benchmark_images(tasks)):
            cv2.imwrite(str(folder / f"tile{index:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        settings = LabelStudioSettings(studio.url, studio.api_key)
        calls: Counter = Counter()
        client = settings.client(
            on_request=lambda request: calls.update([_route(request.method, request.url.path)])
        )
        project = client.projects.create(title="reprioritize benchmark", label_config=DEMO_LABEL_CONFIG)
        studio.sync_local_storage(project.id, folder)
        runtime = BackendRuntime(
            BackendSettings(
                model_dir=data_dir / "models",
                label_studio_url=studio.url,
                api_key=studio.api_key,
                encoder_weights=None,
                device="cpu",
            )
        )
        for label in ("first run", "rerun, nothing changed", "after a new model version"):
            if label.startswith("after"):
                _new_model_version(runtime, project.id)
            calls.clear()
            report = reprioritize(client, runtime, project.id, progress=True)
            report.api_calls = sum(calls.values())
            rows.append((label, report, Counter(calls)))
    return rows


def _route(method: str, path: str) -> str:
    """Requests grouped by endpoint: numbers in the path become ``{id}``."""
    parts = ["{id}" if part.isdigit() else part for part in path.split("/")]
    return f"{method} {'/'.join(parts)}"


def table(rows: list[tuple[str, ReprioritizeReport, Counter]]) -> str:
    lines = [
        "| run | tasks | scoring s | Label Studio API s | API calls | calls per task | "
        "per 1000 tasks: scoring s / API s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report, _ in rows:
        scale = 1000 / max(report.pool_size, 1)
        lines.append(
            f"| {label} | {report.pool_size} | {report.scoring_s:.1f} | {report.label_studio_s:.1f} | "
            f"{report.api_calls} | {report.api_calls / max(report.pool_size, 1):.2f} | "
            f"{report.scoring_s * scale:.0f} / {report.label_studio_s * scale:.0f} |"
        )
    lines.append("")
    for label, _, calls in rows:
        lines.append(f"{label}: " + ", ".join(f"{route} x{count}" for route, count in sorted(calls.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="pool size (default 400)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="decomp-benchmark-") as scratch:
        print(table(run(args.tasks, (args.data_dir or Path(scratch)).resolve())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
