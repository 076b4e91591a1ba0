"""DECOMP (Decomposition Sampling, WACV 2026): image priority and class-wise region sampling.

The image is decomposed into class components by its pseudo-labels. Classes the model is rarely
confident about get high weights (``stats.PoolStatistics.class_weights``); an image is worth the summed
weights of the classes it shows, and inside an image each region is drawn for a class picked i.i.d. by
weight, placed on that class's most confident pixel whose region is still free (the authors' rule) or on
a uniformly random one. See /work/shared/notes/decomp-method.md sections 1-2.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ml_backend.strategies.base import Region, RegionShape, ScoredImage
from ml_backend.strategies.shapes import BoxRegions
from ml_backend.strategies.stats import DEFAULT_RATE_DECIMALS, PoolStatistics

DEFAULT_REGIONS_PER_IMAGE = 15
CENTERS = ("max_confidence", "uniform")


def _checked_weights(weights: Iterable[float] | np.ndarray) -> np.ndarray:
    checked = np.asarray(weights, dtype=np.float64)
    if checked.ndim != 1 or checked.size == 0:
        raise ValueError(f"class weights must be a non-empty 1-D array, got shape {checked.shape}")
    if not np.all(np.isfinite(checked)) or np.any(checked < 0):
        raise ValueError(f"class weights must be finite and >= 0, got {checked.tolist()}")
    return checked


def image_priority(image_statistics: PoolStatistics, weights: np.ndarray, min_pixels: int = 1) -> float:
    """V(I): the summed weights of the classes present in the image (predicted on at least ``min_pixels``
    of its unlabelled pixels). Presence is binary, so more pixels of the same classes add nothing."""
    weights = _checked_weights(weights)
    if weights.size != image_statistics.num_classes:
        raise ValueError(
            f"{weights.size} class weights for image statistics of {image_statistics.num_classes} classes"
        )
    return float(weights[image_statistics.present(min_pixels)].sum())


class DecompImagePriority:
    """ImageStrategy: rank images by ``image_priority`` under the pool's class weights."""

    name = "decomp"

    def __init__(self, weights: np.ndarray, min_pixels: int = 1) -> None:
        self.weights = _checked_weights(weights)
        if min_pixels < 1:
            raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
        self.min_pixels = min_pixels

    @classmethod
    def from_statistics(
        cls,
        pool: PoolStatistics,
        *,
        decimals: int | None = DEFAULT_RATE_DECIMALS,
        exclude: Iterable[int] = (),
        min_pixels: int = 1,
    ) -> DecompImagePriority:
        return cls(pool.class_weights(decimals, exclude), min_pixels)

    def priority(self, image: ScoredImage) -> float:
        statistics = PoolStatistics.from_image(image, self.weights.size)
        return image_priority(statistics, self.weights, self.min_pixels)


class _ClassLottery:
    """Draws classes i.i.d. by weight. An exhausted class is dropped and the rest renormalised; once
    none is left, the draw falls back (once) to uniform over the fallback classes not yet exhausted."""

    def __init__(self, weights: np.ndarray, eligible: np.ndarray, fallback: np.ndarray) -> None:
        self._weights = weights
        self._fallback = fallback
        self._exhausted = np.zeros(weights.size, dtype=bool)
        self._in_fallback = False
        self._classes = np.flatnonzero(eligible)
        if self._classes.size == 0:
            self._enter_fallback()

    def _enter_fallback(self) -> None:
        self._in_fallback = True
        self._classes = np.flatnonzero(self._fallback & ~self._exhausted)

    def draw(self, rng: np.random.Generator) -> int | None:
        if self._classes.size == 0:
            return None
        if self._in_fallback:
            return int(self._classes[rng.integers(self._classes.size)])
        odds = self._weights[self._classes]
        return int(self._classes[rng.choice(self._classes.size, p=odds / odds.sum())])

    def drop(self, class_index: int) -> None:
        self._exhausted[class_index] = True
        self._classes = self._classes[self._classes != class_index]
        if self._classes.size == 0 and not self._in_fallback:
            self._enter_fallback()


class _MostConfidentFirst:
    """One class's candidate seeds (flat indices), served most confident first.

    Only the head of the order is ever read (K is small), so rather than sorting all the class's pixels
    it sorts growing chunks cut with argpartition, walking past seeds that stopped being clear. Ties go
    to the lower flat index within a chunk.
    """

    first_chunk = 64

    def __init__(self, seeds: np.ndarray, confidence: np.ndarray) -> None:
        self._rest = seeds
        self._confidence = confidence
        self._queue = seeds[:0]
        self._position = 0
        self._chunk = self.first_chunk

    def next_clear(self, clear: np.ndarray, rng: np.random.Generator) -> int | None:
        while True:
            while self._position < self._queue.size:
                seed = self._queue[self._position]
                if clear[seed]:
                    return int(seed)
                self._position += 1
            if not self._refill(clear):
                return None

    def _refill(self, clear: np.ndarray) -> bool:
        rest = self._rest[clear[self._rest]]
        if rest.size == 0:
            self._rest = rest
            return False
        scores = self._confidence[rest]
        count = min(self._chunk, rest.size)
        head = np.argpartition(scores, rest.size - count)[rest.size - count :]
        head = head[np.lexsort((rest[head], -scores[head]))]
        self._queue, self._position = rest[head], 0
        keep = np.ones(rest.size, dtype=bool)
        keep[head] = False
        self._rest = rest[keep]
        self._chunk *= 4
        return True


