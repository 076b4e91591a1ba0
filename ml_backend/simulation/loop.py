"""The active-learning loop, replayed on a fully labelled dataset.

Per strategy and seed: cycle 0 labels random regions in a few random images (the same for every strategy of
a seed); then each cycle trains the backend's model on what is labelled (its trainer, partial-label loss:
unrevealed pixels are 255), evaluates it on the test split, and, unless it was the last cycle, scores the
candidate images (one forward pass each), lets the strategy choose images and regions, and reveals the
ground truth inside those regions only. Each cycle trains from the same initial weights, as the authors
do, or with ``warm_start`` continues from the previous cycle's model, as the backend does. ``full`` trains
once on every pool label: the reference score.

Selection follows the authors' code: every image is queried at most once, and when fewer candidates than
``images_per_cycle`` remain, every image with unlabelled pixels becomes a candidate again. DECOMP ranks
the candidates by the summed weights of the classes they show (weights from the candidates' confidence
rates) and samples its regions class by class; the baselines rank images by their own image strategy
(random, or mean entropy for the entropy family) and choose regions by their region strategy.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml_backend.model.metrics import IGNORE_INDEX
from ml_backend.pipeline import REGION_SHAPES
from ml_backend.simulation import BASELINES, DECOMP, FULL, STRATEGIES
from ml_backend.simulation.dataset import Sample, SegmentationDataset
from ml_backend.simulation.report import (
    RESULTS_JSON,
    CycleRecord,
    SimulationResults,
    read_results,
    write_report,
)
from ml_backend.strategies.base import Region, RegionShape, ScoredImage
from ml_backend.strategies.decomp import CENTERS
from ml_backend.strategies.stats import DEFAULT_TAU, PoolStatistics

logger = logging.getLogger(__name__)

_DIVERSITY = ("entropy-kmeans", "entropy-coreset", "badge")


@dataclass(frozen=True)
class SimulationSettings:
    """What one simulation run does; everything but ``strategies``, ``seeds`` and ``device`` must match for
    a rerun in the same output folder to reuse finished (strategy, seed) runs."""

    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    cycles: int = 5
    images_per_cycle: int = 2
    regions_per_image: int = 15
    region_size: int = 32
    region_shape: str = "box"
    initial_images: int = 2
    initial_regions: int | None = None  # regions per initial image; None: regions_per_image
    epochs: int = 10
    initial_epochs: int | None = None  # epochs of cycle 0; None: epochs
    batch_size: int = 8
    learning_rate: float = 1e-3
    crop_size: int | None = None
    crops_per_epoch: int | None = None
    warm_start: bool = False
    val_fraction: float = 0.0
    test_split: float = 0.2
    split_seed: int = 0
    tau: float = DEFAULT_TAU
    center: str = "max_confidence"
    architecture: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = "imagenet"
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        counts = [
            "images_per_cycle",
            "regions_per_image",
            "region_size",
            "initial_images",
            "epochs",
            "batch_size",
        ]
        optional = ("crop_size", "crops_per_epoch", "initial_regions", "initial_epochs")
        counts += [name for name in optional if getattr(self, name) is not None]
        for name in ["cycles", *counts]:
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "cycles" else 1):
                kind = "non-negative" if name == "cycles" else "positive"
                raise ValueError(f"{name} must be a {kind} integer, got {value!r}")
        if self.crop_size is not None and (self.crop_size % 32 or self.crop_size < 64):
            raise ValueError(f"crop_size must be a multiple of 32 and at least 64, got {self.crop_size}")
        if not 0.0 < self.test_split < 1.0:
            raise ValueError(f"test_split must lie strictly between 0 and 1, got {self.test_split}")
        if self.center not in CENTERS:
            raise ValueError(f"center must be one of {CENTERS}, got {self.center!r}")
        if self.region_shape not in REGION_SHAPES:
            raise ValueError(f"region_shape must be one of {REGION_SHAPES}, got {self.region_shape!r}")

    def comparable(self) -> dict[str, Any]:
        """The settings that decide the numbers (runs with equal ones can be pooled)."""
        settings = asdict(self)
        for key in ("strategies", "seeds", "device"):
            settings.pop(key)
        return settings


# ---------------------------------------------------------------------------------------------------------
# Measuring selection: wall time, and with tracemalloc running, the peak memory a strategy allocates.


class SelectionMeter:
    """Accumulates the wall time of the calls made under it and, while tracemalloc traces, the peak of
    the memory the strategy holds or allocates during them (its retained state plus each call's peak).

    Measured calls of different strategies may interleave: each meter only counts its own calls.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.peak_bytes = 0
        self._retained = 0

    def __enter__(self) -> SelectionMeter:
        if tracemalloc.is_tracing():
            self._start_bytes = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.perf_counter() - self._start
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            self.peak_bytes = max(self.peak_bytes, self._retained + peak - self._start_bytes)
            self._retained += current - self._start_bytes


# ---------------------------------------------------------------------------------------------------------
# Strategies at the pool level: observe every candidate, rank them, choose regions in the best ones.


class CycleSelector(Protocol):
    """One acquisition cycle of one strategy. ``needs`` says what the strategy reads from a ScoredImage
    beyond labels, confidence and masks: any of "predictions", "probabilities", "features"."""

    name: str
    needs: frozenset[str]

    def observe(self, image_id: int, image: ScoredImage) -> None: ...

    def ranking(self, rng: np.random.Generator) -> list[int]: ...

    def regions(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]: ...


def rank_by_priority(priorities: dict[int, float], rng: np.random.Generator) -> list[int]:
    """Image ids, highest priority first; ties in a random order (the authors' argsort breaks them
    arbitrarily, and a fixed order would favour low ids)."""
    ids = np.array(list(priorities), dtype=np.int64)
    values = np.array([priorities[i] for i in ids], dtype=np.float64)
    shuffled = rng.permutation(ids.size)
    order = shuffled[np.argsort(-values[shuffled], kind="stable")]
    return ids[order].tolist()


class DecompSelector:
    """DECOMP: pool statistics over the candidates -> class weights -> image priority -> regions."""

    name = DECOMP
    needs = frozenset({"predictions"})

    def __init__(
        self, num_classes: int, shape: RegionShape, tau: float = DEFAULT_TAU, center: str = "max_confidence"
    ) -> None:
        self.num_classes = num_classes
        self.shape = shape
        self.tau = tau
        self.center = center
        self._statistics: dict[int, PoolStatistics] = {}
        self._sampler = None

    def observe(self, image_id: int, image: ScoredImage) -> None:
        self._statistics[image_id] = PoolStatistics.from_image(image, self.num_classes, self.tau)

    def ranking(self, rng: np.random.Generator) -> list[int]:
        from ml_backend.strategies.decomp import DecompSampler, image_priority

        pool = sum(self._statistics.values(), PoolStatistics.empty(self.num_classes, self.tau))
        self._sampler = DecompSampler.from_statistics(pool, shape=self.shape, center=self.center)
        weights = self._sampler.weights
        if np.all(weights == weights[0]):  # uniform weights say nothing: the authors then take a random order
            return rank_by_priority(dict.fromkeys(self._statistics, 0.0), rng)
        return rank_by_priority({i: image_priority(s, weights) for i, s in self._statistics.items()}, rng)

    def regions(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]:
        return self._sampler.select(image, k, rng)


class BaselineSelector:
    """A baseline: an image priority function and a region strategy."""

    def __init__(self, name: str, priority: Callable[[int, ScoredImage], float], region_strategy, needs):
        self.name = name
        self.needs = frozenset(needs)
        self._priority = priority
        self._region_strategy = region_strategy
        self._priorities: dict[int, float] = {}

    def observe(self, image_id: int, image: ScoredImage) -> None:
        self._priorities[image_id] = self._priority(image_id, image)

    def ranking(self, rng: np.random.Generator) -> list[int]:
        return rank_by_priority(self._priorities, rng)

    def regions(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]:
        return self._region_strategy.select(image, k, rng)


def build_selector(
    name: str,
    num_classes: int,
    shape: RegionShape,
    seed: int = 0,
    tau: float = DEFAULT_TAU,
    center: str = "max_confidence",
) -> CycleSelector:
    """The selector of strategy ``name`` (one of ``DECOMP`` and ``BASELINES``) for one cycle; ``tau`` and
    ``center`` are DECOMP's, ``seed`` the random image order's."""
    from ml_backend.strategies.baselines import (
        MeanEntropyPriority,
        RandomImagePriority,
        build_region_strategy,
    )

    if name == DECOMP:
        return DecompSelector(num_classes, shape, tau, center)
    if name not in BASELINES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join((DECOMP, *BASELINES))}")
    region_strategy = build_region_strategy(name, shape)
    if name == "random":
        random_priority = RandomImagePriority(seed)
        return BaselineSelector(
            name, lambda i, image: random_priority.priority(image, image_id=i), region_strategy, needs=()
        )
    entropy_priority = MeanEntropyPriority()
    needs = {"predictions", "probabilities"} | ({"features"} if name in _DIVERSITY else set())
    return BaselineSelector(name, lambda i, image: entropy_priority.priority(image), region_strategy, needs)


