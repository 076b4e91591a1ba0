"""DECOMP image priority and class-wise region sampling, 2-D and 3-D, on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ml_backend.strategies.base import ScoredImage, summarize_probabilities
from ml_backend.strategies.decomp import DecompImagePriority, DecompSampler, image_priority
from ml_backend.strategies.seeds import BestClearSeeds
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions
from ml_backend.strategies.stats import PoolStatistics


def scored(labels, confidence=None, **masks) -> ScoredImage:
    labels = np.asarray(labels, np.uint8)
    if confidence is None:
        confidence = np.random.default_rng(0).uniform(0.4, 1.0, labels.shape)
    return ScoredImage(labels, np.asarray(confidence, np.float32), **masks)


def stripes(shape=(30, 30), classes=3) -> np.ndarray:
    """Vertical bands of classes 0 .. classes-1 across the last axis."""
    band = np.arange(shape[-1]) * classes // shape[-1]
    return np.broadcast_to(band, shape).astype(np.uint8)


def occupancy(regions, spatial_shape) -> np.ndarray:
    count = np.zeros(spatial_shape, np.int32)
    for region in regions:
        count[region.bbox] += region.mask
    return count


# summarize_probabilities


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_summarize_probabilities_gives_argmax_and_max(dtype):
    probabilities = np.random.default_rng(1).random((5, 6, 7, 3)).astype(dtype)
    labels, confidence = summarize_probabilities(probabilities)
    assert labels.dtype == np.uint8 and confidence.dtype == dtype
    np.testing.assert_array_equal(labels, probabilities.argmax(0))
    np.testing.assert_array_equal(confidence, probabilities.max(0))


def test_summarize_probabilities_accepts_torch_and_widens_labels_for_many_classes():
    probabilities = torch.rand(300, 4, 5)
    labels, confidence = summarize_probabilities(probabilities)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, probabilities.argmax(0).numpy())
    np.testing.assert_array_equal(confidence, probabilities.amax(0).numpy())
    with pytest.raises(ValueError, match="float"):
        summarize_probabilities(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="spatial axis"):
        summarize_probabilities(np.ones(3, np.float32))


# image priority


def test_priority_sums_the_weights_of_present_classes():
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 2
    assert DecompImagePriority(weights).priority(scored(labels)) == pytest.approx(0.4)


def test_priority_ignores_labelled_pixels():
    weights = np.array([0.1, 0.9])
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 1
    labelled = np.zeros((4, 4), bool)
    labelled[0, 0] = True
    assert DecompImagePriority(weights).priority(scored(labels, labelled=labelled)) == pytest.approx(0.1)


def test_priority_is_invariant_to_image_size():
    labels = np.random.default_rng(2).integers(0, 3, (16, 16)).astype(np.uint8)
    confidence = np.random.default_rng(3).random((16, 16))
    strategy = DecompImagePriority(np.array([0.2, 0.5, 0.3, 0.0]))
    small = strategy.priority(scored(labels, confidence))
    tiled = strategy.priority(scored(np.tile(labels, (2, 2)), np.tile(confidence, (2, 2))))
    assert small == tiled == pytest.approx(1.0)


def test_min_pixels_decides_presence():
    labels = np.zeros((10, 10), np.uint8)
    labels[0, :3] = 1
    weights = np.array([0.25, 0.75])
    statistics = PoolStatistics.from_image(scored(labels), 2)
    assert image_priority(statistics, weights, min_pixels=3) == pytest.approx(1.0)
    assert image_priority(statistics, weights, min_pixels=4) == pytest.approx(0.25)


def test_excluded_classes_add_nothing_to_the_priority():
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 1
    labels[3, 3] = 2
    image = scored(labels)
    weights = np.array([0.5, 0.2, 0.3])
    assert DecompImagePriority(weights, exclude=[0]).priority(image) == pytest.approx(0.5)
    statistics = PoolStatistics.from_image(image, 3)
    only_class_1 = DecompImagePriority(weights, exclude=[0, 2])
    assert only_class_1.priority(image, statistics=statistics) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="statistics of 2 classes for DecompImagePriority of 3 class"):
        DecompImagePriority(weights).priority(image, statistics=PoolStatistics.empty(2))
    with pytest.raises(ValueError, match=r"excluded classes \(3,\) must lie in 0 \.\. 2"):
        DecompImagePriority(weights, exclude=[3])


def test_priority_from_pool_statistics_and_mismatch_error():
    pool = PoolStatistics(np.array([10, 10]), np.array([10, 5]))
    strategy = DecompImagePriority.from_statistics(pool)
    np.testing.assert_allclose(strategy.weights, [0.0, 1.0])
    excluding = DecompImagePriority.from_statistics(pool, exclude=[1], min_pixels=3)
    np.testing.assert_allclose(excluding.weights, [1.0, 0.0])
    assert excluding.exclude == (1,) and excluding.min_pixels == 3
    with pytest.raises(ValueError, match="3 class weights for image statistics of 2 classes"):
        image_priority(pool, np.ones(3) / 3)


# region sampling


def test_zero_weight_class_is_never_sampled():
    labels = stripes((40, 40), classes=3)
    sampler = DecompSampler(np.array([0.0, 0.5, 0.5]), shape=BoxRegions(3))
    for seed in range(30):
        regions = sampler.select(scored(labels), k=15, rng=seed)
        assert len(regions) == 15
        assert all(region.class_index in (1, 2) for region in regions)


def test_sampled_class_frequencies_follow_the_weights():
    weights = np.array([0.5, 0.3, 0.2])
    sampler = DecompSampler(weights, shape=BoxRegions(1))
    counts = np.zeros(3)
    for seed in range(200):
        for region in sampler.select(scored(stripes((30, 30))), k=15, rng=seed):
            counts[region.class_index] += 1
    expected = weights * counts.sum()
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_exhausted_class_is_dropped_then_draws_fall_back_to_uniform():
    labels = np.zeros((10, 10), np.uint8)
    labels[0, :2] = 1
    labels[9, :3] = 2
    sampler = DecompSampler(np.array([0.0, 0.9, 0.1]), shape=BoxRegions(1))
    regions = sampler.select(scored(labels), k=10, rng=0)
    classes = [region.class_index for region in regions]
    assert sorted(classes[:5]) == [1, 1, 2, 2, 2]
    assert classes[5:] == [0] * 5
    assert [region.score for region in regions[5:]] == [0.0] * 5


def test_excluded_class_is_not_drawn_even_in_the_fallback():
    labels = np.zeros((6, 6), np.uint8)
    labels[0, 0] = 1
    sampler = DecompSampler(np.array([0.0, 1.0]), shape=BoxRegions(1), exclude=[0])
    regions = sampler.select(scored(labels), k=5, rng=0)
    assert [region.class_index for region in regions] == [1]


def test_stops_early_when_the_image_has_no_room():
    labels = stripes((4, 4), classes=2)
    labelled = np.ones((4, 4), bool)
    labelled[1, 1] = labelled[2, 3] = labelled[3, 0] = False
    sampler = DecompSampler(np.array([0.5, 0.5]), shape=BoxRegions(1))
    regions = sampler.select(scored(labels, labelled=labelled), k=15, rng=0)
    assert sorted(region.seed for region in regions) == [(1, 1), (2, 3), (3, 0)]
    everything = np.ones((4, 4), bool)
    assert sampler.select(scored(labels, labelled=everything), k=15, rng=0) == []


def test_regions_avoid_labelled_and_ignored_pixels_and_each_other():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, (60, 50)).astype(np.uint8)
    labelled = np.zeros((60, 50), bool)
    labelled[10:25, 5:30] = True
    ignore = np.zeros((60, 50), bool)
    ignore[:, 45:] = True
    sampler = DecompSampler(np.array([0.1, 0.2, 0.3, 0.4]), shape=BoxRegions(7))
    for seed in range(5):
        regions = sampler.select(scored(labels, labelled=labelled, ignore=ignore), k=15, rng=seed)
        count = occupancy(regions, labels.shape)
        assert len(regions) == 15
        assert count.max() == 1
        assert not count[labelled | ignore].any()
        for region in regions:
            assert labels[region.seed] == region.class_index


def test_regions_are_clipped_at_the_border():
    labels = np.zeros((20, 20), np.uint8)
    confidence = np.full((20, 20), 0.5)
    confidence[0, 19] = 0.99
    region = DecompSampler(np.array([1.0]), shape=BoxRegions(5)).select(scored(labels, confidence), k=1)[0]
    assert region.seed == (0, 19)
    assert region.bbox == (slice(0, 3), slice(17, 20)) and region.mask.shape == (3, 3)
    assert region.confidence == pytest.approx(0.99) and region.score == 1.0


def test_same_seed_same_regions():
    labels = np.random.default_rng(5).integers(0, 3, (40, 40)).astype(np.uint8)
    for center in ("max_confidence", "uniform"):
        sampler = DecompSampler(np.array([0.2, 0.3, 0.5]), shape=BoxRegions(4), center=center)
        first = sampler.select(scored(labels), k=15, rng=np.random.default_rng(11))
        again = sampler.select(scored(labels), k=15, rng=np.random.default_rng(11))
        other = sampler.select(scored(labels), k=15, rng=np.random.default_rng(12))
        assert [(r.seed, r.class_index) for r in first] == [(r.seed, r.class_index) for r in again]
        assert [(r.seed, r.class_index) for r in first] != [(r.seed, r.class_index) for r in other]


def test_max_confidence_takes_the_most_confident_clear_pixel_of_the_class():
    labels = stripes((20, 20), classes=2)
    confidence = np.full((20, 20), 0.5)
    confidence[7, 15] = 0.99  # best pixel of class 1
    confidence[8, 16] = 0.98  # inside the first box: must be skipped
    confidence[15, 12] = 0.97  # next clear pixel of class 1
    confidence[3, 3] = 1.0  # class 0 has weight 0
    sampler = DecompSampler(np.array([0.0, 1.0]), shape=BoxRegions(5))
    regions = sampler.select(scored(labels, confidence), k=2, rng=0)
    assert [region.seed for region in regions] == [(7, 15), (15, 12)]
    assert [region.confidence for region in regions] == pytest.approx([0.99, 0.97])


def test_max_confidence_ties_in_float16_go_to_the_first_clear_pixel_in_c_order():
    labels = np.ones((100, 100), np.uint8)
    confidence = np.ones((100, 100), np.float16)  # saturated float16 predictions tie everywhere
    image = ScoredImage(labels, confidence)
    regions = DecompSampler(np.array([0.0, 1.0]), shape=BoxRegions(5)).select(image, k=2, rng=0)
    assert [region.seed for region in regions] == [(0, 0), (0, 5)]
    assert regions[0].confidence == 1.0


def reference_max_confidence(image: ScoredImage, weights, side: int, k: int, rng) -> list:
    """Brute force: a full argmax over the clear pixels of the drawn class at every draw."""
    shape = BoxRegions(side)
    shape.prepare(image)
    forbidden = ~image.available()
    eligible = list(np.flatnonzero(weights > 0))
    seeds = []
    while len(seeds) < k and eligible:
        odds = weights[eligible] / weights[eligible].sum()
        class_index = eligible[rng.choice(len(eligible), p=odds)]
        candidates = (image.labels == class_index) & shape.clear_seeds(forbidden)
        if not candidates.any():
            eligible.remove(class_index)
            continue
        seed = np.unravel_index(np.argmax(np.where(candidates, image.confidence, -1)), image.spatial_shape)
        seeds.append((tuple(int(i) for i in seed), int(class_index)))
        bbox, mask = shape.region_at(seed)
        forbidden[bbox] |= mask
    return seeds


@pytest.mark.parametrize(
    ("spatial", "side", "smooth"),
    [((48, 40), 6, False), ((150, 140), 9, False), ((150, 140), 9, True), ((40, 36, 20), 5, True)],
)
def test_lazy_max_confidence_matches_brute_force(spatial, side, smooth):
    """Several tiles (64 px in 2-D, 16 in 3-D), ragged edges; with smooth confidence the best pixels of
    a class sit in one blob that the first region blocks, which is the case the lazy bounds are for."""
    rng = np.random.default_rng(len(spatial) + side)
    labels = rng.integers(0, 3, spatial).astype(np.uint8)
    confidence = rng.random(spatial)
    if smooth:
        confidence = ndimage.gaussian_filter(confidence, 4)
    labelled = rng.random(spatial) > 0.995
    image = scored(labels, confidence, labelled=labelled)
    weights = np.array([0.2, 0.3, 0.5])
    sampler = DecompSampler(weights, shape=BoxRegions(side))
    regions = sampler.select(image, k=40, rng=np.random.default_rng(7))
    expected = reference_max_confidence(image, weights, side, 40, np.random.default_rng(7))
    assert all(type(i) is int for region in regions for i in region.seed)
    assert [(region.seed, region.class_index) for region in regions] == expected


def test_uniform_center_is_uniform_over_clear_pixels_of_the_class():
    labels = np.zeros((9, 9), np.uint8)
    for pixel in [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]:
        labels[pixel] = 1
    labelled = np.zeros((9, 9), bool)
    labelled[4, 4] = True
    sampler = DecompSampler(np.array([0.0, 1.0]), shape=BoxRegions(3), center="uniform")
    counts: dict[tuple, int] = {}
    for seed in range(800):
        (region,) = sampler.select(scored(labels, labelled=labelled), k=1, rng=seed)
        counts[region.seed] = counts.get(region.seed, 0) + 1
    assert set(counts) == {(0, 0), (0, 8), (8, 0), (8, 8)}
    chi_square = sum((n - 200) ** 2 / 200 for n in counts.values())
    assert chi_square < 16.3  # 3 degrees of freedom, p = 0.001


def test_volumes_with_cubes():
    rng = np.random.default_rng(6)
    labels = stripes((12, 20, 24), classes=4)
    confidence = rng.uniform(0.3, 0.9, labels.shape)
    confidence[5, 10, 20] = 0.999  # best voxel of class 3
    labelled = np.zeros(labels.shape, bool)
    labelled[:, :4] = True
    sampler = DecompSampler(np.array([0.0, 0.2, 0.3, 0.5]), shape=BoxRegions(5))
    regions = sampler.select(scored(labels, confidence, labelled=labelled), k=15, rng=0)
    count = occupancy(regions, labels.shape)
    assert len(regions) == 15
    assert count.max() == 1 and not count[labelled].any()
    assert all(len(region.bbox) == 3 and region.class_index != 0 for region in regions)
    first_of_class_3 = next(region for region in regions if region.class_index == 3)
    assert first_of_class_3.seed == (5, 10, 20)
    assert first_of_class_3.bbox == (slice(3, 8), slice(8, 13), slice(18, 23))


def test_volume_cubes_clip_at_the_border():
    labels = np.zeros((6, 6, 6), np.uint8)
    confidence = np.full(labels.shape, 0.5)
    confidence[5, 0, 5] = 0.9
    (region,) = DecompSampler(np.array([1.0]), shape=BoxRegions(4)).select(scored(labels, confidence), k=1)
    assert region.bbox == (slice(3, 6), slice(0, 2), slice(3, 6)) and region.mask.shape == (3, 2, 3)


def test_superpixel_regions_are_whole_superpixels_and_disjoint():
    pixels = np.zeros((48, 48, 3), np.uint8)
    pixels[:, 24:] = (180, 40, 200)
    labels = stripes((48, 48), classes=2)
    shape = SuperpixelRegions(size=8)
    regions = DecompSampler(np.array([0.5, 0.5]), shape=shape).select(
        scored(labels, pixels=pixels), k=10, rng=0
    )
    assert len(regions) == 10
    assert occupancy(regions, labels.shape).max() == 1
    for region in regions:
        segment = shape.segments[region.seed]
        np.testing.assert_array_equal(region.full_mask(labels.shape), shape.segments == segment)
        # Superpixels follow the colour edge, which is also the class edge here.
        assert (labels[region.full_mask(labels.shape)] == region.class_index).all()


def test_from_statistics_weights_the_sampler_by_the_pool():
    pool = PoolStatistics(np.array([100, 100, 0]), np.array([100, 50, 0]))
    sampler = DecompSampler.from_statistics(pool, center="uniform")
    np.testing.assert_allclose(sampler.weights, [0.0, 0.5 / 1.5, 1 / 1.5])
    assert sampler.center == "uniform"


def test_bad_sampler_input_is_refused():
    with pytest.raises(ValueError, match="center must be one of"):
        DecompSampler(np.ones(2), center="random")
    with pytest.raises(ValueError, match="finite and >= 0"):
        DecompSampler(np.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="beyond the 2 classes"):
        DecompSampler(np.ones(2) / 2).select(scored(np.full((3, 3), 2)), k=1)
    with pytest.raises(ValueError, match="statistics of 3 classes for DecompSampler of 2 class weights"):
        DecompSampler(np.ones(2) / 2).select(scored(np.zeros((3, 3))), statistics=PoolStatistics.empty(3))
    with pytest.raises(ValueError, match="k \\(regions per image\\)"):
        DecompSampler(np.ones(2) / 2).select(scored(np.zeros((3, 3))), k=-1)


# the best-first seed walker DECOMP shares with the greedy baselines


def brute_force_walk(scores, clear, groups, picks, shape) -> list:
    """A full argmax (lowest flat index among ties) over the group's clear seeds at every step."""
    served = []
    for group in picks:
        candidates = clear if groups is None else clear & (groups == group)
        if not candidates.any():
            served.append(None)
            continue
        seed = np.unravel_index(np.argmax(np.where(candidates, scores, -np.inf)), clear.shape)
        served.append(tuple(int(i) for i in seed))
        shape.block(clear, *shape.region_at(seed))
    return served


