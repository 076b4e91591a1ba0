"""Labelling-config parsing: controls, class order, DECOMP settings and the errors users see."""

from pathlib import Path

import pytest

from ml_backend.labelstudio.config import DecompSettings, LabelConfigError, ProjectConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def make_config(
    classes: str = "BrushLabels",
    labels=("Tumor", "Stroma"),
    proposals: str = "RectangleLabels",
    attributes: str = "",
    proposal_labels=("Annotate here",),
    proposals_name="decomp_regions",
) -> str:
    class_labels = "".join(f'<Label value="{label}"/>' for label in labels)
    region_labels = "".join(f'<Label value="{label}"/>' for label in proposal_labels)
    return (
        '<View><Image name="img" value="$photo"/>'
        f'<{classes} name="tag" toName="img">{class_labels}</{classes}>'
        f'<{proposals} name="{proposals_name}" toName="img" {attributes}>{region_labels}</{proposals}>'
        "</View>"
    )


def test_brush_example_parses_with_implicit_background_and_its_settings():
    config = ProjectConfig.from_label_config((EXAMPLES / "brush_project.xml").read_text())
    assert (config.image_name, config.image_key) == ("image", "image")
    assert (config.class_control, config.class_type) == ("tag", "brushlabels")
    assert config.class_names == ("background", "Tumor", "Stroma", "Lymphocytes", "Necrosis")
    assert config.background_label is None
    assert config.class_labels == ("Tumor", "Stroma", "Lymphocytes", "Necrosis")
    assert (config.proposals_control, config.proposals_type) == ("decomp_regions", "rectanglelabels")
    assert config.proposal_labels == ("Annotate here",)
    assert config.decomp == DecompSettings(
        k=15, region_size=64, tau=0.7, shape="box", center="max_confidence",
        min_pixels=1, train_every=5, epochs=10,
    )


def test_polygon_example_parses_with_explicit_background_first():
    config = ProjectConfig.from_label_config((EXAMPLES / "polygon_project.xml").read_text())
    assert config.class_type == "polygonlabels"
    assert config.proposals_type == "polygonlabels"
    assert config.class_names == ("Background", "Kidney", "Tumor", "Cyst")
    assert config.background_label == "Background"
    assert config.class_index("Background") == 0
    assert config.class_index("Cyst") == 3
    assert config.decomp.shape == "superpixel"
    assert config.decomp.k == 10
    assert config.decomp.min_pixels == 16


def test_label_named_background_becomes_class_zero_and_others_keep_config_order():
    config = ProjectConfig.from_label_config(make_config(labels=("Tumor", "BACKGROUND", "Stroma")))
    assert config.class_names == ("BACKGROUND", "Tumor", "Stroma")
    assert config.num_classes == 3


def test_decomp_background_attribute_chooses_the_background_label():
    config = ProjectConfig.from_label_config(
        make_config(labels=("Tumor", "Glass", "Stroma"), attributes='decomp_background="Glass"')
    )
    assert config.class_names == ("Glass", "Tumor", "Stroma")
    assert config.background_label == "Glass"


def test_implicit_background_is_not_a_paintable_label():
    config = ProjectConfig.from_label_config(make_config())
    assert config.class_index("Tumor") == 1
    with pytest.raises(KeyError, match="'background' is not a label of the class control 'tag'"):
        config.class_index("background")


def test_defaults_apply_when_no_decomp_attribute_is_given():
    config = ProjectConfig.from_label_config(make_config(classes="PolygonLabels", proposals="BrushLabels"))
    assert config.decomp == DecompSettings()
    assert (config.decomp.k, config.decomp.region_size, config.decomp.tau) == (15, 64, 0.7)
    assert (config.decomp.train_every, config.decomp.epochs) == (5, 10)
    assert config.proposals_type == "brushlabels"


