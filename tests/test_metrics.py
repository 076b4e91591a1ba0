import json
import math

import numpy as np
import pytest

from ml_backend.model.metrics import ConfusionMatrix

# Counted pixels (target, prediction): (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is not counted.
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PREDICTION = np.array([[0, 1, 1], [1, 1, 0]])


def example() -> ConfusionMatrix:
    return ConfusionMatrix(4).update(TARGET, PREDICTION)


def test_matrix_counts_target_rows_and_prediction_columns() -> None:
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 1] = 1, 1, 2, 1
    np.testing.assert_array_equal(example().matrix, expected)
    assert example().total == 5


def test_iou_and_dice_match_hand_computed_values() -> None:
    confusion = example()
    # class 0: TP 1, target 2, predicted 1 -> IoU 1/2, Dice 2/3
    # class 1: TP 2, target 2, predicted 4 -> IoU 2/4, Dice 4/6
    # class 2: TP 0, target 1, predicted 0 -> IoU 0, Dice 0; class 3 absent everywhere -> NaN
    np.testing.assert_allclose(confusion.iou(), [0.5, 0.5, 0.0, np.nan])
    np.testing.assert_allclose(confusion.dice(), [2 / 3, 2 / 3, 0.0, np.nan])
    assert confusion.mean_iou() == pytest.approx(1 / 3)
    assert confusion.mean_dice() == pytest.approx(4 / 9)
    assert confusion.pixel_accuracy() == pytest.approx(3 / 5)


def test_exclude_leaves_classes_out_of_the_means() -> None:
    assert example().mean_iou(exclude=[0]) == pytest.approx(0.25)
    assert example().mean_dice(exclude=[0, 2]) == pytest.approx(2 / 3)
    assert math.isnan(example().mean_iou(exclude=[0, 1, 2]))


def test_a_class_predicted_but_absent_from_the_target_counts_as_zero() -> None:
    confusion = ConfusionMatrix(3).update(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 2]))
    np.testing.assert_allclose(confusion.iou(), [0.75, np.nan, 0.0])
    assert confusion.mean_iou() == pytest.approx(0.375)


def test_matrices_merge_by_addition_exactly_like_one_pass() -> None:
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 3, (4, 5, 6)), rng.integers(0, 3, (4, 5, 6))) for _ in range(3)]
    one_pass = ConfusionMatrix(3)
    for target, prediction in parts:
        one_pass.update(target, prediction)
    separate = [ConfusionMatrix(3).update(target, prediction) for target, prediction in parts]
    assert separate[0] + separate[1] + separate[2] == one_pass
    assert sum(separate) == one_pass
    assert (separate[0] + separate[1]).total == 240
    assert separate[0].total == 120  # addition made a new matrix


def test_merging_different_matrices_is_refused() -> None:
    with pytest.raises(ValueError, match="3-class"):
        ConfusionMatrix(3) + ConfusionMatrix(4)
    with pytest.raises(ValueError, match="ignore"):
        ConfusionMatrix(3) + ConfusionMatrix(3, ignore_index=-1)


def test_empty_matrix_gives_nan_not_an_error() -> None:
    confusion = ConfusionMatrix(2).update(np.full((2, 2), 255), np.zeros((2, 2), dtype=int))
    assert confusion.total == 0
    assert math.isnan(confusion.mean_iou()) and math.isnan(confusion.pixel_accuracy())


@pytest.mark.parametrize(
    ("target", "prediction", "message"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
        (np.array([0, 3]), np.array([0, 0]), "target holds class 3"),
        (np.array([0, -1]), np.array([0, 0]), "target holds class -1"),
        (np.array([0, 1]), np.array([0, 7]), "prediction holds class 7"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
    ],
)
def test_bad_input_gets_a_clear_error(target: np.ndarray, prediction: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(target, prediction)


def test_ignore_index_must_not_be_a_class() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=2)


def test_summary_is_json_ready_with_named_classes() -> None:
    summary = example().summary(["bg", "a", "b", "c"])
    assert summary["iou"] == {"bg": 0.5, "a": 0.5, "b": 0.0, "c": None}
    assert summary["pixels"] == 5
    json.dumps(summary, allow_nan=False)
    with pytest.raises(ValueError, match="3 class names"):
        example().summary(["a", "b", "c"])
