"""Training a segmentation network on partial labels: the shared trainer of the backend and the simulator.

Targets hold class indices and 255 where nothing is known. The loss (cross-entropy) counts labelled pixels
only, and every training crop is placed so that it contains at least one labelled pixel: with DECOMP the
labels are a few small regions per image, and uniform crops would mostly teach nothing. Volumes train slice
by slice on the slices that hold labelled voxels.

Validation: with enough samples, a ``val_fraction`` share of the samples (images or volumes) is held out.
When that would leave no sample on either side (fewer than about ``1 / val_fraction`` samples), the
labelled pixels themselves are split instead: the image is cut into cells of VALIDATION_CELL pixels (voxels)
per side and a ``val_fraction`` share of the cells holding labels is held out. Whole cells, not single
pixels, so that the held-out pixels are not simply neighbours of training pixels. Validation predicts whole
planes with the same inference code the backend serves with and scores them with a ConfusionMatrix.

Under ``torchrun`` (torch.distributed initialised) the network is wrapped in DistributedDataParallel, each
process draws its share of the crops (``batch_size`` is per process) and validates its share of the planes,
the statistics are summed across processes, and only rank 0 logs and calls ``callback``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.model.inference import as_planes, predict_probabilities
from ml_backend.model.metrics import IGNORE_INDEX, ConfusionMatrix, finite_or_none
from ml_backend.model.network import (
    ModelSpec,
    channels_last,
    check_positive_int,
    intensity_window,
    model_spec,
    prepare_planes,
    resolve_device,
)

logger = logging.getLogger(__name__)

VALIDATION_CELL = 32
WEIGHT_DECAY = 1e-4
# The learning rate follows a cosine from ``lr`` down to this share of it over the run.
FINAL_LR_SHARE = 0.01


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, held-out mIoU and per-class IoU (None without validation)."""

    epoch: int
    loss: float
    val_miou: float | None
    val_iou: tuple[float | None, ...] | None
    learning_rate: float
    seconds: float


