"""The math of the diversity baselines: pooling maps under regions, BADGE embeddings, and the three ways
of picking a diverse subset of candidate points (k-center greedy, k-means++ seeding, k-means with one
representative per cluster).

Pure numpy (scikit-learn for MiniBatchKMeans), N-dimensional, no knowledge of images beyond the
region masks handed in. Every selector returns indices into its ``points`` in the order it chose them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from .base import Region

_NORM_FLOOR = 1e-12


def pool_under_regions(
    maps: np.ndarray, regions: Sequence[Region], spatial_shape: tuple[int, ...]
) -> np.ndarray:
    """Mean of ``maps`` (M x grid, where grid may be coarser or finer than ``spatial_shape``) under each
    region's mask: an (n_regions, M) float32 array.

    Pixel i on an axis of length n maps to grid cell floor(i * g / n) on that axis's grid of length g, and
    every image pixel under the mask counts once, so a coarse cell that the region only partly covers
    weighs in proportion to the covered pixels.
    """
    spatial_shape = tuple(spatial_shape)
    if maps.ndim != len(spatial_shape) + 1:
        raise ValueError(
            f"maps of shape {maps.shape} cannot be pooled over {len(spatial_shape)}-D regions: expected "
            f"(channels, *grid) with {len(spatial_shape)} grid axes"
        )
    grid = maps.shape[1:]
    if min(grid) < 1:
        raise ValueError(f"maps of shape {maps.shape} have an empty grid axis")
    flat_maps = maps.reshape(maps.shape[0], -1)
    pooled = np.empty((len(regions), maps.shape[0]), dtype=np.float32)
    for row, region in enumerate(regions):
        pixel_coords = np.nonzero(region.mask)
        if pixel_coords[0].size == 0:
            raise ValueError(f"region seeded at {region.seed} has an empty mask: nothing to pool")
        cell_coords = tuple(
            ((coords + axis_slice.start) * cells) // pixels
            for coords, axis_slice, cells, pixels in zip(
                pixel_coords, region.bbox, grid, spatial_shape, strict=True
            )
        )
        cells, counts = np.unique(np.ravel_multi_index(cell_coords, grid), return_counts=True)
        weights = counts.astype(np.float32) / np.float32(pixel_coords[0].size)
        pooled[row] = flat_maps[:, cells].astype(np.float32) @ weights
    return pooled


def l2_normalise(points: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length; an all-zero row stays zero."""
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return (points / np.maximum(norms, _NORM_FLOOR)).astype(np.float32)


def badge_embeddings(features: np.ndarray, mean_probabilities: np.ndarray) -> np.ndarray:
    """BADGE gradient embeddings g = z ⊗ (onehot(ŷ) − p̄), one row per region.

    ``features`` (n, F) are the regions' L2-normalised pooled features z, ``mean_probabilities`` (n, C)
    their mean class probabilities p̄, and ŷ = argmax p̄. Row i is ``np.outer(z_i, onehot_i - p̄_i)``
    flattened (feature-major), shape (n, F * C). This is the negated gradient of the cross-entropy with
    respect to a linear last layer, which leaves every distance unchanged.
    """
    if features.ndim != 2 or mean_probabilities.ndim != 2 or len(features) != len(mean_probabilities):
        raise ValueError(
            f"expected features (n, F) and mean_probabilities (n, C) with the same n, got {features.shape} "
            f"and {mean_probabilities.shape}"
        )
    residual = -mean_probabilities.astype(np.float32)
    residual[np.arange(len(residual)), mean_probabilities.argmax(axis=1)] += 1.0
    return np.einsum("nf,nc->nfc", features.astype(np.float32), residual).reshape(len(features), -1)


