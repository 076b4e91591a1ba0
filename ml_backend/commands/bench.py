"""``label-studio-decomp bench``: what selection and prediction cost on this machine.

``selection``: one acquisition cycle of DECOMP and every baseline on pools of growing size (wall time, peak
memory, growth with the pool, and each baseline's cost relative to DECOMP measured in the same run).
``prediction``: forward pass vs DECOMP vs result encoding per image size. Numbers are printed, never
judged: this machine's load decides them, so compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ml_backend.simulation import BASELINES, DECOMP

PARTS = ("selection", "prediction")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"what to measure: {', '.join(PARTS)} (default: both)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny pools and images: checks that everything runs, in seconds"
    )
    parser.add_argument("--pools", type=int, nargs="+", help="selection: pool sizes (default 50 200 800)")
    parser.add_argument(
        "--strategy", nargs="+", choices=(DECOMP, *BASELINES), help="selection: strategies (default: all)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="prediction: image sides (default 512 1024 2048)"
    )
    parser.add_argument("--repeats", type=int, help="prediction: timed calls per step, median (default 3)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw numbers to FILE")


def _positive(name: str, values) -> str | None:
    if values is not None and any(v < 1 for v in ([values] if isinstance(values, int) else values)):
        return f"{name} must be positive, got {values}"
    return None


def run(args: argparse.Namespace) -> int:
    from ml_backend.benchmarks import prediction_path, selection_cost

    problems = [
        problem
        for problem in (
            _positive("--pools", args.pools),
            _positive("--sizes", args.sizes),
            _positive("--repeats", args.repeats),
            _positive("--threads", args.threads),
        )
        if problem
    ]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        problems.append(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.pools and len(args.pools) < 2:
        problems.append("--pools needs at least two sizes to show how the cost grows")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    raw = {}
    parts = list(dict.fromkeys(args.parts)) or list(PARTS)
    if "selection" in parts:
        benchmark = selection_cost.QUICK if args.quick else selection_cost.SelectionBenchmark()
        changes = {
            "pools": tuple(sorted(set(args.pools))) if args.pools else None,
            "strategies": tuple(dict.fromkeys(args.strategy)) if args.strategy else None,
        }
        benchmark = dataclasses.replace(benchmark, **{k: v for k, v in changes.items() if v})
        costs = selection_cost.measure(benchmark)
        print(selection_cost.format_costs(costs, benchmark), end="\n\n", flush=True)
        raw["selection"] = {
            "settings": dataclasses.asdict(benchmark),
            "costs": [dataclasses.asdict(c) for c in costs],
        }
    if "prediction" in parts:
        benchmark = prediction_path.QUICK if args.quick else prediction_path.PredictionBenchmark()
        changes = {"sizes": tuple(args.sizes) if args.sizes else None, "repeats": args.repeats}
        benchmark = dataclasses.replace(benchmark, **{k: v for k, v in changes.items() if v})
        costs = prediction_path.measure(benchmark)
        print(prediction_path.format_costs(costs), flush=True)
        raw["prediction"] = {
            "settings": dataclasses.asdict(benchmark),
            "costs": [dataclasses.asdict(c) for c in costs],
        }
    if args.json is not None:
        import torch

        raw["torch_threads"] = torch.get_num_threads()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0
