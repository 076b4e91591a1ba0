"""Label Studio result encoding and decoding: brush RLE, polygons, proposals and partial targets."""

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface

from ml_backend.labelstudio import rle
from ml_backend.labelstudio.config import ProjectConfig
from ml_backend.labelstudio.results import (
    IGNORE_INDEX,
    ResultFormatError,
    annotation_to_target,
    class_map_to_brush,
    class_map_to_polygons,
    class_map_to_results,
    mask_to_polygons,
    percent_polygon_mask,
    polygon_to_percent,
    proposal_results,
    rectangle_corners,
)
from ml_backend.strategies.base import Region

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def label_tags(labels) -> str:
    return "".join(f'<Label value="{label}"/>' for label in labels)


def project(
    classes: str = "BrushLabels",
    proposals: str = "RectangleLabels",
    proposal_labels=("Annotate here",),
    labels=("Tumor", "Stroma", "Fat"),
) -> tuple[ProjectConfig, LabelInterface]:
    xml = (
        '<View><Image name="image" value="$image"/>'
        f'<{classes} name="tag" toName="image">{label_tags(labels)}</{classes}>'
        f'<{proposals} name="decomp_regions" toName="image">{label_tags(proposal_labels)}</{proposals}>'
        "</View>"
    )
    return ProjectConfig.from_label_config(xml), LabelInterface(xml)


def decoded_alpha(region: dict) -> np.ndarray:
    height, width = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]


def box_region(rows: slice, cols: slice, class_index: int | None = 1, confidence: float = 0.93) -> Region:
    mask = np.ones((rows.stop - rows.start, cols.stop - cols.start), bool)
    return Region(mask=mask, bbox=(rows, cols), seed=(rows.start, cols.start), class_index=class_index,
                  confidence=confidence, score=0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------- brush RLE


def edge_case_masks(rng: np.random.Generator) -> list[np.ndarray]:
    masks = [
        np.zeros((1, 1), np.uint8),
        np.full((1, 1), 255, np.uint8),
        np.zeros((37, 53), np.uint8),
        np.full((37, 53), 255, np.uint8),
        np.zeros((200, 300), np.uint8),          # one run of 240000 values: several 2**16 pieces
        np.full((128, 512), 255, np.uint8),      # exactly 2**18 values
        np.full((1, 16384), 255, np.uint8),      # exactly one 2**16 run
    ]
    single = np.zeros((31, 17), np.uint8)
    single[13, 7] = 255
    masks.append(single)
    corner = np.zeros((31, 17), np.uint8)
    corner[-1, -1] = 255
    masks.append(corner)
    checker = (np.indices((40, 41)).sum(axis=0) % 2 * 255).astype(np.uint8)
    masks.append(checker)
    for run in (1, 2, 3, 4, 63, 64, 65, 16383, 16384, 16385, 16448, 32768, 32769):
        line = np.zeros((1, run + 70000), np.uint8)
        line[0, 5 : 5 + run] = 255
        masks.append(line)
    masks.append(rng.integers(0, 256, (23, 29)).astype(np.uint8))  # values other than 0 and 255
    masks.append((rng.random((64, 64)) < 0.5).astype(int) * 255)   # an int mask, as mask2rle allows
    return masks


def test_fast_rle_is_byte_identical_to_the_sdk_on_edge_cases_and_random_masks():
    rng = np.random.default_rng(7)
    masks = edge_case_masks(rng)
    for _ in range(150):
        height, width = rng.integers(1, 90, 2)
        density = rng.choice([0.001, 0.05, 0.5, 0.95, 0.999])
        noise = (rng.random((height, width)) < density).astype(np.uint8) * 255
        masks.append(cv2.dilate(noise, np.ones((3, 3), np.uint8)) if rng.random() < 0.5 else noise)
    for mask in masks:
        assert rle.mask_to_rle(mask) == mask2rle(mask), mask.shape
    for length in (1, 2, 8, 9, 16, 17, 256, 257, 65535, 65536, 65537, 131073):
        values = np.zeros(length + 2, np.uint8)
        values[0], values[-1] = 3, 200
        assert rle.encode_rle(values) == encode_rle(values), length


def pack_rle(count: int, codes: list[tuple[int, int]], word_bits: int = 8, sizes=(3, 4, 8, 16)) -> list[int]:
    """An RLE written bit by bit from (value, width) fields: a way to make inputs the SDK's encoder
    never writes (literal blocks longer than one, other field sizes, other word sizes)."""
    fields = [(count, 32), (word_bits - 1, 5), *((size - 1, 4) for size in sizes), *codes]
    bits = "".join(format(value, f"0{width}b") for value, width in fields)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[index : index + 8], 2) for index in range(0, len(bits), 8)]