@dataclass(frozen=True)
class Selection:
    image_id: int
    regions: list[Region]


def select_for_cycle(
    selectors: Sequence[CycleSelector],
    candidates: Iterable[int],
    score: Callable[[int, frozenset[str]], ScoredImage],
    images: int,
    regions_per_image: int,
    rngs: Sequence[np.random.Generator],
    meters: Sequence[SelectionMeter],
) -> list[list[Selection]]:
    """Run one acquisition cycle of each selector on the same candidates.

    ``score(image_id, needs)`` gives the image as a ScoredImage holding at least ``needs``; it is called
    once per candidate for all selectors together (its cost is not metered), then again for each image a
    selector takes a closer look at. Only the selectors' own work runs under their meters. Images in which
    no region fits are passed over. Returns, per selector, up to ``images`` selections, best first.
    """
    candidates = list(candidates)
    needs = frozenset().union(*(s.needs for s in selectors))
    for image_id in candidates:
        image = score(image_id, needs)
        for selector, meter in zip(selectors, meters, strict=True):
            with meter:
                selector.observe(image_id, image)
        del image
    outcomes = []
    for selector, rng, meter in zip(selectors, rngs, meters, strict=True):
        with meter:
            ranking = selector.ranking(rng)
        chosen: list[Selection] = []
        for image_id in ranking:
            if len(chosen) == images:
                break
            image = score(image_id, selector.needs)
            with meter:
                regions = selector.regions(image, regions_per_image, rng)
            if regions:
                chosen.append(Selection(image_id, regions))
        outcomes.append(chosen)
    return outcomes


