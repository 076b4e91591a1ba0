import os

import numpy as np
import pytest
import torch

from ml_backend.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ml_backend.model.inference import predict_probabilities
from ml_backend.model.network import build_segmentation_model, model_spec
from ml_backend.storage import atomic_write


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    built = build_segmentation_model(3, encoder_weights=None, class_names=["bg", "cell", "nucleus"])
    with torch.no_grad():  # running statistics other than the defaults, so that they must be saved too
        built.train()
        built(torch.randn(2, 3, 64, 64) * 3 + 1)
    return built.eval()


def test_round_trip_gives_identical_outputs_spec_and_metadata(model, tmp_path) -> None:
    path = tmp_path / "v1.pt"
    metadata = {"model_version": "decomp-v1", "metrics": {"val_miou": 0.5, "per_class": [0.1, None]}}
    save_checkpoint(path, model, metadata)
    loaded, loaded_metadata = load_checkpoint(path, "cpu")
    assert loaded_metadata == metadata
    assert model_spec(loaded) == model_spec(model)
    assert not loaded.training
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        predict_probabilities(loaded, image).probabilities, predict_probabilities(model, image).probabilities
    )


def test_a_failed_save_leaves_the_old_checkpoint_intact(model, tmp_path, monkeypatch) -> None:
    path = tmp_path / "current.pt"
    save_checkpoint(path, model, {"model_version": "old"})
    before = path.read_bytes()

    def torn_write(payload: object, handle) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, {"model_version": "new"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["current.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"model_version": "old"}


def test_atomic_write_replaces_the_file_in_one_step(tmp_path) -> None:
    path = tmp_path / "sub" / "file.bin"
    with atomic_write(path) as handle:
        handle.write(b"first")
        assert not path.exists()  # nothing visible before the block ends
    with atomic_write(path, "w") as handle:
        handle.write("second")
    assert path.read_text() == "second"
    assert sorted(os.listdir(path.parent)) == ["file.bin"]
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_write(path, "a"):
        pass
    assert path.read_text() == "second"


def test_a_missing_checkpoint_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_a_truncated_checkpoint_is_reported_as_damaged(model, tmp_path) -> None:
    path = tmp_path / "cut.pt"
    save_checkpoint(path, model)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pt cannot be read"):
        load_checkpoint(path)


def test_files_of_other_kinds_are_refused(model, tmp_path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="not a label-studio-decomp segmentation checkpoint"):
        load_checkpoint(foreign)


def test_weights_that_do_not_fit_the_spec_are_refused(model, tmp_path) -> None:
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    payload["spec"]["num_classes"] = 5
    payload["spec"]["class_names"] = None
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not describe a usable network"):
        load_checkpoint(path)


def test_metadata_must_be_json_like(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="JSON-like"):
        save_checkpoint(tmp_path / "x.pt", model, {"array": np.zeros(2)})
    with pytest.raises(ValueError, match="JSON-like"):
        save_checkpoint(tmp_path / "x.pt", model, {"miou": float("nan")})
    assert not (tmp_path / "x.pt").exists()
