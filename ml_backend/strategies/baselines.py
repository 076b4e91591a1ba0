"""The baselines DECOMP is compared with, on the same interfaces (issue 2; decomp-method.md section 4).

Region level (``RegionStrategy``): random, entropy top-K, and the three "entropy pool, then diversity"
methods of the authors' code (k-means, core-set, BADGE), which draw a pool of the ``pool_factor * K``
best non-overlapping entropy regions and keep K of them. Image level (``ImageStrategy``): random and
mean entropy. Everything is N-dimensional (2-D images and 3-D volumes) and deterministic under a seed.
The registries at the end hold these and DECOMP's, so every strategy can be built by name.

Every region strategy returns disjoint regions that avoid labelled and ignored pixels, each carrying the
strategy's own score in ``Region.score`` (the random key for ``RandomRegions``, the region's mean pixel
entropy for all others), ranked by that score, highest first. For the diversity methods the ranking is
by entropy too, not by the order the diversity step picked them: the set is what they choose.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from .base import ImageStrategy, Region, RegionShape, RegionStrategy, ScoredImage, check_region_count
from .decomp import DecompImagePriority, DecompSampler
from .diversity import (
    badge_embeddings,
    k_center_greedy,
    kmeans_plus_plus_seeding,
    kmeans_representatives,
    l2_normalise,
    pool_under_regions,
)
from .seeds import BestClearSeeds

DEFAULT_POOL_FACTOR = 3


def pixel_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Per-pixel entropy H(p) = -sum_c p_c log p_c in nats (0 log 0 = 0) of a (C, *spatial) probability
    map, as a float32 map of the spatial shape.

    A loop over class planes keeps the temporaries at one plane (about twice as fast as
    ``torch.special.entr(p).sum(0)`` at 19 x 2048 x 2048 on this machine) and reads float16 directly.
    """
    if probabilities.ndim < 2 or probabilities.shape[0] < 1:
        raise ValueError(
            f"probabilities must be (C, *spatial) with C >= 1 and a spatial axis, got {probabilities.shape}"
        )
    entropy = np.zeros(probabilities.shape[1:], dtype=np.float32)
    term = np.empty_like(entropy)
    for plane in probabilities:
        np.maximum(plane, np.float32(np.finfo(np.float32).tiny), out=term)
        np.log(term, out=term)
        term *= plane
        entropy -= term
    if not np.isfinite(entropy).all():
        raise ValueError("probabilities contain NaN or infinite values")
    return entropy


