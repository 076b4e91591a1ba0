import http.server
import logging
import socket
import threading

import numpy as np
import pytest
import torch

from ml_backend.model import network
from ml_backend.model.network import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    build_from_spec,
    build_segmentation_model,
    intensity_window,
    model_spec,
    prepare_image,
    resolve_device,
)


def unnormalise(tensor: torch.Tensor) -> np.ndarray:
    """Back to the [0, 1] intensities prepare_image scaled to, (H, W, 3)."""
    return (tensor.permute(1, 2, 0) * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)).numpy()


@pytest.fixture(scope="module")
def random_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentation_model(3, encoder_weights=None, class_names=["bg", "a", "b"])


# -- input preparation ------------------------------------------------------------------------------


def test_uint8_rgb_is_scaled_by_255_and_normalised_with_imagenet_statistics() -> None:
    image = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    prepared = prepare_image(image)
    assert prepared.dtype == torch.float32 and prepared.shape == (3, 1, 2)
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(prepared.permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_grayscale_2d_and_single_channel_are_replicated_to_three_equal_channels() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    flat, single = unnormalise(prepare_image(gray)), unnormalise(prepare_image(gray[..., None]))
    np.testing.assert_allclose(flat, single)
    for channel in range(3):
        np.testing.assert_allclose(flat[..., channel], gray / 255.0, atol=1e-6)


def test_rgba_loses_its_alpha_channel() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, dtype=np.uint8)], axis=-1)
    torch.testing.assert_close(prepare_image(rgba), prepare_image(rgb))


def test_uint16_is_scaled_by_robust_percentiles_and_outliers_saturate() -> None:
    values = np.linspace(1000, 2000, 10_000)
    values[0], values[-1] = 0, 65535  # a dead and a saturated pixel must not set the contrast
    image = values.astype(np.uint16).reshape(100, 100)
    low, high = intensity_window(image)
    assert low == pytest.approx(np.percentile(image, 0.5))
    assert high == pytest.approx(np.percentile(image, 99.5))
    assert 1000 < low < 1010 and 1990 < high < 2000
    scaled = unnormalise(prepare_image(image))[..., 0].ravel()
    assert scaled[0] == pytest.approx(0.0, abs=1e-6) and scaled[-1] == pytest.approx(1.0, abs=1e-6)
    middle = int(np.argmin(np.abs(values - 1500)))
    assert scaled[middle] == pytest.approx((image.ravel()[middle] - low) / (high - low), abs=1e-5)


def test_float_in_unit_range_is_kept_and_other_floats_are_windowed() -> None:
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    assert intensity_window(unit) == (0.0, 1.0)
    np.testing.assert_allclose(unnormalise(prepare_image(unit))[..., 1], unit, atol=1e-6)
    hounsfield = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20)
    low, high = intensity_window(hounsfield)
    assert low == pytest.approx(-990, abs=1) and high == pytest.approx(990, abs=1)
    int16 = hounsfield.astype(np.int16)
    assert intensity_window(int16) == pytest.approx(intensity_window(hounsfield), abs=1)


def test_the_callers_array_is_never_written_and_any_layout_is_read() -> None:
    gray = np.random.default_rng(0).random((6, 7, 1)).astype(np.float32)
    original = gray.copy()
    prepared = prepare_image(gray)
    np.testing.assert_array_equal(gray, original)
    torch.testing.assert_close(prepare_image(gray[::-1, ::-1]), prepared.flip((1, 2)))
    big_endian = (gray[..., 0] * 1000).astype(">u2")
    torch.testing.assert_close(prepare_image(big_endian), prepare_image(big_endian.astype(np.uint16)))


def test_an_explicit_window_overrides_the_image_statistics() -> None:
    image = np.array([[100, 200]], dtype=np.uint16)
    scaled = unnormalise(prepare_image(image, window=(0.0, 400.0)))[..., 0]
    np.testing.assert_allclose(scaled, [[0.25, 0.5]], atol=1e-6)


def test_a_flat_image_maps_to_zero_instead_of_dividing_by_zero() -> None:
    scaled = unnormalise(prepare_image(np.full((4, 4), 3000, dtype=np.uint16)))
    np.testing.assert_allclose(scaled, 0.0, atol=1e-6)