def warm_up(
    strategies: Iterable[str], num_classes: int, spatial_dims: int, shape: Callable[[], RegionShape]
) -> None:
    """Run each strategy once on a random image, so that one-off costs (lazy imports, thread pools, caches)
    are not metered as the selection time of its first real cycle. The image holds many regions and only
    2 are asked for, so that the diversity baselines' pool of 3K is larger than K and their clustering runs.
    """
    rng = np.random.default_rng(0)
    spatial = (256, 256) if spatial_dims == 2 else (32, 96, 96)
    probabilities = rng.dirichlet(np.ones(num_classes), size=spatial).astype(np.float32)
    probabilities = np.moveaxis(probabilities, -1, 0)
    features = rng.random((8, *spatial), dtype=np.float32)
    image = ScoredImage.from_probabilities(probabilities, keep_probabilities=True, features=features)
    for name in strategies:
        selector = build_selector(name, num_classes, shape())
        select_for_cycle([selector], [0, 1], lambda _i, _needs: image, 1, 2, [rng], [SelectionMeter()])


# ---------------------------------------------------------------------------------------------------------
# The labelled state of the pool.


class LabelledPool:
    """Which pool pixels have been revealed; ground truth is read only through ``targets``."""

    def __init__(self, samples: Sequence[Sample], num_classes: int) -> None:
        self.samples = tuple(samples)
        self.num_classes = num_classes
        self.ignore = [s.mask == IGNORE_INDEX for s in self.samples]
        self.labelled = [np.zeros(s.spatial_shape, dtype=bool) for s in self.samples]
        self.queried: set[int] = set()
        self.pool_pixels = int(sum((~ignore).sum() for ignore in self.ignore))

    def reveal(self, image_id: int, regions: Iterable[Region]) -> None:
        labelled = self.labelled[image_id]
        for region in regions:
            labelled[region.bbox] |= region.mask
        labelled &= ~self.ignore[image_id]
        self.queried.add(image_id)

    def reveal_all(self) -> None:
        for image_id, ignore in enumerate(self.ignore):
            self.labelled[image_id] = ~ignore
        self.queried = set(range(len(self.samples)))

    def targets(self, image_id: int) -> np.ndarray:
        """The training target: ground truth where revealed, 255 elsewhere."""
        return np.where(self.labelled[image_id], self.samples[image_id].mask, IGNORE_INDEX).astype(np.uint8)

    def candidates(self, wanted: int) -> list[int]:
        """Images not queried yet; when fewer than ``wanted`` remain, every image with unlabelled pixels."""
        fresh = [i for i in range(len(self.samples)) if i not in self.queried]
        if len(fresh) >= wanted:
            return fresh
        return [i for i in range(len(self.samples)) if (~self.labelled[i] & ~self.ignore[i]).any()]

    @property
    def labelled_pixels(self) -> int:
        return int(sum(labelled.sum() for labelled in self.labelled))

    def labelled_per_class(self) -> tuple[int, ...]:
        counts = np.zeros(256, dtype=np.int64)
        for sample, labelled in zip(self.samples, self.labelled, strict=True):
            counts += np.bincount(sample.mask[labelled], minlength=256)
        return tuple(int(c) for c in counts[: self.num_classes])

    def unscored(self, image_id: int) -> ScoredImage:
        """A ScoredImage without predictions, for strategies that need none (random); it carries the
        pixels for region shapes that follow image content."""
        sample = self.samples[image_id]
        return ScoredImage(
            np.zeros(sample.spatial_shape, dtype=np.uint8),
            np.zeros(sample.spatial_shape, dtype=np.float32),
            labelled=self.labelled[image_id],
            ignore=self.ignore[image_id],
            pixels=sample.image,
        )


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation with the backend's model and trainer.


