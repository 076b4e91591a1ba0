"""The shared data flow: image -> model -> ScoredImage -> statistics, priority, regions."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from ml_backend.labelstudio.config import DecompSettings
from ml_backend.pipeline import analyse_image, pool_weights, region_shape, score_image
from ml_backend.strategies.base import ScoredImage
from ml_backend.strategies.shapes import BoxRegions, SuperpixelRegions
from ml_backend.strategies.stats import PoolStatistics


def small_settings(**changes: object) -> DecompSettings:
    """Label Studio's DECOMP settings (any object with those attributes would do), small for tests."""
    return replace(DecompSettings(k=3, region_size=4), **changes)


def _two_class_image() -> ScoredImage:
    """Left half class 0 (confident), right half class 1 (unsure), one confidence peak per half."""
    labels = np.zeros((16, 16), np.uint8)
    labels[:, 8:] = 1
    confidence = np.where(labels == 0, 0.95, 0.55).astype(np.float32)
    confidence[4, 12] = 0.65
    confidence[10, 3] = 0.99
    return ScoredImage(labels, confidence)


def test_pool_weights_are_uniform_before_any_statistics() -> None:
    assert np.allclose(pool_weights(None, 4), [0.25] * 4)


def test_pool_weights_follow_the_class_confidence_rates() -> None:
    pool = PoolStatistics(np.array([100, 100]), np.array([100, 50]))
    assert np.allclose(pool_weights(pool, 2), [0.0, 1.0])


def test_pool_weights_ignore_statistics_of_another_class_count(caplog) -> None:
    pool = PoolStatistics(np.array([10, 10, 10]), np.array([10, 0, 0]))
    with caplog.at_level(logging.WARNING):
        assert np.allclose(pool_weights(pool, 2), [0.5, 0.5])
    assert "describe 3 classes but the model has 2" in caplog.text


def test_region_shape_by_name() -> None:
    assert isinstance(region_shape("box", 8), BoxRegions)
    assert isinstance(region_shape("superpixel", 8), SuperpixelRegions)
    with pytest.raises(ValueError, match="region shape must be one of"):
        region_shape("circle", 8)


def test_analysis_draws_every_region_from_the_uncertain_class() -> None:
    image = _two_class_image()
    analysis = analyse_image(image, np.array([0.0, 1.0]), small_settings(), rng=0)

    assert analysis.statistics == PoolStatistics(np.array([128, 128]), np.array([128, 0]), 0.7)
    assert analysis.priority == pytest.approx(1.0)
    assert len(analysis.regions) == 3
    assert [region.class_index for region in analysis.regions] == [1, 1, 1]
    assert analysis.regions[0].seed == (4, 12), "the most confident pixel of the class comes first"
    covered = np.zeros((16, 16), int)
    for region in analysis.regions:
        covered += region.full_mask((16, 16))
    assert covered.max() == 1, "regions never overlap"


def test_priority_counts_present_classes_once_under_uniform_weights() -> None:
    analysis = analyse_image(_two_class_image(), pool_weights(None, 4), small_settings(k=0), rng=0)
    assert analysis.priority == pytest.approx(0.5)
    assert analysis.regions == []


def test_analysis_counts_the_image_once(monkeypatch) -> None:
    counted = []
    count_image = PoolStatistics.from_image.__func__

    def counting(cls, image, *args, **kwargs):
        counted.append(image)
        return count_image(cls, image, *args, **kwargs)

    monkeypatch.setattr(PoolStatistics, "from_image", classmethod(counting))
    image = _two_class_image()
    analysis = analyse_image(image, np.array([0.5, 0.5]), small_settings(), rng=0)
    assert len(analysis.regions) == 3
    assert len(counted) == 1 and counted[0] is image, "statistics, priority and regions share one count"


def test_analysis_is_deterministic_for_a_seed() -> None:
    options = small_settings(k=6, center="uniform")
    weights = np.array([0.5, 0.5])
    first = analyse_image(_two_class_image(), weights, options, rng=np.random.default_rng(7))
    second = analyse_image(_two_class_image(), weights, options, rng=np.random.default_rng(7))
    assert [r.seed for r in first.regions] == [r.seed for r in second.regions]


def test_labelled_pixels_are_neither_counted_nor_proposed() -> None:
    base = _two_class_image()
    labelled = np.zeros((16, 16), bool)
    labelled[:, 8:] = True
    image = ScoredImage(base.labels, base.confidence, labelled=labelled)
    analysis = analyse_image(image, np.array([0.0, 1.0]), small_settings(), rng=0)
    assert analysis.statistics.predicted.tolist() == [128, 0]
    assert analysis.priority == 0.0
    assert all(not (region.full_mask((16, 16)) & labelled).any() for region in analysis.regions)


def test_score_image_runs_the_model_once_and_keeps_what_is_asked() -> None:
    import torch

    from ml_backend.model.inference import predict_probabilities
    from ml_backend.model.network import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model(3, encoder_weights=None)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    labelled = np.zeros((40, 56), bool)
    labelled[:5] = True

    scored = score_image(model, image, labelled=labelled, keep_pixels=True)
    reference = predict_probabilities(model, image, return_probabilities=True)

    assert scored.spatial_shape == (40, 56)
    assert scored.probabilities is None and scored.features is None
    assert scored.pixels is image
    assert scored.labelled is labelled
    np.testing.assert_array_equal(scored.labels, reference.probabilities.argmax(0))
    np.testing.assert_allclose(scored.confidence, reference.probabilities.max(0), rtol=1e-6)

    with_probabilities = score_image(model, image, return_probabilities=True)
    assert with_probabilities.probabilities.shape == (3, 40, 56)
    assert with_probabilities.pixels is None