class _NearestCenterDistances:
    """Squared distance from every point to its nearest chosen center, updated one center at a time with
    a matrix-vector product (||x||² − 2 x·c + ||c||²) instead of materialising the n x d difference."""

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        self.squared_norms = np.einsum("ij,ij->i", self.points, self.points)
        self.distances = np.full(len(self.points), np.inf, dtype=np.float32)
        self.chosen = np.zeros(len(self.points), dtype=bool)

    def add(self, center: int) -> None:
        dot_center = self.points @ self.points[center]
        to_center = self.squared_norms - 2.0 * dot_center + self.squared_norms[center]
        np.minimum(self.distances, np.maximum(to_center, 0.0), out=self.distances)
        self.chosen[center] = True
        # Rounding can leave a chosen point a hair above zero; it must never be chosen again.
        self.distances[center] = 0.0

    def first_unchosen(self) -> int:
        return int(np.flatnonzero(~self.chosen)[0])


def _check_points(points: np.ndarray) -> None:
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D (n, d) array, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")


def k_center_greedy(points: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """Farthest-first traversal: start at ``first``, then repeatedly take the point farthest from its
    nearest chosen center. Returns min(k, n) distinct indices in the order chosen; ties go to the lowest
    index, and once every point coincides with a center the rest follow in index order."""
    _check_points(points)
    count = min(k, len(points))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if not 0 <= first < len(points):
        raise ValueError(f"first center {first} is outside the {len(points)} points")
    nearest = _NearestCenterDistances(points)
    order = [first]
    nearest.add(first)
    while len(order) < count:
        farthest = int(np.argmax(nearest.distances))
        if nearest.distances[farthest] <= 0.0:
            farthest = nearest.first_unchosen()
        order.append(farthest)
        nearest.add(farthest)
    return np.asarray(order, dtype=np.int64)


def kmeans_plus_plus_seeding(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding as BADGE uses it: the first center is the point of largest norm, each next one is
    drawn with probability proportional to its squared distance to the nearest chosen center. Returns
    min(k, n) distinct indices in the order drawn; once every point coincides with a center the rest
    follow in index order."""
    _check_points(points)
    count = min(k, len(points))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    nearest = _NearestCenterDistances(points)
    first = int(np.argmax(nearest.squared_norms))
    order = [first]
    nearest.add(first)
    while len(order) < count:
        weights = nearest.distances.astype(np.float64)
        total = weights.sum()
        drawn = int(rng.choice(len(weights), p=weights / total)) if total > 0 else nearest.first_unchosen()
        order.append(drawn)
        nearest.add(drawn)
    return np.asarray(order, dtype=np.int64)


def kmeans_representatives(
    points: np.ndarray,
    k: int,
    uncertainty: np.ndarray,
    random_state: int,
    init: Literal["random", "k-means++"] = "random",
) -> np.ndarray:
    """MiniBatchKMeans with k clusters, then the most uncertain point of each cluster (ties: lowest index).

    When k-means leaves clusters empty (duplicate points), the most uncertain points not yet taken fill
    the gap, so min(k, n) indices always come back, ordered by decreasing uncertainty.
    """
    from sklearn.cluster import MiniBatchKMeans

    _check_points(points)
    uncertainty = np.asarray(uncertainty)
    if uncertainty.shape != (len(points),):
        raise ValueError(f"uncertainty has shape {uncertainty.shape}, expected ({len(points)},)")
    by_uncertainty = np.lexsort((np.arange(len(points)), -uncertainty))
    if k >= len(points):
        return by_uncertainty
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    clustering = MiniBatchKMeans(n_clusters=k, init=init, random_state=random_state, n_init="auto")
    assignment = clustering.fit_predict(np.asarray(points, dtype=np.float32))
    _, first_in_cluster = np.unique(assignment[by_uncertainty], return_index=True)
    taken = np.zeros(len(points), dtype=bool)
    taken[by_uncertainty[first_in_cluster]] = True
    shortfall = k - int(taken.sum())
    if shortfall:
        taken[by_uncertainty[~taken[by_uncertainty]][:shortfall]] = True
    return by_uncertainty[taken[by_uncertainty]]
