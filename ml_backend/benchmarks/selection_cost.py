"""What one acquisition cycle costs each strategy as the pool grows (issue 5, ``bench``).

    label-studio-decomp bench selection [--pools 50 200 800] [--quick]

A pool of N images with synthetic model outputs (512 x 512, 19 classes: smooth random logits through a
softmax, so classes form blobs and confidence varies as in real predictions; plus a 16-channel feature map
at stride 4, the shape of the U-Net's penultimate features) goes through one cycle of every strategy, the
way the simulator runs it: every image is observed (DECOMP: pool statistics; baselines: their image
priority), the images are ranked, and K regions of 32 x 32 are chosen in each of the top images.

Only the strategies' own work is measured, not the making of the model outputs. All strategies observe
each image in turn, so they run under the same conditions. Time is wall time. Memory is the peak of what
the strategy allocates and keeps during its calls (tracemalloc: numpy and Python allocations), and
"input/image" is what the strategy needs the scoring step to hand it per image (labels and confidence
for DECOMP; plus the probabilities for the entropy family; plus the features for the diversity ones).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml_backend.simulation import BASELINES, DECOMP

BANK_SIZE = 8  # distinct probability maps; pool images are shifted copies of them
FEATURE_CHANNELS = 16
FEATURE_STRIDE = 4


@dataclass(frozen=True)
class SelectionBenchmark:
    pools: tuple[int, ...] = (50, 200, 800)
    side: int = 512
    classes: int = 19
    images: int = 10
    regions_per_image: int = 15
    region_size: int = 32
    strategies: tuple[str, ...] = (DECOMP, *BASELINES)
    seed: int = 0


QUICK = SelectionBenchmark(pools=(4, 8), side=128, images=2, regions_per_image=3, region_size=16)


@dataclass(frozen=True)
class SelectionCost:
    strategy: str
    pool: int
    seconds: float
    peak_mib: float
    input_mib: float
    regions: int


def synthetic_pool(benchmark: SelectionBenchmark) -> Callable:
    """``score(image_id, needs) -> ScoredImage`` for a pool of synthetic model outputs.

    Image i is map i % BANK_SIZE of a bank of structured probability maps, circularly shifted by an
    amount that depends on i, so images differ without paying for a new map each time.
    """
    from ml_backend.benchmarks.decomp_cost import Case, structured_probabilities
    from ml_backend.strategies.base import ScoredImage

    case = Case("pool", (benchmark.side, benchmark.side), benchmark.classes, 3, blob_size=64)
    bank = [structured_probabilities(case, seed=benchmark.seed * BANK_SIZE + i) for i in range(BANK_SIZE)]
    coarse = benchmark.side // FEATURE_STRIDE

    def score(image_id: int, needs: frozenset[str]) -> ScoredImage:
        shift = (37 * image_id % benchmark.side, 91 * image_id % benchmark.side)
        probabilities = np.roll(bank[image_id % BANK_SIZE], shift, axis=(1, 2))
        features = None
        if "features" in needs:
            rng = np.random.default_rng([benchmark.seed, image_id])
            features = rng.standard_normal((FEATURE_CHANNELS, coarse, coarse), dtype=np.float32)
        return ScoredImage.from_probabilities(
            probabilities, keep_probabilities="probabilities" in needs, features=features
        )

    return score


def input_mib(image, needs: frozenset[str]) -> float:
    """Megabytes of one ScoredImage that a strategy with ``needs`` reads."""
    arrays = [image.labels, image.confidence] if "predictions" in needs else []
    arrays += [image.probabilities] if "probabilities" in needs else []
    arrays += [image.features] if "features" in needs else []
    return sum(a.nbytes for a in arrays) / 2**20


def measure(benchmark: SelectionBenchmark) -> list[SelectionCost]:
    """One cycle of every strategy on every pool size; see the module docstring."""
    from ml_backend.pipeline import region_shape
    from ml_backend.simulation.loop import SelectionMeter, build_selector, select_for_cycle, warm_up

    def shape():
        return region_shape("box", benchmark.region_size)

    score = synthetic_pool(benchmark)
    warm_up(benchmark.strategies, benchmark.classes, 2, shape)
    everything = frozenset({"predictions", "probabilities", "features"})
    sample = score(0, everything)
    costs = []
    for pool in benchmark.pools:
        selectors = [
            build_selector(n, benchmark.classes, shape(), seed=benchmark.seed) for n in benchmark.strategies
        ]
        meters = [SelectionMeter() for _ in selectors]
        rngs = [np.random.default_rng([benchmark.seed, pool]) for _ in selectors]
        gc.collect()
        tracemalloc.start()
        try:
            chosen = select_for_cycle(
                selectors, range(pool), score, benchmark.images, benchmark.regions_per_image, rngs, meters
            )
        finally:
            tracemalloc.stop()
        for selector, meter, selections in zip(selectors, meters, chosen, strict=True):
            costs.append(
                SelectionCost(
                    strategy=selector.name,
                    pool=pool,
                    seconds=meter.seconds,
                    peak_mib=meter.peak_bytes / 2**20,
                    input_mib=input_mib(sample, selector.needs),
                    regions=sum(len(s.regions) for s in selections),
                )
            )
    return costs


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as aligned plain text, a rule under the first row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_costs(costs: Sequence[SelectionCost], benchmark: SelectionBenchmark) -> str:
    pools = sorted({c.pool for c in costs})
    strategies = list(dict.fromkeys(c.strategy for c in costs))
    cost = {(c.strategy, c.pool): c for c in costs}
    header = ["strategy", "input/image MiB"]
    header += [f"N={n}: s" for n in pools] + [f"N={n}: peak MiB" for n in pools]
    header += [f"time x{pools[-1] // pools[0]} pool", "regions"]
    rows = [header]
    for strategy in strategies:
        first, last = cost[strategy, pools[0]], cost[strategy, pools[-1]]
        rows.append(
            [strategy, f"{first.input_mib:.1f}"]
            + [f"{cost[strategy, n].seconds:.3f}" for n in pools]
            + [f"{cost[strategy, n].peak_mib:.1f}" for n in pools]
            + [f"{last.seconds / first.seconds:.1f}x", str(last.regions)]
        )
    lines = [
        f"Selection cost of one cycle: {benchmark.images} images x K={benchmark.regions_per_image} "
        f"regions of {benchmark.region_size}x{benchmark.region_size}, synthetic "
        f"{benchmark.side}x{benchmark.side} outputs with {benchmark.classes} classes",
        text_table(rows),
    ]
    if DECOMP in strategies:
        ratio_rows = [
            ["baseline"]
            + [f"N={n}: time / DECOMP" for n in pools]
            + [f"N={n}: memory / DECOMP" for n in pools]
        ]
        for strategy in strategies:
            if strategy == DECOMP:
                continue
            ratio_rows.append(
                [strategy]
                + [f"{cost[strategy, n].seconds / cost[DECOMP, n].seconds:.2f}" for n in pools]
                + [f"{cost[strategy, n].peak_mib / max(cost[DECOMP, n].peak_mib, 1e-9):.2f}" for n in pools]
            )
        lines += [
            "",
            "Baseline cost relative to DECOMP, same run (above 1: DECOMP is cheaper)",
            text_table(ratio_rows),
        ]
    return "\n".join(lines)
