"""Region shapes: boxes (squares / cubes) and superpixels (supervoxels), N-dimensional.

Both implement the ``RegionShape`` protocol of ``base.py``: a strategy asks which seeds are clear of the
forbidden pixels once per image (vectorised), then blocks each chosen region at a cost in proportion to
the region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ml_backend.strategies.base import ScoredImage

DEFAULT_BOX_SIDE = 32
DEFAULT_SUPERPIXEL_SIZE = 32


def _along(axis: int, index: slice, ndim: int) -> tuple[slice, ...]:
    return tuple(index if a == axis else slice(None) for a in range(ndim))


def _any_in_window(mask: np.ndarray, side: int, axis: int) -> np.ndarray:
    """``out[i] = mask[i - side // 2 : i - side // 2 + side].any()`` along ``axis``, windows clipped.

    Doubling shifted ORs cost log2(side) passes over a boolean array, several times faster than
    ``scipy.ndimage.maximum_filter1d`` (see ml_backend.benchmarks.decomp_cost).
    """
    ndim = mask.ndim
    length = mask.shape[axis]
    before = side // 2
    padded_shape = list(mask.shape)
    padded_shape[axis] = length + side - 1
    padded = np.zeros(padded_shape, dtype=bool)
    padded[_along(axis, slice(before, before + length), ndim)] = mask
    width = 1
    while width < side:
        step = min(width, side - width)
        # numpy buffers overlapping operands, so this reads the values from before the update.
        padded[_along(axis, slice(None, -step), ndim)] |= padded[_along(axis, slice(step, None), ndim)]
        width += step
    return padded[_along(axis, slice(0, length), ndim)]


def _check_values_shape(values: np.ndarray, spatial_shape: tuple[int, ...]) -> None:
    if values.shape != tuple(spatial_shape):
        raise ValueError(
            f"region means need one value per pixel of the prepared image {tuple(spatial_shape)}, got "
            f"values of shape {values.shape}"
        )


def seeds_touching(mask: np.ndarray, sides: Sequence[int]) -> np.ndarray:
    """Boolean map of the seeds whose box (``sides[a]`` long on axis ``a``, starting ``sides[a] // 2``
    before the seed, clipped to the array) contains at least one True pixel of ``mask``.

    This is a max filter of ``mask`` over the box footprint, separable along the axes.
    """
    if len(sides) != mask.ndim:
        raise ValueError(f"need one box side per axis: {len(sides)} sides for a {mask.ndim}-D mask")
    touching = mask.astype(bool, copy=False)
    for axis, side in enumerate(sides):
        touching = _any_in_window(touching, side, axis)
    return np.ascontiguousarray(touching)


class BoxRegions:
    """Squares (2-D) / cubes (3-D) of side ``side`` centred on the seed and clipped to the image.

    ``side`` is one length for every axis or one per axis (for anisotropic volumes, e.g. thick CT slices).
    With an even side the box reaches ``side // 2`` pixels before the seed and ``side // 2 - 1`` after it.
    """

    def __init__(self, side: int | Sequence[int] = DEFAULT_BOX_SIDE) -> None:
        sides = (side,) if isinstance(side, (int, np.integer)) else tuple(side)
        if not sides or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sides):
            raise ValueError(f"box side must be a positive integer or a sequence of them, got {side!r}")
        self.side = side
        self._sides = tuple(int(s) for s in sides)
        self._spatial_shape: tuple[int, ...] | None = None
        self._active_sides: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"BoxRegions(side={self.side!r})"

    def sides_for(self, ndim: int) -> tuple[int, ...]:
        if len(self._sides) == 1:
            return self._sides * ndim
        if len(self._sides) != ndim:
            raise ValueError(f"BoxRegions has {len(self._sides)} sides {self._sides} for a {ndim}-D image")
        return self._sides

    def prepare(self, image: ScoredImage) -> None:
        self._spatial_shape = image.spatial_shape
        self._active_sides = self.sides_for(len(self._spatial_shape))

    def _require_prepared(self) -> tuple[int, ...]:
        if self._spatial_shape is None:
            raise RuntimeError("BoxRegions.prepare(image) must be called before using the shape")
        return self._spatial_shape

    def region_means(self, values: np.ndarray) -> np.ndarray:
        """For every seed, the mean of ``values`` over its box (clipped to the image), as float32.

        A clipped box is a product of per-axis windows, so its mean is the per-axis window mean applied
        one axis after another: one running-sum pass per axis (``scipy.ndimage.uniform_filter1d``, double
        accumulators), whatever the box size.
        """
        from scipy.ndimage import uniform_filter1d

        _check_values_shape(values, self._require_prepared())
        means = values.astype(np.float32)
        for axis, side in enumerate(self._active_sides):
            length = means.shape[axis]
            starts = np.arange(length) - side // 2
            covered = np.minimum(starts + side, length) - np.maximum(starts, 0)
            means = uniform_filter1d(means, side, axis=axis, mode="constant", cval=0.0)
            broadcast = [1] * means.ndim
            broadcast[axis] = length
            means *= (side / covered).astype(np.float32).reshape(broadcast)
        return means

    def region_at(self, seed: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        shape = self._require_prepared()
        bbox = tuple(
            slice(max(0, s - side // 2), min(n, s - side // 2 + side))
            for s, side, n in zip(seed, self._active_sides, shape, strict=True)
        )
        return bbox, np.ones(tuple(b.stop - b.start for b in bbox), dtype=bool)

    def clear_seeds(self, forbidden: np.ndarray) -> np.ndarray:
        self._require_prepared()
        if not forbidden.any():
            return np.ones(forbidden.shape, dtype=bool)
        return ~seeds_touching(forbidden, self._active_sides)

    def block(self, clear: np.ndarray, bbox: tuple[slice, ...], mask: np.ndarray) -> None:
        shape = self._require_prepared()
        # The seeds whose box can reach the region lie in its bbox grown by the box reach on each side.
        window = tuple(
            slice(max(0, b.start - (side - 1 - side // 2)), min(n, b.stop + side // 2))
            for b, side, n in zip(bbox, self._active_sides, shape, strict=True)
        )
        if mask.all():  # a whole box, as region_at makes: every seed in the window now touches it
            clear[window] = False
            return
        local = np.zeros(tuple(w.stop - w.start for w in window), dtype=bool)
        inside = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(bbox, window, strict=True))
        local[inside] = mask
        clear[window] &= ~seeds_touching(local, self._active_sides)


class SuperpixelRegions:
    """SLIC superpixels (2-D) / supervoxels (3-D) from scikit-image; a seed's region is its superpixel.

    Computed on ``ScoredImage.pixels`` when present (so regions follow image edges), else on the
    probabilities (class axis as channels). Only the available pixels (not labelled, not ignored) are
    segmented, so no superpixel straddles what an annotator already labelled; ``size`` is the wanted
    superpixel side in pixels (superpixel count = available pixels / size**ndim).

    ``compactness`` trades colour fidelity for regular shapes; the default is scikit-image's 10 for RGB
    images (compared in Lab space) and 0.1 for everything else (intensities rescaled to [0, 1]).
    ``spacing`` is the voxel spacing per axis, for anisotropic volumes.
    """

    def __init__(
        self,
        size: int = DEFAULT_SUPERPIXEL_SIZE,
        compactness: float | None = None,
        spacing: Sequence[float] | None = None,
        max_num_iter: int = 10,
        sigma: float = 0.0,
    ) -> None:
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"superpixel size must be a positive integer, got {size!r}")
        if compactness is not None and compactness <= 0:
            raise ValueError(f"compactness must be positive, got {compactness!r}")
        self.size = int(size)
        self.compactness = compactness
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.max_num_iter = max_num_iter
        self.sigma = sigma
        self._segments: np.ndarray | None = None
        self._objects: list[tuple[slice, ...] | None] = []

    def __repr__(self) -> str:
        return f"SuperpixelRegions(size={self.size}, compactness={self.compactness})"

    @property
    def segments(self) -> np.ndarray:
        """Superpixel id per pixel of the prepared image: 1, 2, ...; 0 on labelled/ignored pixels."""
        if self._segments is None:
            raise RuntimeError("SuperpixelRegions.prepare(image) must be called before using the shape")
        return self._segments

    def prepare(self, image: ScoredImage) -> None:
        from scipy import ndimage
        from skimage.segmentation import slic

        spatial = image.spatial_shape
        if image.pixels is not None:
            data = image.pixels
            channel_axis = -1 if data.ndim == len(spatial) + 1 else None
            is_rgb = channel_axis is not None and data.shape[-1] == 3
        elif image.probabilities is not None:
            data, channel_axis, is_rgb = image.probabilities, 0, False
        else:
            raise ValueError(
                "SuperpixelRegions needs the image pixels (ScoredImage.pixels) or the class probabilities "
                "(ScoredImage.probabilities); this ScoredImage carries neither"
            )
        available = image.available()
        segments = np.zeros(spatial, dtype=np.int32)
        count = int(available.sum())
        if count:
            compactness = self.compactness if self.compactness is not None else (10.0 if is_rgb else 0.1)
            segments = slic(
                data,
                n_segments=max(1, math.ceil(count / self.size ** len(spatial))),
                compactness=compactness,
                spacing=self.spacing,
                max_num_iter=self.max_num_iter,
                sigma=self.sigma,
                convert2lab=is_rgb,
                start_label=1,
                mask=available,
                channel_axis=channel_axis,
            ).astype(np.int32, copy=False)
        self._segments = segments
        self._objects = ndimage.find_objects(segments)

    def region_means(self, values: np.ndarray) -> np.ndarray:
        """For every seed, the mean of ``values`` over its superpixel, as float32 (labelled and ignored
        pixels, which no region covers, get the mean over all of them)."""
        _check_values_shape(values, self.segments.shape)
        ids = self.segments.ravel()
        totals = np.bincount(ids, weights=values.ravel())
        sizes = np.bincount(ids)
        return (totals / np.maximum(sizes, 1))[self.segments].astype(np.float32)

    def region_at(self, seed: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        segment = int(self.segments[seed])
        if segment == 0:
            raise ValueError(f"seed {seed} lies on a labelled or ignored pixel: it belongs to no superpixel")
        bbox = self._objects[segment - 1]
        return bbox, self.segments[bbox] == segment

    def clear_seeds(self, forbidden: np.ndarray) -> np.ndarray:
        touched = np.zeros(len(self._objects) + 1, dtype=bool)
        touched[self.segments[forbidden]] = True
        touched[0] = True
        return ~touched[self.segments]

    def block(self, clear: np.ndarray, bbox: tuple[slice, ...], mask: np.ndarray) -> None:
        for segment in np.unique(self.segments[bbox][mask]):
            if segment == 0:
                continue
            box = self._objects[segment - 1]
            clear[box][self.segments[box] == segment] = False