def default_crop_size(longest_side: int) -> int:
    """Training crops cover whole planes up to 256 pixels (rounded up to the network's multiple of 32)."""
    return max(64, min(256, -(-longest_side // 32) * 32))


def training_seed(seed: int, cycle: int) -> int:
    """The trainer's seed: the same for every strategy at one (seed, cycle), so that only labels differ."""
    return seed * 1000 + cycle


def _stream_seed(*parts: int | str) -> list[int]:
    """A seed sequence for numpy from readable parts (strategy names hashed stably)."""
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


class Simulator:
    """Runs the settings' strategies and seeds on ``pool`` and ``test`` and collects CycleRecords."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        settings: SimulationSettings,
        progress: bool = True,
    ) -> None:
        from ml_backend.model.network import resolve_device

        self.settings = settings
        self.dataset = dataset
        self.pool, self.test = dataset.split(settings.test_split, settings.split_seed)
        self.num_classes = dataset.num_classes
        self.device = resolve_device(settings.device)
        self.progress = progress
        self.metric = "mIoU" if dataset.ndim == 2 else "Dice"
        planes = [s.spatial_shape[-2:] for s in self.pool.samples]
        pool_planes = sum(1 if dataset.ndim == 2 else s.spatial_shape[0] for s in self.pool.samples)
        self.crops_per_epoch = settings.crops_per_epoch or pool_planes
        self.crop_size = settings.crop_size or default_crop_size(max(max(p) for p in planes))
        self._first_cycle = None

    def new_results(self) -> SimulationResults:
        pool_counts = self.pool.class_pixel_counts()
        return SimulationResults(
            metric=self.metric,
            spatial_dims=self.dataset.ndim,
            class_names=self.dataset.class_names,
            pool_class_pixels=tuple(int(c) for c in pool_counts),
            settings={
                **self.settings.comparable(),
                "data_fingerprint": self.dataset.fingerprint(),
                "pool_images": len(self.pool.samples),
                "test_images": len(self.test.samples),
            },
        )

    # -- model ----------------------------------------------------------------------------------------

    def initial_model(self, seed: int):
        """The initial weights of this seed, the same for every strategy: cycle 0 and ``full`` train from
        them, and so does every later cycle unless ``warm_start``."""
        import torch

        from ml_backend.model.network import build_segmentation_model

        torch.manual_seed(seed)
        return build_segmentation_model(
            self.num_classes,
            in_channels=self.dataset.channels,
            architecture=self.settings.architecture,
            encoder=self.settings.encoder,
            encoder_weights=self.settings.encoder_weights,
            class_names=self.dataset.class_names,
        )

    def train(self, initial, labelled: LabelledPool, seed: int, epochs: int):
        """A copy of ``initial`` trained on the revealed pixels, with the same number of steps whatever
        is labelled (``crops_per_epoch``, by default the pool's planes), so that scores differ by labels
        alone."""
        from ml_backend.model.training import train_segmentation

        model = copy.deepcopy(initial)
        samples = [
            (sample.image, labelled.targets(image_id))
            for image_id, sample in enumerate(labelled.samples)
            if labelled.labelled[image_id].any()
        ]
        train_segmentation(
            model,
            samples,
            epochs=epochs,
            lr=self.settings.learning_rate,
            batch_size=self.settings.batch_size,
            crop_size=self.crop_size,
            val_fraction=self.settings.val_fraction,
            seed=seed,
            device=self.device,
            crops_per_epoch=self.crops_per_epoch,
        )
        return model

    def evaluate(self, model) -> tuple[float, tuple[float, ...]]:
        from ml_backend.model.inference import predict_probabilities
        from ml_backend.model.metrics import ConfusionMatrix

        confusion = ConfusionMatrix(self.num_classes)
        for sample in self.test.samples:
            prediction = predict_probabilities(
                model,
                sample.image,
                device=self.device,
                return_probabilities=False,
                spatial_dims=self.dataset.ndim,
            )
            confusion.update(sample.mask, prediction.labels)
        if self.dataset.ndim == 2:
            return confusion.mean_iou(), tuple(float(v) for v in confusion.iou())
        return confusion.mean_dice(exclude=[0]), tuple(float(v) for v in confusion.dice())

    def scorer(self, model, labelled: LabelledPool) -> Callable[[int, frozenset[str]], ScoredImage]:
        from ml_backend.pipeline import score_image

        def score(image_id: int, needs: frozenset[str]) -> ScoredImage:
            if "predictions" not in needs:
                return labelled.unscored(image_id)
            sample = labelled.samples[image_id]
            return score_image(
                model,
                sample.image,
                labelled=labelled.labelled[image_id],
                ignore=labelled.ignore[image_id],
                keep_pixels=self.settings.region_shape == "superpixel",
                device=self.device,
                return_probabilities="probabilities" in needs,
                return_features="features" in needs,
                spatial_dims=self.dataset.ndim,
            )

        return score

    # -- one run ----------------------------------------------------------------------------------------

    def initial_labels(self, seed: int) -> tuple[LabelledPool, list[Selection]]:
        """Cycle 0: random regions in random images, identical for every strategy of this seed."""
        from ml_backend.pipeline import region_shape
        from ml_backend.strategies.baselines import RandomRegions

        labelled = LabelledPool(self.pool.samples, self.num_classes)
        rng = np.random.default_rng(_stream_seed(seed, "initial"))
        order = rng.permutation(len(self.pool.samples))
        sampler = RandomRegions(region_shape(self.settings.region_shape, self.settings.region_size))
        chosen: list[Selection] = []
        for image_id in order.tolist():
            if len(chosen) == self.settings.initial_images:
                break
            wanted = self.settings.initial_regions or self.settings.regions_per_image
            regions = sampler.select(labelled.unscored(image_id), wanted, rng)
            if regions:
                labelled.reveal(image_id, regions)
                chosen.append(Selection(image_id, regions))
        return labelled, chosen

    def _record(self, strategy, seed, cycle, labelled, score, class_scores, selections, seconds, trained):
        return CycleRecord(
            strategy=strategy,
            seed=seed,
            cycle=cycle,
            labelled_pixels=labelled.labelled_pixels,
            pool_pixels=labelled.pool_pixels,
            score=float(score),
            class_scores=class_scores,
            labelled_per_class=labelled.labelled_per_class(),
            images_selected=len(selections),
            regions_selected=sum(len(s.regions) for s in selections),
            selection_seconds=seconds,
            training_seconds=trained,
        )

    def train_and_evaluate(self, initial, labelled: LabelledPool, seed: int, cycle: int, epochs: int):
        """(model, score, class scores, training seconds) of one cycle."""
        started = time.perf_counter()
        model = self.train(initial, labelled, training_seed(seed, cycle), epochs)
        trained = time.perf_counter() - started
        return (model, *self.evaluate(model), trained)

    def first_cycle(self, seed: int, initial, labelled: LabelledPool):
        """Cycle 0 of a seed: the same labels, weights and training seed for every strategy, hence the
        same model: trained once per seed and shared (it is only read afterwards)."""
        if self._first_cycle is None or self._first_cycle[0] != seed:
            epochs = self.settings.initial_epochs or self.settings.epochs
            self._first_cycle = (seed, self.train_and_evaluate(initial, labelled, seed, 0, epochs))
        return self._first_cycle[1]

    def run_full(self, seed: int) -> list[CycleRecord]:
        """The reference: every pool label, trained from the initial weights for as many steps as the
        last cycle's model has seen in total (more than one cycle's worth when models are warm-started)."""
        labelled = LabelledPool(self.pool.samples, self.num_classes)
        labelled.reveal_all()
        epochs = self.settings.epochs
        if self.settings.warm_start:
            epochs = (self.settings.initial_epochs or epochs) + epochs * self.settings.cycles
        _, score, class_scores, trained = self.train_and_evaluate(
            self.initial_model(seed), labelled, seed, 0, epochs
        )
        return [self._record(FULL, seed, 0, labelled, score, class_scores, [], math.nan, trained)]

    def run_strategy(self, strategy: str, seed: int) -> list[CycleRecord]:
        from tqdm import tqdm

        from ml_backend.pipeline import region_shape

        initial = self.initial_model(seed)
        labelled, selections = self.initial_labels(seed)
        records: list[CycleRecord] = []
        seconds = math.nan
        bar = tqdm(
            range(self.settings.cycles + 1),
            desc=f"{strategy} seed {seed}",
            unit="cycle",
            disable=not self.progress,
            leave=False,
        )
        for cycle in bar:
            if cycle == 0:
                model, score, class_scores, trained = self.first_cycle(seed, initial, labelled)
            else:
                start = model if self.settings.warm_start else initial
                model, score, class_scores, trained = self.train_and_evaluate(
                    start, labelled, seed, cycle, self.settings.epochs
                )
            records.append(
                self._record(
                    strategy, seed, cycle, labelled, score, class_scores, selections, seconds, trained
                )
            )
            bar.set_postfix(
                share=f"{100 * labelled.labelled_pixels / labelled.pool_pixels:.2f}%", score=f"{score:.3f}"
            )
            if cycle == self.settings.cycles:
                break
            rng = np.random.default_rng(_stream_seed(seed, strategy, cycle))
            shape = region_shape(self.settings.region_shape, self.settings.region_size)
            selector = build_selector(
                strategy,
                self.num_classes,
                shape,
                seed=training_seed(seed, cycle),
                tau=self.settings.tau,
                center=self.settings.center,
            )
            meter = SelectionMeter()
            candidates = labelled.candidates(self.settings.images_per_cycle)
            (selections,) = select_for_cycle(
                [selector],
                candidates,
                self.scorer(model, labelled),
                self.settings.images_per_cycle,
                self.settings.regions_per_image,
                [rng],
                [meter],
            )
            seconds = meter.seconds
            for selection in selections:
                labelled.reveal(selection.image_id, selection.regions)
        return records

    def run(self, strategy: str, seed: int) -> list[CycleRecord]:
        return self.run_full(seed) if strategy == FULL else self.run_strategy(strategy, seed)


def simulate(
    dataset: SegmentationDataset,
    settings: SimulationSettings,
    out: Path | str,
    progress: bool = True,
    title: str = "",
) -> SimulationResults:
    """Run every (strategy, seed) of ``settings`` and write the report to ``out`` after each one.

    Finished runs already in ``out/results.json`` with the same comparable settings are kept and not rerun,
    so an interrupted simulation continues where it stopped.
    """
    out = Path(out)
    simulator = Simulator(dataset, settings, progress)
    results = simulator.new_results()
    previous = out / RESULTS_JSON
    if previous.is_file():
        earlier = read_results(previous)
        # Options added since those results were written ran with their defaults then.
        earlier.settings = {**SimulationSettings().comparable(), **earlier.settings}
        if earlier.settings == results.settings and earlier.class_names == results.class_names:
            results.records = list(earlier.records)
        else:
            raise ValueError(
                f"{previous} holds results of other settings or data; use another --out folder or delete it "
                f"(earlier: {earlier.settings}; now: {results.settings})"
            )
    done = {(r.strategy, r.seed) for r in results.records}
    runs = [(strategy, seed) for seed in settings.seeds for strategy in settings.strategies]
    pending = {strategy for strategy, seed in runs if (strategy, seed) not in done and strategy != FULL}
    if pending:
        from ml_backend.pipeline import region_shape

        warm_up(
            pending,
            dataset.num_classes,
            dataset.ndim,
            lambda: region_shape(settings.region_shape, settings.region_size),
        )
    for strategy, seed in runs:
        if (strategy, seed) in done:
            logger.info("%s seed %d: already in %s, kept", strategy, seed, previous)
            continue
        results.records += simulator.run(strategy, seed)
        write_report(results, out, title)
    if not runs or all(run in done for run in runs):
        write_report(results, out, title)
    return results
