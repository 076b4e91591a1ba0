"""Shared types of the selection strategies: what a strategy reads and what it returns.

Everything here is plain numpy, N-dimensional (2-D images and 3-D volumes alike), and knows nothing
of Label Studio, HTTP or the segmentation model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ScoredImage:
    """The outcome of one forward pass over one image (2-D) or volume (3-D), plus what is known of it.

    ``labels`` and ``confidence`` are the per-pixel argmax class and max probability. ``probabilities``
    (C x spatial) is kept only when a strategy needs more than those two (entropy, BADGE). ``features``
    (F x spatial, possibly coarser than the image) is the model's penultimate feature map, for the
    diversity baselines. ``labelled`` marks pixels an annotator already labelled; ``ignore`` marks pixels
    that must never be counted or proposed (outside the body, padding, void).
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    labelled: np.ndarray | None = None
    ignore: np.ndarray | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.labels.shape)

    def available(self) -> np.ndarray:
        """Boolean mask of pixels that may be counted and proposed: not labelled, not ignored."""
        free = np.ones(self.spatial_shape, dtype=bool)
        if self.labelled is not None:
            free &= ~self.labelled
        if self.ignore is not None:
            free &= ~self.ignore
        return free


@dataclass(frozen=True)
class Region:
    """One proposed annotation region.

    ``mask`` covers only ``bbox`` (a tuple of slices, one per spatial axis), so a region costs memory in
    proportion to its own size, not the image's. ``class_index`` is the class the region was drawn for
    (None for strategies that do not reason per class); ``seed`` is the pixel it grew from;
    ``confidence`` is the model's confidence there; ``score`` is the strategy's own ranking value
    (higher is chosen first).
    """

    mask: np.ndarray
    bbox: tuple[slice, ...]
    seed: tuple[int, ...]
    class_index: int | None
    confidence: float
    score: float

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        full = np.zeros(spatial_shape, dtype=bool)
        full[self.bbox] = self.mask
        return full


class RegionShape(Protocol):
    """Turns a seed pixel into a region. Squares/cubes and superpixels/supervoxels implement it.

    Strategies keep regions disjoint from labelled pixels and from each other through a boolean
    "clear seeds" mask: a seed is clear when the region grown from it would touch no forbidden pixel.
    """

    def prepare(self, image: ScoredImage) -> None:
        """Per-image set-up (for example computing superpixels); called once before the methods below."""

    def region_at(self, seed: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The region grown from ``seed``, as (bbox, mask inside bbox)."""

    def clear_seeds(self, forbidden: np.ndarray) -> np.ndarray:
        """Boolean mask of the seeds whose region would not overlap ``forbidden``."""

    def block(self, clear: np.ndarray, bbox: tuple[slice, ...], mask: np.ndarray) -> None:
        """Update ``clear`` in place after a region (bbox, mask) was chosen: seeds whose region would
        now overlap it stop being clear. Must cost in proportion to the region, not the image."""


class RegionStrategy(Protocol):
    """Chooses up to ``k`` disjoint regions inside one image."""

    name: str

    def select(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]: ...


class ImageStrategy(Protocol):
    """Ranks images: a higher priority is served first."""

    name: str

    def priority(self, image: ScoredImage) -> float: ...
