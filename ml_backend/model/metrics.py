"""Segmentation quality from a confusion matrix that adds up across images, volumes, processes and runs.

Means over classes (``mean_iou``, ``mean_dice``) count only the classes that occur in the target or in the
prediction of the pixels seen so far: a class absent from both has no defined IoU (0/0) and would otherwise
drag the mean towards an arbitrary 0 or 1. A class that is predicted but absent from the target counts (IoU
0), so false positives are punished. Per-class arrays hold NaN for the undefined classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

IGNORE_INDEX = 255  # the "unlabelled" value of every target in this project


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined figures become None."""
    return None if np.isnan(value) else float(value)


class ConfusionMatrix:
    """Counts of (target class, predicted class) pixel pairs; rows are targets, columns predictions.

    Pixels whose target is ``ignore_index`` are not counted. Two matrices of the same classes add up with
    ``+`` (and ``sum()``), so per-image, per-volume or per-process statistics merge exactly.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is one of the {num_classes} class indices")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> ConfusionMatrix:
        """Count one image or volume (any shape, the same for both arrays); returns self."""
        target, prediction = np.asarray(target), np.asarray(prediction)
        if target.shape != prediction.shape:
            raise ValueError(f"target shape {target.shape} differs from prediction shape {prediction.shape}")
        for name, values in (("target", target), ("prediction", prediction)):
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
        counted = target != self.ignore_index
        target, prediction = target[counted].astype(np.int64), prediction[counted].astype(np.int64)
        for name, values in (("target", target), ("prediction", prediction)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} holds class {values.min() if values.min() < 0 else values.max()}; expected "
                    f"0..{self.num_classes - 1}" + (f" or {self.ignore_index}" if name == "target" else "")
                )
        self.matrix += np.bincount(
            target * self.num_classes + prediction, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot add a {other.num_classes}-class matrix (ignore {other.ignore_index}) to a "
                f"{self.num_classes}-class matrix (ignore {self.ignore_index})"
            )
        total = ConfusionMatrix(self.num_classes, self.ignore_index)
        total.matrix = self.matrix + other.matrix
        return total

    def __radd__(self, other: object) -> ConfusionMatrix:
        if isinstance(other, int) and other == 0:  # the start value of sum()
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfusionMatrix)
            and (other.num_classes, other.ignore_index) == (self.num_classes, self.ignore_index)
            and np.array_equal(other.matrix, self.matrix)
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total})"

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def _overlap_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        true_positive = np.diag(self.matrix).astype(np.float64)
        in_target = self.matrix.sum(axis=1).astype(np.float64)
        in_prediction = self.matrix.sum(axis=0).astype(np.float64)
        return true_positive, in_target, in_prediction

    def present(self) -> np.ndarray:
        """Boolean per class: the class occurs in the target or in the prediction."""
        _, in_target, in_prediction = self._overlap_counts()
        return (in_target + in_prediction) > 0

    def iou(self) -> np.ndarray:
        """Per-class intersection over union (NaN for classes in neither target nor prediction)."""
        true_positive, in_target, in_prediction = self._overlap_counts()
        union = in_target + in_prediction - true_positive
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    def dice(self) -> np.ndarray:
        """Per-class Dice (F1) score (NaN for classes in neither target nor prediction)."""
        true_positive, in_target, in_prediction = self._overlap_counts()
        both = in_target + in_prediction
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(both > 0, 2.0 * true_positive / both, np.nan)

    def mean_iou(self, exclude: Iterable[int] = ()) -> float:
        """Mean IoU over the present classes not in ``exclude`` (e.g. ``exclude=[0]`` leaves background
        out); NaN when no such class was seen."""
        return self._mean(self.iou(), exclude)

    def mean_dice(self, exclude: Iterable[int] = ()) -> float:
        """Mean Dice over the present classes not in ``exclude``; NaN when no such class was seen."""
        return self._mean(self.dice(), exclude)

    def _mean(self, per_class: np.ndarray, exclude: Iterable[int]) -> float:
        kept = self.present()
        kept[list(exclude)] = False
        return float(per_class[kept].mean()) if kept.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Share of counted pixels whose predicted class is right; NaN before any pixel was counted."""
        return float(np.trace(self.matrix) / self.total) if self.total else float("nan")

    def summary(self, class_names: Iterable[str] | None = None) -> dict[str, Any]:
        """JSON-ready figures: means, pixel accuracy and per-class IoU and Dice (None where undefined)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names given for {self.num_classes} classes")
        return {
            "mean_iou": finite_or_none(self.mean_iou()),
            "mean_dice": finite_or_none(self.mean_dice()),
            "pixel_accuracy": finite_or_none(self.pixel_accuracy()),
            "pixels": self.total,
            "iou": {name: finite_or_none(value) for name, value in zip(names, self.iou(), strict=True)},
            "dice": {name: finite_or_none(value) for name, value in zip(names, self.dice(), strict=True)},
        }
