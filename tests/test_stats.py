"""DECOMP pool statistics: counts, rates, weights, merging and persistence, on known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml_backend.strategies.base import ScoredImage
from ml_backend.strategies.stats import PoolStatistics, weights_from_rates


def image(labels, confidence, labelled=None, ignore=None) -> ScoredImage:
    labels = np.asarray(labels, np.uint8)
    confidence = np.asarray(confidence, np.float32)
    return ScoredImage(labels, confidence, labelled=labelled, ignore=ignore)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_confidence_exactly_tau_is_not_confident(dtype):
    labels = np.array([[0, 0, 0, 1]], np.uint8)
    confidence = np.array([[0.7, 0.71, 0.69, 0.9]], dtype)
    stats = PoolStatistics.from_predictions(labels, confidence, num_classes=3, tau=0.7)
    assert stats.predicted.tolist() == [3, 1, 0]
    assert stats.confident.tolist() == [1, 1, 0]


def test_rates_are_rounded_to_two_decimals_and_never_predicted_is_zero():
    stats = PoolStatistics(np.array([3, 8, 0]), np.array([2, 1, 0]))
    np.testing.assert_array_equal(stats.confidence_rates(), [0.67, 0.12, 0.0])
    np.testing.assert_allclose(stats.confidence_rates(decimals=None), [2 / 3, 1 / 8, 0.0])
    np.testing.assert_array_equal(stats.confidence_rates(decimals=1), [0.7, 0.1, 0.0])


def test_never_predicted_class_gets_the_highest_weight():
    # rates 0.5, 0.75, 0 -> uncertainty 0.5, 0.25, 1 -> weights / 1.75
    stats = PoolStatistics(np.array([4, 4, 0]), np.array([2, 3, 0]))
    weights = stats.class_weights()
    np.testing.assert_allclose(weights, [0.5 / 1.75, 0.25 / 1.75, 1 / 1.75])
    assert weights.argmax() == 2
    assert weights.sum() == pytest.approx(1.0)


def test_weights_are_uniform_when_every_rate_is_one():
    stats = PoolStatistics(np.array([5, 2, 9, 1]), np.array([5, 2, 9, 1]))
    np.testing.assert_allclose(stats.class_weights(), [0.25] * 4)


def test_rounding_to_one_makes_a_class_weightless():
    # 996/1000 rounds to 1.00: the class is treated as learnt, as in the authors' code.
    stats = PoolStatistics(np.array([1000, 10]), np.array([996, 5]))
    np.testing.assert_allclose(stats.class_weights(), [0.0, 1.0])
    np.testing.assert_allclose(stats.class_weights(decimals=None), [0.004 / 0.504, 0.5 / 0.504])


def test_excluded_class_gets_zero_weight_and_leaves_the_normalisation():
    rates = np.array([0.0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(weights_from_rates(rates, exclude=[0]), [0, 0.5 / 0.75, 0.25 / 0.75, 0])
    np.testing.assert_allclose(weights_from_rates(np.ones(3), exclude=[1]), [0.5, 0, 0.5])
    with pytest.raises(ValueError, match="every class is excluded"):
        weights_from_rates(np.ones(2), exclude=[0, 1])
    with pytest.raises(ValueError, match="not one of the 2 classes"):
        weights_from_rates(np.ones(2), exclude=[2])


def test_labelled_and_ignored_pixels_are_not_counted():
    labels = [[0, 1, 1, 2]]
    confidence = [[0.9, 0.9, 0.5, 0.9]]
    labelled = np.array([[True, False, False, False]])
    ignore = np.array([[False, False, False, True]])
    stats = PoolStatistics.from_image(image(labels, confidence, labelled, ignore), num_classes=3)
    assert stats.predicted.tolist() == [0, 2, 0]
    assert stats.confident.tolist() == [0, 1, 0]


def test_sum_of_image_statistics_equals_statistics_of_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 5, (7, 9)), rng.random((7, 9))) for _ in range(3)]
    per_image = [PoolStatistics.from_image(image(lab, conf), 5) for lab, conf in parts]
    whole = PoolStatistics.from_image(
        image(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), 5
    )
    assert per_image[0] + per_image[1] + per_image[2] == whole
    assert sum(per_image) == whole
    assert sum(per_image, PoolStatistics.empty(5)) == whole
    assert whole - per_image[2] == per_image[0] + per_image[1]


def test_merging_refuses_different_tau_or_class_count():
    with pytest.raises(ValueError, match="tau=0.7 and tau=0.8"):
        PoolStatistics.empty(3) + PoolStatistics.empty(3, tau=0.8)
    with pytest.raises(ValueError, match="3 classes and 4 classes"):
        PoolStatistics.empty(3) + PoolStatistics.empty(4)
    with pytest.raises(TypeError):
        PoolStatistics.empty(3) + 1


def test_json_round_trip():
    stats = PoolStatistics(np.array([10, 0, 7]), np.array([3, 0, 7]), tau=0.65)
    restored = PoolStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    assert restored.tau == 0.65 and restored.predicted.dtype == np.int64


def test_bad_statistics_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="missing \\['confident'\\]"):
        PoolStatistics.from_dict({"tau": 0.7, "predicted": [1]})
    with pytest.raises(ValueError, match="0 <= confident <= predicted"):
        PoolStatistics(np.array([1, 2]), np.array([2, 0]))
    with pytest.raises(ValueError, match="integer pixel counts"):
        PoolStatistics.from_dict({"tau": 0.7, "predicted": [1.5], "confident": [1]})
    with pytest.raises(ValueError, match="tau must lie in"):
        PoolStatistics.empty(2, tau=1.0)
    with pytest.raises(ValueError, match="beyond the 2 classes"):
        PoolStatistics.from_predictions(np.array([0, 2]), np.array([0.9, 0.9]), num_classes=2)
    with pytest.raises(ValueError, match="class 128, beyond the 3 classes"):  # 2 * 128 wraps in uint8
        PoolStatistics.from_predictions(np.array([0, 128], np.uint8), np.array([0.9, 0.9]), num_classes=3)
    with pytest.raises(ValueError, match="class indices >= 0"):
        PoolStatistics.from_predictions(np.array([0, -1]), np.array([0.9, 0.9]), num_classes=2)


def test_present_counts_classes_with_at_least_min_pixels():
    stats = PoolStatistics(np.array([0, 1, 3, 100]), np.zeros(4, np.int64))
    assert stats.present().tolist() == [False, True, True, True]
    assert stats.present(min_pixels=3).tolist() == [False, False, True, True]
