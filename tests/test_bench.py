"""``label-studio-decomp bench``: the quick run prints both tables with every strategy and size."""

from __future__ import annotations

import json

import pytest

from ml_backend.benchmarks.selection_cost import text_table
from ml_backend.cli import main
from ml_backend.simulation import BASELINES, DECOMP


def _table_rows(output: str, title: str) -> dict[str, list[str]]:
    """First cell -> cells, for the rows of the table printed under the line starting with ``title``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_quick_bench_prints_every_strategy_and_size_and_writes_the_numbers(tmp_path, capsys):
    assert main(["bench", "--quick", "--threads", "1", "--json", str(tmp_path / "bench.json")]) == 0
    output = capsys.readouterr().out

    costs = _table_rows(output, "Selection cost of one cycle")
    assert list(costs) == [DECOMP, *BASELINES]
    ratios = _table_rows(output, "Baseline cost relative to DECOMP")
    assert list(ratios) == list(BASELINES)
    prediction = _table_rows(output, "Prediction path per image")
    assert list(prediction) == ["64x64", "128x128"]

    raw = json.loads((tmp_path / "bench.json").read_text())
    assert raw["torch_threads"] == 1
    selection = raw["selection"]["costs"]
    assert {(c["strategy"], c["pool"]) for c in selection} == {(s, n) for s in costs for n in (4, 8)}
    by_strategy = {c["strategy"]: c for c in selection if c["pool"] == 8}
    # 128 x 128 pixels: uint8 labels + float32 confidence = 80 KiB for DECOMP; the entropy family also
    # needs the 19 float32 probability planes (1.1875 MiB) and the diversity ones the 16 x 32 x 32 features
    assert by_strategy["decomp"]["input_mib"] == pytest.approx(80 / 1024)
    assert by_strategy["random"]["input_mib"] == 0
    assert by_strategy["entropy"]["input_mib"] == pytest.approx(80 / 1024 + 1.1875)
    assert by_strategy["badge"]["input_mib"] == pytest.approx(80 / 1024 + 1.1875 + 0.0625)
    # two images with K = 3 regions each, for every strategy
    assert all(c["regions"] == 6 for c in selection)
    assert all(c["seconds"] > 0 and c["peak_mib"] > 0 for c in selection if c["strategy"] != "random")
    prediction_costs = raw["prediction"]["costs"]
    assert [c["size"] for c in prediction_costs] == [64, 128]
    assert all(c["forward_s"] > 0 and c["decomp_s"] > 0 and c["regions"] > 0 for c in prediction_costs)


def test_bench_runs_one_part_and_a_chosen_subset(capsys):
    assert main(["bench", "selection", "--quick", "--strategy", "random", "entropy", "--threads", "1"]) == 0
    output = capsys.readouterr().out
    assert list(_table_rows(output, "Selection cost of one cycle")) == ["random", "entropy"]
    assert "relative to DECOMP" not in output and "Prediction path" not in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pools", "50"], "--pools needs at least two sizes"),
        (["--pools", "0", "10"], "--pools must be positive"),
        (["--sizes", "-1"], "--sizes must be positive"),
        (["everything"], "unknown part(s) everything; choose from selection, prediction"),
    ],
)
def test_bench_rejects_bad_sizes_before_measuring(arguments, message, capsys):
    assert main(["bench", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_text_table_aligns_columns_under_a_rule():
    assert text_table([["a", "bb"], ["ccc", "d"]]).splitlines() == ["a    bb", "---  --", "ccc  d "]
