"""Class probabilities (and optionally penultimate features) for 2-D images and 3-D volumes.

Volumes (D, H, W[, C]) are predicted slice by slice along axis 0, ``batch_size`` slices per forward pass,
with one intensity window for the whole volume. Every plane is padded to the multiple of 32 (the encoder's
output stride) the network needs, by reflection, and the outputs are cropped back to the exact input size.

``tile_size`` bounds memory on large images: the padded plane is cut into overlapping square tiles whose
outputs are blended with weights that fall off linearly over the overlap, so seams do not show.

Features are the decoder output that feeds smp's segmentation head (16 channels for a U-Net), captured by a
forward hook. They are average-pooled by ``feature_stride`` in-plane (default 4: a 2048 x 2048 image gives
16 x 512 x 512 floats, 16 MB, instead of 256 MB); a volume keeps every slice, so its stride is (1, s, s).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.model.network import (
    channels_last,
    check_positive_int,
    intensity_window,
    model_spec,
    prepare_planes,
)

DEFAULT_BATCH_SIZE = 4
DEFAULT_FEATURE_STRIDE = 4


@dataclass(frozen=True)
class Prediction:
    """The network's view of one image (spatial shape (H, W)) or volume (D, H, W).

    ``probabilities`` is (C, *spatial) float32 softmax output (None when not asked for); ``labels`` (uint8)
    and ``confidence`` (float32) are its per-pixel argmax and max; ``features`` is (F, *coarse spatial)
    float32 with ``feature_stride`` pixels per feature cell along each spatial axis.
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_stride: tuple[int, ...] | None = None


