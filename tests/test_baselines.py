import math

import numpy as np
import pytest

from ml_backend.simulation import BASELINES as SIMULATED_BASELINES
from ml_backend.simulation import DECOMP
from ml_backend.strategies.base import ScoredImage
from ml_backend.strategies.baselines import (
    IMAGE_STRATEGIES,
    REGION_STRATEGIES,
    BadgeRegions,
    EntropyCoresetRegions,
    EntropyKMeansRegions,
    EntropyRegions,
    MeanEntropyPriority,
    RandomImagePriority,
    RandomRegions,
    build_image_strategy,
    build_region_strategy,
    greedy_regions,
    pixel_entropy,
)
from ml_backend.strategies.decomp import DecompImagePriority, DecompSampler
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions

CONFIDENT = (0.98, 0.01, 0.01)


def scored(probabilities, features=None, labelled=None, ignore=None, pixels=None) -> ScoredImage:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return ScoredImage(
        labels=probabilities.argmax(0).astype(np.uint8),
        confidence=probabilities.max(0),
        probabilities=probabilities,
        features=features,
        labelled=labelled,
        ignore=ignore,
        pixels=pixels,
    )


def filled(spatial_shape, class_probabilities) -> np.ndarray:
    values = np.asarray(class_probabilities, dtype=np.float32)
    column = values.reshape((-1,) + (1,) * len(spatial_shape))
    return np.broadcast_to(column, (len(values), *spatial_shape)).copy()


