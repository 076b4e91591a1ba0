"""Checkpoints that survive a kill: a network's weights, its ModelSpec and the caller's metadata in one file.

A save goes through :func:`ml_backend.storage.atomic_write` (temporary file, flush, rename), so a reader (or
a restart after a crash) finds the old checkpoint or the new one, never a torn file. Loading uses
``torch.load(weights_only=True)``: a checkpoint cannot run code, so files from elsewhere are safe to open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ml_backend.model.network import ModelSpec, build_from_spec, model_spec
from ml_backend.storage import atomic_write

CHECKPOINT_FORMAT = "label-studio-decomp/segmentation-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used; the message names the file and the reason."""


def save_checkpoint(
    path: str | os.PathLike[str], model: torch.nn.Module, metadata: dict[str, Any] | None = None
) -> None:
    """Save ``model`` (built by build_segmentation_model, possibly DDP-wrapped) with JSON-like ``metadata``
    (model version, metrics, class names...) atomically to ``path``."""
    spec = model_spec(model)
    metadata = {} if metadata is None else metadata
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"checkpoint metadata must be JSON-like (dict, list, str, int, float, bool, None): {error}"
        ) from error
    network = getattr(model, "module", model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "metadata": metadata,
        "state_dict": {key: value.detach().cpu() for key, value in network.state_dict().items()},
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network saved at ``path``, on ``device`` and in eval mode, and its metadata.

    A missing file raises FileNotFoundError; a file that is not a readable checkpoint of this project
    (truncated, corrupt, another format, weights that do not fit the spec) raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} cannot be read (damaged or not a torch file): {error}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a label-studio-decomp segmentation checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('version')!r}; this code reads version "
            f"{CHECKPOINT_VERSION}"
        )
    try:
        model = build_from_spec(ModelSpec.from_dict(payload["spec"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not describe a usable network: {error}") from error
    return model.to(device).eval(), payload.get("metadata", {})
