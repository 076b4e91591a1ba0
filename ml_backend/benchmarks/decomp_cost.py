"""What DECOMP costs next to the forward pass it needs (issue 2, "Measure and report").

    python -m ml_backend.benchmarks.decomp_cost [--cases image volume] [--repeats 3]

For one 2048x2048 image with 19 classes and one 256^3 volume with 4 classes (smoothed noise through a
softmax, so classes form blobs and confidence varies smoothly, as real predictions do), it times
DECOMP from the probability map to the regions (argmax/max, pool statistics and priority, selection of
K boxes around 30 already-labelled boxes) and one forward pass of ``smp.Unet('resnet18',
encoder_weights=None)`` plus softmax on the same input; the volume goes through the 2-D network slice
by slice along axis 0, in batches, which is how the backend predicts volumes. It also times the
hand-written clear-seed filter against ``scipy.ndimage.maximum_filter``.

Every measurement runs in a fresh subprocess. Times are medians of ``repeats`` calls after one warm-up
call. Memory is the peak RSS growth of that warm-up call: the kernel's peak-RSS mark (VmHWM) is reset
just before it and read just after, minus the RSS before it, so it covers numpy and torch alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    spatial: tuple[int, ...]
    classes: int
    in_channels: int
    blob_size: int  # pixels per noise cell before upsampling: the scale of class blobs

    @property
    def label(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.spatial))}, {self.classes} classes"


CASES = {
    "image": Case("image", (2048, 2048), classes=19, in_channels=3, blob_size=64),
    "volume": Case("volume", (256, 256, 256), classes=4, in_channels=1, blob_size=32),
}
PREVIOUS_LABELLED_BOXES = 30
SLICE_BATCH = 16


def structured_probabilities(case: Case, seed: int = 0) -> np.ndarray:
    """(C, *spatial) float32 probabilities: coarse Gaussian logits, linearly upsampled, softmax."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = [max(2, n // case.blob_size) for n in case.spatial]
    logits = torch.randn((1, case.classes, *coarse), generator=generator)
    mode = "bilinear" if len(case.spatial) == 2 else "trilinear"
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(logits, size=case.spatial, mode=mode, align_corners=False)[0]
        return torch.softmax(logits * 6.0, dim=0).numpy()


