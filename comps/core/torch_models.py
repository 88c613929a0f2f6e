"""What the services that run a local torch model (embedding, reranker) share: the model folder check,
the device choice and torch's thread count. torch is imported only when a model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from comps.core.errors import ConfigError
from comps.core.settings import resolve_model_path

DeviceSetting = Literal["auto", "cpu", "cuda"]


def model_folder(name_or_path: str, models_dir: Path, setting: str) -> Path:
    """The model folder named by ``setting`` (a path, or a name under ``models_dir``); it must exist."""
    path = resolve_model_path(name_or_path, models_dir)
    if not path.is_dir():
        raise ConfigError(
            f"{setting}={name_or_path!r}: no model folder at {path}; put a sentence-transformers model there "
            "(`chatqna models fetch` fetches the defaults) or name an existing folder"
        )
    return path


def prepare_torch(device: DeviceSetting, num_threads: int | None) -> str:
    """Set torch's intra-op threads (None keeps torch's default) and return the device to load on."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if num_threads:
        torch.set_num_threads(num_threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return device