def walk(walker, clear, picks, shape) -> list:
    served = []
    for group in picks:
        seed = walker.next_clear(group)
        served.append(seed)
        if seed is not None:
            shape.block(clear, *shape.region_at(seed))
    return served


@pytest.mark.parametrize(
    ("spatial", "side", "tile_pixels", "grouped"),
    [
        ((37, 29), 5, 64, True),
        ((37, 29), 3, 7, False),
        ((60, 64), 9, 4096, True),
        ((11, 13, 9), 3, 50, True),
        ((11, 13, 9), 4, 16, False),
    ],
)
@pytest.mark.parametrize("scores_kind", ["smooth", "ties"])
def test_best_clear_seeds_match_an_argmax_at_every_step(spatial, side, tile_pixels, grouped, scores_kind):
    """Random 2-D and 3-D inputs, tiles cut across rows, groups drawn until they run dry; "ties" scores
    take four values in float16, so most picks are decided by the lowest flat index."""
    rng = np.random.default_rng(sum(spatial) + side)
    if scores_kind == "smooth":
        scores = ndimage.gaussian_filter(rng.random(spatial), 2).astype(np.float32)
    else:
        scores = rng.integers(0, 4, spatial).astype(np.float16)
    groups = rng.integers(0, 3, spatial).astype(np.uint8) if grouped else None
    image = scored(np.zeros(spatial), labelled=rng.random(spatial) > 0.97)
    shape = BoxRegions(side)
    shape.prepare(image)
    clear = np.ascontiguousarray(shape.clear_seeds(~image.available()))
    picks = rng.integers(0, 3 if grouped else 1, 400).tolist()
    walker = BestClearSeeds(scores, clear, groups, 3 if grouped else 1, tile_pixels=tile_pixels)
    expected = brute_force_walk(scores, clear.copy(), groups, picks, shape)
    assert walk(walker, clear, picks, shape) == expected
    assert expected[-1] is None and len(expected) - expected.count(None) > 10, "many picks, then run dry"