def test_proposals_control_is_chosen_by_name():
    xml = make_config(proposals_name="ask_here", attributes='decomp_k="3"')
    config = ProjectConfig.from_label_config(xml, proposals_control="ask_here")
    assert config.proposals_control == "ask_here"
    assert config.decomp.k == 3


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ('decomp_k="0"', r"Invalid decomp_k='0' on the proposals control 'decomp_regions': expected a whole "
                         r"number >= 1"),
        ('decomp_k="2.5"', r"Invalid decomp_k='2.5'.*whole number"),
        ('decomp_region_size="big"', r"Invalid decomp_region_size='big'"),
        ('decomp_tau="1.5"', r"Invalid decomp_tau='1.5'.*between 0 and 1"),
        ('decomp_tau="high"', r"Invalid decomp_tau='high'"),
        ('decomp_shape="circle"', r"Invalid decomp_shape='circle'.*'box', 'superpixel'"),
        ('decomp_center="middle"', r"Invalid decomp_center='middle'.*'max_confidence', 'uniform'"),
        ('decomp_min_pixels="-1"', r"Invalid decomp_min_pixels='-1'"),
        ('decomp_train_every="0"', r"Invalid decomp_train_every='0'"),
        ('decomp_epochs="ten"', r"Invalid decomp_epochs='ten'"),
        ('decomp_regionsize="32"', r"Unknown attribute decomp_regionsize.*Did you mean 'decomp_region_size'"),
        ('decomp_background="Nope"', r"Invalid decomp_background='Nope'.*labels of 'tag' \(Tumor, Stroma\)"),
        ('decomp_shape="superpixel"', r"RectangleLabels control can only show box regions"),
    ],
)
def test_invalid_attributes_are_named_in_the_error(attributes, message):
    with pytest.raises(LabelConfigError, match=message):
        ProjectConfig.from_label_config(make_config(attributes=attributes))


def test_missing_proposals_control_names_it_and_shows_a_snippet():
    xml = '<View><Image name="img" value="$photo"/><BrushLabels name="tag" toName="img"><Label value="A"/>' \
          "</BrushLabels></View>"
    with pytest.raises(LabelConfigError) as error:
        ProjectConfig.from_label_config(xml)
    message = str(error.value)
    assert "no proposals control named 'decomp_regions'" in message
    assert "controls found: tag (BrushLabels)" in message
    assert '<RectangleLabels name="decomp_regions" toName="img"' in message
    assert '<Image name="img" value="$photo"/>' in message


def test_missing_class_control_is_explained():
    xml = '<View><Image name="img" value="$photo"/><RectangleLabels name="decomp_regions" toName="img">' \
          '<Label value="Here"/></RectangleLabels></View>'
    expected = r"(?s)no class control: DECOMP needs a BrushLabels or PolygonLabels control besides 'decomp_re"
    with pytest.raises(LabelConfigError, match=expected + r'.*<BrushLabels name="tag"'):
        ProjectConfig.from_label_config(xml)


def test_several_class_controls_need_an_explicit_choice():
    xml = ('<View><Image name="img" value="$photo"/>'
           '<BrushLabels name="cells" toName="img"><Label value="Cell"/></BrushLabels>'
           '<PolygonLabels name="tissue" toName="img"><Label value="Tumor"/></PolygonLabels>'
           '<RectangleLabels name="decomp_regions" toName="img"><Label value="Here"/>'
           "</RectangleLabels></View>")
    with pytest.raises(LabelConfigError, match=r"several class controls \(cells, tissue\).*decomp_class"):
        ProjectConfig.from_label_config(xml)
    assert ProjectConfig.from_label_config(xml, class_control="tissue").class_names == ("background", "Tumor")
    chosen = xml.replace('name="decomp_regions"', 'name="decomp_regions" decomp_class_control="cells"')
    assert ProjectConfig.from_label_config(chosen).class_control == "cells"
    with pytest.raises(LabelConfigError, match=r"class control 'decomp_regions' is not"):
        ProjectConfig.from_label_config(xml, class_control="decomp_regions")


def test_wrong_control_kinds_and_targets_are_rejected():
    with pytest.raises(LabelConfigError, match=r"proposals control 'decomp_regions' is a KeyPointLabels"):
        ProjectConfig.from_label_config(make_config(proposals="KeyPointLabels"))
    with pytest.raises(LabelConfigError, match=r"proposals control 'decomp_regions' has no <Label>"):
        ProjectConfig.from_label_config(make_config(proposal_labels=()))
    two_images = ('<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
                  '<BrushLabels name="tag" toName="a"><Label value="X"/></BrushLabels>'
                  '<RectangleLabels name="decomp_regions" toName="b"><Label value="Here"/>'
                  "</RectangleLabels></View>")
    with pytest.raises(LabelConfigError, match=r"points at 'b' but the class control 'tag' points at 'a'"):
        ProjectConfig.from_label_config(two_images)
    dangling = make_config().replace('name="tag" toName="img"', 'name="tag" toName="x"')
    with pytest.raises(LabelConfigError, match=r"The control 'tag' has toName='x'"):
        ProjectConfig.from_label_config(dangling)


def test_static_image_value_and_bad_xml_are_rejected():
    with pytest.raises(LabelConfigError, match=r'expected value="\$<task data key>"'):
        ProjectConfig.from_label_config(make_config().replace('value="$photo"', 'value="http://x/y.png"'))
    with pytest.raises(LabelConfigError, match="not valid XML"):
        ProjectConfig.from_label_config("<View><Image name='img'")
