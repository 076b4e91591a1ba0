import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_backend.model.inference import as_planes, predict_probabilities
from ml_backend.model.network import ModelSpec, build_segmentation_model, prepare_image


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentation_model(3, encoder_weights=None)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[::4, ::4][:96, :112])  # a real photo, 96 x 112


class PointwiseNet(torch.nn.Module):
    """A network whose output at a pixel depends on that pixel alone: tiling cannot change its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = torch.nn.Conv2d(3, 4, 1)
        self.segmentation_head = torch.nn.Conv2d(4, 3, 1)
        self.spec = ModelSpec(3, "Pointwise", "none", 3, mean=(0.5,) * 3, std=(0.25,) * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(torch.tanh(self.body(x)))


def test_probabilities_are_a_softmax_with_matching_labels_and_confidence(model, photo) -> None:
    prediction = predict_probabilities(model, photo)
    assert prediction.probabilities.shape == (3, 96, 112) and prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert prediction.probabilities.min() >= 0.0
    np.testing.assert_array_equal(prediction.labels, prediction.probabilities.argmax(axis=0))
    np.testing.assert_array_equal(prediction.confidence, prediction.probabilities.max(axis=0))
    assert prediction.labels.dtype == np.uint8 and prediction.features is None


def test_odd_sizes_are_padded_by_reflection_and_cropped_back_exactly(model, photo) -> None:
    odd = photo[:37, :53]
    prediction = predict_probabilities(model, odd)
    assert prediction.probabilities.shape == (3, 37, 53) and prediction.labels.shape == (37, 53)
    padded = np.pad(odd, ((0, 64 - 37), (0, 64 - 53), (0, 0)), mode="reflect")
    reference = predict_probabilities(model, padded).probabilities[:, :37, :53]
    np.testing.assert_allclose(prediction.probabilities, reference, atol=1e-5)


def test_output_matches_a_plain_forward_pass(model, photo) -> None:
    with torch.inference_mode():
        logits = model.eval()(prepare_image(photo[:64, :96], model.spec)[None])
    expected = torch.softmax(logits, dim=1)[0].numpy()
    prediction = predict_probabilities(model, photo[:64, :96])
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)


def test_volumes_are_predicted_slice_by_slice_in_batches(model) -> None:
    volume = np.random.default_rng(0).random((5, 40, 50)).astype(np.float32)  # in [0, 1]: window (0, 1)
    prediction = predict_probabilities(model, volume, batch_size=2)
    assert prediction.probabilities.shape == (3, 5, 40, 50)
    assert prediction.labels.shape == prediction.confidence.shape == (5, 40, 50)
    for index in (0, 4):
        single = predict_probabilities(model, volume[index], window=(0.0, 1.0))
        np.testing.assert_allclose(prediction.probabilities[:, index], single.probabilities, atol=1e-5)
    one_by_one = predict_probabilities(model, volume, batch_size=1)
    np.testing.assert_allclose(one_by_one.probabilities, prediction.probabilities, atol=1e-5)


def test_volume_slices_share_one_intensity_window() -> None:
    net = PointwiseNet()
    volume = np.full((2, 32, 32), 1000, dtype=np.uint16)
    volume[0, :, 16:] = 2000
    volume[1, :, 16:] = 3000
    prediction = predict_probabilities(net, volume)
    # The volume's window is (1000, 3000): 2000 in slice 0 is mid-grey, not white as slice 0 alone would say.
    shared = predict_probabilities(net, volume[0], window=(1000.0, 3000.0))
    alone = predict_probabilities(net, volume[0])
    np.testing.assert_allclose(prediction.probabilities[:, 0], shared.probabilities, atol=1e-6)
    assert np.abs(prediction.probabilities[:, 0, :, 16:] - alone.probabilities[:, :, 16:]).max() > 0.01


def test_spatial_dims_settles_what_a_3d_array_is(model) -> None:
    cube = np.random.default_rng(1).integers(0, 256, (4, 32, 3), dtype=np.uint8)
    assert predict_probabilities(model, cube).probabilities.shape == (3, 4, 32)
    assert predict_probabilities(model, cube, spatial_dims=3).probabilities.shape == (3, 4, 32, 3)
    with pytest.raises(ValueError, match="as a 3-D image"):
        predict_probabilities(model, cube[0], spatial_dims=3)


def test_a_last_axis_of_the_networks_channel_count_reads_as_channels() -> None:
    multispectral = np.zeros((10, 12, 8), dtype=np.uint16)
    assert as_planes(multispectral, None, in_channels=8)[0].shape == (1, 10, 12, 8)
    planes, is_volume = as_planes(multispectral, None, in_channels=3)
    assert is_volume and planes.shape == (10, 12, 8)


def test_features_are_the_segmentation_head_input(model, photo) -> None:
    image = photo[:64, :64]
    full = predict_probabilities(model, image, return_features=True, feature_stride=1)
    assert full.features.shape == (16, 64, 64) and full.feature_stride == (1, 1)
    with torch.inference_mode():
        logits = model.segmentation_head(torch.from_numpy(full.features)[None])
    np.testing.assert_allclose(torch.softmax(logits, 1)[0].numpy(), full.probabilities, atol=1e-5)

    pooled = predict_probabilities(model, photo[:37, :53], return_features=True)
    assert pooled.features.shape == (16, 10, 14) and pooled.feature_stride == (4, 4)
    coarse = predict_probabilities(model, image, return_features=True, feature_stride=4).features
    expected = F.avg_pool2d(torch.from_numpy(full.features)[None], 4)[0].numpy()
    np.testing.assert_allclose(coarse, expected, atol=1e-5)


def test_features_ignore_forward_passes_of_other_threads(photo) -> None:
    class BusyNet(PointwiseNet):
        """Runs another thread's forward pass through itself between its head and its return."""

        interrupt = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = super().forward(x)
            if self.interrupt:
                self.interrupt = False
                other = threading.Thread(target=lambda: self(torch.zeros(1, 3, 32, 32)))
                other.start()
                other.join()
            return logits

    expected = predict_probabilities(PointwiseNet(), photo, return_features=True).features
    features = predict_probabilities(BusyNet(), photo, return_features=True).features
    np.testing.assert_allclose(features, expected, atol=1e-6)


