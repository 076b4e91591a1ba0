import numpy as np
import pytest

from ml_backend.strategies.base import Region
from ml_backend.strategies.diversity import (
    badge_embeddings,
    k_center_greedy,
    kmeans_plus_plus_seeding,
    kmeans_representatives,
    l2_normalise,
    pool_under_regions,
)


def box_region(*bounds: tuple[int, int]) -> Region:
    bbox = tuple(slice(start, stop) for start, stop in bounds)
    mask = np.ones([stop - start for start, stop in bounds], dtype=bool)
    return Region(mask=mask, bbox=bbox, seed=tuple(start for start, _ in bounds), class_index=None,
                  confidence=1.0, score=0.0)


def planted_clusters(rng: np.random.Generator, centres: np.ndarray, per_cluster: int) -> np.ndarray:
    return np.concatenate([centre + 0.01 * rng.standard_normal((per_cluster, centres.shape[1]))
                           for centre in centres]).astype(np.float32)


# --- pooling -------------------------------------------------------------------------------------------


def test_pool_at_full_resolution_is_the_plain_mean_under_the_mask():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 7)).astype(np.float32)
    mask = rng.random((4, 5)) > 0.4
    region = Region(mask=mask, bbox=(slice(2, 6), slice(1, 6)), seed=(2, 1), class_index=None,
                    confidence=1.0, score=0.0)
    pooled = pool_under_regions(maps, [region], (9, 7))
    np.testing.assert_allclose(pooled[0], maps[:, 2:6, 1:6][:, mask].mean(axis=1), rtol=1e-6)


def test_pool_on_a_coarser_grid_weighs_cells_by_covered_pixels():
    # An 8 x 8 image with features on a 2 x 2 grid: every cell covers a 4 x 4 block of pixels.
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
    inside_one_cell = box_region((0, 4), (0, 4))
    half_and_half = box_region((2, 6), (0, 4))
    quarter_each = box_region((2, 6), (2, 6))
    pooled = pool_under_regions(maps, [inside_one_cell, half_and_half, quarter_each], (8, 8))
    np.testing.assert_allclose(pooled[:, 0], [1.0, 2.0, 2.5])


def test_pool_works_on_volumes_with_a_grid_coarse_in_plane_only():
    # Volumes are predicted slice by slice: full depth, quarter resolution in plane.
    maps = np.zeros((1, 4, 2, 2), dtype=np.float32)
    maps[0, 3, 1, 1] = 8.0
    region = box_region((2, 4), (4, 8), (4, 8))  # slices 2-3, lower-right quarter of the 8 x 8 plane
    np.testing.assert_allclose(pool_under_regions(maps, [region], (4, 8, 8))[0], [4.0])


def test_pool_rejects_maps_with_the_wrong_number_of_axes():
    with pytest.raises(ValueError, match=r"expected \(channels, \*grid\) with 2 grid axes"):
        pool_under_regions(np.zeros((4, 4)), [box_region((0, 2), (0, 2))], (4, 4))


def test_l2_normalise_gives_unit_rows_and_keeps_zero_rows_zero():
    normalised = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    np.testing.assert_allclose(normalised, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])


# --- BADGE embedding -----------------------------------------------------------------------------------


def test_badge_embedding_closed_form_for_two_classes():
    z = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    p_mean = np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    # Region 0: ŷ = 0, onehot − p̄ = (0.2, −0.2). Region 1: ŷ = 1, onehot − p̄ = (−0.3, 0.3).
    expected = np.array([
        [0.6 * 0.2, 0.6 * -0.2, 0.8 * 0.2, 0.8 * -0.2],
        [1.0 * -0.3, 1.0 * 0.3, 0.0, 0.0],
    ])
    np.testing.assert_allclose(badge_embeddings(z, p_mean), expected, atol=1e-7)