@dataclass
class TrainingReport:
    """What a run did. ``best_epoch`` 0 means no epoch beat the starting weights on the held-out pixels;
    ``best_state`` is a CPU copy of the chosen weights (the model holds them when ``restore_best``)."""

    history: list[EpochRecord]
    initial_val_miou: float | None
    best_epoch: int
    best_val_miou: float | None
    best_state: dict[str, torch.Tensor] = field(repr=False)
    validation: str  # "samples", "pixels" or "none"
    train_planes: int
    val_planes: int
    train_pixels: int
    val_pixels: int

    @property
    def losses(self) -> list[float]:
        return [record.loss for record in self.history]

    @property
    def val_mious(self) -> list[float | None]:
        return [record.val_miou for record in self.history]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the weights)."""
        return {
            "history": [asdict(record) for record in self.history],
            "initial_val_miou": self.initial_val_miou,
            "best_epoch": self.best_epoch,
            "best_val_miou": self.best_val_miou,
            "validation": self.validation,
            "train_planes": self.train_planes,
            "val_planes": self.val_planes,
            "train_pixels": self.train_pixels,
            "val_pixels": self.val_pixels,
        }


def partial_label_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled pixels (target != 255); an exact zero, still attached to the graph,
    when a batch holds no labelled pixel (plain cross-entropy would give NaN there)."""
    if not bool((target != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class _Sample:
    planes: np.ndarray  # (N, H, W[, C]) native dtype; a 2-D image is one plane
    target: np.ndarray  # (N, H, W) uint8
    window: tuple[float, float]


def train_segmentation(
    model: torch.nn.Module,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    crop_size: int,
    val_fraction: float,
    seed: int,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    callback: Callable[[EpochRecord], None] | None = None,
    crops_per_epoch: int | None = None,
    vertical_flip: bool = True,
    restore_best: bool = True,
) -> TrainingReport:
    """Train ``model`` in place on (image, target) pairs and report per-epoch loss and held-out mIoU.

    Images are (H, W[, C]) or volumes (D, H, W[, C]) in their native dtype; targets (H, W) or (D, H, W)
    integer class maps with 255 for unlabelled pixels. ``crop_size`` is a multiple of 32, at least 64;
    planes smaller than a crop are padded with unlabelled pixels. An epoch draws ``crops_per_epoch`` crops
    (default: one per training plane, at least one batch) with random flips; AdamW with a cosine learning
    rate. The same seed gives the same run on the CPU. The best weights on the held-out pixels (the starting
    weights included) are loaded back at the end when ``restore_best``; if training fails the model gets its
    starting weights back before the error propagates.
    """
    spec = model_spec(model)
    network = getattr(model, "module", model)
    _check_hyperparameters(
        epochs, lr, batch_size, crop_size, val_fraction, seed, num_workers, crops_per_epoch
    )
    device = resolve_device(device)
    checked = _check_samples(samples, spec)
    train_targets, val_targets, validation = _split(checked, val_fraction, np.random.default_rng(seed))
    train_units, val_units = _labelled_planes(train_targets), _labelled_planes(val_targets)
    rank, world = _rank_and_world()
    per_step = batch_size * world
    length = math.ceil(max(crops_per_epoch or len(train_units), per_step) / per_step) * per_step
    dataset = _CropDataset(checked, train_targets, train_units, spec, crop_size, length, seed, vertical_flip)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=torch.utils.data.DistributedSampler(dataset, shuffle=False) if world > 1 else None,
        num_workers=num_workers,
        drop_last=True,
    )
    trained = _for_all_processes(network.to(device), device)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, fused=device.type in ("cpu", "cuda") or None
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, epochs * len(loader)), eta_min=lr * FINAL_LR_SHARE
    )
    validate = functools.partial(
        _validate, network, checked, val_targets, val_units[rank::world], spec.num_classes, device
    )
    initial_state = _cpu_copy(network.state_dict())
    leader = rank == 0
    if leader:
        logger.info(
            "training on %d planes (%d labelled pixels), validating on %d planes (%d pixels, split by %s); "
            "%d epochs of %d crops of %d px on %s",
            len(train_units),
            _count_labelled(train_targets),
            len(val_units),
            _count_labelled(val_targets),
            validation,
            epochs,
            length,
            crop_size,
            device,
        )

    try:
        initial = validate()
        best_epoch, best, best_state = 0, initial, initial_state
        history = []
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            dataset.set_epoch(epoch)
            loss = _train_epoch(trained, loader, optimizer, scheduler, device, epoch)
            confusion = validate()
            miou = None if confusion is None else confusion.mean_iou()
            record = EpochRecord(
                epoch=epoch,
                loss=loss,
                val_miou=miou,
                val_iou=None if confusion is None else tuple(finite_or_none(v) for v in confusion.iou()),
                learning_rate=learning_rate,
                seconds=time.perf_counter() - started,
            )
            history.append(record)
            improved = confusion is None or miou > best.mean_iou()
            if improved:
                best_epoch, best, best_state = epoch, confusion, _cpu_copy(network.state_dict())
            if leader:
                logger.info(
                    "epoch %d/%d: loss %.4f, val mIoU %s%s (%.1f s)",
                    epoch,
                    epochs,
                    loss,
                    "n/a" if miou is None else f"{miou:.4f}",
                    " (best)" if improved and miou is not None else "",
                    record.seconds,
                )
                if callback is not None:
                    callback(record)
    except BaseException:
        network.load_state_dict(initial_state)
        raise
    if restore_best:
        network.load_state_dict(best_state)
    return TrainingReport(
        history=history,
        initial_val_miou=None if initial is None else initial.mean_iou(),
        best_epoch=best_epoch,
        best_val_miou=None if best is None else best.mean_iou(),
        best_state=best_state,
        validation=validation,
        train_planes=len(train_units),
        val_planes=len(val_units),
        train_pixels=_count_labelled(train_targets),
        val_pixels=_count_labelled(val_targets),
    )