def test_fast_rle_decoding_matches_the_sdk_on_encoded_and_hand_made_rles():
    rng = np.random.default_rng(11)
    encoded = [mask2rle(mask) for mask in edge_case_masks(rng)[:12]]
    for _ in range(100):
        values = rng.integers(0, rng.choice([2, 4, 256]), int(rng.integers(1, 2000))).astype(np.uint8)
        encoded.append(encode_rle(np.sort(values) if rng.random() < 0.3 else values))
    literal_block = [(0, 1), (1, 2), (2, 4), *((value, 8) for value in (7, 8, 9))]   # 3 literal values
    long_repeat = [(1, 1), (3, 2), (999, 16), (42, 8)]                             # 1000 times 42
    hand_made = {
        (7, 8, 9) + (42,) * 1000: pack_rle(1003, literal_block + long_repeat),
        (1, 2, 3, 4, 15): pack_rle(5, [(0, 1), (0, 2), (4, 3), *((value, 4) for value in (1, 2, 3, 4, 15))],
                                   word_bits=4, sizes=(3, 5, 10, 15)),
        (200,) * 10: pack_rle(10, [(1, 1), (2, 2), (14, 8), (200, 8)]),   # a run longer than declared: cut
    }
    for expected, rle_bytes in hand_made.items():
        assert rle.decode_rle(rle_bytes).tolist() == list(expected)
    for rle_bytes in encoded + list(hand_made.values()):
        np.testing.assert_array_equal(rle.decode_rle(rle_bytes), decode_rle(rle_bytes))


