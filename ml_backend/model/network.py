"""The segmentation network: building it (pretrained when the machine can fetch weights), describing it well
enough to rebuild it from a checkpoint, choosing the device, and turning images into its input tensors.

Intensity scaling (``intensity_window``): uint8 images are divided by 255. Float images whose values already
lie in [0, 1] are used as they are. Every other image (uint16 microscopy or photos, int16 CT, float maps in
any range) is scaled linearly so that its 0.5th percentile maps to 0 and its 99.5th percentile to 1, then
clipped: a few saturated or dead pixels do not squash the contrast of the rest, unlike a min-max scaling.
For a volume the window is computed once over the whole volume, so that all its slices share one scaling.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROBUST_PERCENTILES = (0.5, 99.5)
# Percentiles of a million values are within a grey level of the exact ones and cost milliseconds.
PERCENTILE_SAMPLE = 1 << 20
# An offline machine must not stall the backend's start: the reachability probe gives up after this long
# (the Hugging Face client itself retries for about 25 s before it fails).
HUB_PROBE_TIMEOUT_S = 3.0
MAX_CLASSES = 255  # class 255 is the "unlabelled" marker of every target


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network from its weights and to feed it the right input.

    ``pretrained`` names the weights the encoder started from (None: random initialisation); ``mean`` and
    ``std`` normalise inputs already scaled to [0, 1], one value per input channel.
    """

    num_classes: int
    architecture: str
    encoder: str
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} must hold one value per input channel "
                f"({self.in_channels})"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("mean", "std", "class_names"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        expected = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or not expected >= set(data) or not {
            "num_classes",
            "architecture",
            "encoder",
            "in_channels",
            "mean",
            "std",
        } <= set(data):
            raise ValueError(f"not a model description: expected the keys {sorted(expected)}, got {data!r}")
        class_names = data.get("class_names")
        return cls(
            num_classes=int(data["num_classes"]),
            architecture=str(data["architecture"]),
            encoder=str(data["encoder"]),
            in_channels=int(data["in_channels"]),
            mean=tuple(float(value) for value in data["mean"]),
            std=tuple(float(value) for value in data["std"]),
            class_names=None if class_names is None else tuple(str(name) for name in class_names),
            pretrained=data.get("pretrained"),
        )


def default_normalisation(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics; for other channel counts their averages (a pretrained first convolution adapted
    to other channel counts by smp sums or repeats the RGB filters, so averaged statistics fit it best)."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (float(np.mean(IMAGENET_MEAN)),) * in_channels, (float(np.mean(IMAGENET_STD)),) * in_channels


def build_segmentation_model(
    num_classes: int,
    *,
    in_channels: int = 3,
    architecture: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = "imagenet",
    class_names: list[str] | tuple[str, ...] | None = None,
) -> torch.nn.Module:
    """A segmentation-models-pytorch network with ``num_classes`` output channels and a ``spec`` attribute.

    ``encoder_weights`` names pretrained encoder weights (``"imagenet"``); when they cannot be fetched (no
    network, hub down, not in the local Hugging Face cache) the model starts from random weights and a
    WARNING says why and how to fix it. ``encoder_weights=None`` means random weights without trying.
    """
    import segmentation_models_pytorch as smp

    _check_build_arguments(num_classes, in_channels, class_names)
    architecture_class = smp.MODEL_ARCHITECTURES_MAPPING.get(architecture.lower())
    if architecture_class is None:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of "
            f"{sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())}"
        )
    if not (encoder.startswith("tu-") or encoder in smp.encoders.encoders):
        raise ValueError(
            f"unknown encoder {encoder!r}; use a segmentation-models-pytorch encoder such as 'resnet18', "
            f"'resnet34', 'efficientnet-b0' or a timm encoder as 'tu-<name>'"
        )
    built = (
        None
        if encoder_weights is None
        else _build_pretrained(architecture_class, num_classes, in_channels, encoder, encoder_weights)
    )
    if built is None:
        model = architecture_class(
            encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
        )
        pretrained, (mean, std) = None, default_normalisation(in_channels)
    else:
        model, (mean, std) = built
        pretrained = encoder_weights
    model.spec = ModelSpec(
        num_classes=num_classes,
        architecture=architecture_class.__name__,
        encoder=encoder,
        in_channels=in_channels,
        mean=tuple(mean),
        std=tuple(std),
        class_names=None if class_names is None else tuple(class_names),
        pretrained=pretrained,
    )
    return model


def build_from_spec(spec: ModelSpec) -> torch.nn.Module:
    """A randomly initialised network of the shape ``spec`` describes (load a checkpoint's weights into it);
    never touches the network."""
    model = build_segmentation_model(
        spec.num_classes,
        in_channels=spec.in_channels,
        architecture=spec.architecture,
        encoder=spec.encoder,
        encoder_weights=None,
        class_names=spec.class_names,
    )
    model.spec = spec
    return model


def model_spec(model: torch.nn.Module) -> ModelSpec:
    """The spec of a network built here, also through a DistributedDataParallel wrapper."""
    spec = getattr(getattr(model, "module", model), "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            f"{type(model).__name__} carries no ModelSpec: build networks with build_segmentation_model() "
            "or load them with load_checkpoint()"
        )
    return spec


def _check_build_arguments(
    num_classes: int, in_channels: int, class_names: list[str] | tuple[str, ...] | None
) -> None:
    if not _is_int(num_classes) or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be an int from 2 (background + one class) to {MAX_CLASSES}, "
            f"got {num_classes!r}"
        )
    check_positive_int("in_channels", in_channels)
    if class_names is not None and (
        len(class_names) != num_classes or not all(isinstance(name, str) for name in class_names)
    ):
        raise ValueError(f"class_names must be {num_classes} strings (one per class), got {class_names!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int (bools excluded), else a ValueError that names the argument."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _build_pretrained(
    architecture_class: type, num_classes: int, in_channels: int, encoder: str, weights: str
) -> tuple[torch.nn.Module, tuple[tuple[float, ...], tuple[float, ...]]] | None:
    """(model, (mean, std)) with pretrained encoder weights, or None after a logged warning."""
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-"):
        # timm fetches its own weights; its registry knows the normalisation without a download.
        if not _hub_reachable():
            _warn_random_weights(encoder, weights, "the Hugging Face hub cannot be reached")
            return None
        try:
            model = architecture_class(
                encoder_name=encoder, encoder_weights=weights, in_channels=in_channels, classes=num_classes
            )
            params = smp.encoders.get_preprocessing_params(encoder)
        except Exception as error:  # any failure of a download means: go on with random weights
            _warn_random_weights(encoder, weights, f"{type(error).__name__}: {error}")
            return None
        return model, _normalisation_from_config(params, in_channels)

    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise ValueError(
            f"encoder {encoder!r} has no pretrained weights {weights!r}; "
            f"available: {sorted(settings)} or None"
        )
    try:
        source = settings[weights]
        config, state = _fetch_smp_encoder_weights(source["repo_id"], source["revision"])
    except Exception as error:  # offline, hub error, corrupt cache: all mean random weights
        _warn_random_weights(encoder, weights, f"{type(error).__name__}: {error}")
        return None
    # Built for 3 channels so that the RGB weights load, then adapted the way smp adapts them itself.
    model = architecture_class(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes)
    model.encoder.load_state_dict(state)
    model.encoder.set_in_channels(in_channels, pretrained=True)
    return model, _normalisation_from_config(config, in_channels)


def _fetch_smp_encoder_weights(repo_id: str, revision: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The encoder's preprocessing config and weights, downloaded or, offline, from the local cache only."""
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    local_only = not _hub_reachable()
    config_path, weights_path = (
        hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only)
        for filename in ("config.json", "model.safetensors")
    )
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    return config, load_file(weights_path, device="cpu")


def _normalisation_from_config(
    config: dict[str, Any], in_channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if config.get("input_space", "RGB") != "RGB":
        raise ValueError(f"encoder expects {config['input_space']} input; only RGB encoders are supported")
    # Statistics given for a 0-255 input range become statistics of the 0-1 inputs used here.
    scale = float(max(config.get("input_range", [0, 1])))
    mean = [float(value) / scale for value in config["mean"]]
    std = [float(value) / scale for value in config["std"]]
    if in_channels != len(mean):
        mean, std = [float(np.mean(mean))] * in_channels, [float(np.mean(std))] * in_channels
    return tuple(mean), tuple(std)


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers within HUB_PROBE_TIMEOUT_S (a thread bounds DNS look-ups too,
    which socket timeouts do not cover)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(
                urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S
            ).close()
            answered.set()
        except urllib.error.HTTPError:
            answered.set()  # an HTTP error status still proves the hub is reachable
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return answered.is_set()


def _warn_random_weights(encoder: str, weights: str, reason: str) -> None:
    logger.warning(
        "Could not load the pretrained %r weights of encoder %r (%s); the model starts from RANDOM weights "
        "and will need many more labels to reach the same quality. To fix: give this machine access to "
        "https://huggingface.co (or set HF_ENDPOINT to a mirror), or download the weights once into the "
        "Hugging Face cache (HF_HOME) on a connected machine and copy the cache over. Pass "
        "encoder_weights=None to start from random weights on purpose.",
        weights,
        encoder,
        reason,
    )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda:0', 'auto')"
        ) from error
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} usable CUDA "
            "device(s); use 'cpu' or 'auto'"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} was asked for but Apple MPS is not available; use 'cpu' or 'auto'"
        )
    return resolved


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """The raw values that map to 0 and 1 (see the module docstring); alpha channels are not counted."""
    _check_dtype(image)
    if image.dtype == np.uint8:
        return 0.0, 255.0
    # .flat gathers only the sampled values, where reshape would copy a whole non-contiguous view
    sample = image.flat[:: max(1, image.size // PERCENTILE_SAMPLE)]
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())  # NaN propagates through min and max
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("image holds NaN or infinite values; replace them (e.g. np.nan_to_num) first")
        if low >= 0.0 and high <= 1.0:
            return 0.0, 1.0
    low, high = (float(value) for value in np.percentile(sample, ROBUST_PERCENTILES))
    if high <= low:  # a flat image: map its single value to 0 instead of dividing by zero
        high = low + 1.0
    return low, high


def prepare_image(
    image: np.ndarray, spec: ModelSpec | None = None, *, window: tuple[float, float] | None = None
) -> torch.Tensor:
    """A 2-D image (H, W) or (H, W, C) in its native dtype as the network's float32 input (in_channels, H, W).

    Grayscale is replicated to RGB, RGBA loses its alpha, RGB becomes luminance for one-channel networks;
    intensities are scaled by ``window`` (default: ``intensity_window`` of this image) and normalised with
    the spec's mean and std (ImageNet statistics when no spec is given).
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(
            "image must be a non-empty numpy array of shape (H, W) or (H, W, C), got "
            + (f"shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__)
        )
    return prepare_planes(image[np.newaxis], spec, window=window)[0]


def prepare_planes(
    planes: np.ndarray, spec: ModelSpec | None = None, *, window: tuple[float, float] | None = None
) -> torch.Tensor:
    """A stack of 2-D planes (N, H, W) or (N, H, W, C) (volume slices, crops) as a float32 batch
    (N, in_channels, H, W); see ``prepare_image``. Pass the whole volume's ``window`` for slices."""
    in_channels = 3 if spec is None else spec.in_channels
    mean, std = default_normalisation(3) if spec is None else (spec.mean, spec.std)
    colour = channels_last(planes, in_channels)
    low, high = intensity_window(colour) if window is None else window
    if not colour.dtype.isnative or min(colour.strides) < 0:  # torch takes neither
        colour = np.ascontiguousarray(colour, dtype=colour.dtype.newbyteorder("="))
    # One conversion into a fresh channels-first float32 tensor, then in-place arithmetic: 5x faster
    # than out-of-place steps on a 2048 x 2048 image, and the caller's array is never written.
    scaled = torch.from_numpy(colour).permute(0, 3, 1, 2)
    scaled = scaled.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    scaled.sub_(low).div_(high - low).clamp_(0.0, 1.0)
    if scaled.shape[1] != in_channels:
        scaled = _match_channels(scaled, in_channels)
    return scaled.sub_(torch.tensor(mean).view(-1, 1, 1)).div_(torch.tensor(std).view(-1, 1, 1))


def channels_last(planes: np.ndarray, in_channels: int = 3) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) planes as (N, H, W, C) without alpha (a view, no copy)."""
    if planes.ndim == 3:
        return planes[..., np.newaxis]
    if planes.ndim != 4:
        raise ValueError(f"expected planes of shape (N, H, W) or (N, H, W, C), got shape {planes.shape}")
    channels = planes.shape[-1]
    if channels == in_channels:
        return planes
    if channels in (2, 4):  # grey + alpha, RGBA: the alpha channel is not image content
        return planes[..., : channels - 1]
    if channels in (1, 3):
        return planes
    raise ValueError(
        f"image has {channels} channels; the network takes {in_channels} "
        "(grayscale, grey+alpha, RGB and RGBA are converted)"
    )


def _match_channels(scaled: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(N, c, H, W) as (N, in_channels, H, W), in new memory."""
    channels = scaled.shape[1]
    if channels == 1:
        return scaled.expand(-1, in_channels, -1, -1).contiguous()
    if channels == 3 and in_channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601
        return (scaled * luma).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot feed a {channels}-channel image to a network that takes {in_channels} channels")


def _check_dtype(image: np.ndarray) -> None:
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(
            f"image dtype {image.dtype} is not supported; "
            "expected uint8, uint16, another integer type or float"
        )
