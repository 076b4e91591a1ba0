"""Conversions between numpy masks and Label Studio result regions (plain dicts, Label Studio JSON).

Geometry conventions, shared by encoding and decoding so that round trips are exact:

* Label Studio places regions in percent of the image width and height; the image spans
  ``[0, width] x [0, height]`` and pixel ``(row, col)`` covers ``[col, col+1) x [row, row+1)``.
* A polygon traced from a mask (OpenCV contours) runs through the centres of its boundary pixels,
  ``(col + 0.5, row + 0.5)``. Decoding fills a polygon with ``cv2.fillPoly`` after shifting it back
  by half a pixel, which includes the boundary pixels: an unsimplified traced polygon gives back its
  mask exactly.
* A rectangle is decoded by pixel centres: a pixel belongs to it when its centre lies inside. The
  proposal rectangles this module writes lie on pixel edges, so they decode to exactly their box.
* A brush region is an RLE of an RGBA image whose alpha is the mask (255 = painted). It is written
  and read with :mod:`ml_backend.labelstudio.rle`, which gives the same output as the SDK's
  ``mask2rle`` and ``decode_rle``, faster; alpha >= 128 counts as painted, so half-transparent
  stroke edges go by majority.

Pre-annotation polygons are simplified with ``cv2.approxPolyDP`` at a tolerance of
``simplify * perimeter`` of each outline (default 0.001: about 30 vertices on a large circle,
area within 1% of the traced outline). Label Studio polygons cannot have holes, so each hole is
joined to its outline by a zero-width cut (a "keyhole"), which fills the same pixels.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ml_backend.labelstudio.config import ProjectConfig
from ml_backend.labelstudio.rle import decode_rle, mask_to_rle
from ml_backend.strategies.base import Region

IGNORE_INDEX = 255
PAINTED_ALPHA = 128
POLYGON_SIMPLIFY = 0.001
POLYGON_MIN_AREA = 4
_FIXED_POINT_BITS = 8  # sub-pixel precision of polygon filling: 1/256 pixel


class ResultFormatError(ValueError):
    """A Label Studio result region cannot be decoded; the message names the region id."""


def new_region_id() -> str:
    return uuid.uuid4().hex[:10]


def _check_class_map(class_map: np.ndarray, confidence: np.ndarray, config: ProjectConfig) -> np.ndarray:
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or not np.issubdtype(class_map.dtype, np.integer):
        raise ValueError(f"class_map must be a 2-D integer array, got {class_map.dtype} {class_map.shape}")
    if np.shape(confidence) != class_map.shape:
        raise ValueError(
            f"confidence {np.shape(confidence)} must have the class map's shape {class_map.shape}"
        )
    if class_map.size and (class_map.min() < 0 or class_map.max() >= config.num_classes):
        raise ValueError(
            f"class_map holds values {class_map.min()}..{class_map.max()}; the project has "
            f"{config.num_classes} classes ({', '.join(config.class_names)})"
        )
    return class_map


def _class_statistics(class_map: np.ndarray, confidence: np.ndarray, num_classes: int):
    """Pixel count and mean confidence of every class."""
    flat = class_map.ravel()
    counts = np.bincount(flat, minlength=num_classes)
    sums = np.bincount(flat, weights=np.asarray(confidence, dtype=np.float64).ravel(), minlength=num_classes)
    return counts, sums / np.maximum(counts, 1)


def _region(from_name: str, to_name: str, kind: str, value: dict, height: int, width: int, **extra) -> dict:
    return {
        "id": new_region_id(),
        "from_name": from_name,
        "to_name": to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        **extra,
    }


def class_map_to_brush(class_map: np.ndarray, confidence: np.ndarray, config: ProjectConfig) -> list[dict]:
    """Brush pre-annotation: one ``brushlabels`` region per predicted non-background class, scored
    with the class's mean confidence. ``class_map`` (H, W) holds class indices, ``confidence`` (H, W)
    the model's confidence in them."""
    class_map = _check_class_map(class_map, confidence, config)
    height, width = class_map.shape
    counts, mean_confidence = _class_statistics(class_map, confidence, config.num_classes)
    results = []
    for index in np.flatnonzero(counts[1:]) + 1:
        rle = mask_to_rle((class_map == index).view(np.uint8) * np.uint8(255))
        value = {"format": "rle", "rle": rle, "brushlabels": [config.class_names[index]]}
        results.append(
            _region(config.class_control, config.image_name, "brushlabels", value, height, width,
                    score=float(mean_confidence[index]))
        )
    return results