def _check_hyperparameters(
    epochs: int,
    lr: float,
    batch_size: int,
    crop_size: int,
    val_fraction: float,
    seed: int,
    num_workers: int,
    crops_per_epoch: int | None,
) -> None:
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if crops_per_epoch is not None:
        check_positive_int("crops_per_epoch", crops_per_epoch)
    if check_positive_int("crop_size", crop_size) % 32 or crop_size < 64:
        raise ValueError(f"crop_size must be a multiple of 32 and at least 64, got {crop_size}")
    if not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr must be a number in (0, 1), got {lr!r}")
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for name, value in (("seed", seed), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def _check_samples(samples: Sequence[tuple[np.ndarray, np.ndarray]], spec: ModelSpec) -> list[_Sample]:
    """The samples as planes with uint8 targets; samples without a labelled pixel are left out."""
    num_classes = spec.num_classes
    checked = []
    for index, pair in enumerate(samples):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"sample {index} must be an (image, target) pair, got {type(pair).__name__}")
        image, target = pair
        if not isinstance(target, np.ndarray) or target.ndim not in (2, 3):
            raise ValueError(f"sample {index}: target must be a numpy array (H, W) or (D, H, W)")
        if not np.issubdtype(target.dtype, np.integer):
            raise ValueError(
                f"sample {index}: target must hold integer class indices, got dtype {target.dtype}"
            )
        if not (
            isinstance(image, np.ndarray)
            and image.shape[: target.ndim] == target.shape
            and image.ndim <= target.ndim + 1
        ):
            raise ValueError(
                f"sample {index}: image shape {getattr(image, 'shape', None)} does not match target shape "
                f"{target.shape} (expected the target's shape, optionally followed by a channel axis)"
            )
        invalid = (target < 0) | ((target >= num_classes) & (target != IGNORE_INDEX))
        if invalid.any():
            raise ValueError(
                f"sample {index}: target holds class {target[invalid].flat[0]}; "
                f"expected 0..{num_classes - 1} or {IGNORE_INDEX} (unlabelled)"
            )
        if not (target != IGNORE_INDEX).any():
            logger.debug("sample %d has no labelled pixel; left out", index)
            continue
        planes, _ = as_planes(image, target.ndim)
        window = intensity_window(channels_last(planes, spec.in_channels))
        checked.append(_Sample(planes, target.reshape(planes.shape[:3]).astype(np.uint8), window))
    if not checked:
        raise ValueError("no sample holds a labelled pixel (every target is 255): nothing to train on")
    return checked


