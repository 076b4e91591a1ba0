"""Where the time of one prediction goes, per image size (issue 5, ``bench``).

    label-studio-decomp bench prediction [--sizes 512 1024 2048] [--quick]

The backend's /predict does three things per image: the forward pass (``pipeline.score_image``: intensity
scaling, the network, softmax, argmax/max), DECOMP (``pipeline.analyse_image``: statistics, priority and
K=15 regions of 32x32), and the encoding of the results for Label Studio (the pre-annotation as brush RLE
or as polygons, plus the proposal rectangles). The forward pass runs an ``smp.Unet('resnet18')`` with
random weights on a real photo (skimage's astronaut, resized); DECOMP and the encoding run on a
structured 19-class prediction of the same size (what a trained model's blobs look like; a random
network's speckle would make the polygon step look far worse than it is). Times are medians of
``repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ml_backend.benchmarks.selection_cost import text_table

CLASSES = 19


@dataclass(frozen=True)
class PredictionBenchmark:
    sizes: tuple[int, ...] = (512, 1024, 2048)
    repeats: int = 3
    classes: int = CLASSES


QUICK = PredictionBenchmark(sizes=(64, 128), repeats=1)


@dataclass(frozen=True)
class PredictionCost:
    size: int
    forward_s: float
    decomp_s: float
    brush_s: float
    polygons_s: float
    regions: int
    polygons: int


def label_config(class_tag: str, classes: int) -> str:
    """A labelling config with ``classes`` classes (implicit background + labels) and box proposals."""
    labels = "".join(f'<Label value="class {i}"/>' for i in range(1, classes))
    return (
        f'<View><Image name="image" value="$image"/><{class_tag} name="tag" toName="image">{labels}'
        f'</{class_tag}><RectangleLabels name="decomp_regions" toName="image" decomp_k="15" '
        'decomp_region_size="32"><Label value="Annotate here"/></RectangleLabels></View>'
    )


def median_seconds(call: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall time of ``repeats`` calls after a warm-up call, the warm-up call's result)."""
    result = call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(benchmark: PredictionBenchmark) -> list[PredictionCost]:
    import cv2
    from skimage import data

    from ml_backend.benchmarks.decomp_cost import Case, structured_probabilities
    from ml_backend.labelstudio.config import ProjectConfig
    from ml_backend.labelstudio.results import class_map_to_results, proposal_results
    from ml_backend.model.network import build_segmentation_model
    from ml_backend.pipeline import analyse_image, score_image
    from ml_backend.strategies.base import ScoredImage
    from ml_backend.strategies.stats import PoolStatistics

    brush = ProjectConfig.from_label_config(label_config("BrushLabels", benchmark.classes))
    polygons = ProjectConfig.from_label_config(label_config("PolygonLabels", benchmark.classes))
    model = build_segmentation_model(benchmark.classes, encoder_weights=None)
    photo = data.astronaut()
    costs = []
    for size in benchmark.sizes:
        image = cv2.resize(photo, (size, size), interpolation=cv2.INTER_LINEAR)
        forward_s, _ = median_seconds(lambda image=image: score_image(model, image), benchmark.repeats)

        probabilities = structured_probabilities(Case("image", (size, size), benchmark.classes, 3, 64))
        scored = ScoredImage.from_probabilities(probabilities)
        del probabilities
        weights = PoolStatistics.from_image(scored, benchmark.classes).class_weights()
        decomp_s, analysis = median_seconds(
            lambda scored=scored, weights=weights: analyse_image(scored, weights, brush.decomp, rng=0),
            benchmark.repeats,
        )

        def encode_brush(scored=scored, regions=analysis.regions, size=size):
            return class_map_to_results(scored.labels, scored.confidence, brush) + proposal_results(
                regions, brush, size, size
            )

        brush_s, _ = median_seconds(encode_brush, benchmark.repeats)
        polygons_s, traced = median_seconds(
            lambda scored=scored: class_map_to_results(scored.labels, scored.confidence, polygons),
            benchmark.repeats,
        )
        costs.append(
            PredictionCost(size, forward_s, decomp_s, brush_s, polygons_s, len(analysis.regions), len(traced))
        )
    return costs


def format_costs(costs: Sequence[PredictionCost]) -> str:
    rows = [
        [
            "image",
            "forward s",
            "DECOMP s",
            "DECOMP/forward",
            "brush+proposals s",
            "polygons s",
            "regions",
            "polygons",
        ]
    ]
    for cost in costs:
        rows.append(
            [
                f"{cost.size}x{cost.size}",
                f"{cost.forward_s:.3f}",
                f"{cost.decomp_s:.3f}",
                f"{cost.decomp_s / cost.forward_s:.1%}",
                f"{cost.brush_s:.3f}",
                f"{cost.polygons_s:.3f}",
                str(cost.regions),
                str(cost.polygons),
            ]
        )
    return (
        "Prediction path per image (Unet-resnet18 forward on a photo; DECOMP and encoding on 19 classes)\n"
        + (text_table(rows))
    )