def _keyhole(outline: np.ndarray, holes: Iterable[np.ndarray]) -> np.ndarray:
    """One polygon that fills ``outline`` minus ``holes``: each hole is walked in the opposite
    direction and joined to the polygon at their closest pair of vertices."""
    import cv2

    polygon = outline
    outline_sign = np.sign(cv2.contourArea(outline.astype(np.float32), oriented=True))
    for hole in holes:
        if np.sign(cv2.contourArea(hole.astype(np.float32), oriented=True)) == outline_sign:
            hole = hole[::-1]
        distances = ((polygon[:, None, :] - hole[None, :, :]) ** 2).sum(axis=2)
        at_polygon, at_hole = np.unravel_index(np.argmin(distances), distances.shape)
        polygon = np.concatenate([
            polygon[: at_polygon + 1],
            np.roll(hole, -at_hole, axis=0),
            hole[at_hole : at_hole + 1],
            polygon[at_polygon:],
        ])
    return polygon


def _component_polygons(mask: np.ndarray, simplify: float, min_area: int):
    """(polygon, bbox, component mask inside bbox) for every 8-connected component of ``mask``
    with at least ``min_area`` pixels and a non-degenerate outline; see :func:`mask_to_polygons`."""
    import cv2

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for component in range(1, count):
        left, top, box_width, box_height, area = stats[component]
        if area < min_area:
            continue
        bbox = (slice(top, top + box_height), slice(left, left + box_width))
        crop = components[bbox] == component
        contours, hierarchy = cv2.findContours(crop.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        outlines = []
        for contour in contours:
            if simplify > 0:
                contour = cv2.approxPolyDP(contour, simplify * cv2.arcLength(contour, True), True)
            outlines.append(contour.reshape(-1, 2))
        # with RETR_CCOMP a component has one outer outline (no parent); the others are its holes
        outer = int(np.flatnonzero(hierarchy[0, :, 3] < 0)[0])
        outline = outlines[outer]
        if len(outline) < 3 or cv2.contourArea(outline.astype(np.float32)) == 0:
            continue
        holes = [
            hole for index, hole in enumerate(outlines)
            if index != outer and len(hole) >= 3 and cv2.contourArea(hole.astype(np.float32)) > 0
        ]
        yield (_keyhole(outline, holes) + (left, top)).astype(np.float64), bbox, crop


def mask_to_polygons(mask: np.ndarray, *, simplify: float = 0.0, min_area: int = 1) -> list[np.ndarray]:
    """Polygons (each (N, 2) float, x then y, in pixel-centre coordinates) covering a 2-D boolean
    mask: one per 8-connected component of at least ``min_area`` pixels, holes keyholed in.
    ``simplify`` is the approxPolyDP tolerance as a fraction of each outline's perimeter (0 keeps the
    traced outline, which fills back to the mask exactly). Outlines that simplify to fewer than three
    vertices or to zero area are dropped."""
    return [polygon for polygon, _, _ in _component_polygons(mask, simplify, min_area)]


def polygon_to_percent(polygon: np.ndarray, height: int, width: int) -> list[list[float]]:
    """Pixel-centre polygon vertices -> Label Studio points, [[x%, y%], ...]."""
    points = (np.asarray(polygon, dtype=np.float64) + 0.5) / (width, height) * 100.0
    return points.tolist()


def percent_polygon_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of a Label Studio polygon given in percent (see the module conventions)."""
    import cv2

    pixels = np.asarray(points, dtype=np.float64) / 100.0 * (width, height) - 0.5
    fixed = np.round(pixels * (1 << _FIXED_POINT_BITS)).astype(np.int32)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_FIXED_POINT_BITS)
    return mask.view(bool)


def class_map_to_polygons(
    class_map: np.ndarray,
    confidence: np.ndarray,
    config: ProjectConfig,
    *,
    simplify: float = POLYGON_SIMPLIFY,
    min_area: int = POLYGON_MIN_AREA,
) -> list[dict]:
    """Polygon pre-annotation: one ``polygonlabels`` region per connected component of every
    predicted non-background class (components under ``min_area`` pixels are left out), scored
    with the component's mean confidence."""
    class_map = _check_class_map(class_map, confidence, config)
    confidence = np.asarray(confidence)
    height, width = class_map.shape
    counts = np.bincount(class_map.ravel(), minlength=config.num_classes)
    results = []
    for index in np.flatnonzero(counts[1:]) + 1:
        for polygon, bbox, component in _component_polygons(class_map == index, simplify, min_area):
            value = {
                "points": polygon_to_percent(polygon, height, width),
                "closed": True,
                "polygonlabels": [config.class_names[index]],
            }
            score = float(confidence[bbox][component].mean())
            results.append(
                _region(config.class_control, config.image_name, "polygonlabels", value, height, width,
                        score=score)
            )
    return results


def class_map_to_results(class_map: np.ndarray, confidence: np.ndarray, config: ProjectConfig) -> list[dict]:
    """The pre-annotation in the class control's own kind: brush masks or polygons."""
    if config.class_type == "brushlabels":
        return class_map_to_brush(class_map, confidence, config)
    return class_map_to_polygons(class_map, confidence, config)


def proposal_label(region: Region, config: ProjectConfig) -> tuple[str, dict]:
    """The label and the ``meta`` of a proposal region.

    Rule: the label is the name of the class the region was drawn for when the proposals control
    has a label of that name, otherwise the control's first label. The meta always carries the
    class and the model's confidence, e.g. ``{"text": ["class: Tumor, confidence 0.93"]}``, so the
    class is visible either way.
    """
    class_name = None if region.class_index is None else config.class_names[region.class_index]
    label = class_name if class_name in config.proposal_labels else config.proposal_labels[0]
    text = f"confidence {region.confidence:.2f}"
    if class_name is not None:
        text = f"class: {class_name}, {text}"
    return label, {"text": [text]}


def proposal_results(regions: Iterable[Region], config: ProjectConfig, height: int, width: int) -> list[dict]:
    """DECOMP proposals as read-only regions of the proposals control: rectangles on the region's
    box, polygons around its mask, or its mask as a brush RLE, as the control's kind requires. Each
    region's ``score`` is the model's confidence there; see :func:`proposal_label` for the label."""
    kind = config.proposals_type
    results = []
    for region in regions:
        if len(region.bbox) != 2:
            raise ValueError(f"Label Studio shows 2-D regions only; got a {len(region.bbox)}-D region")
        label, meta = proposal_label(region, config)
        rows, cols = (axis.indices(size) for axis, size in zip(region.bbox, (height, width), strict=True))
        if kind == "rectanglelabels":
            values = [{
                "x": cols[0] / width * 100.0,
                "y": rows[0] / height * 100.0,
                "width": (cols[1] - cols[0]) / width * 100.0,
                "height": (rows[1] - rows[0]) / height * 100.0,
                "rotation": 0,
            }]
        elif kind == "polygonlabels":
            offset = (cols[0], rows[0])
            values = [
                {"points": polygon_to_percent(polygon + offset, height, width), "closed": True}
                for polygon in mask_to_polygons(region.mask)
            ]
        else:
            full = np.zeros((height, width), np.uint8)
            full[region.bbox] = region.mask.astype(np.uint8) * 255
            values = [{"format": "rle", "rle": mask_to_rle(full)}]
        for value in values:
            value[kind] = [label]
            results.append(
                _region(config.proposals_control, config.image_name, kind, value, height, width,
                        readonly=True, meta=meta, score=float(region.confidence))
            )
    return results


def rectangle_corners(value: dict, height: int, width: int) -> np.ndarray:
    """The four corners (x, y in pixels) of a Label Studio rectangle, which rotates by ``rotation``
    degrees clockwise about its top-left corner; the same corners as the SDK's
    ``convert_annotation_to_yolo_obb`` (tests compare them), without importing the SDK's converter
    package and its data-frame dependencies."""
    missing = [key for key in ("x", "y", "width", "height") if key not in value]
    if missing:
        raise KeyError(missing[0])
    x, y = value["x"] / 100.0 * width, value["y"] / 100.0 * height
    box_width, box_height = value["width"] / 100.0 * width, value["height"] / 100.0 * height
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    offsets = np.array([[0.0, 0.0], [box_width, 0.0], [box_width, box_height], [0.0, box_height]])
    return offsets @ np.array([[cos, sin], [-sin, cos]]) + (x, y)


def _rectangle_mask(value: dict, height: int, width: int) -> np.ndarray:
    corners = rectangle_corners(value, height, width)
    if float(value.get("rotation") or 0.0) % 90 != 0:
        return percent_polygon_mask(corners / (width, height) * 100.0, height, width)
    # an upright box: the pixels whose centre lies inside, exactly
    left, top = corners.min(axis=0)
    right, bottom = corners.max(axis=0)
    mask = np.zeros((height, width), bool)
    rows = slice(max(math.ceil(top - 0.5), 0), max(math.floor(bottom - 0.5) + 1, 0))
    cols = slice(max(math.ceil(left - 0.5), 0), max(math.floor(right - 0.5) + 1, 0))
    mask[rows, cols] = True
    return mask


def _brush_mask(item: dict, value: dict, height: int, width: int) -> np.ndarray:
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise ValueError(
            f"expected value.format 'rle' and a list value.rle, got format {value.get('format')!r}"
        )
    size = (item.get("original_height", height), item.get("original_width", width))
    if size != (height, width):
        raise ValueError(f"it was drawn on a {size[1]}x{size[0]} image, not this {width}x{height} one")
    decoded = decode_rle(value["rle"])
    if decoded.size != height * width * 4:
        raise ValueError(
            f"its RLE holds {decoded.size} values, expected {height}x{width}x4 = {height * width * 4}"
        )
    return decoded.reshape(height, width, 4)[:, :, 3] >= PAINTED_ALPHA


def _region_mask(item: dict, height: int, width: int) -> np.ndarray:
    value = item["value"]
    kind = item["type"]
    if item.get("image_rotation") or 0:
        # coordinates of regions drawn on a rotated view are not those of the stored image
        raise ValueError(f"it was drawn with the image rotated by {item['image_rotation']} degrees; "
                         "turn off rotateControl on the <Image> and redraw it")
    if kind == "rectanglelabels":
        return _rectangle_mask(value, height, width)
    if kind == "polygonlabels":
        points = value["points"]
        if len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
        return percent_polygon_mask(points, height, width)
    if kind == "brushlabels":
        return _brush_mask(item, value, height, width)
    raise ValueError(f"type {kind!r} is not one of rectanglelabels, polygonlabels, brushlabels")


def _painted_class(item: dict, config: ProjectConfig) -> int:
    labels = item["value"].get(item["type"])
    if not isinstance(labels, list) or len(labels) != 1:
        raise ValueError(f"expected exactly one label in value.{item['type']}, got {labels!r}")
    try:
        return config.class_index(labels[0])
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def annotation_to_target(
    result: Sequence[dict[str, Any]], config: ProjectConfig, height: int, width: int
) -> np.ndarray:
    """A partial training target (uint8, H x W) from an annotation's ``result`` list.

    The labelled area is the union of the proposal regions the annotation keeps (the annotator may
    move, delete or add them); an annotation without proposal regions counts as fully labelled.
    Inside the labelled area a painted pixel takes the class of the class-control region painting
    it (where regions overlap, the later one in ``result`` wins) and an unpainted pixel the
    background class 0; outside it every pixel is 255 (ignored by the loss), painted or not.
    Results of other controls are ignored. A region that cannot be decoded raises
    ResultFormatError naming its id.
    """
    target = np.zeros((height, width), np.uint8)
    labelled = None
    for item in result:
        source = item.get("from_name")
        if source not in (config.proposals_control, config.class_control):
            continue
        try:
            mask = _region_mask(item, height, width)
            if source == config.proposals_control:
                labelled = mask if labelled is None else labelled | mask
            else:
                target[mask] = _painted_class(item, config)
        except KeyError as error:
            raise ResultFormatError(
                f"Region {item.get('id')!r} of {source!r} cannot be decoded: "
                f"it has no {error.args[0]!r} field"
            ) from error
        except (TypeError, ValueError) as error:
            raise ResultFormatError(
                f"Region {item.get('id')!r} of {source!r} ({item.get('type')}) cannot be decoded: {error}"
            ) from error
    if labelled is not None:
        target[~labelled] = IGNORE_INDEX
    return target
