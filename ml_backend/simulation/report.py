"""Simulation results and what is written from them: results.json, results.csv, curve.png, summary.md.

One record per strategy, seed and cycle. Cycle 0 is the shared random initial set; ``full`` (the reference:
every pool pixel labelled) has a single record per seed. Scores are mIoU over all classes for 2-D data and
mean Dice over the foreground classes (all but class 0) for 3-D data; per-class scores are kept either way.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.simulation import FULL
from ml_backend.storage import write_text_atomic

TARGET_FRACTION = 0.95
RESULTS_JSON, RESULTS_CSV, CURVE_PNG, SUMMARY_MD = "results.json", "results.csv", "curve.png", "summary.md"


@dataclass(frozen=True)
class CycleRecord:
    strategy: str
    seed: int
    cycle: int
    labelled_pixels: int
    pool_pixels: int
    score: float
    class_scores: tuple[float, ...]
    labelled_per_class: tuple[int, ...]
    images_selected: int
    regions_selected: int
    selection_seconds: float
    training_seconds: float

    @property
    def labelled_share(self) -> float:
        return self.labelled_pixels / self.pool_pixels


@dataclass
class SimulationResults:
    """Everything a report needs; ``settings`` holds the options the run used (to resume or reproduce it)."""

    metric: str
    spatial_dims: int
    class_names: tuple[str, ...]
    pool_class_pixels: tuple[int, ...]
    settings: dict[str, Any]
    records: list[CycleRecord] = field(default_factory=list)

    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.records))

    def of(self, strategy: str) -> list[CycleRecord]:
        return [r for r in self.records if r.strategy == strategy]

    def full_score(self) -> float | None:
        """The mean full-annotation score over seeds, or None when ``full`` was not run."""
        scores = [r.score for r in self.of(FULL)]
        return float(np.mean(scores)) if scores else None


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _record_to_json(record: CycleRecord) -> dict[str, Any]:
    payload = asdict(record)
    payload["class_scores"] = [_finite_or_none(v) for v in record.class_scores]
    payload["selection_seconds"] = _finite_or_none(record.selection_seconds)
    return payload


def _record_from_json(payload: dict[str, Any]) -> CycleRecord:
    names = {f.name for f in fields(CycleRecord)}
    values = {k: v for k, v in payload.items() if k in names}
    values["class_scores"] = tuple(math.nan if v is None else float(v) for v in values["class_scores"])
    values["labelled_per_class"] = tuple(values["labelled_per_class"])
    values["selection_seconds"] = (
        math.nan if values["selection_seconds"] is None else values["selection_seconds"]
    )
    return CycleRecord(**values)


def results_to_json(results: SimulationResults) -> str:
    payload = {
        "metric": results.metric,
        "spatial_dims": results.spatial_dims,
        "class_names": list(results.class_names),
        "pool_class_pixels": list(results.pool_class_pixels),
        "settings": results.settings,
        "records": [_record_to_json(r) for r in results.records],
    }
    return json.dumps(payload, indent=1)


def read_results(path: Path) -> SimulationResults:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return SimulationResults(
            metric=payload["metric"],
            spatial_dims=payload["spatial_dims"],
            class_names=tuple(payload["class_names"]),
            pool_class_pixels=tuple(payload["pool_class_pixels"]),
            settings=payload["settings"],
            records=[_record_from_json(r) for r in payload["records"]],
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a results file written by the simulator ({error!r})") from error


def results_csv(results: SimulationResults) -> str:
    names = results.class_names
    header = ["strategy", "seed", "cycle", "labelled_pixels", "pool_pixels", "labelled_share", "score"]
    header += [f"{results.metric}_{n}" for n in names] + [f"labelled_{n}" for n in names]
    header += ["images_selected", "regions_selected", "selection_seconds", "training_seconds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in results.records:
        writer.writerow(
            [
                r.strategy,
                r.seed,
                r.cycle,
                r.labelled_pixels,
                r.pool_pixels,
                f"{r.labelled_share:.6g}",
                f"{r.score:.6g}",
            ]
            + ["" if math.isnan(v) else f"{v:.6g}" for v in r.class_scores]
            + list(r.labelled_per_class)
            + [r.images_selected, r.regions_selected]
            + [
                "" if math.isnan(r.selection_seconds) else f"{r.selection_seconds:.6g}",
                f"{r.training_seconds:.6g}",
            ]
        )
    return buffer.getvalue()


@dataclass(frozen=True)
class Curve:
    """One strategy's curve over cycles, averaged over seeds (per cycle, over the seeds that reached it)."""

    cycles: np.ndarray
    share: np.ndarray
    score: np.ndarray
    score_min: np.ndarray
    score_max: np.ndarray
    score_std: np.ndarray


def mean_curve(records: Sequence[CycleRecord]) -> Curve:
    cycles = np.array(sorted({r.cycle for r in records}))
    by_cycle = [[r for r in records if r.cycle == c] for c in cycles]
    scores = [np.array([r.score for r in group]) for group in by_cycle]
    return Curve(
        cycles=cycles,
        share=np.array([np.mean([r.labelled_share for r in group]) for group in by_cycle]),
        score=np.array([s.mean() for s in scores]),
        score_min=np.array([s.min() for s in scores]),
        score_max=np.array([s.max() for s in scores]),
        score_std=np.array([s.std() for s in scores]),
    )