def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device | None = None,
    return_features: bool = False,
    return_probabilities: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    feature_stride: int = DEFAULT_FEATURE_STRIDE,
    spatial_dims: int | None = None,
    window: tuple[float, float] | None = None,
) -> Prediction:
    """Predict one 2-D image ((H, W) or (H, W, C)) or volume ((D, H, W) or (D, H, W, C)), native dtype.

    ``spatial_dims`` (2 or 3) settles what a 3-D array is; by default a 3-D array whose last axis has at
    most 4 entries (or the network's input channels) is one 2-D image with channels, otherwise a volume.
    ``device`` None keeps the model where it is; a device moves the model there. ``window`` overrides the
    intensity scaling (see network.py). ``tile_size`` (a multiple of 32) turns on tiled prediction with
    ``tile_overlap`` pixels of overlap (default a quarter tile, rounded to the multiple of 32). The model is
    put in eval mode for the call and left in the mode it was in.
    """
    spec = model_spec(model)
    planes, is_volume = as_planes(image, spatial_dims, spec.in_channels)
    multiple = _input_multiple(model)
    check_positive_int("batch_size", batch_size)
    if multiple % check_positive_int("feature_stride", feature_stride):
        raise ValueError(
            f"feature_stride must divide the network's input multiple {multiple}, got {feature_stride!r}"
        )
    tile, overlap = _tiling(tile_size, tile_overlap, multiple)
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    if window is None:
        window = intensity_window(channels_last(planes, spec.in_channels))

    depth, height, width = planes.shape[:3]
    labels = np.empty((depth, height, width), dtype=np.uint8)
    confidence = np.empty((depth, height, width), dtype=np.float32)
    probabilities = (
        np.empty((spec.num_classes, depth, height, width), dtype=np.float32) if return_probabilities else None
    )
    features = None
    coarse = (-(-height // feature_stride), -(-width // feature_stride))

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _segmentation_head_inputs(model, return_features) as captured:
            for start in range(0, depth, batch_size):
                stop = min(start + batch_size, depth)
                batch = prepare_planes(planes[start:stop], spec, window=window)
                batch_probabilities, batch_features = _predict_batch(
                    model, batch, captured, device, multiple, tile, overlap, batch_size, feature_stride
                )
                batch_probabilities = batch_probabilities[:, :, :height, :width]
                batch_confidence, batch_labels = batch_probabilities.max(dim=1)
                labels[start:stop] = batch_labels.cpu().numpy()
                confidence[start:stop] = batch_confidence.cpu().numpy()
                if probabilities is not None:
                    probabilities[:, start:stop] = batch_probabilities.transpose(0, 1).cpu().numpy()
                if batch_features is not None:
                    if features is None:
                        features = np.empty((batch_features.shape[1], depth, *coarse), dtype=np.float32)
                    cropped = batch_features[:, :, : coarse[0], : coarse[1]]
                    features[:, start:stop] = cropped.transpose(0, 1).cpu().numpy()
    finally:
        model.train(was_training)

    if is_volume:
        stride = (1, feature_stride, feature_stride)
        return Prediction(labels, confidence, probabilities, features, stride if return_features else None)
    return Prediction(
        labels[0],
        confidence[0],
        None if probabilities is None else probabilities[:, 0],
        None if features is None else features[:, 0],
        (feature_stride, feature_stride) if return_features else None,
    )


def as_planes(image: np.ndarray, spatial_dims: int | None, in_channels: int = 3) -> tuple[np.ndarray, bool]:
    """(planes (N, H, W[, C]), whether the input is a volume). Without ``spatial_dims`` a 3-D array is a
    2-D image when its last axis could be channels (at most 4, or the network's ``in_channels``)."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError(f"image must be a non-empty numpy array, got {type(image).__name__}")
    if spatial_dims is None:
        channels_like = image.ndim == 3 and (image.shape[-1] <= 4 or image.shape[-1] == in_channels)
        spatial_dims = 2 if image.ndim == 2 or channels_like else 3
    if spatial_dims == 2 and image.ndim in (2, 3):
        return image[np.newaxis], False
    if spatial_dims == 3 and image.ndim in (3, 4):
        return image, True
    raise ValueError(
        f"cannot read an array of shape {image.shape} as a {spatial_dims}-D image: expected (H, W) or "
        "(H, W, C) for 2-D, (D, H, W) or (D, H, W, C) for 3-D"
    )


def _input_multiple(model: torch.nn.Module) -> int:
    """The encoder's output stride. smp's U-Net would accept other sizes by resampling its skip features,
    but padding keeps every decoder stage aligned with the pixels."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 32))


def _tiling(tile_size: int | None, tile_overlap: int | None, multiple: int) -> tuple[int | None, int]:
    if tile_size is None:
        return None, 0
    if check_positive_int("tile_size", tile_size) % multiple:
        raise ValueError(f"tile_size must be a positive multiple of {multiple}, got {tile_size!r}")
    if tile_overlap is None:
        tile_overlap = (tile_size // 4) // multiple * multiple
    if not 0 <= tile_overlap < tile_size or tile_overlap % multiple:
        raise ValueError(
            f"tile_overlap must be a multiple of {multiple} smaller than tile_size {tile_size}, "
            f"got {tile_overlap!r}"
        )
    return tile_size, tile_overlap


@contextmanager
def _segmentation_head_inputs(model: torch.nn.Module, active: bool) -> Iterator[list[torch.Tensor] | None]:
    """While active, a list that receives what the model feeds its segmentation head."""
    if not active:
        yield None
        return
    head = getattr(model, "segmentation_head", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no segmentation_head to take features from")
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()

    def capture(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if threading.get_ident() == caller:  # another thread's forward pass through the same network
            captured.append(inputs[0])

    handle = head.register_forward_pre_hook(capture)
    try:
        yield captured
    finally:
        handle.remove()


def _predict_batch(
    model: torch.nn.Module,
    batch: torch.Tensor,
    captured: list[torch.Tensor] | None,
    device: torch.device,
    multiple: int,
    tile: int | None,
    overlap: int,
    batch_size: int,
    feature_stride: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities (N, C, Hp, Wp) and pooled features (N, F, Hp/s, Wp/s) of padded planes.

    Tiled outputs are accumulated in host memory: tiling exists to bound device memory."""
    padded = _pad_to_multiple(batch, multiple)
    height, width = padded.shape[-2:]
    if tile is None or (tile >= height and tile >= width):
        probabilities, features = _forward(model, padded.to(device), captured, feature_stride)
        return probabilities, features

    tile_height, tile_width = min(tile, height), min(tile, width)
    weight = _blend_weights(tile_height, overlap)[:, None] * _blend_weights(tile_width, overlap)
    pooled_weight = F.avg_pool2d(weight[None, None], feature_stride)[0, 0]
    probability_sum = weight_sum = feature_sum = pooled_weight_sum = None
    jobs = [
        (plane, top, left)
        for plane in range(padded.shape[0])
        for top in _tile_starts(height, tile_height, overlap)
        for left in _tile_starts(width, tile_width, overlap)
    ]
    for chunk in _chunks(jobs, batch_size):
        tiles = torch.stack([padded[p, :, t : t + tile_height, s : s + tile_width] for p, t, s in chunk])
        probabilities, features = (
            None if output is None else output.cpu()
            for output in _forward(model, tiles.to(device), captured, feature_stride)
        )
        if probability_sum is None:
            probability_sum = torch.zeros((padded.shape[0], probabilities.shape[1], height, width))
            weight_sum = torch.zeros((padded.shape[0], 1, height, width))
        for (plane, top, left), tile_probabilities in zip(chunk, probabilities, strict=True):
            window = (plane, slice(None), slice(top, top + tile_height), slice(left, left + tile_width))
            probability_sum[window] += tile_probabilities * weight
            weight_sum[window] += weight
        if features is not None:
            if feature_sum is None:
                coarse = (height // feature_stride, width // feature_stride)
                feature_sum = torch.zeros((padded.shape[0], features.shape[1], *coarse))
                pooled_weight_sum = torch.zeros((padded.shape[0], 1, *coarse))
            for (plane, top, left), tile_features in zip(chunk, features, strict=True):
                top, left = top // feature_stride, left // feature_stride
                window = (
                    plane,
                    slice(None),
                    slice(top, top + pooled_weight.shape[0]),
                    slice(left, left + pooled_weight.shape[1]),
                )
                feature_sum[window] += tile_features * pooled_weight
                pooled_weight_sum[window] += pooled_weight
    features = None if feature_sum is None else feature_sum / pooled_weight_sum
    return probability_sum / weight_sum, features


def _forward(
    model: torch.nn.Module, inputs: torch.Tensor, captured: list[torch.Tensor] | None, feature_stride: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = model(inputs)
    probabilities = torch.softmax(logits.float(), dim=1)
    if captured is None:
        return probabilities, None
    features = captured.pop().float()
    captured.clear()
    if features.shape[-2:] != inputs.shape[-2:]:  # decoders that end below full resolution (DeepLabV3+)
        features = F.interpolate(features, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    if feature_stride > 1:
        features = F.avg_pool2d(features, feature_stride)
    return probabilities, features


def _pad_to_multiple(batch: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right up to the next multiple: by reflection where the plane is large enough,
    else by repeating the edge."""
    height, width = batch.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if not (pad_bottom or pad_right):
        return batch
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    return F.pad(batch, (0, pad_right, 0, pad_bottom), mode=mode)


def _blend_weights(size: int, overlap: int) -> torch.Tensor:
    """1 in the middle of a tile, falling linearly to 1/(overlap+1) at its edges over ``overlap`` pixels."""
    position = torch.arange(size, dtype=torch.float32)
    distance_to_edge = torch.minimum(position, size - 1 - position) + 1
    return (distance_to_edge / (overlap + 1)).clamp_(max=1.0)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``size``: a fixed step, then one tile flush with the far edge."""
    step = tile - overlap
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