def test_best_clear_seeds_break_ties_by_flat_index_across_tiles():
    # Every score equal, tiles of 5 pixels on rows of 6: each pick is the first clear pixel in C order.
    clear = np.ones((4, 6), bool)
    walker = BestClearSeeds(np.ones((4, 6), np.float32), clear, tile_pixels=5)
    served = []
    for _ in range(5):
        seed = walker.next_clear()
        served.append(seed)
        clear[seed] = False
        clear[seed[0], (seed[1] + 1) % 6] = False
    assert served == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2)]


def test_best_clear_seeds_skip_minus_infinity_and_other_groups():
    scores = np.array([[0.2, -np.inf, 0.9], [0.5, 0.7, 0.1]], np.float32)
    groups = np.array([[0, 0, 1], [1, 0, 0]], np.uint8)
    clear = np.ones((2, 3), bool)
    clear[1, 1] = False
    walker = BestClearSeeds(scores, clear, groups, 2, tile_pixels=2)
    assert walker.next_clear(0) == (0, 0)
    clear[0, 0] = False
    assert walker.next_clear(0) == (1, 2)
    clear[1, 2] = False
    assert walker.next_clear(0) is None, "a seed scored -inf is never served"
    assert walker.next_clear(1) == (0, 2)


def test_best_clear_seeds_read_integer_and_float64_scores_exactly():
    scores = np.array([[3, 9, 9], [2**40, 2**40 + 1, 5]], np.int64)
    assert BestClearSeeds(scores, np.ones((2, 3), bool)).next_clear() == (1, 1)
    close = np.array([1.0, 1.0 + 2**-40, 1.0])
    assert BestClearSeeds(close, np.ones(3, bool), tile_pixels=1).next_clear() == (1,)


def test_best_clear_seeds_refuse_bad_input():
    clear = np.ones((4, 4), bool)
    scores = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous boolean mask"):
        BestClearSeeds(scores, np.asfortranarray(np.ones((4, 5), bool))[:, :4])
    with pytest.raises(ValueError, match="C-contiguous boolean mask"):
        BestClearSeeds(scores, clear.astype(np.uint8))
    with pytest.raises(ValueError, match="must share one spatial shape"):
        BestClearSeeds(scores[:3], clear)
    with pytest.raises(ValueError, match=r"groups range over 0 \.\. 4, outside the 3 groups"):
        BestClearSeeds(scores, clear, np.arange(16).reshape(4, 4) % 5, 3)
    with pytest.raises(ValueError, match="NaN"):
        BestClearSeeds(np.full((4, 4), np.nan), clear)
    with pytest.raises(ValueError, match="num_groups must be 1 without groups"):
        BestClearSeeds(scores, clear, num_groups=2)
    with pytest.raises(ValueError, match=r"group 2 is outside 0 \.\. 1"):
        BestClearSeeds(scores, clear, np.zeros((4, 4), np.uint8), 2).next_clear(2)