def test_one_channel_networks_get_luminance_and_keep_grayscale() -> None:
    spec = ModelSpec(2, "Unet", "resnet18", 1, mean=(0.0,), std=(1.0,))
    rgb = np.array([[[255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(prepare_image(rgb, spec)[0].numpy(), [[0.299, 0.587]], atol=1e-5)
    gray = np.array([[0, 255]], dtype=np.uint8)
    assert prepare_image(gray, spec).shape == (1, 1, 2)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 5), dtype=np.uint8), "5 channels"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), r"shape \(H, W\) or \(H, W, C\)"),
        (np.zeros((0, 4), dtype=np.uint8), "non-empty"),
        (np.zeros((4, 4), dtype=bool), "dtype bool"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype complex64"),
        (np.array([[0.5, np.nan]], dtype=np.float32), "NaN"),
    ],
)
def test_unsupported_images_get_a_clear_error(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_image(image)


# -- building -----------------------------------------------------------------------------------------


def test_built_model_carries_the_spec_needed_to_rebuild_it(random_model: torch.nn.Module) -> None:
    spec = model_spec(random_model)
    assert spec == ModelSpec(
        num_classes=3,
        architecture="Unet",
        encoder="resnet18",
        in_channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=("bg", "a", "b"),
        pretrained=None,
    )
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    rebuilt = build_from_spec(spec)
    assert model_spec(rebuilt) == spec
    assert rebuilt.state_dict().keys() == random_model.state_dict().keys()
    assert random_model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_random_weights_on_request_never_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> bool:
        raise AssertionError("encoder_weights=None must not probe the hub")

    monkeypatch.setattr(network, "_hub_reachable", forbidden)
    model = build_segmentation_model(2, encoder_weights=None, in_channels=1, architecture="fpn")
    assert model_spec(model).architecture == "FPN" and model_spec(model).in_channels == 1
    assert model_spec(model).mean == pytest.approx((np.mean(IMAGENET_MEAN),))


def test_unreachable_hub_falls_back_to_random_weights_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(network, "_hub_reachable", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ml_backend.model.network"):
        model = build_segmentation_model(2, encoder_weights="imagenet")
    assert model_spec(model).pretrained is None
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "RANDOM weights" in record.getMessage() and "huggingface.co" in record.getMessage()
    assert "'resnet18'" in record.getMessage()


def test_pretrained_weights_are_loaded_and_adapted_to_one_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    source = build_segmentation_model(2, encoder_weights=None).encoder.state_dict()
    config = {"input_space": "RGB", "input_range": [0, 255], "mean": [120, 120, 120], "std": [60, 60, 60]}
    monkeypatch.setattr(
        network, "_fetch_smp_encoder_weights", lambda repo_id, revision: (config, dict(source))
    )

    rgb = build_segmentation_model(2, encoder_weights="imagenet")
    assert model_spec(rgb).pretrained == "imagenet"
    assert model_spec(rgb).mean == pytest.approx((120 / 255,) * 3)
    for key, value in rgb.encoder.state_dict().items():
        torch.testing.assert_close(value, source[key])

    gray = build_segmentation_model(2, encoder_weights="imagenet", in_channels=1)
    torch.testing.assert_close(gray.encoder.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    assert model_spec(gray).std == pytest.approx((60 / 255,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 256}, "num_classes"),
        ({"num_classes": 3, "architecture": "NoSuchNet"}, "unknown architecture"),
        ({"num_classes": 3, "encoder": "resnet7"}, "unknown encoder"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, "class_names"),
        ({"num_classes": 3, "in_channels": 0}, "in_channels"),
        ({"num_classes": 3, "encoder_weights": "no-such-weights"}, "no pretrained weights"),
    ],
)
def test_bad_build_arguments_get_a_clear_error(kwargs: dict, message: str) -> None:
    kwargs.setdefault("encoder_weights", None)
    with pytest.raises(ValueError, match=message):
        build_segmentation_model(**kwargs)


def test_a_model_without_spec_is_named_in_the_error() -> None:
    with pytest.raises(TypeError, match="Conv2d carries no ModelSpec"):
        model_spec(torch.nn.Conv2d(3, 3, 1))


def test_spec_from_a_foreign_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="not a model description"):
        ModelSpec.from_dict({"num_classes": 3, "layers": 7})
    with pytest.raises(ValueError, match="one value per input channel"):
        ModelSpec(3, "Unet", "resnet18", 1, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# -- hub probe and devices ----------------------------------------------------------------------------


def test_hub_probe_is_false_for_a_closed_port_and_true_for_any_http_answer(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert network._hub_reachable() is False

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (the http.server API)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert network._hub_reachable() is True
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert network._hub_reachable() is False
    finally:
        server.shutdown()
        server.server_close()


def test_devices_resolve_or_explain() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="not a torch device name"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="usable CUDA"):
            resolve_device("cuda:0")