def test_fast_rle_decoding_rejects_malformed_input():
    with pytest.raises(ValueError, match="at least 8 byte values"):
        rle.decode_rle([1, 2, 3])
    with pytest.raises(ValueError, match="byte values 0..255"):
        rle.decode_rle([0, 0, 0, 4, 300, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="ends in the middle of a run"):
        rle.decode_rle(mask2rle(np.arange(64, dtype=np.uint8).reshape(8, 8))[:-20])
    with pytest.raises(ValueError, match="literal block runs past the 2 values"):
        rle.decode_rle(pack_rle(2, [(0, 1), (0, 2), (2, 3), (1, 8), (2, 8), (3, 8)]))
    with pytest.raises(ValueError, match="16-bit values"):
        rle.decode_rle(pack_rle(1, [(1, 1), (0, 2), (0, 3), (1, 16)], word_bits=16))


def test_fast_rle_rejects_what_the_format_cannot_hold():
    with pytest.raises(ValueError, match="multiply a boolean mask by 255"):
        rle.mask_to_rle(np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="2-D mask"):
        rle.mask_to_rle(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="8-bit values"):
        rle.mask_to_rle(np.full((2, 2), 300))


def test_brush_pre_annotation_decodes_pixel_exactly_with_the_sdk():
    config, interface = project()
    rng = np.random.default_rng(0)
    class_map = np.zeros((37, 53), np.uint8)
    class_map[5:20, 3:30] = 1
    class_map[22:35, 10:50] = 3            # class 2 ("Stroma") is absent
    class_map[rng.random(class_map.shape) < 0.05] = 1
    confidence = rng.uniform(0.3, 1.0, class_map.shape).astype(np.float32)

    results = class_map_to_brush(class_map, confidence, config)

    assert [region["value"]["brushlabels"] for region in results] == [["Tumor"], ["Fat"]]
    for region, index in zip(results, (1, 3), strict=True):
        assert (region["type"], region["from_name"], region["to_name"]) == ("brushlabels", "tag", "image")
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (53, 37, 0)
        assert region["value"]["format"] == "rle"
        np.testing.assert_array_equal(decoded_alpha(region), (class_map == index) * 255)
        assert region["score"] == pytest.approx(confidence[class_map == index].mean(), rel=1e-6)
    assert len({region["id"] for region in results}) == len(results)
    assert interface.validate_prediction({"result": results, "score": 0.5})


def test_brush_pre_annotation_of_a_pure_background_map_is_empty():
    config, _ = project()
    assert class_map_to_brush(np.zeros((9, 11), np.int64), np.ones((9, 11)), config) == []


def test_class_map_errors_name_the_problem():
    config, _ = project()
    with pytest.raises(ValueError, match=r"values 0\.\.7; the project has 4 classes"):
        class_map_to_brush(np.arange(16).reshape(4, 4) % 8, np.ones((4, 4)), config)
    with pytest.raises(ValueError, match="must have the class map's shape"):
        class_map_to_brush(np.zeros((4, 4), int), np.ones((4, 5)), config)
    with pytest.raises(ValueError, match="2-D integer array"):
        class_map_to_brush(np.zeros((4, 4), float), np.ones((4, 4)), config)


# ---------------------------------------------------------------- polygons


def rasterise(results: list[dict], height: int, width: int) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for region in results:
        label = region["value"]["polygonlabels"][0]
        drawn = percent_polygon_mask(region["value"]["points"], height, width)
        masks[label] = masks.get(label, np.zeros((height, width), bool)) | drawn
    return masks


def test_polygons_of_axis_aligned_rectangles_fill_back_exactly():
    config, interface = project(classes="PolygonLabels")
    class_map = np.zeros((61, 83), np.uint8)
    class_map[4:20, 7:40] = 1
    class_map[30:58, 50:80] = 2
    class_map[30:40, 5:9] = 2

    confidence = np.full(class_map.shape, 0.8)
    confidence[30:40, 5:9] = 0.4

    results = class_map_to_polygons(class_map, confidence, config)

    assert len(results) == 3
    # each polygon is scored with its own component's mean confidence
    assert sorted(region["score"] for region in results) == pytest.approx([0.4, 0.8, 0.8])
    assert all(len(region["value"]["points"]) == 4 and region["value"]["closed"] for region in results)
    masks = rasterise(results, 61, 83)
    np.testing.assert_array_equal(masks["Tumor"], class_map == 1)
    np.testing.assert_array_equal(masks["Stroma"], class_map == 2)
    assert interface.validate_prediction({"result": results, "score": 0.5})


def test_polygons_of_blobs_fill_back_with_high_iou_and_few_vertices():
    config, _ = project(classes="PolygonLabels")
    rng = np.random.default_rng(3)
    class_map = np.zeros((240, 320), np.uint8)
    for index in (1, 2, 3):
        for _ in range(2):
            center = (int(rng.integers(40, 280)), int(rng.integers(40, 200)))
            axes = (int(rng.integers(15, 40)), int(rng.integers(15, 40)))
            cv2.ellipse(class_map, center, axes, float(rng.uniform(0, 180)), 0, 360, index, -1)

    results = class_map_to_polygons(class_map, np.ones(class_map.shape), config)

    masks = rasterise(results, 240, 320)
    for index, name in enumerate(config.class_names[1:], start=1):
        assert iou(masks[name], class_map == index) > 0.98, name
    for region in results:
        points = np.asarray(region["value"]["points"])
        assert points.min() >= 0 and points.max() <= 100


def test_polygon_simplification_scales_with_the_outline():
    circle = np.zeros((700, 700), np.uint8)
    cv2.circle(circle, (350, 350), 300, 1, -1)
    traced = mask_to_polygons(circle.astype(bool))[0]
    simplified = mask_to_polygons(circle.astype(bool), simplify=0.001)[0]
    assert len(traced) > 800 and len(simplified) < 40
    refilled = percent_polygon_mask(polygon_to_percent(simplified, 700, 700), 700, 700)
    assert iou(refilled, circle.astype(bool)) > 0.99


def test_polygon_holes_are_keyholed_so_a_donut_fills_back_exactly():
    donut = np.zeros((60, 70), np.uint8)
    cv2.circle(donut, (35, 30), 25, 1, -1)
    cv2.circle(donut, (30, 28), 8, 0, -1)
    cv2.rectangle(donut, (42, 30), (50, 40), 0, -1)

    polygons = mask_to_polygons(donut.astype(bool))

    assert len(polygons) == 1
    refilled = percent_polygon_mask(polygon_to_percent(polygons[0], 60, 70), 60, 70)
    np.testing.assert_array_equal(refilled, donut.astype(bool))
    simplified = mask_to_polygons(donut.astype(bool), simplify=0.001)[0]
    refilled = percent_polygon_mask(polygon_to_percent(simplified, 60, 70), 60, 70)
    assert iou(refilled, donut.astype(bool)) > 0.97


def test_degenerate_outlines_and_specks_are_dropped():
    mask = np.zeros((20, 30), bool)
    mask[2, 3] = True           # a single pixel: no area
    mask[10, 5:25] = True       # a one-pixel line: no area
    mask[14:16, 2:4] = True     # 4 pixels: kept unless min_area says otherwise
    assert len(mask_to_polygons(mask)) == 1
    assert mask_to_polygons(mask, min_area=5) == []


def test_class_map_to_results_follows_the_class_control_kind():
    brush_config, _ = project()
    polygon_config, _ = project(classes="PolygonLabels")
    class_map = np.zeros((10, 10), np.uint8)
    class_map[2:6, 2:6] = 1
    assert class_map_to_results(class_map, np.ones((10, 10)), brush_config)[0]["type"] == "brushlabels"
    assert class_map_to_results(class_map, np.ones((10, 10)), polygon_config)[0]["type"] == "polygonlabels"


# ---------------------------------------------------------------- proposals


def test_rectangle_proposals_lie_on_pixel_edges_with_label_rule_and_meta():
    config, interface = project(proposal_labels=("Annotate here", "Fat"))
    regions = [box_region(slice(10, 26), slice(4, 20), class_index=1, confidence=0.931),
               box_region(slice(0, 16), slice(40, 50), class_index=3, confidence=0.5),
               box_region(slice(30, 40), slice(30, 40), class_index=None, confidence=0.25)]

    results = proposal_results(regions, config, 40, 50)

    first, second, third = results
    assert first["value"]["x"] == pytest.approx(8.0) and first["value"]["width"] == pytest.approx(32.0)
    assert first["value"]["y"] == pytest.approx(25.0) and first["value"]["height"] == pytest.approx(40.0)
    # "Tumor" is not a proposals label: first label, class in the meta
    assert first["value"]["rectanglelabels"] == ["Annotate here"]
    assert first["meta"] == {"text": ["class: Tumor, confidence 0.93"]}
    # "Fat" is one: the class is the label
    assert second["value"]["rectanglelabels"] == ["Fat"]
    assert second["meta"] == {"text": ["class: Fat, confidence 0.50"]}
    assert third["value"]["rectanglelabels"] == ["Annotate here"]
    assert third["meta"] == {"text": ["confidence 0.25"]}
    assert all(region["readonly"] is True and region["from_name"] == "decomp_regions" for region in results)
    assert [region["score"] for region in results] == pytest.approx([0.931, 0.5, 0.25])
    assert interface.validate_prediction({"result": results, "score": 0.5})

    target = annotation_to_target(results, config, 40, 50)
    expected = np.full((40, 50), IGNORE_INDEX, np.uint8)
    for region in regions:
        expected[region.bbox] = 0
    np.testing.assert_array_equal(target, expected)


def test_polygon_and_brush_proposals_cover_exactly_the_region_mask():
    rng = np.random.default_rng(5)
    crop = np.zeros((20, 24), np.uint8)
    cv2.ellipse(crop, (12, 10), (10, 7), 30, 0, 360, 1, -1)
    region = Region(mask=crop.astype(bool), bbox=(slice(7, 27), slice(11, 35)), seed=(17, 23), class_index=2,
                    confidence=float(rng.uniform()), score=1.0)
    for kind in ("PolygonLabels", "BrushLabels"):
        config, interface = project(proposals=kind, proposal_labels=("Stroma",))
        results = proposal_results([region], config, 30, 40)
        assert len(results) == 1 and results[0]["type"] == kind.lower()
        assert results[0]["value"][kind.lower()] == ["Stroma"]
        assert interface.validate_prediction({"result": results, "score": 0.1})
        target = annotation_to_target(results, config, 30, 40)
        np.testing.assert_array_equal(target != IGNORE_INDEX, region.full_mask((30, 40)), err_msg=kind)


def test_three_dimensional_proposals_are_refused():
    config, _ = project()
    cube = Region(mask=np.ones((2, 2, 2), bool), bbox=(slice(0, 2),) * 3, seed=(0, 0, 0), class_index=1,
                  confidence=0.9, score=1.0)
    with pytest.raises(ValueError, match="2-D regions only"):
        proposal_results([cube], config, 4, 4)


# ---------------------------------------------------------------- annotations to targets


def brush_item(mask: np.ndarray, label: str, region_id: str = "paint") -> dict:
    height, width = mask.shape
    return {"id": region_id, "from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def rectangle_item(x: float, y: float, w: float, h: float, region_id: str, rotation: float = 0) -> dict:
    return {"id": region_id, "from_name": "decomp_regions", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": ["Annotate here"]}}


def test_annotation_with_kept_moved_deleted_and_added_proposals():
    config, _ = project()
    height, width = 40, 50
    boxes = [(slice(0, 10), slice(0, 10)), (slice(20, 30), slice(0, 10)), (slice(0, 10), slice(30, 40))]
    proposals = proposal_results([box_region(*box) for box in boxes], config, height, width)
    kept, moved, deleted = proposals
    moved = copy.deepcopy(moved)
    moved["value"]["x"] = 40.0                                   # now columns 20..29
    added = rectangle_item(80.0, 75.0, 20.0, 25.0, "added")      # rows 30..39, columns 40..49
    tumor = np.zeros((height, width), bool)
    tumor[2:25, 5:25] = True
    fat = np.zeros((height, width), bool)
    fat[5:8, 0:4] = True
    annotation = [kept, moved, added, brush_item(tumor, "Tumor", "t"), brush_item(fat, "Fat", "f"),
                  {"id": "note", "from_name": "comment", "to_name": "image", "type": "textarea",
                   "value": {"text": ["ignored"]}},
                  {"from_id": "t", "to_id": "f", "type": "relation", "direction": "right"}]

    target = annotation_to_target(annotation, config, height, width)

    expected = np.full((height, width), IGNORE_INDEX, np.uint8)
    expected[0:10, 0:10] = 0
    expected[20:30, 20:30] = 0
    expected[30:40, 40:50] = 0
    labelled = expected == 0
    expected[tumor & labelled] = 1
    expected[fat & labelled] = 3       # later in the result list: wins over Tumor
    np.testing.assert_array_equal(target, expected)
    assert deleted["id"] not in {item.get("id") for item in annotation}


def test_annotation_without_proposals_is_fully_labelled():
    config, _ = project(classes="PolygonLabels")
    stroma = {"id": "p1", "from_name": "tag", "to_name": "image", "type": "polygonlabels",
              "value": {"points": [[10, 10], [50, 10], [50, 50], [10, 50]], "polygonlabels": ["Stroma"]}}
    target = annotation_to_target([stroma], config, 20, 20)
    expected = np.zeros((20, 20), np.uint8)
    # vertices at x = 2 and 10 pixels are pixel-centre coordinates 1.5 and 9.5: fillPoly takes 2..10
    expected[2:11, 2:11] = 2
    np.testing.assert_array_equal(target, expected)
    assert annotation_to_target([], config, 3, 4).tolist() == np.zeros((3, 4), np.uint8).tolist()


def test_explicit_background_label_paints_class_zero():
    config = ProjectConfig.from_label_config((EXAMPLES / "polygon_project.xml").read_text())
    whole = {"id": "k", "from_name": "tag", "to_name": "image", "type": "polygonlabels",
             "value": {"points": [[0, 0], [100, 0], [100, 100], [0, 100]], "polygonlabels": ["Kidney"]}}
    hole = {"id": "b", "from_name": "tag", "to_name": "image", "type": "polygonlabels",
            "value": {"points": [[25, 25], [75, 25], [75, 75], [25, 75]], "polygonlabels": ["Background"]}}
    target = annotation_to_target([whole, hole], config, 8, 8)
    assert target[0, 0] == 1 and target[4, 4] == 0


def test_rotated_rectangles_follow_label_studio_rotation_about_the_top_left_corner():
    config, _ = project()
    # 20 x 10 pixels at (10, 10), turned 90 degrees clockwise: columns 0..9, rows 10..29
    item = rectangle_item(10 / 40 * 100, 10 / 40 * 100, 20 / 40 * 100, 10 / 40 * 100, "r", rotation=90)
    target = annotation_to_target([item], config, 40, 40)
    expected = np.full((40, 40), IGNORE_INDEX, np.uint8)
    expected[10:30, 0:10] = 0
    np.testing.assert_array_equal(target, expected)
    tilted = annotation_to_target([rectangle_item(50, 25, 25, 25, "t", rotation=45)], config, 40, 40)
    area = int((tilted == 0).sum())
    assert 80 < area < 130                 # a 10 x 10 square, tilted
    assert tilted[20, 20] == 0 and tilted[10, 30] == IGNORE_INDEX


def test_rectangle_corners_match_the_sdk_converter():
    from label_studio_sdk.converter.utils import convert_annotation_to_yolo_obb

    rng = np.random.default_rng(4)
    for _ in range(50):
        value = {"x": rng.uniform(0, 80), "y": rng.uniform(0, 80), "width": rng.uniform(1, 20),
                 "height": rng.uniform(1, 20), "rotation": rng.uniform(-360, 360)}
        expected = convert_annotation_to_yolo_obb(
            {**value, "original_width": 640, "original_height": 480}, normalize=False
        )
        np.testing.assert_allclose(rectangle_corners(value, 480, 640), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": "r1", "from_name": "decomp_regions", "type": "rectanglelabels", "value": {"x": 1, "y": 1}},
         r"Region 'r1' of 'decomp_regions' cannot be decoded: it has no 'width' field"),
        ({"id": "r2", "from_name": "tag", "type": "brushlabels"}, r"Region 'r2' .* it has no 'value' field"),
        ({"id": "r3", "from_name": "tag", "type": "polygonlabels",
          "value": {"points": [[1, 1], [2, 2]], "polygonlabels": ["Tumor"]}},
         r"Region 'r3' of 'tag' \(polygonlabels\).*at least 3 points"),
        ({"id": "r4", "from_name": "tag", "type": "polygonlabels",
          "value": {"points": [[1, 1], [50, 2], [2, 50]], "polygonlabels": ["Cheese"]}},
         r"Region 'r4'.*'Cheese' is not a label of the class control 'tag' \(labels: Tumor, Stroma, Fat\)"),
        ({"id": "r5", "from_name": "tag", "type": "polygonlabels",
          "value": {"points": [[1, 1], [50, 2], [2, 50]], "polygonlabels": []}},
         r"Region 'r5'.*exactly one label"),
        ({"id": "r6", "from_name": "tag", "type": "brushlabels", "original_width": 10, "original_height": 10,
          "value": {"format": "rle", "rle": mask2rle(np.zeros((5, 5), np.uint8)), "brushlabels": ["Tumor"]}},
         r"Region 'r6'.*RLE holds 100 values, expected 10x10x4 = 400"),
        ({"id": "r7", "from_name": "tag", "type": "brushlabels", "original_width": 12, "original_height": 10,
          "value": {"format": "rle", "rle": [0], "brushlabels": ["Tumor"]}},
         r"Region 'r7'.*drawn on a 12x10 image, not this 10x10 one"),
        ({"id": "r8", "from_name": "tag", "type": "ellipselabels", "value": {}},
         r"Region 'r8'.*type 'ellipselabels' is not one of"),
        ({"id": "r9", "from_name": "decomp_regions", "type": "rectanglelabels", "image_rotation": 90,
          "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["Annotate here"]}},
         r"Region 'r9'.*image rotated by 90 degrees"),
    ],
)
def test_malformed_regions_raise_an_error_naming_the_region(item, message):
    config, _ = project()
    with pytest.raises(ResultFormatError, match=message):
        annotation_to_target([item], config, 10, 10)