class _UniformClear:
    """One class's candidate seeds, served uniformly at random among those still clear.

    Rejection sampling: a draw that lands on a blocked seed compacts the list once, after which every
    draw lands on a clear one, so a pick costs O(1) until regions start to crowd the class.
    """

    def __init__(self, seeds: np.ndarray) -> None:
        self._seeds = seeds

    def next_clear(self, clear: np.ndarray, rng: np.random.Generator) -> int | None:
        while self._seeds.size:
            seed = self._seeds[rng.integers(self._seeds.size)]
            if clear[seed]:
                return int(seed)
            self._seeds = self._seeds[clear[self._seeds]]
        return None


class DecompSampler:
    """RegionStrategy: DECOMP class-wise region sampling inside one image.

    Each of up to ``k`` draws picks a class with probability proportional to its weight among the
    classes present in the image (at least ``min_pixels`` unlabelled pixels) with weight > 0, then
    places a region (``shape``, default ``BoxRegions()``) on that class's most confident seed
    (``center="max_confidence"``) or a uniformly random one (``center="uniform"``) whose region stays
    clear of labelled pixels, ignored pixels and the regions already chosen. A class with no clear seed
    left is dropped; when none is left, classes are drawn uniformly among those predicted anywhere on
    the available pixels and not in ``exclude``; the draw stops when no class has room. Each region
    records the class drawn, its seed, the confidence there, and the class weight as its score.
    """

    name = "decomp"

    def __init__(
        self,
        weights: np.ndarray,
        shape: RegionShape | None = None,
        center: str = "max_confidence",
        min_pixels: int = 1,
        exclude: Iterable[int] = (),
    ) -> None:
        self.weights = _checked_weights(weights)
        if center not in CENTERS:
            raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
        if min_pixels < 1:
            raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
        self.exclude = tuple(int(c) for c in exclude)
        if any(not 0 <= c < self.weights.size for c in self.exclude):
            raise ValueError(f"excluded classes {self.exclude} must lie in 0 .. {self.weights.size - 1}")
        self.shape = shape if shape is not None else BoxRegions()
        self.center = center
        self.min_pixels = min_pixels

    @classmethod
    def from_statistics(
        cls,
        pool: PoolStatistics,
        *,
        decimals: int | None = DEFAULT_RATE_DECIMALS,
        exclude: Iterable[int] = (),
        **options,
    ) -> DecompSampler:
        """A sampler weighted by the pool's class confidence rates."""
        exclude = tuple(exclude)
        return cls(pool.class_weights(decimals, exclude), exclude=exclude, **options)

    def select(
        self,
        image: ScoredImage,
        k: int = DEFAULT_REGIONS_PER_IMAGE,
        rng: np.random.Generator | int | None = None,
    ) -> list[Region]:
        if k < 0:
            raise ValueError(f"k (regions per image) must be >= 0, got {k}")
        rng = np.random.default_rng(rng)
        statistics = PoolStatistics.from_image(image, self.weights.size)
        allowed = np.ones(self.weights.size, dtype=bool)
        allowed[list(self.exclude)] = False
        lottery = _ClassLottery(
            self.weights,
            eligible=statistics.present(self.min_pixels) & (self.weights > 0) & allowed,
            fallback=(statistics.predicted > 0) & allowed,
        )
        self.shape.prepare(image)
        # Blocking writes into ``clear``; ``clear_flat`` must be a view of it, hence contiguous.
        clear = np.ascontiguousarray(self.shape.clear_seeds(~image.available()))
        clear_flat = clear.reshape(-1)
        labels_flat = image.labels.reshape(-1)
        confidence_flat = image.confidence.reshape(-1)
        pickers: dict[int, _MostConfidentFirst | _UniformClear] = {}
        regions: list[Region] = []
        while len(regions) < k:
            class_index = lottery.draw(rng)
            if class_index is None:
                break
            if class_index not in pickers:
                seeds = np.flatnonzero((labels_flat == class_index) & clear_flat)
                pickers[class_index] = (
                    _MostConfidentFirst(seeds, confidence_flat)
                    if self.center == "max_confidence"
                    else _UniformClear(seeds)
                )
            flat_seed = pickers[class_index].next_clear(clear_flat, rng)
            if flat_seed is None:
                lottery.drop(class_index)
                continue
            seed = tuple(int(i) for i in np.unravel_index(flat_seed, clear.shape))
            bbox, mask = self.shape.region_at(seed)
            self.shape.block(clear, bbox, mask)
            regions.append(
                Region(
                    mask=mask,
                    bbox=bbox,
                    seed=seed,
                    class_index=class_index,
                    confidence=float(confidence_flat[flat_seed]),
                    score=float(self.weights[class_index]),
                )
            )
        return regions