def previously_labelled(spatial: tuple[int, ...], side: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labelled = np.zeros(spatial, dtype=bool)
    for _ in range(count):
        corner = [int(rng.integers(0, n - side)) for n in spatial]
        labelled[tuple(slice(c, c + side) for c in corner)] = True
    return labelled


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _measure(call: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(median seconds over ``repeats`` calls, peak RSS growth in MiB of a first call, its result)."""
    import gc

    gc.collect()
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    result = call()
    peak_mib = (_rss_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_mib, result


def _decomp_worker(case: Case, probabilities_path: Path, repeats: int, box_side: int, regions: int) -> dict:
    import torch  # noqa: F401  (imported before measuring: its import alone adds hundreds of MiB)
    from scipy import ndimage

    from ml_backend.strategies import BoxRegions, DecompSampler, PoolStatistics, ScoredImage, image_priority
    from ml_backend.strategies.shapes import seeds_touching

    probabilities = np.load(probabilities_path)
    labelled = previously_labelled(case.spatial, box_side, PREVIOUS_LABELLED_BOXES, seed=1)

    def score() -> ScoredImage:
        return ScoredImage.from_probabilities(probabilities, labelled=labelled)

    def decomp() -> list:
        image = score()
        image_statistics = PoolStatistics.from_image(image, case.classes)
        weights = image_statistics.class_weights()  # the pool is this one image here
        image_priority(image_statistics, weights)
        sampler = DecompSampler(weights, shape=BoxRegions(box_side))
        return sampler.select(image, regions, rng=0, statistics=image_statistics)

    # The whole pipeline first, while the allocator holds no freed memory that would hide its peak.
    decomp_s, decomp_peak_mib, chosen = _measure(decomp, repeats)
    image = score()
    image_statistics = PoolStatistics.from_image(image, case.classes)
    sampler = DecompSampler(image_statistics.class_weights(), shape=BoxRegions(box_side))
    sides = (box_side,) * len(case.spatial)
    summarize_s, _, _ = _measure(score, repeats)
    statistics_s, _, _ = _measure(lambda: PoolStatistics.from_image(image, case.classes), repeats)
    selection_s, _, _ = _measure(
        lambda: sampler.select(image, regions, rng=0, statistics=image_statistics), repeats
    )
    filter_s, _, ours = _measure(lambda: seeds_touching(labelled, sides), repeats)
    scipy_s, _, reference = _measure(
        lambda: ndimage.maximum_filter(labelled.view(np.uint8), size=sides, mode="constant"), repeats
    )
    return {
        "summarize_s": summarize_s,
        "statistics_s": statistics_s,
        "selection_s": selection_s,
        "decomp_s": decomp_s,
        "decomp_peak_mib": decomp_peak_mib,
        "regions": len(chosen),
        "clear_seeds_s": filter_s,
        "clear_seeds_scipy_s": scipy_s,
        "clear_seeds_identical": bool(np.array_equal(ours, reference.astype(bool))),
    }


def _forward_worker(case: Case, repeats: int) -> dict:
    import segmentation_models_pytorch as smp
    import torch

    model = smp.Unet(
        "resnet18", encoder_weights=None, in_channels=case.in_channels, classes=case.classes
    ).eval()
    generator = torch.Generator().manual_seed(0)
    if len(case.spatial) == 2:
        batches = [torch.rand((1, case.in_channels, *case.spatial), generator=generator)]
    else:
        depth, *plane = case.spatial
        volume = torch.rand((depth, case.in_channels, *plane), generator=generator)
        batches = list(volume.split(SLICE_BATCH))

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            probabilities = torch.cat([model(batch).softmax(dim=1) for batch in batches])
        # (slices, C, H, W) -> (C, *spatial), the layout DECOMP reads.
        return probabilities[0] if len(case.spatial) == 2 else probabilities.transpose(0, 1)

    forward_s, forward_peak_mib, _ = _measure(forward, repeats)
    return {
        "forward_s": forward_s,
        "forward_peak_mib": forward_peak_mib,
        "torch_threads": torch.get_num_threads(),
    }


def _in_subprocess(arguments: list[str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "ml_backend.benchmarks.decomp_cost", *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker {arguments} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(
    cases: Sequence[str] = ("image", "volume"),
    repeats: int = 3,
    forward_repeats: int = 1,
    box_side: int = 32,
    regions: int = 15,
) -> list[dict]:
    """Measure each case in fresh subprocesses; one dict of numbers per case (seconds, MiB)."""
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; choose from {sorted(CASES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="decomp-cost-") as folder:
        for name in cases:
            case = CASES[name]
            path = Path(folder) / f"{name}.npy"
            np.save(path, structured_probabilities(case))
            common = ["--case", name, "--box-side", str(box_side), "--regions", str(regions)]
            decomp = _in_subprocess(
                ["--worker", "decomp", "--input", str(path), "--repeats", str(repeats), *common]
            )
            path.unlink()
            forward = _in_subprocess(["--worker", "forward", "--repeats", str(forward_repeats), *common])
            results.append(
                {
                    "case": case.label,
                    "box_side": box_side,
                    **decomp,
                    **forward,
                    "decomp_share_of_forward": decomp["decomp_s"] / forward["forward_s"],
                }
            )
    return results


def format_table(results: Sequence[dict]) -> str:
    rows = [("case", "step", "median s", "peak RSS +MiB", "of forward")]
    for result in results:
        forward = result["forward_s"]
        for step, key in [
            ("argmax/max (torch.max)", "summarize_s"),
            ("pool statistics", "statistics_s"),
            (f"selection, K={result['regions']} boxes of {result['box_side']}", "selection_s"),
        ]:
            rows.append((result["case"], step, f"{result[key]:.3f}", "", f"{result[key] / forward:.2%}"))
        rows.append(
            (
                result["case"],
                "DECOMP total",
                f"{result['decomp_s']:.3f}",
                f"{result['decomp_peak_mib']:.0f}",
                f"{result['decomp_share_of_forward']:.2%}",
            )
        )
        rows.append(
            (
                result["case"],
                "forward + softmax, Unet-resnet18",
                f"{forward:.3f}",
                f"{result['forward_peak_mib']:.0f}",
                "100%",
            )
        )
        rows.append(
            (
                result["case"],
                "clear seeds: ours / scipy max filter",
                f"{result['clear_seeds_s']:.3f} / {result['clear_seeds_scipy_s']:.3f}",
                "",
                "identical" if result["clear_seeds_identical"] else "DIFFERENT",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed DECOMP calls per step (median)")
    parser.add_argument(
        "--forward-repeats", type=int, default=1, help="timed forward passes after the warm-up one (median)"
    )
    parser.add_argument("--box-side", type=int, default=32)
    parser.add_argument("--regions", type=int, default=15)
    parser.add_argument("--worker", choices=["decomp", "forward"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "decomp":
        print(
            json.dumps(
                _decomp_worker(CASES[args.case], args.input, args.repeats, args.box_side, args.regions)
            )
        )
        return 0
    if args.worker == "forward":
        print(json.dumps(_forward_worker(CASES[args.case], args.repeats)))
        return 0
    results = run(args.cases, args.repeats, args.forward_repeats, args.box_side, args.regions)
    print(__doc__.split("\n\n")[2].replace("\n", " "))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