def share_to_reach(shares: Sequence[float], scores: Sequence[float], target: float) -> float | None:
    """The labelled share at the first measured point whose score reaches ``target``, or None.

    Points are taken in order of increasing share; no interpolation, so the answer is a share that was
    actually measured to be enough.
    """
    for share, score in sorted(zip(shares, scores, strict=True)):
        if score >= target:
            return float(share)
    return None


def selection_seconds(records: Sequence[CycleRecord]) -> np.ndarray:
    """Selection times of the acquisition cycles (cycle 0 is the random initial set and is left out)."""
    return np.array(
        [r.selection_seconds for r in records if r.cycle > 0 and not math.isnan(r.selection_seconds)]
    )


def plot_curves(results: SimulationResults, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    for strategy in results.strategies():
        if strategy == FULL:
            continue
        curve = mean_curve(results.of(strategy))
        (line,) = axes.plot(100 * curve.share, curve.score, marker="o", markersize=3, label=strategy)
        axes.fill_between(
            100 * curve.share, curve.score_min, curve.score_max, color=line.get_color(), alpha=0.15
        )
    full = results.full_score()
    if full is not None:
        axes.axhline(full, color="black", linewidth=1, label=f"full annotation ({full:.3f})")
        axes.axhline(TARGET_FRACTION * full, color="black", linewidth=1, linestyle="--", label="95% of full")
    seeds = sorted({r.seed for r in results.records})
    unit = "pixels" if results.spatial_dims == 2 else "voxels"
    axes.set_xlabel(f"labelled share of the pool (% of {unit})")
    axes.set_ylabel(f"test {results.metric}")
    axes.set_title(
        title or f"{results.metric} vs labelled share: mean over {len(seeds)} seed(s), band = min-max"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a curve
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)


def _percent(share: float | None) -> str:
    return "not reached" if share is None else f"{100 * share:.2f}%"


def _mean_std(values: np.ndarray, digits: int) -> str:
    if values.size == 0:
        return "-"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def summary_markdown(results: SimulationResults) -> str:
    full = results.full_score()
    metric = results.metric
    lines = [f"# Simulation summary ({metric})", ""]
    target = None
    if full is None:
        lines += [
            "No full-annotation reference was run (add `--strategy full`), so the 95% target is unknown.",
            "",
        ]
    elif not full > 0:
        lines += [
            f"The full-annotation reference scored {metric} {full:.4f}: the model did not learn the task "
            "even with every label, so a 95% target means nothing. Train longer (--epochs) before comparing.",
            "",
        ]
    else:
        target = TARGET_FRACTION * full
        lines += [f"Full annotation: {metric} {full:.4f}; 95% of it: {target:.4f}.", ""]

    lines += [
        f"| strategy | seeds | final labelled share | final {metric} "
        "| share to reach 95% of full (mean curve) | seeds reaching 95% | selection s/cycle |",
        "|---|---|---|---|---|---|---|",
    ]
    for strategy in results.strategies():
        records = results.of(strategy)
        seeds = sorted({r.seed for r in records})
        finals = [max((r for r in records if r.seed == s), key=lambda r: r.cycle) for s in seeds]
        final_scores = np.array([r.score for r in finals])
        final_share = np.mean([r.labelled_share for r in finals])
        if strategy == FULL or target is None:
            reach, reaching = "-", "-"
        else:
            curve = mean_curve(records)
            reach = _percent(share_to_reach(curve.share, curve.score, target))
            per_seed = [[r for r in records if r.seed == s] for s in seeds]
            hits = sum(
                share_to_reach([r.labelled_share for r in rs], [r.score for r in rs], target) is not None
                for rs in per_seed
            )
            reaching = f"{hits}/{len(seeds)}"
        lines.append(
            f"| {strategy} | {len(seeds)} | {100 * final_share:.2f}% | {_mean_std(final_scores, 4)} "
            f"| {reach} | {reaching} | {_mean_std(selection_seconds(records), 3)} |"
        )

    lines += ["", f"Final-cycle {metric} per class (mean over seeds):", ""]
    lines += _per_class_table(results, lambda r: np.array(r.class_scores, dtype=float), "{:.3f}")
    lines += ["", "Labelled share of each class's pool pixels at the final cycle (mean over seeds):", ""]
    totals = np.maximum(np.array(results.pool_class_pixels, dtype=float), 1)
    lines += _per_class_table(results, lambda r: 100 * np.array(r.labelled_per_class) / totals, "{:.2f}%")
    return "\n".join(lines) + "\n"


def _per_class_table(results: SimulationResults, values, cell: str) -> list[str]:
    names = results.class_names
    rows = ["| strategy | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for strategy in results.strategies():
        records = results.of(strategy)
        last = max(r.cycle for r in records)
        with warnings.catch_warnings():  # a class absent from every seed's test split stays NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.stack([values(r) for r in records if r.cycle == last]), axis=0)
        rows.append(
            f"| {strategy} | " + " | ".join("-" if math.isnan(v) else cell.format(v) for v in mean) + " |"
        )
    return rows


def write_report(results: SimulationResults, out: Path, title: str = "") -> None:
    """Write (or rewrite) results.json, results.csv, curve.png and summary.md in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / RESULTS_JSON, results_to_json(results))
    write_text_atomic(out / RESULTS_CSV, results_csv(results))
    write_text_atomic(out / SUMMARY_MD, summary_markdown(results))
    if results.records:
        plot_curves(results, out / CURVE_PNG, title)