def test_volume_features_keep_every_slice(model) -> None:
    volume = np.random.default_rng(2).random((3, 36, 40)).astype(np.float32)
    prediction = predict_probabilities(model, volume, return_features=True, return_probabilities=False)
    assert prediction.features.shape == (16, 3, 9, 10) and prediction.feature_stride == (1, 4, 4)
    assert prediction.probabilities is None and prediction.labels.shape == (3, 36, 40)


def test_tiles_blend_to_the_untiled_output_of_a_pointwise_network(photo) -> None:
    net = PointwiseNet()
    whole = predict_probabilities(net, photo, return_features=True)
    tiled = predict_probabilities(
        net, photo, return_features=True, tile_size=64, tile_overlap=32, batch_size=3
    )
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_allclose(tiled.features, whole.features, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def test_tiled_prediction_of_a_unet_stays_close_to_untiled(model) -> None:
    import skimage.data

    photo = np.ascontiguousarray(skimage.data.astronaut()[::2, ::2][:192, :224])
    whole = predict_probabilities(model, photo)
    tiled = predict_probabilities(model, photo, tile_size=128, tile_overlap=64)
    assert tiled.probabilities.shape == whole.probabilities.shape
    np.testing.assert_allclose(tiled.probabilities.sum(axis=0), 1.0, atol=1e-5)
    # A U-Net sees far beyond a tile, so tiles cannot match exactly (the pointwise test checks the
    # stitching itself); the blend keeps the difference small.
    difference = np.abs(tiled.probabilities - whole.probabilities)
    assert difference.mean() < 0.03
    assert difference[:, 32:96, 32:96].mean() < 0.03


def test_a_tile_as_large_as_the_image_is_the_untiled_path(model, photo) -> None:
    whole = predict_probabilities(model, photo)
    tiled = predict_probabilities(model, photo, tile_size=128)
    np.testing.assert_array_equal(tiled.probabilities, whole.probabilities)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 50}, "multiple of 32"),
        ({"tile_size": 64, "tile_overlap": 64}, "tile_overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"feature_stride": 3}, "feature_stride"),
    ],
)
def test_bad_options_get_a_clear_error(model, photo, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predict_probabilities(model, photo, **kwargs)


def test_the_model_is_left_in_the_mode_it_was_in(model, photo) -> None:
    model.train()
    try:
        predict_probabilities(model, photo[:32, :32])
        assert model.training
    finally:
        model.eval()
    predict_probabilities(model, photo[:32, :32])
    assert not model.training
