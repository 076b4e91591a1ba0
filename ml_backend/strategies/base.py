"""Shared types of the selection strategies: what a strategy reads and what it returns.

Everything here is plain numpy, N-dimensional (2-D images and 3-D volumes alike), and knows nothing
of Label Studio, HTTP or the segmentation model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


def smallest_label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds class indices 0 .. num_classes - 1."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def summarize_probabilities(probabilities: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel argmax class and max probability of a (C, *spatial) probability map.

    Accepts numpy arrays or torch tensors (any device), float16 or float32. One ``torch.max`` over the
    class axis yields both maps in a single pass, on float16 too (numpy's reductions are several times
    slower there). Returns ``labels`` in the smallest unsigned dtype that fits C and ``confidence`` in the
    input's float dtype, both as numpy arrays of the spatial shape.
    """
    import torch

    tensor = probabilities if isinstance(probabilities, torch.Tensor) else torch.from_numpy(
        np.asarray(probabilities)
    )
    if tensor.ndim < 2:
        raise ValueError(
            "probabilities must be (C, *spatial) with at least one spatial axis, "
            f"got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"probabilities must be a float array (float16/float32), got {tensor.dtype}")
    num_classes = tensor.shape[0]
    if num_classes < 1:
        raise ValueError("probabilities has an empty class axis (shape[0] == 0)")
    confidence, labels = torch.max(tensor, dim=0)
    label_dtype = getattr(torch, smallest_label_dtype(num_classes).name)
    return labels.to(label_dtype).cpu().numpy(), confidence.cpu().numpy()


@dataclass(frozen=True)
class ScoredImage:
    """The outcome of one forward pass over one image (2-D) or volume (3-D), plus what is known of it.

    ``labels`` and ``confidence`` are the per-pixel argmax class and max probability (see
    ``summarize_probabilities`` / ``from_probabilities``). ``probabilities`` (C x spatial) is kept only when
    a strategy needs more than those two (entropy, BADGE). ``features`` (F x spatial, possibly coarser than
    the image) is the model's penultimate feature map, for the diversity baselines. ``labelled`` marks
    pixels an annotator already labelled; ``ignore`` marks pixels that must never be counted or proposed
    (outside the body, padding, void). ``pixels`` is the image itself, (*spatial) or (*spatial, channels)
    in its native dtype, for region shapes that follow image content (superpixels); without it they fall
    back to the probabilities.

    Shapes are checked on construction; values are not (that would cost a pass over the image).
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    labelled: np.ndarray | None = None
    ignore: np.ndarray | None = None
    pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        spatial = tuple(self.labels.shape)
        if self.labels.ndim < 1 or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(
                f"ScoredImage.labels must be an integer class map with at least one axis, "
                f"got dtype {self.labels.dtype} and shape {spatial}"
            )
        if tuple(self.confidence.shape) != spatial or not np.issubdtype(self.confidence.dtype, np.floating):
            raise ValueError(
                f"ScoredImage.confidence must be a float map of the labels' shape {spatial}, "
                f"got dtype {self.confidence.dtype} and shape {tuple(self.confidence.shape)}"
            )
        if self.probabilities is not None and tuple(self.probabilities.shape[1:]) != spatial:
            raise ValueError(
                f"ScoredImage.probabilities must be (C, *{spatial}) (class axis first), "
                f"got shape {tuple(self.probabilities.shape)}"
            )
        if self.features is not None and self.features.ndim != len(spatial) + 1:
            raise ValueError(
                f"ScoredImage.features must be (F, *spatial) with {len(spatial)} spatial axes, "
                f"got shape {tuple(self.features.shape)}"
            )
        for name in ("labelled", "ignore"):
            mask = getattr(self, name)
            if mask is not None and (mask.dtype != bool or tuple(mask.shape) != spatial):
                raise ValueError(
                    f"ScoredImage.{name} must be a boolean mask of shape {spatial}, got dtype {mask.dtype} "
                    f"and shape {tuple(mask.shape)} (convert 0/1 masks with mask.astype(bool))"
                )
        if self.pixels is not None and (
            tuple(self.pixels.shape[: len(spatial)]) != spatial
            or self.pixels.ndim not in (len(spatial), len(spatial) + 1)
        ):
            raise ValueError(
                f"ScoredImage.pixels must be {spatial} or {spatial} + (channels,), "
                f"got shape {tuple(self.pixels.shape)}"
            )

    @classmethod
    def from_probabilities(
        cls,
        probabilities: np.ndarray | torch.Tensor,
        *,
        keep_probabilities: bool = False,
        features: np.ndarray | None = None,
        labelled: np.ndarray | None = None,
        ignore: np.ndarray | None = None,
        pixels: np.ndarray | None = None,
    ) -> ScoredImage:
        """Build from a (C, *spatial) probability map; keep the map itself only if a strategy needs it."""
        labels, confidence = summarize_probabilities(probabilities)
        kept = None
        if keep_probabilities:
            kept = probabilities if isinstance(probabilities, np.ndarray) else probabilities.cpu().numpy()
        return cls(labels, confidence, kept, features, labelled, ignore, pixels)

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
    A seed always lies inside its own region, so a clear seed is itself an allowed pixel.
    """

    def prepare(self, image: ScoredImage) -> None:
        """Per-image set-up (for example computing superpixels); called once before the methods below."""

    def region_at(self, seed: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The region grown from ``seed``, as (bbox, mask inside bbox)."""

    def clear_seeds(self, forbidden: np.ndarray) -> np.ndarray:
        """Boolean mask of the seeds whose region would not overlap ``forbidden`` (C-contiguous)."""

    def block(self, clear: np.ndarray, bbox: tuple[slice, ...], mask: np.ndarray) -> None:
        """Update ``clear`` in place after a region (bbox, mask) was chosen: seeds whose region would
        now overlap it stop being clear. Must cost in proportion to the region, not the image."""

    def region_means(self, values: np.ndarray) -> np.ndarray:
        """For every seed, the mean of ``values`` (one per pixel of the prepared image) over the region
        grown from it, as a float32 map: how strategies that score regions (mean entropy) rank every
        seed at once. Must cost a few passes over the image, not one per seed."""


def check_region_count(k: int) -> None:
    """Refuse a ``k`` (regions to select in one image) that is not a non-negative integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k (regions per image) must be a non-negative integer, got {k!r}")


class RegionStrategy(Protocol):
    """Chooses up to ``k`` disjoint regions inside one image."""

    name: str

    def select(self, image: ScoredImage, k: int, rng: np.random.Generator) -> list[Region]: ...


class ImageStrategy(Protocol):
    """Ranks images: a higher priority is served first."""

    name: str

    def priority(self, image: ScoredImage) -> float: ...
