"""A procedurally generated 3-D set that looks like abdominal CT with kidney lesions (KiTS-like).

Each volume is an axial stack (axis 0 = slices) in Hounsfield units (int16): air around an elliptical body of
soft tissue, a bright vertebra, and two kidneys wrapped in perirenal fat. One kidney carries a tumour; every
other volume also carries a cyst. Intensities, sizes, positions, noise and contrast vary per volume the way
scanners and patients do, and, as in KiTS, background holds over 95% of the voxels. The hard cases are
deliberate: the tumour enhances less than the kidney it grows from, and the cyst (water, 0-15 HU) is the
rarest class and sits close to soft tissue (40 HU) in intensity, which is what class-wise confidence
should pick up. Lesions are larger than most in KiTS so that a model trained for minutes on a CPU learns
them at all.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ml_backend.simulation.dataset import Sample, SegmentationDataset

CT_CLASSES = ("background", "kidney", "tumour", "cyst")
_AIR_HU, _FAT_HU, _TISSUE_HU, _BONE_HU = -1000.0, -90.0, 40.0, 450.0


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, semi_axes, angle: float = 0.0) -> np.ndarray:
    """Voxels inside an ellipsoid rotated by ``angle`` in the axial (y, x) plane."""
    z, y, x = (g - c for g, c in zip(grid, centre, strict=True))
    cos, sin = np.cos(angle), np.sin(angle)
    y, x = cos * y - sin * x, sin * y + cos * x
    return (z / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 + (x / semi_axes[2]) ** 2 <= 1.0


def _point_on_surface(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """A random voxel on the boundary of ``mask``: lesions grow out of the organ's rim as renal masses do."""
    rim = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    return tuple(int(v) for v in rim[rng.integers(len(rim))])


def ct_volume(stem: str, shape: tuple[int, int, int], rng: np.random.Generator, with_cyst: bool) -> Sample:
    depth, height, width = shape
    grid = np.ogrid[:depth, :height, :width]
    scale = np.array(shape, dtype=float)
    labels = np.zeros(shape, dtype=np.uint8)

    body = _ellipsoid(grid, scale / 2, (4 * depth, 0.40 * height, 0.46 * width))
    image = np.where(body, _TISSUE_HU + rng.normal(0, 10), _AIR_HU)
    spine = _ellipsoid(grid, (depth / 2, 0.72 * height, width / 2), (4 * depth, 0.07 * height, 0.07 * width))
    image[spine] = _BONE_HU + rng.normal(0, 60)

    kidney_hu = rng.uniform(140, 220)  # contrast phase differs between scans
    kidneys = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        centre = scale * (rng.uniform(0.4, 0.6), rng.uniform(0.55, 0.65), 0.5 + side * rng.uniform(0.2, 0.26))
        semi_axes = scale * (rng.uniform(0.22, 0.32), rng.uniform(0.09, 0.12), rng.uniform(0.06, 0.08))
        angle = side * rng.uniform(0.2, 0.6)
        # Perirenal fat wraps each kidney, as in real abdomens: the organ's rim shows against it.
        image[_ellipsoid(grid, centre, semi_axes + 3, angle) & body] = _FAT_HU
        kidneys |= _ellipsoid(grid, centre, semi_axes, angle)
    image[kidneys] = kidney_hu
    labels[kidneys] = 1

    tumour = _ellipsoid(
        grid,
        _point_on_surface(kidneys, rng),
        rng.uniform(0.18, 0.28) * scale.min() * np.array([1.4, 1.0, 1.0]),
    )
    # Hypo-enhancing and heterogeneous: a smoothed-noise texture of about +-15 HU.
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    image[tumour] = (kidney_hu - rng.uniform(70, 110) + 200 * texture)[tumour]
    labels[tumour] = 2

    if with_cyst:
        cyst = _ellipsoid(
            grid, _point_on_surface(kidneys, rng), rng.uniform(0.14, 0.2) * scale.min() * np.ones(3)
        )
        cyst &= ~tumour
        image[cyst] = rng.uniform(0, 15)  # water-like and homogeneous
        labels[cyst] = 3

    image = ndimage.gaussian_filter(image, 0.8)  # partial-volume blur at every boundary
    image += rng.normal(0, rng.uniform(8, 20), shape) + rng.uniform(-25, 25)
    hounsfield = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return Sample(stem, hounsfield[..., None], labels)


def synthetic_ct(
    count: int = 12, shape: tuple[int, int, int] = (32, 64, 64), seed: int = 0
) -> SegmentationDataset:
    """``count`` CT-like volumes; volume i depends only on (seed, i), so a larger set extends a smaller one.

    Every volume holds kidney and tumour; every other volume (even indices) also holds a cyst.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(
            f"shape must be three sides of at least 16 voxels (slices, rows, columns), got {shape}"
        )
    samples = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        samples.append(ct_volume(f"ct_{index:03d}", tuple(shape), rng, with_cyst=index % 2 == 0))
    return SegmentationDataset(tuple(samples), CT_CLASSES)
