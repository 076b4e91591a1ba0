"""Simulation reports: the files, their rows and columns, and the 95% computation on known numbers."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
from PIL import Image

from ml_backend.simulation.report import (
    CycleRecord,
    SimulationResults,
    mean_curve,
    read_results,
    results_to_json,
    share_to_reach,
    summary_markdown,
    write_report,
)

CLASSES = ("background", "kidney", "tumour")
POOL_PIXELS = 10_000


def _record(strategy, seed, cycle, share, score, seconds=math.nan):
    return CycleRecord(
        strategy=strategy,
        seed=seed,
        cycle=cycle,
        labelled_pixels=round(share * POOL_PIXELS),
        pool_pixels=POOL_PIXELS,
        score=score,
        class_scores=(0.9, score, math.nan),
        labelled_per_class=(round(share * POOL_PIXELS) - 10, 10, 0),
        images_selected=0 if cycle == 0 else 2,
        regions_selected=5 * cycle,
        selection_seconds=seconds,
        training_seconds=1.5,
    )


def _results() -> SimulationResults:
    # full: 0.8 and 0.6 -> reference 0.7, target 0.665
    records = [_record("full", 0, 0, 1.0, 0.8), _record("full", 1, 0, 1.0, 0.6)]
    # decomp's mean curve: 0.5, 0.67, 0.71 -> reaches the target at its second point (2%)
    for seed, scores in ((0, (0.5, 0.66, 0.70)), (1, (0.5, 0.68, 0.72))):
        for cycle, score in enumerate(scores):
            records.append(_record("decomp", seed, cycle, 0.01 * (cycle + 1), score, 0.1 * cycle or math.nan))
    # random never gets there
    for seed in (0, 1):
        for cycle, score in enumerate((0.4, 0.5, 0.6)):
            seconds = 0.3 if cycle else math.nan
            records.append(_record("random", seed, cycle, 0.01 * (cycle + 1), score, seconds))
    return SimulationResults("Dice", 3, CLASSES, (9000, 900, 100), {"cycles": 2, "seeds": [0, 1]}, records)


def test_share_to_reach_takes_the_first_measured_point_at_or_above_the_target():
    assert share_to_reach([0.03, 0.01, 0.02], [0.9, 0.5, 0.95], 0.95) == 0.02
    assert share_to_reach([0.01, 0.02], [0.5, 0.6], 0.95) is None
    assert share_to_reach([0.01, 0.02, 0.03], [0.96, 0.5, 0.97], 0.95) == 0.01


def test_mean_curve_averages_seeds_per_cycle():
    curve = mean_curve(_results().of("decomp"))
    np.testing.assert_allclose(curve.share, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(curve.score, [0.5, 0.67, 0.71])
    np.testing.assert_allclose(curve.score_min, [0.5, 0.66, 0.70])
    np.testing.assert_allclose(curve.score_max, [0.5, 0.68, 0.72])


def test_summary_reports_the_95_percent_share_or_not_reached():
    results = _results()
    assert math.isclose(results.full_score(), 0.7)

    summary = summary_markdown(results)

    assert "Full annotation: Dice 0.7000; 95% of it: 0.6650." in summary
    main_table = summary.split("\n\n")[2].splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in main_table[2:]}
    assert rows["decomp"] == "| decomp | 2 | 3.00% | 0.7100 ± 0.0100 | 2.00% | 2/2 | 0.150 ± 0.050 |"
    assert rows["random"] == "| random | 2 | 3.00% | 0.6000 ± 0.0000 | not reached | 0/2 | 0.300 ± 0.000 |"
    assert rows["full"] == "| full | 2 | 100.00% | 0.7000 ± 0.1000 | - | - | - |"
    # per-class tables: background 290 of 9000 pool pixels labelled, kidney 10 of 900; tumour never scored
    assert "| decomp | 0.900 | 0.710 | - |" in summary
    assert "| decomp | 3.22% | 1.11% | 0.00% |" in summary


def test_summary_without_full_reference_says_so():
    results = _results()
    results.records = [r for r in results.records if r.strategy != "full"]
    summary = summary_markdown(results)
    assert "No full-annotation reference was run" in summary
    assert "| decomp | 2 | 3.00% | 0.7100 ± 0.0100 | - | - |" in summary


def test_write_report_writes_every_file_with_one_row_per_strategy_seed_and_cycle(tmp_path):
    results = _results()

    write_report(results, tmp_path)

    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["curve.png", "results.csv", "results.json", "summary.md"]
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 + 2 * 3 + 2 * 3
    assert list(rows[0]) == [
        "strategy", "seed", "cycle", "labelled_pixels", "pool_pixels", "labelled_share", "score",
        "Dice_background", "Dice_kidney", "Dice_tumour",
        "labelled_background", "labelled_kidney", "labelled_tumour",
        "images_selected", "regions_selected", "selection_seconds", "training_seconds",
    ]  # fmt: skip
    keys = {(r["strategy"], r["seed"], r["cycle"]) for r in rows}
    assert len(keys) == len(rows)
    decomp_last = next(r for r in rows if (r["strategy"], r["seed"], r["cycle"]) == ("decomp", "1", "2"))
    assert decomp_last["labelled_share"] == "0.03" and decomp_last["score"] == "0.72"
    assert decomp_last["Dice_tumour"] == "" and decomp_last["selection_seconds"] == "0.2"

    again = read_results(tmp_path / "results.json")
    assert results_to_json(again) == results_to_json(results)
    assert math.isnan(again.records[-1].class_scores[2]) and math.isnan(again.records[0].selection_seconds)
    assert again.settings == {"cycles": 2, "seeds": [0, 1]}

    with Image.open(tmp_path / "curve.png") as curve:
        assert curve.size[0] > 400 and curve.size[1] > 300


def test_summary_refuses_a_95_percent_target_when_the_reference_learned_nothing():
    results = _results()
    results.records = [replace(r, score=0.0) if r.strategy == "full" else r for r in results.records]
    summary = summary_markdown(results)
    assert "the model did not learn the task even with every label" in summary
    assert "| decomp | 2 | 3.00% | 0.7100 ± 0.0100 | - | - |" in summary