def test_badge_embedding_of_a_certain_prediction_is_zero():
    embedding = badge_embeddings(np.array([[0.6, 0.8]]), np.array([[0.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(embedding, np.zeros((1, 6)))


# --- k-center greedy -----------------------------------------------------------------------------------


def test_k_center_greedy_toy_line_gives_the_farthest_first_order():
    points = np.array([[0.0], [1.0], [10.0], [4.0], [6.0]])
    # From 0: 10 is farthest. Then 4 and 6 are both 4 away from {0, 10}: the lower index (4.0) wins.
    # Then 6 is 2 from 4.0 while 1 is only 1 from 0: 6 before 1.
    assert k_center_greedy(points, 5).tolist() == [0, 2, 3, 4, 1]
    assert k_center_greedy(points, 2, first=3).tolist() == [3, 2]


def test_k_center_greedy_matches_a_brute_force_traversal():
    points = np.random.default_rng(1).standard_normal((60, 5)).astype(np.float32)
    order = [7]
    while len(order) < 12:
        gaps = np.linalg.norm(points[:, None, :] - points[None, order, :], axis=2).min(axis=1)
        order.append(int(np.argmax(gaps)))
    assert k_center_greedy(points, 12, first=7).tolist() == order


def test_k_center_greedy_takes_everything_when_asked_for_more_and_never_repeats_duplicates():
    points = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    assert k_center_greedy(points, 10).tolist() == [0, 3, 1, 2]
    assert k_center_greedy(points, 0).tolist() == []


def test_k_center_greedy_rejects_bad_points():
    with pytest.raises(ValueError, match="NaN"):
        k_center_greedy(np.array([[0.0], [np.nan]]), 1)
    with pytest.raises(ValueError, match="outside the 2 points"):
        k_center_greedy(np.zeros((2, 3)), 1, first=2)


# --- k-means++ seeding ---------------------------------------------------------------------------------


def test_kmeans_plus_plus_starts_at_the_largest_norm_and_covers_well_separated_clusters():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [70.0, 70.0]])
    points = planted_clusters(rng, centres, 6)
    for seed in range(5):
        order = kmeans_plus_plus_seeding(points, 4, np.random.default_rng(seed))
        assert order[0] == int(np.argmax(np.linalg.norm(points, axis=1)))
        assert sorted(order // 6) == [0, 1, 2, 3]


def test_kmeans_plus_plus_is_deterministic_under_a_seed_and_exhausts_duplicates_in_index_order():
    points = np.random.default_rng(3).standard_normal((40, 3))
    first = kmeans_plus_plus_seeding(points, 10, np.random.default_rng(9))
    assert first.tolist() == kmeans_plus_plus_seeding(points, 10, np.random.default_rng(9)).tolist()
    assert len(set(first.tolist())) == 10
    assert kmeans_plus_plus_seeding(np.ones((4, 2)), 4, np.random.default_rng(0)).tolist() == [0, 1, 2, 3]
    order = kmeans_plus_plus_seeding(np.array([[2.0], [0.0], [0.0], [2.0]]), 4, np.random.default_rng(0))
    # After 0, only 1 and 2 are away from every center; once one is drawn all the rest coincide with one.
    assert order[0] == 0 and order[1] in (1, 2) and order[2:].tolist() == sorted({1, 2, 3} - {order[1]})


# --- k-means representatives ---------------------------------------------------------------------------


def test_kmeans_keeps_the_most_uncertain_point_of_each_planted_cluster():
    rng = np.random.default_rng(4)
    points = planted_clusters(rng, np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 5)
    uncertainty = rng.random(15)
    chosen = kmeans_representatives(points, 3, uncertainty, random_state=0)
    expected = [5 * c + int(np.argmax(uncertainty[5 * c:5 * (c + 1)])) for c in range(3)]
    assert sorted(chosen.tolist()) == sorted(expected)
    assert np.all(np.diff(uncertainty[chosen]) <= 0), "returned by decreasing uncertainty"


def test_kmeans_fills_empty_clusters_with_the_most_uncertain_leftovers():
    points = np.zeros((6, 2))
    points[5] = 1.0
    uncertainty = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.0])
    chosen = kmeans_representatives(points, 3, uncertainty, random_state=0)
    # Only two distinct points exist: one pick per cluster (1 and 5), then the best leftover (2).
    assert chosen.tolist() == [1, 2, 5]


def test_kmeans_with_k_at_least_the_pool_returns_the_whole_pool_by_uncertainty():
    uncertainty = np.array([0.2, 0.7, 0.7, 0.1])
    assert kmeans_representatives(np.eye(4), 9, uncertainty, random_state=0).tolist() == [1, 2, 0, 3]
