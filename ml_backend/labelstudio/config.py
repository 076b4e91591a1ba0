"""What the backend needs to know from a Label Studio labelling config.

A DECOMP project has three parts, read with the SDK's ``LabelInterface``:

* the ``<Image>`` the model segments;
* the class control (``BrushLabels`` or ``PolygonLabels``) whose labels are the segmentation classes;
* the proposals control, chosen by name (default ``decomp_regions``), where the backend draws the
  regions it asks the annotator to label: ``RectangleLabels`` for square regions, ``PolygonLabels``
  for region outlines, ``BrushLabels`` for arbitrary-shape masks. Its ``decomp_*`` attributes hold
  the DECOMP settings, the way Label Studio's own examples keep model settings on the control tag.

Class indices: index 0 is the background class. When the class control has a label declared as
background (``decomp_background="..."`` on the proposals control, or else a label named
"background" in any case) that label is class 0 and the others follow in config order; otherwise an
implicit "background" class 0, meaning unpainted pixels, comes first and every label follows it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

CLASS_CONTROL_TAGS = ("BrushLabels", "PolygonLabels")
PROPOSALS_CONTROL_TAGS = ("RectangleLabels", "PolygonLabels", "BrushLabels")
IMPLICIT_BACKGROUND = "background"
REGION_SHAPES = ("box", "superpixel")
REGION_CENTERS = ("max_confidence", "uniform")


class LabelConfigError(ValueError):
    """The labelling config cannot drive DECOMP; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DecompSettings:
    """DECOMP settings read from the ``decomp_*`` attributes of the proposals control.

    ``k`` regions per image, ``region_size`` pixels per side (box) or the approximate superpixel side,
    ``tau`` the confidence threshold of the class-wise confidence rate, ``min_pixels`` the area a class
    needs in an image to count as present, ``train_every`` new annotations between training runs,
    ``epochs`` per training run.
    """

    k: int = 15
    region_size: int = 64
    tau: float = 0.7
    shape: str = "box"
    center: str = "max_confidence"
    min_pixels: int = 1
    train_every: int = 5
    epochs: int = 10


def _whole_number(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number between 0 and 1")
    return value


def _one_of(choices: tuple[str, ...]):
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}")
        return value

    return parse


# attribute -> (DecompSettings field, parser)
_SETTING_ATTRIBUTES = {
    "decomp_k": ("k", _whole_number(1)),
    "decomp_region_size": ("region_size", _whole_number(1)),
    "decomp_tau": ("tau", _fraction),
    "decomp_shape": ("shape", _one_of(REGION_SHAPES)),
    "decomp_center": ("center", _one_of(REGION_CENTERS)),
    "decomp_min_pixels": ("min_pixels", _whole_number(1)),
    "decomp_train_every": ("train_every", _whole_number(1)),
    "decomp_epochs": ("epochs", _whole_number(1)),
}
# attributes that choose classes rather than tune DECOMP; read by ProjectConfig itself
_CLASS_ATTRIBUTES = ("decomp_background", "decomp_class_control")
KNOWN_ATTRIBUTES = tuple(_SETTING_ATTRIBUTES) + _CLASS_ATTRIBUTES