def _check_option(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _require_probabilities(image: ScoredImage, strategy: str) -> np.ndarray:
    if image.probabilities is None:
        raise ValueError(
            f"{strategy} needs the class probabilities (ScoredImage.probabilities, C x spatial); build the "
            "ScoredImage with keep_probabilities=True"
        )
    return image.probabilities


def greedy_regions(
    shape: RegionShape, image: ScoredImage, seed_scores: np.ndarray, k: int
) -> list[Region]:
    """Up to ``k`` regions, highest seed score first (ties: lowest flat index), each disjoint from
    labelled and ignored pixels and from the regions before it. ``shape`` must be prepared."""
    if k == 0:
        return []
    # Blocking writes into ``clear`` while the walk reads it through a flat view: it must be contiguous.
    clear = np.ascontiguousarray(shape.clear_seeds(~image.available()))
    best_first = BestClearSeeds(seed_scores, clear)
    regions: list[Region] = []
    while len(regions) < k:
        seed = best_first.next_clear()
        if seed is None:
            break
        bbox, mask = shape.region_at(seed)
        shape.block(clear, bbox, mask)
        confidence, score = float(image.confidence[seed]), float(seed_scores[seed])
        regions.append(Region(mask, bbox, seed, None, confidence, score))
    return regions


class RandomRegions:
    """K seeds drawn uniformly among the clear seeds, one after another (each draw among the seeds still
    clear after the previous regions). ``Region.score`` is the seed's uniform random key."""

    name = "random"

    def __init__(self, shape: RegionShape):
        self.shape = shape

    def select(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]:
        check_region_count(k)
        self.shape.prepare(image)
        # Taking the seeds in the order of i.i.d. uniform keys is a uniform draw among the seeds left.
        keys = rng.random(image.spatial_shape, dtype=np.float32)
        return greedy_regions(self.shape, image, keys, k)


class EntropyRegions:
    """Entropy top-K, non-overlapping: region score = mean pixel entropy inside the region
    (``RegionShape.region_means``); the best region first, then the best one still clear of it, and so
    on."""

    name = "entropy"

    def __init__(self, shape: RegionShape):
        if not callable(getattr(shape, "region_means", None)):
            raise TypeError(
                f"{type(self).__name__} ranks every seed by the mean entropy of its region, so its shape "
                f"needs region_means(values), as BoxRegions and SuperpixelRegions have; {shape!r} has none"
            )
        self.shape = shape

    def select(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]:
        check_region_count(k)
        probabilities = _require_probabilities(image, type(self).__name__)
        self.shape.prepare(image)
        return greedy_regions(self.shape, image, self.shape.region_means(pixel_entropy(probabilities)), k)


class _EntropyPoolThenDiversity:
    """Draws the ``pool_factor * k`` best non-overlapping entropy regions, then keeps ``k`` of them chosen
    by ``_choose`` on per-region features (the model's penultimate feature map pooled under each region
    and L2-normalised). A pool of at most ``k`` regions is taken whole.

    Each subclass declares its keyword ``options``: name -> allowed values, the first being the default;
    they become attributes of the same name.
    """

    name: str
    options: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, shape: RegionShape, pool_factor: int = DEFAULT_POOL_FACTOR, **options: str):
        if not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
            raise ValueError(f"pool_factor must be a positive integer, got {pool_factor!r}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no option {', '.join(unknown)}; its options are shape, "
                f"pool_factor, {', '.join(self.options)}"
            )
        self.shape = shape
        self.pool_factor = int(pool_factor)
        for option, allowed in self.options.items():
            setattr(self, option, _check_option(option, options.get(option, allowed[0]), allowed))
        self._entropy = EntropyRegions(shape)

    def select(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]:
        check_region_count(k)
        if image.features is None:
            raise ValueError(
                f"{type(self).__name__} needs the model's penultimate feature map (ScoredImage.features, "
                "F x spatial, possibly coarser than the image) to compare regions; this image has none"
            )
        pool = self._entropy.select(image, self.pool_factor * k, rng)
        if len(pool) <= k:
            return pool
        features = l2_normalise(pool_under_regions(image.features, pool, image.spatial_shape))
        chosen = self._choose(image, pool, features, k, rng)
        # The pool is ranked by entropy, so pool order is score order.
        return [pool[i] for i in sorted(int(i) for i in chosen)]

    def _choose(
        self,
        image: ScoredImage,
        pool: list[Region],
        features: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        raise NotImplementedError


def _pool_entropy(pool: list[Region]) -> np.ndarray:
    return np.array([region.score for region in pool])


def _random_state(rng: np.random.Generator) -> int:
    return int(rng.integers(np.iinfo(np.int32).max))


class EntropyKMeansRegions(_EntropyPoolThenDiversity):
    """Entropy pool, MiniBatchKMeans with k clusters on the region features, the most uncertain region of
    each cluster (the authors' ``uncertainty_clustering``). ``init="random"`` is several times cheaper
    than k-means++ on large pools (perf-anchors.md) and the default."""

    name = "entropy-kmeans"
    options = {"init": ("random", "k-means++")}
    init: str

    def _choose(self, image, pool, features, k, rng):
        return kmeans_representatives(features, k, _pool_entropy(pool), _random_state(rng), self.init)


class EntropyCoresetRegions(_EntropyPoolThenDiversity):
    """Entropy pool, then k-center greedy on the region features (the authors' ``uncertainty_setcover``).

    ``first_center="most-uncertain"`` (default) starts from the highest-entropy region, so the best
    region is always kept and the outcome depends on the image alone; ``"random"`` starts from a random
    pool member, as the authors' code does.
    """

    name = "entropy-coreset"
    options = {"first_center": ("most-uncertain", "random")}
    first_center: str

    def _choose(self, image, pool, features, k, rng):
        first = 0 if self.first_center == "most-uncertain" else int(rng.integers(len(pool)))
        return k_center_greedy(features, k, first)


class BadgeRegions(_EntropyPoolThenDiversity):
    """Entropy pool, gradient embeddings g = z ⊗ (onehot(ŷ) − p̄) per region (z the pooled normalised
    feature, p̄ the region's mean probability, ŷ = argmax p̄), then either k-means++ seeding on g as in
    BADGE (``selection="kmeans++"``, default) or, as the authors' code does, MiniBatchKMeans on g and the
    most uncertain region per cluster (``selection="kmeans"``)."""

    name = "badge"
    options = {"selection": ("kmeans++", "kmeans")}
    selection: str

    def _choose(self, image, pool, features, k, rng):
        # The pool comes from EntropyRegions, which already required the probabilities.
        mean_probabilities = pool_under_regions(image.probabilities, pool, image.spatial_shape)
        embeddings = badge_embeddings(features, mean_probabilities)
        if self.selection == "kmeans++":
            return kmeans_plus_plus_seeding(embeddings, k, rng)
        return kmeans_representatives(embeddings, k, _pool_entropy(pool), _random_state(rng), "random")


class RandomImagePriority:
    """A seeded uniform random priority in [0, 1) per image.

    With ``image_id`` the priority is a hash of (seed, id): the same image gets the same priority in
    every call and every process. Without it, priorities come from one generator seeded at construction,
    so a fixed sequence of calls is reproducible.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def priority(self, image: ScoredImage, image_id: str | int | None = None) -> float:
        if image_id is None:
            return float(self._rng.random())
        digest = hashlib.blake2b(f"{self.seed}\0{image_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64


class MeanEntropyPriority:
    """Mean pixel entropy over the pixels still available (not labelled, not ignored); 0.0 for an image
    with none left (the authors' ``uncertainty`` image strategy)."""

    name = "mean-entropy"

    def priority(self, image: ScoredImage) -> float:
        entropy = pixel_entropy(_require_probabilities(image, type(self).__name__))
        available = image.available()
        if not available.any():
            return 0.0
        return float(entropy[available].mean(dtype=np.float64))


# Every strategy by name, DECOMP included, so that the simulator and the command line build any of them
# alike. Region strategies take the region shape as the keyword ``shape``; DECOMP also needs ``weights``.
REGION_STRATEGIES: dict[str, Callable[..., RegionStrategy]] = {
    DecompSampler.name: DecompSampler,
    RandomRegions.name: RandomRegions,
    EntropyRegions.name: EntropyRegions,
    EntropyKMeansRegions.name: EntropyKMeansRegions,
    EntropyCoresetRegions.name: EntropyCoresetRegions,
    BadgeRegions.name: BadgeRegions,
}

IMAGE_STRATEGIES: dict[str, Callable[..., ImageStrategy]] = {
    DecompImagePriority.name: DecompImagePriority,
    RandomImagePriority.name: RandomImagePriority,
    MeanEntropyPriority.name: MeanEntropyPriority,
}


def _build(kind: str, registry: Mapping[str, Callable[..., Any]], name: str, arguments: dict[str, Any]):
    if name not in registry:
        raise ValueError(f"unknown {kind} strategy {name!r}; known: {', '.join(sorted(registry))}")
    factory = registry[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**arguments)
    except TypeError as error:
        accepted = ", ".join(
            f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name for p in signature.parameters.values()
        )
        raise TypeError(f"{kind} strategy {name!r} ({factory.__name__}: {accepted}): {error}") from None
    return factory(**arguments)


def build_region_strategy(name: str, shape: RegionShape, **options: Any) -> RegionStrategy:
    """The region strategy registered under ``name``, on ``shape``, with its keyword ``options``
    (``weights`` for DECOMP, e.g. ``PoolStatistics.class_weights()``)."""
    return _build("region", REGION_STRATEGIES, name, {"shape": shape, **options})


def build_image_strategy(name: str, **options: Any) -> ImageStrategy:
    """The image strategy registered under ``name``, with its keyword ``options`` (``weights`` for
    DECOMP)."""
    return _build("image", IMAGE_STRATEGIES, name, options)