def random_image(rng, spatial_shape, feature_scale, classes=3, features=8) -> ScoredImage:
    """Dirichlet probabilities, features on a grid ``feature_scale`` times coarser in every axis past the
    first (volumes are predicted slice by slice), a labelled block and an ignored border strip."""
    probabilities = rng.dirichlet(np.ones(classes), size=spatial_shape).astype(np.float32)
    probabilities = np.moveaxis(probabilities, -1, 0)
    grid = (spatial_shape[0],) + tuple(n // feature_scale for n in spatial_shape[1:])
    labelled = np.zeros(spatial_shape, dtype=bool)
    labelled[tuple(slice(n // 4, n // 2) for n in spatial_shape)] = True
    ignore = np.zeros(spatial_shape, dtype=bool)
    ignore[..., -3:] = True
    features = rng.standard_normal((features, *grid)).astype(np.float32)
    ramp = np.indices(spatial_shape).sum(axis=0).astype(np.float32)
    return scored(probabilities, features, labelled, ignore, ramp)


def assert_valid_selection(regions, image: ScoredImage, shape) -> None:
    covered = np.zeros(image.spatial_shape, dtype=np.int32)
    for region in regions:
        bbox, mask = shape.region_at(region.seed)
        assert region.bbox == bbox and np.array_equal(region.mask, mask), "region = shape grown from seed"
        covered += region.full_mask(image.spatial_shape)
    assert covered.max() <= 1, "regions overlap"
    assert not (covered.astype(bool) & ~image.available()).any(), "a region touches labelled/ignored pixels"
    scores = [region.score for region in regions]
    assert scores == sorted(scores, reverse=True), "regions are ranked by their own score"


def planted_patch_image(side=4):
    """A confident 40 x 40 image with six high-entropy side x side patches, most uncertain first: p = (a,
    (1-a)/2, (1-a)/2) with a rising from 0.40 to 0.50. Features at full resolution put patches 0-2 near
    e0 and patches 3-5 near e1 (tilting away from e0 as the index grows), so the first two patches by
    entropy share one feature cluster."""
    corners = [(2, 2), (2, 20), (20, 2), (20, 20), (30, 10), (30, 30)]
    probabilities = filled((40, 40), CONFIDENT)
    features = np.zeros((4, 40, 40), dtype=np.float32)
    for index, (row, col) in enumerate(corners):
        a = 0.40 + 0.02 * index
        patch = (slice(None), slice(row, row + side), slice(col, col + side))
        probabilities[patch] = np.array([a, (1 - a) / 2, (1 - a) / 2], dtype=np.float32)[:, None, None]
        feature = [1.0, 0.0, 0.01 * index] if index < 3 else [-0.1 * (index - 3), 1.0, 0.0]
        features[patch] = np.array(feature + [0.0], dtype=np.float32)[:, None, None]
    return scored(probabilities, features), corners


def patch_of(region, corners, side=4) -> int:
    top_left = tuple(s.start for s in region.bbox)
    assert region.mask.shape == (side, side), "the region sits exactly on a planted patch"
    return corners.index(top_left)


# --- pixel entropy and the greedy walk -------------------------------------------------------------


def test_pixel_entropy_known_values_in_float32_and_float16():
    probabilities = np.stack([filled((3,), (1 / 3, 1 / 3, 1 / 3)), filled((3,), (1.0, 0.0, 0.0))], axis=1)
    expected = np.array([[math.log(3)] * 3, [0.0] * 3])
    np.testing.assert_allclose(pixel_entropy(probabilities), expected, atol=1e-6)
    np.testing.assert_allclose(pixel_entropy(probabilities.astype(np.float16)), expected, atol=1e-3)
    assert pixel_entropy(probabilities).dtype == np.float32


def test_pixel_entropy_rejects_nan_and_missing_class_axis():
    with pytest.raises(ValueError, match="NaN"):
        pixel_entropy(np.array([[0.5, np.nan], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"\(C, \*spatial\)"):
        pixel_entropy(np.ones(4))


def test_greedy_regions_matches_a_naive_argmax_greedy_over_many_tiles():
    rng = np.random.default_rng(1)
    image = scored(np.moveaxis(rng.dirichlet(np.ones(3), size=(100, 100)), -1, 0))
    scores = rng.random((100, 100)).astype(np.float32)
    shape = BoxRegions(9)
    shape.prepare(image)
    fast = greedy_regions(shape, image, scores, 80)
    clear = shape.clear_seeds(~image.available())
    naive = []
    while clear.any():
        seed = np.unravel_index(np.argmax(np.where(clear, scores, -1.0)), clear.shape)
        naive.append(tuple(int(i) for i in seed))
        shape.block(clear, *shape.region_at(seed))
    assert len(naive) > 70, "the test must walk past several tiles of the lazy bounds"
    assert [region.seed for region in fast] == naive[:80]


# --- every region baseline -----------------------------------------------------------------------------


BASELINES = sorted(set(REGION_STRATEGIES) - {"decomp"})


def build_by_name(name: str, shape):
    """Any registered region strategy; DECOMP weighted uniformly over the three classes of these images."""
    return build_region_strategy(name, shape, **({"weights": np.full(3, 1 / 3)} if name == "decomp" else {}))


CASES = {
    "2-D boxes": (lambda: BoxRegions(5), (48, 40), 4),
    "3-D cubes": (lambda: BoxRegions(3), (12, 16, 16), 2),
    "2-D superpixels": (lambda: SuperpixelRegions(6), (48, 40), 4),
}


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_baseline_returns_k_disjoint_ranked_regions_that_avoid_labelled_and_ignored(name, case):
    make_shape, spatial_shape, feature_scale = CASES[case]
    image = random_image(np.random.default_rng(2), spatial_shape, feature_scale)
    shape = make_shape()
    regions = build_region_strategy(name, shape).select(image, 6, np.random.default_rng(3))
    assert len(regions) == 6
    assert_valid_selection(regions, image, shape)
    assert all(region.class_index is None for region in regions)
    for region in regions:
        assert region.confidence == pytest.approx(float(image.confidence[region.seed]))


@pytest.mark.parametrize("name", sorted(REGION_STRATEGIES))
def test_every_strategy_is_deterministic_under_a_seed(name):
    image = random_image(np.random.default_rng(4), (40, 40), 4)
    strategy = build_by_name(name, BoxRegions(4))
    picks = [[r.seed for r in strategy.select(image, 5, np.random.default_rng(7))] for _ in range(2)]
    assert picks[0] == picks[1]


@pytest.mark.parametrize("name", sorted(REGION_STRATEGIES))
def test_when_fewer_candidates_than_k_exist_all_are_taken(name):
    # Only a 4 x 4 hole in the middle is unlabelled: exactly one 4 x 4 box fits.
    labelled = np.ones((12, 12), dtype=bool)
    labelled[4:8, 4:8] = False
    image = scored(filled((12, 12), (0.5, 0.3, 0.2)), np.ones((2, 12, 12), np.float32), labelled)
    regions = build_by_name(name, BoxRegions(4)).select(image, 5, np.random.default_rng(0))
    assert [(region.seed, region.bbox) for region in regions] == [((6, 6), (slice(4, 8), slice(4, 8)))]


@pytest.mark.parametrize("name", sorted(REGION_STRATEGIES))
def test_k_zero_gives_nothing_and_a_bad_k_is_refused(name):
    image = random_image(np.random.default_rng(5), (16, 16), 1)
    strategy = build_by_name(name, BoxRegions(4))
    assert strategy.select(image, 0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="non-negative integer"):
        strategy.select(image, -1, np.random.default_rng(0))


def test_random_regions_are_uniform_over_clear_seeds():
    # A 1 x 4 strip with boxes of side 1: every pixel is a region; the first pick is uniform over 4.
    image = scored(filled((1, 4), (0.5, 0.5)))
    strategy = RandomRegions(BoxRegions(1))
    firsts = [strategy.select(image, 1, np.random.default_rng(s))[0].seed[1] for s in range(400)]
    counts = np.bincount(firsts, minlength=4)
    assert counts.min() > 70, f"first picks {counts} are far from uniform"


# --- entropy -------------------------------------------------------------------------------------------


def test_entropy_picks_the_planted_high_entropy_patch_first_in_2d():
    probabilities = filled((40, 40), CONFIDENT)
    probabilities[:, 30:36, 10:16] = 1 / 3
    regions = EntropyRegions(BoxRegions(6)).select(scored(probabilities), 3, np.random.default_rng(0))
    assert regions[0].bbox == (slice(30, 36), slice(10, 16))
    assert regions[0].score == pytest.approx(math.log(3), rel=1e-5)
    assert all(region.score < regions[0].score for region in regions[1:])


def test_entropy_picks_the_planted_high_entropy_cube_first_in_3d():
    probabilities = filled((12, 12, 12), CONFIDENT)
    probabilities[:, 5:9, 1:5, 7:11] = 1 / 3
    regions = EntropyRegions(BoxRegions(4)).select(scored(probabilities), 2, np.random.default_rng(0))
    assert regions[0].bbox == (slice(5, 9), slice(1, 5), slice(7, 11))
    assert regions[0].score == pytest.approx(math.log(3), rel=1e-5)


@pytest.mark.parametrize("shape", [BoxRegions(5), SuperpixelRegions(6)], ids=repr)
def test_entropy_region_score_is_the_mean_entropy_under_its_mask(shape):
    image = random_image(np.random.default_rng(6), (40, 40), 1)
    entropy = pixel_entropy(image.probabilities)
    regions = EntropyRegions(shape).select(image, 5, np.random.default_rng(0))
    for region in regions:
        assert region.score == pytest.approx(float(entropy[region.bbox][region.mask].mean()), rel=1e-4)


def test_entropy_top_k_takes_the_two_most_uncertain_patches():
    image, corners = planted_patch_image()
    regions = EntropyRegions(BoxRegions(4)).select(image, 2, np.random.default_rng(0))
    assert [patch_of(region, corners) for region in regions] == [0, 1]


# --- diversity baselines -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [
    EntropyKMeansRegions(BoxRegions(4)),
    EntropyKMeansRegions(BoxRegions(4), init="k-means++"),
    BadgeRegions(BoxRegions(4), selection="kmeans"),
], ids=lambda s: f"{s.name}-{getattr(s, 'init', getattr(s, 'selection', ''))}")
def test_kmeans_keeps_the_most_uncertain_region_of_each_feature_cluster(strategy):
    image, corners = planted_patch_image()
    regions = strategy.select(image, 2, np.random.default_rng(0))
    assert [patch_of(region, corners) for region in regions] == [0, 3]


@pytest.mark.parametrize("strategy", [
    EntropyCoresetRegions(BoxRegions(4)),
    EntropyCoresetRegions(BoxRegions(4), first_center="random"),
    BadgeRegions(BoxRegions(4)),
], ids=lambda s: f"{s.name}-{getattr(s, 'first_center', getattr(s, 'selection', ''))}")
def test_coreset_and_badge_cover_both_feature_clusters(strategy):
    image, corners = planted_patch_image()
    for seed in range(4):
        regions = strategy.select(image, 2, np.random.default_rng(seed))
        patches = [patch_of(region, corners) for region in regions]
        assert sorted(patch // 3 for patch in patches) == [0, 1], f"seed {seed}: patches {patches}"


def test_coreset_from_the_most_uncertain_region_keeps_it_and_adds_the_farthest():
    image, corners = planted_patch_image()
    regions = EntropyCoresetRegions(BoxRegions(4)).select(image, 2, np.random.default_rng(0))
    # Patches 3-5 have features (-0.1 (i - 3), 1, 0, 0): from patch 0 = (1, 0, 0, 0) the farthest is 5.
    assert [patch_of(region, corners) for region in regions] == [0, 5]


def test_badge_starts_from_the_largest_gradient_embedding():
    # k-means++ seeding's first center is the largest embedding: the most uncertain patch here.
    image, corners = planted_patch_image()
    regions = BadgeRegions(BoxRegions(4), pool_factor=6).select(image, 1, np.random.default_rng(0))
    assert [patch_of(region, corners) for region in regions] == [0]


@pytest.mark.parametrize("strategy", [EntropyKMeansRegions, EntropyCoresetRegions, BadgeRegions])
def test_diversity_baselines_without_features_say_what_they_need(strategy):
    image = scored(filled((16, 16), (0.5, 0.3, 0.2)))
    with pytest.raises(ValueError, match=rf"{strategy.__name__} needs the model's penultimate feature map"):
        strategy(BoxRegions(4)).select(image, 2, np.random.default_rng(0))


def test_entropy_without_probabilities_says_what_it_needs():
    probabilities = filled((8, 8), (0.5, 0.5))
    image = ScoredImage(labels=probabilities.argmax(0), confidence=probabilities.max(0))
    with pytest.raises(ValueError, match="EntropyRegions needs the class probabilities"):
        EntropyRegions(BoxRegions(4)).select(image, 1, np.random.default_rng(0))


def test_bad_options_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="first_center must be one of 'most-uncertain', 'random'"):
        EntropyCoresetRegions(BoxRegions(4), first_center="farthest")
    with pytest.raises(ValueError, match="selection must be one of"):
        BadgeRegions(BoxRegions(4), selection="greedy")
    with pytest.raises(ValueError, match="pool_factor must be a positive integer"):
        EntropyKMeansRegions(BoxRegions(4), pool_factor=0)
    with pytest.raises(TypeError, match="EntropyKMeansRegions has no option selection; its options are"):
        EntropyKMeansRegions(BoxRegions(4), selection="kmeans")


def test_diversity_options_default_to_their_first_allowed_value():
    assert EntropyKMeansRegions(BoxRegions(4)).init == "random"
    assert EntropyCoresetRegions(BoxRegions(4)).first_center == "most-uncertain"
    assert BadgeRegions(BoxRegions(4)).selection == "kmeans++"
    assert BadgeRegions(BoxRegions(4), 2, selection="kmeans").selection == "kmeans"


def test_a_shape_without_a_fast_region_mean_is_refused():
    class Cross:
        def prepare(self, image):
            pass

    with pytest.raises(TypeError, match=r"shape needs region_means\(values\), as BoxRegions and Superpixel"):
        EntropyRegions(Cross()).select(scored(filled((8, 8), (0.5, 0.5))), 1, np.random.default_rng(0))


def test_entropy_works_on_a_shape_the_baselines_have_never_heard_of():
    class SinglePixels:
        def prepare(self, image):
            pass

        def region_at(self, seed):
            return tuple(slice(i, i + 1) for i in seed), np.ones((1,) * len(seed), dtype=bool)

        def clear_seeds(self, forbidden):
            return ~forbidden

        def block(self, clear, bbox, mask):
            clear[bbox] &= ~mask

        def region_means(self, values):
            return values.astype(np.float32)

    probabilities = filled((6, 6), CONFIDENT)
    probabilities[:, 2, 3] = 1 / 3
    probabilities[:, 4, 1] = (0.5, 0.25, 0.25)
    labelled = np.zeros((6, 6), dtype=bool)
    labelled[2, 3] = True
    regions = EntropyRegions(SinglePixels()).select(scored(probabilities), 2, np.random.default_rng(0))
    assert [region.seed for region in regions] == [(2, 3), (4, 1)]
    assert regions[0].score == pytest.approx(math.log(3), rel=1e-5)
    regions = EntropyRegions(SinglePixels()).select(scored(probabilities, labelled=labelled), 1, None)
    assert [region.seed for region in regions] == [(4, 1)]


# --- registries ----------------------------------------------------------------------------------------


def test_registries_build_strategies_by_name_and_list_the_known_names_on_a_typo():
    assert isinstance(build_region_strategy("entropy-coreset", BoxRegions(4), first_center="random"),
                      EntropyCoresetRegions)
    assert isinstance(build_image_strategy("mean-entropy"), MeanEntropyPriority)
    assert set(IMAGE_STRATEGIES) == {"decomp", "random", "mean-entropy"}
    with pytest.raises(ValueError, match="unknown region strategy 'entropie'; known: badge, decomp, entropy"):
        build_region_strategy("entropie", BoxRegions(4))
    with pytest.raises(ValueError, match="unknown image strategy"):
        build_image_strategy("decomposition")


def test_decomp_is_built_by_name_like_every_other_strategy():
    shape = SuperpixelRegions(6)
    sampler = build_region_strategy("decomp", shape, weights=[0.2, 0.8], center="uniform", exclude=[0])
    assert isinstance(sampler, DecompSampler)
    assert sampler.shape is shape and sampler.center == "uniform" and sampler.exclude == (0,)
    np.testing.assert_allclose(sampler.weights, [0.2, 0.8])
    priority = build_image_strategy("decomp", weights=[0.2, 0.8], min_pixels=4)
    assert isinstance(priority, DecompImagePriority) and priority.min_pixels == 4
    missing = r"'decomp' \(DecompSampler: weights, shape, .*\): missing a required argument: 'weights'"
    with pytest.raises(TypeError, match=missing):
        build_region_strategy("decomp", shape)
    unexpected = r"'entropy' \(EntropyRegions: shape\): got an unexpected keyword argument 'pool_factor'"
    with pytest.raises(TypeError, match=unexpected):
        build_region_strategy("entropy", shape, pool_factor=3)


def test_the_simulator_offers_every_registered_strategy():
    assert set(REGION_STRATEGIES) == {DECOMP, *SIMULATED_BASELINES}


# --- image priorities ----------------------------------------------------------------------------------


def test_mean_entropy_priority_orders_known_images():
    confident = scored(filled((8, 8), (1.0, 0.0, 0.0)))
    uniform = scored(filled((8, 8), (1 / 3, 1 / 3, 1 / 3)))
    half = filled((8, 8), (1.0, 0.0, 0.0))
    half[:, :, 4:] = 1 / 3
    half_uncertain = scored(half)
    priority = MeanEntropyPriority().priority
    assert priority(uniform) == pytest.approx(math.log(3), rel=1e-6)
    assert priority(half_uncertain) == pytest.approx(math.log(3) / 2, rel=1e-6)
    assert priority(confident) == pytest.approx(0.0, abs=1e-6)
    labelled = np.zeros((8, 8), dtype=bool)
    labelled[:, 4:] = True
    assert priority(scored(half, labelled=labelled)) == pytest.approx(0.0, abs=1e-6), "skips labelled pixels"
    assert priority(scored(half, labelled=np.ones((8, 8), dtype=bool))) == 0.0


def test_random_image_priority_is_stable_per_id_and_seeded():
    image = scored(filled((4, 4), (0.5, 0.5)))
    first, again, other_seed = RandomImagePriority(3), RandomImagePriority(3), RandomImagePriority(4)
    assert first.priority(image, "task-17") == again.priority(image, "task-17")
    assert first.priority(image, "task-17") != other_seed.priority(image, "task-17")
    assert first.priority(image, "task-17") != first.priority(image, 18)
    values = [first.priority(image, i) for i in range(200)]
    assert all(0.0 <= v < 1.0 for v in values) and 0.35 < np.mean(values) < 0.65
    sequence = RandomImagePriority(5)
    replay = RandomImagePriority(5)
    assert [sequence.priority(image) for _ in range(3)] == [replay.priority(image) for _ in range(3)]