def parse_decomp_settings(attributes: dict[str, str], control_name: str) -> DecompSettings:
    """Read and validate the ``decomp_*`` attributes of the proposals control named ``control_name``."""
    values: dict[str, Any] = {}
    for attribute, text in attributes.items():
        if not attribute.startswith("decomp_"):
            continue
        if attribute not in KNOWN_ATTRIBUTES:
            close = difflib.get_close_matches(attribute, KNOWN_ATTRIBUTES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise LabelConfigError(
                f"Unknown attribute {attribute}={text!r} on the proposals control {control_name!r}.{hint} "
                f"Known attributes: {', '.join(KNOWN_ATTRIBUTES)}."
            )
        if attribute in _SETTING_ATTRIBUTES:
            field, parse = _SETTING_ATTRIBUTES[attribute]
            try:
                values[field] = parse(text)
            except ValueError as error:
                raise LabelConfigError(
                    f"Invalid {attribute}={text!r} on the proposals control {control_name!r}: {error}."
                ) from None
    return DecompSettings(**values)


def _snippet(image_name: str, image_value: str, proposals_control: str) -> str:
    return (
        f'  <Image name="{image_name}" value="{image_value}"/>\n'
        f'  <BrushLabels name="tag" toName="{image_name}">\n'
        '    <Label value="Tumor"/>\n'
        '    <Label value="Stroma"/>\n'
        "  </BrushLabels>\n"
        f'  <RectangleLabels name="{proposals_control}" toName="{image_name}" decomp_k="15" '
        'decomp_region_size="64">\n'
        '    <Label value="Annotate here"/>\n'
        "  </RectangleLabels>"
    )


@dataclass(frozen=True)
class ProjectConfig:
    """The parts of a labelling config DECOMP uses; build it with :meth:`from_label_config`.

    ``class_names[i]`` is the name of class ``i``; ``background_label`` is the class-control label
    that paints background, or None when background is implicit (unpainted pixels).
    ``class_type``/``proposals_type`` are the result types Label Studio writes for the two controls
    ("brushlabels", "polygonlabels", "rectanglelabels").
    """

    image_name: str
    image_key: str
    class_control: str
    class_type: str
    class_names: tuple[str, ...]
    background_label: str | None
    proposals_control: str
    proposals_type: str
    proposal_labels: tuple[str, ...]
    decomp: DecompSettings

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_labels(self) -> tuple[str, ...]:
        """The class-control labels in class order (the implicit background is not one)."""
        return self.class_names if self.background_label else self.class_names[1:]

    def class_index(self, label: str) -> int:
        """Class index of a class-control label; raises KeyError naming the known labels."""
        if label not in self.class_labels:
            raise KeyError(
                f"{label!r} is not a label of the class control {self.class_control!r} "
                f"(labels: {', '.join(self.class_labels)})"
            )
        return self.class_names.index(label)

    @classmethod
    def from_label_config(
        cls,
        label_config: str,
        *,
        proposals_control: str = "decomp_regions",
        class_control: str | None = None,
    ) -> ProjectConfig:
        """Parse a labelling config (XML). ``class_control`` names the class control when the config
        has several candidates; the proposals control's ``decomp_class_control`` attribute does the
        same from inside the config. Raises LabelConfigError with a fix-it message."""
        from label_studio_sdk.label_interface import LabelInterface

        try:
            interface = LabelInterface(label_config)
        except Exception as error:  # the SDK raises bare Exception subclasses for XML syntax errors
            raise LabelConfigError(f"The labelling config is not valid XML: {error}") from None

        images = [tag for tag in interface.objects if tag.tag == "Image"]
        default_image = images[0] if images else None
        snippet = _snippet(
            default_image.name if default_image else "image",
            default_image.value if default_image else "$image",
            proposals_control,
        )
        controls = {control.name: control for control in interface.controls}
        found = ", ".join(f"{name} ({control.tag})" for name, control in controls.items()) or "none"

        proposals = controls.get(proposals_control)
        if proposals is None:
            raise LabelConfigError(
                f"The labelling config has no proposals control named {proposals_control!r} "
                f"(controls found: {found}). DECOMP draws the regions to annotate there. Add one that "
                f"points at the same image as the class control, for example:\n{snippet}"
            )
        if proposals.tag not in PROPOSALS_CONTROL_TAGS:
            raise LabelConfigError(
                f"The proposals control {proposals_control!r} is a {proposals.tag}; it must be one of "
                f"{', '.join(PROPOSALS_CONTROL_TAGS)}, for example:\n{snippet}"
            )
        if not proposals.labels:
            raise LabelConfigError(
                f"The proposals control {proposals_control!r} has no <Label>; add one such as "
                '<Label value="Annotate here"/>.'
            )
        attributes = {key: str(value) for key, value in proposals.attr.items()}
        settings = parse_decomp_settings(attributes, proposals_control)
        if proposals.tag == "RectangleLabels" and settings.shape != "box":
            raise LabelConfigError(
                f"Invalid decomp_shape={settings.shape!r} on the proposals control {proposals_control!r}: "
                "a RectangleLabels control can only show box regions; use PolygonLabels or BrushLabels "
                "for superpixel regions."
            )

        chosen = class_control or attributes.get("decomp_class_control")
        candidates = [
            control
            for name, control in controls.items()
            if name != proposals_control and control.tag in CLASS_CONTROL_TAGS
        ]
        if chosen is not None:
            classes = controls.get(chosen)
            if classes is None or classes.tag not in CLASS_CONTROL_TAGS or chosen == proposals_control:
                raise LabelConfigError(
                    f"The class control {chosen!r} is not a {' or '.join(CLASS_CONTROL_TAGS)} control "
                    f"other than the proposals control (controls found: {found})."
                )
        elif not candidates:
            raise LabelConfigError(
                f"The labelling config has no class control: DECOMP needs a "
                f"{' or '.join(CLASS_CONTROL_TAGS)} control besides {proposals_control!r} "
                f"(controls found: {found}), for example:\n{snippet}"
            )
        elif len(candidates) > 1:
            names = ", ".join(control.name for control in candidates)
            raise LabelConfigError(
                f"The labelling config has several class controls ({names}); choose one with "
                f'decomp_class_control="<name>" on the proposals control {proposals_control!r}.'
            )
        else:
            classes = candidates[0]
        if not classes.labels:
            raise LabelConfigError(f"The class control {classes.name!r} has no <Label>.")

        image = _single_image(classes)
        proposals_image = _single_image(proposals)
        if proposals_image.name != image.name:
            raise LabelConfigError(
                f"The proposals control {proposals_control!r} points at {proposals_image.name!r} but the "
                f"class control {classes.name!r} points at {image.name!r}; both need the same image."
            )
        if not image.value.startswith("$") or len(image.value) < 2:
            raise LabelConfigError(
                f'The image {image.name!r} has value="{image.value}"; expected value="$<task data key>", '
                'for example value="$image".'
            )

        labels = list(classes.labels)
        background = attributes.get("decomp_background")
        if background is not None:
            if background not in labels:
                raise LabelConfigError(
                    f"Invalid decomp_background={background!r} on the proposals control "
                    f"{proposals_control!r}: expected one of the labels of {classes.name!r} "
                    f"({', '.join(labels)})."
                )
        else:
            background = next((label for label in labels if label.lower() == IMPLICIT_BACKGROUND), None)
        if background is None:
            class_names = (IMPLICIT_BACKGROUND, *labels)
        else:
            class_names = (background, *(label for label in labels if label != background))

        return cls(
            image_name=image.name,
            image_key=image.value[1:],
            class_control=classes.name,
            class_type=classes.tag.lower(),
            class_names=class_names,
            background_label=background,
            proposals_control=proposals_control,
            proposals_type=proposals.tag.lower(),
            proposal_labels=tuple(proposals.labels),
            decomp=settings,
        )


def _single_image(control):
    images = [tag for tag in control.objects if tag.tag == "Image"]
    if len(images) != 1 or len(control.to_name) != 1:
        raise LabelConfigError(
            f"The control {control.name!r} has toName={','.join(control.to_name)!r}; it must name exactly "
            "one <Image> of the labelling config."
        )
    return images[0]