def _split(
    samples: list[_Sample], val_fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray | None], list[np.ndarray | None], str]:
    """Per-sample training and validation targets (None: the sample is not on that side) and the mode."""
    count = len(samples)
    held_out = round(count * val_fraction)
    targets = [sample.target for sample in samples]
    if val_fraction == 0:
        return targets, [None] * count, "none"
    if 1 <= held_out < count:
        chosen = set(rng.permutation(count)[:held_out].tolist())
        return (
            [None if index in chosen else target for index, target in enumerate(targets)],
            [target if index in chosen else None for index, target in enumerate(targets)],
            "samples",
        )
    cells = [_labelled_cells(target) for target in targets]
    total = sum(int(grid.sum()) for grid in cells)
    if total < 2:
        logger.warning(
            "the labels fill a single %d px cell: nothing can be held out for validation", VALIDATION_CELL
        )
        return targets, [None] * count, "none"
    # Held-out cells, numbered over all samples in order.
    chosen = np.zeros(total, dtype=bool)
    chosen[rng.choice(total, size=min(total - 1, max(1, round(total * val_fraction))), replace=False)] = True
    train_targets, val_targets, offset = [], [], 0
    for target, grid in zip(targets, cells, strict=True):
        held_grid = np.zeros_like(grid)
        held_grid[grid] = chosen[offset : offset + int(grid.sum())]
        offset += int(grid.sum())
        held = held_grid[np.ix_(*(np.arange(size) // VALIDATION_CELL for size in target.shape))]
        train_targets.append(np.where(held, IGNORE_INDEX, target).astype(np.uint8))
        val_targets.append(np.where(held, target, IGNORE_INDEX).astype(np.uint8))
    return train_targets, val_targets, "pixels"


def _labelled_cells(target: np.ndarray) -> np.ndarray:
    """Boolean grid, one entry per VALIDATION_CELL-sided cell: whether the cell holds a labelled pixel.
    The plane axis counts as one axis of cells too, so held-out cells of a volume are cubes."""
    padded_shape = [-(-size // VALIDATION_CELL) * VALIDATION_CELL for size in target.shape]
    labelled = np.zeros(padded_shape, dtype=bool)
    labelled[tuple(slice(0, size) for size in target.shape)] = target != IGNORE_INDEX
    blocks = [axis for size in padded_shape for axis in (size // VALIDATION_CELL, VALIDATION_CELL)]
    return labelled.reshape(blocks).any(axis=tuple(range(1, 2 * target.ndim, 2)))


def _labelled_planes(targets: list[np.ndarray | None]) -> list[tuple[int, int]]:
    """(sample, plane) of every plane that holds a labelled pixel."""
    return [
        (sample, int(plane))
        for sample, target in enumerate(targets)
        if target is not None
        for plane in np.flatnonzero((target != IGNORE_INDEX).reshape(target.shape[0], -1).any(axis=1))
    ]


def _count_labelled(targets: list[np.ndarray | None]) -> int:
    return sum(int((target != IGNORE_INDEX).sum()) for target in targets if target is not None)


class _CropDataset(torch.utils.data.Dataset):
    """Item i of an epoch: a crop around a random labelled pixel of one training plane, randomly flipped.

    Every random choice comes from a generator seeded with (seed, epoch, i), so a run is reproducible
    whatever the number of loader workers or processes."""

    def __init__(
        self,
        samples: list[_Sample],
        targets: list[np.ndarray | None],
        units: list[tuple[int, int]],
        spec: ModelSpec,
        crop_size: int,
        length: int,
        seed: int,
        vertical_flip: bool,
    ) -> None:
        self.samples, self.targets, self.units, self.spec = samples, targets, units, spec
        self.crop_size, self.length, self.seed, self.vertical_flip = crop_size, length, seed, vertical_flip
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = np.random.default_rng((self.seed, epoch)).permutation(len(self.units))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        sample_index, plane = self.units[self.order[index % len(self.units)]]
        sample = self.samples[sample_index]
        target = self.targets[sample_index][plane]
        labelled = np.flatnonzero(target != IGNORE_INDEX)
        centre = np.unravel_index(labelled[rng.integers(labelled.size)], target.shape)
        origin = [
            int(rng.integers(max(0, position - self.crop_size + 1), min(position, size - self.crop_size) + 1))
            if size > self.crop_size
            else 0
            for position, size in zip(centre, target.shape, strict=True)
        ]
        window = tuple(slice(start, start + self.crop_size) for start in origin)
        image = prepare_planes(sample.planes[plane][window][np.newaxis], self.spec, window=sample.window)[0]
        crop_target = torch.from_numpy(target[window].astype(np.int64))
        pad = (0, self.crop_size - image.shape[-1], 0, self.crop_size - image.shape[-2])
        image = F.pad(image, pad, value=0.0)  # 0 after normalisation: the mean colour
        crop_target = F.pad(crop_target, pad, value=IGNORE_INDEX)
        flips = [axis for axis, flip in ((-1, True), (-2, self.vertical_flip)) if flip and rng.random() < 0.5]
        if flips:
            image, crop_target = image.flip(flips), crop_target.flip(flips)
        return image, crop_target


def _train_epoch(
    trained: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
) -> float:
    if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)
    trained.train()
    total, steps = 0.0, 0
    for images, targets in loader:
        logits = trained(images.to(device, non_blocking=True))
        loss = partial_label_loss(logits, targets.to(device, non_blocking=True))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged in epoch {epoch} (loss {loss.item()}); lower the learning rate "
                f"(now {optimizer.param_groups[0]['lr']:.2e})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        steps += 1
    if _distributed():
        # BatchNorm statistics are updated per process after DDP's last broadcast: give every process
        # rank 0's, so that all of them validate (and could save) the same network.
        for buffer in trained.module.buffers():
            torch.distributed.broadcast(buffer, src=0)
    total, steps = _sum_across_processes(np.array([total, steps], dtype=np.float64), device)
    return float(total / steps)


def _validate(
    network: torch.nn.Module,
    samples: list[_Sample],
    val_targets: list[np.ndarray | None],
    units: list[tuple[int, int]],
    num_classes: int,
    device: torch.device,
) -> ConfusionMatrix | None:
    """Confusion matrix of this process's validation planes, summed over processes; None without any."""
    if all(target is None for target in val_targets):
        return None
    confusion = ConfusionMatrix(num_classes)
    for sample_index, plane in units:
        sample = samples[sample_index]
        prediction = predict_probabilities(
            network,
            sample.planes[plane],
            spatial_dims=2,
            window=sample.window,
            return_probabilities=False,
            batch_size=1,
            device=device,
        )
        confusion.update(val_targets[sample_index][plane], prediction.labels)
    confusion.matrix = _sum_across_processes(confusion.matrix, device).astype(np.int64)
    return confusion


def _distributed() -> bool:
    """Whether this process is one of a torchrun group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_and_world() -> tuple[int, int]:
    if not _distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _for_all_processes(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network wrapped in DistributedDataParallel under torchrun, else itself."""
    if not _distributed():
        return network
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[device.index] if device.type == "cuda" else None
    )


def _sum_across_processes(values: np.ndarray, device: torch.device) -> np.ndarray:
    if not _distributed():
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
